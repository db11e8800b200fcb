"""Bounded access to the Hugging Face hub: one probe with a timeout before transformers downloads anything.

transformers and huggingface_hub retry failed requests with back-off and log each retry; behind a proxy that
accepts connections and never answers they can wait without end. :func:`check_hub` asks the hub about the model
once, with a timeout (``$SINKWIDGETS_HUB_TIMEOUT`` seconds, default 10), and turns every failure into one error
that says what was tried and how to use the offline models. When the hub cannot be reached but the model is
already in the local Hugging Face cache, the load goes on from the cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from ..errors import HubUnreachableError, SinkwidgetsValueError

DEFAULT_TIMEOUT = 10.0


def hub_timeout() -> float:
    """Seconds one hub request may take: ``$SINKWIDGETS_HUB_TIMEOUT`` or 10."""
    raw = os.environ.get("SINKWIDGETS_HUB_TIMEOUT", "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_TIMEOUT
    except ValueError:
        raise SinkwidgetsValueError(f"SINKWIDGETS_HUB_TIMEOUT={raw!r} is not a number of seconds (e.g. 10)") from None
    if not value > 0:
        raise SinkwidgetsValueError(f"SINKWIDGETS_HUB_TIMEOUT={raw!r} must be a positive number of seconds")
    return value


def hub_offline() -> bool:
    """True when the user switched hub access off (``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1``)."""
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:  # pragma: no cover - a dependency of transformers
        pass
    return os.environ.get("TRANSFORMERS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def offline_hint() -> str:
    from .registry import REGISTRY

    others = ", ".join(n for n in REGISTRY if n != "smollm2-135m")
    return (f"Use an offline model instead: `sinkwidgets models fetch smollm2-135m` (also {others}), then "
            "load_model('smollm2-135m'); or pass a local directory with a saved Hugging Face model")


def _in_local_cache(repo_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an odd cache is no cache
        return False
    return isinstance(hit, str)


@contextlib.contextmanager
def quiet_hub():
    """Keep huggingface_hub's retry warnings and progress bars out of the user's face for one load."""
    log = logging.getLogger("huggingface_hub")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except ImportError:  # pragma: no cover
        return "https://huggingface.co"


def _proxy_note() -> str:
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(k)),
                 None)
    return f" through the proxy {proxy}" if proxy else ""


def check_hub(repo_id: str, name: str | None = None, revision: str | None = None, token=None) -> bool:
    """Probe the hub for ``repo_id`` with a timeout. Returns True when the load should read the local Hugging Face
    cache only (hub switched off or unreachable, model cached), False when the hub answered.

    Raises :class:`~sinkwidgets.errors.HubUnreachableError` when the hub cannot be reached (or is switched off)
    and the model is not cached, and :class:`~sinkwidgets.errors.ModelNotFoundError` when the hub says there is
    no such model.
    """
    name = name or repo_id
    if hub_offline():
        if _in_local_cache(repo_id, revision):
            return True
        raise HubUnreachableError(
            f"cannot load {name!r}: hub access is switched off (HF_HUB_OFFLINE=1) and the model is not in the "
            f"local Hugging Face cache. {offline_hint()}."
        )
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    timeout = hub_timeout()
    t0 = time.perf_counter()
    try:
        with quiet_hub():
            model_info(repo_id, revision=revision, timeout=timeout, token=token)
        return False
    except GatedRepoError as exc:
        raise HubUnreachableError(
            f"cannot load {name!r}: the model is gated on the Hugging Face hub; accept its licence on "
            f"https://huggingface.co/{repo_id} and log in (`hf auth login` or HF_TOKEN). ({type(exc).__name__})"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        from .registry import unknown_model_error

        raise unknown_model_error(name) from None
    except Exception as exc:  # noqa: BLE001 - timeouts, DNS, refused connections, proxies, TLS: all "unreachable"
        if _in_local_cache(repo_id, revision):
            return True
        waited = time.perf_counter() - t0
        raise HubUnreachableError(
            f"cannot load {name!r}: the Hugging Face hub at {_endpoint()} could not be reached{_proxy_note()} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no answer'}; gave up after "
            f"{waited:.0f} s, limit {timeout:g} s per request, SINKWIDGETS_HUB_TIMEOUT to change it), and the model "
            f"is not in the local Hugging Face cache. {offline_hint()}."
        ) from None
