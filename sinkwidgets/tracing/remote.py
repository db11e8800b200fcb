"""Remote tracing on NDIF (nnsight ``remote=True``): the reductions run on the server, only summaries come back.

::

    model = sinkwidgets.load_model("meta-llama/Llama-3.1-8B", remote=True)   # config + tokenizer only
    tr = sinkwidgets.trace(model, "The cat sat on the mat.")                   # runs on NDIF

The traced block is :func:`sinkwidgets.tracing.chunked.chunked_block`: the server runs the model with its own attention
implementation, recomputes attention probabilities from q and k in query chunks and reduces them inside the
trace, so what is downloaded is α ``[L, H, T]``, first-token mass and entropy ``[L, H]``, residual norms
``[L, T]``, the top activations and only the maps / head outputs asked for: it grows as ``L·H·T``, not ``T²``.

**Host and key.** Arguments (``load_model(..., host=, api_key=)`` or a :class:`RemoteOptions`) win over the
environment (``NDIF_HOST``, ``NDIF_API_KEY``), which wins over nnsight's configuration
(``nnsight.CONFIG.API.HOST`` / ``APIKEY``, e.g. set by ``CONFIG.set_default_api_key``). The key is sent only
in the request headers: it is never printed, logged, written to a trace, or put in an error message.

**Failures** are :class:`RemoteTraceError` subclasses whose message names the host and the fix: no key
(:class:`RemoteAuthError`), connection refused or unknown host (:class:`RemoteConnectionError`), a server that
does not answer (:class:`RemoteTimeoutError`; ``timeout`` seconds, 60 by default, for each network wait, and
``job_timeout`` for the whole job), an error raised on the server (:class:`RemoteServerError`, with its
message), a model NDIF does not serve (:class:`ModelNotDeployedError`) and a result over ``max_result_bytes``
(:class:`RemoteResultTooLargeError`, checked before sending and again before downloading). Only steps that
cannot run a job twice are retried: opening the connection, and fetching the result when nothing was received.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import (  # noqa: F401 - re-exported: sinkwidgets.remote.RemoteAuthError etc.
    ModelNotDeployedError,
    ModelNotFoundError,
    RemoteAuthError,
    RemoteConfigError,
    RemoteConnectionError,
    RemoteResultTooLargeError,
    RemoteServerError,
    RemoteTimeoutError,
    RemoteTraceError,
    SinkwidgetsTypeError,
)

#: Seconds to wait for any single answer from the server (connect, handshake, submit, download).
DEFAULT_TIMEOUT = 60.0
#: Seconds to wait for a submitted job to finish (queueing + running).
DEFAULT_JOB_TIMEOUT = 600.0
#: Largest result to accept (estimated before sending, checked again before downloading).
DEFAULT_MAX_RESULT_BYTES = 2**30
STATUS_URL = "https://nnsight.net/status/"
KEY_URL = "https://login.ndif.us"
#: Modules whose functions the traced block calls: shipped to the server by value (NDIF has no sinkwidgets).
BY_VALUE_MODULES = ("sinkwidgets.tracing.reductions", "sinkwidgets.tracing.edits", "sinkwidgets.tracing.collect",
                    "sinkwidgets.tracing.qk", "sinkwidgets.tracing.hooks", "sinkwidgets.tracing.chunked")


# ----------------------------------------------------------------------------- options
@dataclass
class RemoteOptions:
    """Where and how to run remote traces. ``None`` fields fall back to the environment / nnsight config."""

    host: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    job_timeout: float | None = DEFAULT_JOB_TIMEOUT
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    retries: int = 2

    def __repr__(self) -> str:  # never show the key
        key = "set" if self.api_key else "unset"
        return (f"RemoteOptions(host={self.host!r}, api_key=<{key}>, timeout={self.timeout}, "
                f"job_timeout={self.job_timeout}, max_result_bytes={self.max_result_bytes}, retries={self.retries})")

    def resolved(self) -> RemoteOptions:
        """Fill host and key: these arguments, else ``NDIF_HOST`` / ``NDIF_API_KEY``, else nnsight's CONFIG."""
        from nnsight import CONFIG

        host = self.host or os.environ.get("NDIF_HOST") or CONFIG.API.HOST
        key = self.api_key or os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY
        host = (host or "").strip().rstrip("/")
        if not host.startswith(("http://", "https://")):
            raise RemoteConfigError(
                f"the NDIF host {host!r} is not an http(s) URL", host=host or None,
                fix="give a URL such as 'https://api.ndif.us' (host=..., NDIF_HOST, or nnsight.CONFIG.API.HOST)")
        if self.timeout is None or not self.timeout > 0:
            raise RemoteConfigError(f"timeout must be a positive number of seconds, got {self.timeout!r}", host)
        if not key:
            raise RemoteAuthError(
                "no NDIF API key is set", host=host,
                fix=f"get a key at {KEY_URL}, then set the environment variable NDIF_API_KEY, or call "
                    "nnsight.CONFIG.set_default_api_key(KEY) once, or pass load_model(..., remote=True, api_key=KEY)")
        return replace(self, host=host, api_key=key)


def options_for(remote: Any, info=None) -> RemoteOptions:
    """The options for one trace: ``remote`` is True, a host URL, or a :class:`RemoteOptions`; the model's
    options (from :func:`load_remote_model`) fill what it leaves out."""
    base = (info.extra.get("remote_options") if info is not None else None) or RemoteOptions()
    if isinstance(remote, RemoteOptions):
        merged = replace(base, **{k: v for k, v in vars(remote).items() if v is not None and v != getattr(RemoteOptions(), k)})
    elif isinstance(remote, str):
        merged = replace(base, host=remote)
    elif remote is True:
        merged = base
    else:
        raise SinkwidgetsTypeError(f"remote: remote must be True, a host URL or a RemoteOptions, got "
                                   f"{type(remote).__name__}; e.g. remote=True")
    return merged.resolved()


# ----------------------------------------------------------------------------- model loading
def load_remote_model(name_or_path, *, dtype=None, host: str | None = None, api_key: str | None = None,
                      timeout: float | None = None, job_timeout: float | None = DEFAULT_JOB_TIMEOUT,
                      max_result_bytes: int | None = None, **hf_kwargs):
    """A model for remote traces: built on the meta device from the config (no weights), with its tokenizer.

    ``name_or_path`` is a registry short name (its hub id is used), a hub id, or, for tests against a local
    server, a local directory that nnsight can name. ``dtype`` is ignored: NDIF picks the serving dtype.
    """
    import warnings

    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ..models.adapters import adapter_for
    from ..models.loading import build_info, hub_error
    from ..models.registry import looks_like_hub_id, resolve_name
    from .chunked import layer_plan

    name = str(name_or_path)
    spec = resolve_name(name)
    p = Path(name).expanduser()
    local = spec is None and p.is_dir()
    if spec is not None:
        repo = spec.hub_id
    elif local:
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(f"directory {name!r} has no config.json: it is not a saved Hugging Face model")
        repo = str(p)
        from nnsight.modeling import huggingface as nhf

        if repo not in nhf._ID_CACHE:
            raise RemoteConfigError(
                f"{name!r} is a local directory; NDIF runs models by their Hugging Face hub id",
                fix="pass the hub id NDIF serves (e.g. 'meta-llama/Llama-3.1-8B'; list: " + STATUS_URL + ")")
    elif looks_like_hub_id(name):  # owner/name, dots allowed (Qwen/Qwen3-0.6B)
        repo = name
    else:
        from ..models.loading import unknown_model_error

        raise unknown_model_error(name)

    opts = RemoteOptions(host=host, api_key=api_key, timeout=timeout or DEFAULT_TIMEOUT, job_timeout=job_timeout,
                         max_result_bytes=max_result_bytes or DEFAULT_MAX_RESULT_BYTES)
    kw = {k: v for k, v in hf_kwargs.items() if k in ("revision", "trust_remote_code")}
    prev = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(repo, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            task = "feature-extraction" if spec is not None and spec.task == "feature-extraction" else "text-generation"
            model = TransformersModel(repo, tokenizer=tok, task=task, **kw)
            _ = model._module  # build the meta model now (config only), so errors surface here
    except RemoteTraceError:
        raise
    except Exception as exc:  # noqa: BLE001
        if local:
            raise ModelNotFoundError(f"cannot read the model at {repo!r}: {type(exc).__name__}: {exc}") from exc
        raise hub_error(name, exc) from exc
    finally:
        hf_logging.set_verbosity(prev)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "left"
    hf = model._module
    info = build_info(name, repo if local else None, spec, hf, adapter_for(hf))
    if not local:
        info.hub_id = repo
    info.remote = True
    info.extra["remote_options"] = opts
    model.sinkwidgets = info
    layer_plan(model, info)  # fail now, not on the server, if the chunked block cannot trace this architecture
    return model


# ----------------------------------------------------------------------------- backend
def _scrub(text: str, key: str | None) -> str:
    text = str(text)
    if key:
        text = text.replace(key, "***")
    return text


_AUTH = re.compile(r"api[ -_]?key|unauthori[sz]ed|forbidden|\b40[13]\b|authenticat", re.I)
_NOT_DEPLOYED = re.compile(
    r"not dedicated|hotswapping|not (?:been )?deployed|cannot be accomm?odated|failed to look up actor|"
    r"deployment evicted|no (?:such )?model|model .{0,200}not (?:found|available|supported)", re.I)
#: ndif's own words when a model it does not run cannot be brought up (processor.py: "Could not deploy this model.
#: <reason>", "Error provisioning model.", "Error starting model.").
_DEPLOY_FAILED = re.compile(r"\s*(?:could not deploy this model|error (?:provisioning|starting) model)\b", re.I)
_TOO_LARGE = re.compile(r"too large|exceeds? .{0,60}limit|\b413\b|payload size", re.I)


def _last_lines(text: str, n: int = 12) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


class RemoteSession:
    """One remote trace: resolves options, builds the backend, and turns failures into clear errors."""

    def __init__(self, model, info, remote, by_value: tuple[str, ...] = ()):
        """``by_value``: more modules (beyond :data:`BY_VALUE_MODULES`) whose code the block calls; they must be
        plain torch, as NDIF cannot import sinkwidgets."""
        self.model, self.info = model, info
        self.by_value = tuple(BY_VALUE_MODULES) + tuple(m for m in by_value if m not in BY_VALUE_MODULES)
        self.opts = options_for(remote, info)
        self.host = self.opts.host
        self._backend = None
        self._t0 = None

    def check_result_size(self, units, ctx, edits=None) -> int:
        """Estimate the download (:meth:`UnitSet.result_bytes`, plus the edits' reports) and refuse it before
        sending if over the limit."""
        n = units.result_bytes(ctx.B, ctx.T, ctx) + (edits.result_bytes(ctx.B, ctx.T, ctx) if edits else 0)
        if n > self.opts.max_result_bytes:
            raise RemoteResultTooLargeError(
                f"this trace would download about {n / 2**20:,.0f} MiB, more than max_result_bytes="
                f"{self.opts.max_result_bytes / 2**20:,.0f} MiB", host=self.host,
                fix="keep fewer full maps (keep_maps), drop keep_head_outputs, lower max_tokens or batch_size, "
                    "or raise the limit: load_model(..., remote=True, max_result_bytes=N)")
        return n

    def backend(self):
        try:
            key = self.model.to_model_key()
        except Exception as exc:  # noqa: BLE001
            raise RemoteConfigError(
                f"nnsight could not name {self.info.name!r} for the server "
                f"({type(exc).__name__}: {_scrub(exc, self.opts.api_key)[:300]})", host=self.host,
                fix="use a model id from the Hugging Face hub (the hub must be reachable to resolve it)") from None
        self._backend = _SinkBackend(key, self.opts, self.model, self.by_value)
        return self._backend

    @contextlib.contextmanager
    def guard(self):
        """Run the trace; translate every failure into a :class:`RemoteTraceError` without the key."""
        self._t0 = time.perf_counter()
        try:
            with _client_side():
                yield
        except RemoteTraceError as exc:
            raise _rebuild(exc, self.opts.api_key) from None
        except Exception as exc:  # noqa: BLE001
            err = translate(exc, self.host, self.opts)
            if err is None:
                raise
            raise err from None

    def meta(self) -> dict:
        b = self._backend
        return {
            "method": "chunked",
            "remote_host": self.host,
            "remote_payload_bytes": getattr(b, "payload_bytes", None),
            "remote_result_bytes": getattr(b, "result_bytes", None),
            "remote_seconds": round(time.perf_counter() - self._t0, 3) if self._t0 else None,
        }


def run_remote(model, info, remote, inputs: dict, fwd_kwargs: dict, units, ctx, budget: int | None = None,
               edits=None):
    """The remote executor: the chunked block (:func:`~.chunked.chunked_block`) shipped to NDIF → ``(packed, meta)``.

    The download is estimated from the units (:meth:`~.reductions.UnitSet.result_bytes`) and refused before
    sending when it exceeds ``max_result_bytes``; inputs are sent from the CPU.
    """
    from .chunked import check_values, chunked_block, layer_plan
    from .qk import CHUNK_BYTES

    plan = layer_plan(model, info)
    check_values(info, units)
    session = RemoteSession(model, info, remote)
    session.check_result_size(units, ctx, edits)
    backend = session.backend()
    with session.guard():
        out = chunked_block(model, inputs, fwd_kwargs, plan, units, ctx, budget or CHUNK_BYTES, backend, edits)
    return out, session.meta()


def _rebuild(exc: RemoteTraceError, key: str | None) -> RemoteTraceError:
    if not key or key not in str(exc):
        return exc
    kwargs = {"server_message": _scrub(exc.server_message, key)} if isinstance(exc, RemoteServerError) else {}
    return type(exc)(_scrub(exc.problem, key), exc.host, _scrub(exc.fix or "", key) or None, **kwargs)


def translate(exc: BaseException, host: str, opts: RemoteOptions) -> RemoteTraceError | None:
    """Map a raw nnsight / websocket / httpx / socket error to a :class:`RemoteTraceError` (None: not ours)."""
    import httpx
    import websocket
    from nnsight.intervention.backends.remote import RemoteError

    key = opts.api_key
    msg = _scrub(f"{type(exc).__name__}: {exc}", key)
    check_host = "check the host URL (host=..., NDIF_HOST or nnsight.CONFIG.API.HOST) and that the server is up"
    if isinstance(exc, RemoteError):
        return classify_server_message(_scrub(str(exc), key), host)
    if isinstance(exc, (websocket.WebSocketTimeoutException, socket.timeout, TimeoutError, httpx.TimeoutException)):
        return RemoteTimeoutError(
            f"the server did not answer within timeout={opts.timeout:g} s ({msg})", host,
            fix=f"{check_host}; NDIF status: {STATUS_URL}; raise timeout=... if the server is just slow")
    if isinstance(exc, (websocket.WebSocketAddressException, socket.gaierror)):
        return RemoteConnectionError(f"cannot resolve the host name ({msg})", host, fix=check_host)
    if isinstance(exc, ConnectionRefusedError):
        return RemoteConnectionError(f"connection refused ({msg})", host, fix=check_host)
    if isinstance(exc, websocket.WebSocketBadStatusException):
        code = getattr(exc, "status_code", None)
        if code in (401, 403):
            return RemoteAuthError(f"the server rejected the API key (HTTP {code})", host,
                                   fix=f"check NDIF_API_KEY / api_key=...; keys: {KEY_URL}")
        return RemoteConnectionError(f"the server refused the NDIF websocket (HTTP {code}): it may not be an NDIF "
                                     "server", host, fix=check_host)
    if isinstance(exc, (websocket.WebSocketConnectionClosedException, ConnectionResetError, BrokenPipeError)):
        return RemoteConnectionError(f"the server closed the connection before the job finished ({msg})", host,
                                     fix=f"try again; if it persists see {STATUS_URL}")
    if isinstance(exc, (httpx.ConnectError, httpx.NetworkError, OSError, websocket.WebSocketException)):
        return RemoteConnectionError(f"network error ({msg})", host, fix=check_host)
    return None


def classify_server_message(text: str, host: str) -> RemoteTraceError:
    """A server-side error description → auth / not deployed / too large / generic server error."""
    short = _last_lines(text)
    if _DEPLOY_FAILED.match(text):  # ndif could not bring the model up (its traceback is the deployment's, not ours)
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        said = lines[0] if lines[-1] in lines[0] else f"{lines[0]} ... {lines[-1]}"
        return ModelNotDeployedError(
            f"the server does not serve this model and could not deploy it: {said}", host,
            fix=f"pick a model the server runs (NDIF: {STATUS_URL} or nnsight.ndif_status(); a self-hosted NDIF: "
                "`ndif deploy` it first), or trace locally", server_message=text)
    if "Traceback (most recent call last)" in text:  # the block itself failed while running
        return RemoteServerError(f"the trace failed on the server: {short}", host,
                                 fix="read the server's message above; the same trace run locally usually shows "
                                     "the same error", server_message=text)
    if _NOT_DEPLOYED.search(text):
        return ModelNotDeployedError(
            f"the server does not serve this model: {short}", host,
            fix=f"pick a model NDIF runs (list: {STATUS_URL} or nnsight.ndif_status()), or trace locally",
            server_message=text)
    if _TOO_LARGE.search(text):
        return RemoteResultTooLargeError(
            f"the server refused the result as too large: {short}", host,
            fix="keep fewer maps / head outputs, or lower max_tokens or batch_size")
    if _AUTH.search(text):
        return RemoteAuthError(f"the server rejected the request: {short}", host,
                               fix=f"check NDIF_API_KEY / api_key=...; keys: {KEY_URL}")
    return RemoteServerError(f"the trace failed on the server: {short}", host,
                             fix="read the server's message above; the same trace run locally usually shows "
                                 "the same error", server_message=text)


#: nnsight's client side (capturing the block's source with ``ast``, pickling, pushing results into frames) is not
#: thread-safe: concurrent remote traces from several threads failed with "SystemError: AST constructor recursion
#: depth mismatch" (CPython 3.11). Remote traces hold this lock for their client-side work and release it while
#: they wait for the server, so several threads' jobs still run on the server at once.
_CLIENT_LOCK = threading.Lock()
_CLIENT = threading.local()


@contextlib.contextmanager
def _client_side():
    """Hold :data:`_CLIENT_LOCK` for one remote trace (re-entrant within a thread)."""
    if getattr(_CLIENT, "held", False):
        yield
        return
    _CLIENT_LOCK.acquire()
    _CLIENT.held = True
    try:
        yield
    finally:
        _CLIENT.held = False
        _CLIENT_LOCK.release()


@contextlib.contextmanager
def _network_wait():
    """Release :data:`_CLIENT_LOCK` (if this thread holds it) while waiting for the server; take it back after."""
    held = getattr(_CLIENT, "held", False)
    if held:
        _CLIENT.held = False
        _CLIENT_LOCK.release()
    try:
        yield
    finally:
        if held:
            _CLIENT_LOCK.acquire()
            _CLIENT.held = True


_SHIPPING_LOCK = threading.Lock()
_SHIPPING: dict = {"depth": 0, "modules": []}


@contextlib.contextmanager
def _shipping(by_value: tuple[str, ...]):
    """While serializing a request: ``ModelInfo`` pickles as ``None`` (``copyreg``) and ``by_value`` modules are
    pickled by value (cloudpickle). Process-wide registrations, counted so that concurrent serializations in
    several threads neither undo each other's nor leak past the last one."""
    import copyreg

    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES

    from ..models.loading import ModelInfo

    with _SHIPPING_LOCK:
        if _SHIPPING["depth"] == 0:
            copyreg.pickle(ModelInfo, lambda info: (type(None), ()))
        _SHIPPING["depth"] += 1
        added = [m for m in by_value if m not in _PICKLE_BY_VALUE_MODULES]
        _PICKLE_BY_VALUE_MODULES.update(added)
        _SHIPPING["modules"].extend(added)
    try:
        yield
    finally:
        with _SHIPPING_LOCK:
            _SHIPPING["depth"] -= 1
            if _SHIPPING["depth"] == 0:
                copyreg.dispatch_table.pop(ModelInfo, None)
                _PICKLE_BY_VALUE_MODULES.difference_update(_SHIPPING["modules"])
                _SHIPPING["modules"].clear()


def _backend_base():
    from nnsight.intervention.backends.remote import RemoteBackend

    return RemoteBackend


class _SinkBackend(_backend_base()):
    """nnsight's blocking :class:`RemoteBackend` with bounded waits, safe retries, size checks and byte counts."""

    def __init__(self, model_key: str, opts: RemoteOptions, model, by_value: tuple[str, ...] = BY_VALUE_MODULES):
        super().__init__(model_key, host=opts.host, api_key=opts.api_key, env=model._remoteable_get_env())
        self.opts = opts
        self.by_value = by_value
        self._model = model
        self.payload_bytes: int | None = None
        self.result_bytes: int | None = None

    def _serialize(self, tracer) -> bytes:
        # ModelInfo (a sinkwidgets object) lives on the model and would be pickled with it: NDIF cannot import
        # sinkwidgets, so it pickles as None while serializing (the model itself is left alone: other threads
        # tracing the same model keep seeing it); the block's helper modules are shipped by value.
        with _shipping(self.by_value):
            blob = super()._serialize(tracer)
        self.payload_bytes = len(blob)
        return blob

    def _headers(self) -> dict:
        import sys

        from nnsight.intervention.backends.remote import _NNSIGHT_VERSION

        h = {"ndif-timestamp": repr(time.time()), "nnsight-version": _NNSIGHT_VERSION, "python-version": sys.version}
        if self.api_key:
            h["ndif-api-key"] = self.api_key
        return h

    def _connect(self):
        import websocket

        header = {"ndif-api-key": self.api_key} if self.api_key else None
        for attempt in range(self.opts.retries + 1):
            try:  # nothing has been submitted yet: safe to retry a refused / reset connection
                return websocket.create_connection(f"{self.ws_host}/subscribe", header=header,
                                                   timeout=self.opts.timeout)
            except (ConnectionRefusedError, ConnectionResetError):
                if attempt == self.opts.retries:
                    raise
                time.sleep(0.25 * 2**attempt)

    def _post(self, request, blob: bytes):
        import httpx
        from nnsight.schema.response import ResponseModel

        t = self.opts.timeout
        for attempt in range(self.opts.retries + 1):
            try:
                with httpx.Client(timeout=httpx.Timeout(t)) as client:
                    r = client.post(f"{self.host}/request", data={"data": request.metadata()},
                                    files={"blob": ("request", blob, "application/octet-stream")},
                                    headers=self._headers())
                break
            except httpx.ConnectError:  # the request never left: safe to retry
                if attempt == self.opts.retries:
                    raise
                time.sleep(0.25 * 2**attempt)
        if r.status_code >= 400:
            try:
                body = r.json()
                detail = body.get("detail") if isinstance(body, dict) else body
            except ValueError:
                detail = r.text
            detail = f"HTTP {r.status_code}: {detail}"
            if r.status_code in (401, 403):
                raise RemoteAuthError(f"the server rejected the API key ({_scrub(detail, self.api_key)[:500]})",
                                      self.host, fix=f"check NDIF_API_KEY / api_key=...; keys: {KEY_URL}")
            size = len(blob) / 2**20
            # ndif's API answers a multipart body over about 1 MiB with "400: There was an error parsing the
            # body" (measured on ndif 0.1.2), a proxy in front of it with 413
            if r.status_code == 413 or (r.status_code == 400 and size > 0.9 and "pars" in detail.lower()):
                raise RemoteResultTooLargeError(
                    f"the request ({size:.2f} MiB) is too large for the server ({detail[:300]}); NDIF's API "
                    "refuses requests over about 1 MiB", self.host,
                    fix="trace fewer or shorter prompts per call, and keep edits' tensors small (an edit's "
                        "basis or vectors travel with the request)")
            err = classify_server_message(_scrub(detail, self.api_key), self.host)
            if type(err) is RemoteServerError:  # the job never ran: say so, and how big the request was
                raise RemoteServerError(f"the server refused the request ({size:.2f} MiB): {detail[:500]}",
                                        self.host, fix=f"check the host and its status ({STATUS_URL}); if the "
                                        "request is large, send fewer or shorter prompts per call",
                                        server_message=detail)
            raise err
        return ResponseModel.model_validate_json(r.text)

    def request(self, request, tracer):
        blob = self._serialize(tracer)
        with _network_wait():
            return self._submit_and_wait(request, blob)

    def _submit_and_wait(self, request, blob):
        import websocket
        from nnsight.schema.response import Status

        connection = self._connect()
        try:
            connection.settimeout(self.opts.timeout)
            request.session_id = json.loads(connection.recv())["session_id"]
            self.send(request, blob)
            deadline = None if self.opts.job_timeout is None else time.monotonic() + self.opts.job_timeout
            while True:
                wait = 0.5 if self.display.enabled else 5.0
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise RemoteTimeoutError(
                            f"the job did not finish within job_timeout={self.opts.job_timeout:g} s", self.host,
                            fix=f"raise job_timeout=... (load_model(..., remote=True, job_timeout=N)) if the queue "
                                f"is long; NDIF status: {STATUS_URL}")
                    wait = min(wait, left)
                connection.settimeout(wait)
                try:
                    message = connection.recv()
                except websocket.WebSocketTimeoutException:
                    self.display.refresh()
                    continue
                response = self.parse(message)
                result = self.handle(response)
                if response.status == Status.COMPLETED:
                    return result
        finally:
            connection.close()

    def download_result(self, url):
        if isinstance(url, (bytes, bytearray)):
            return self.finalize(bytes(url))
        if not url:
            return None
        import io

        import httpx

        limit = self.opts.max_result_bytes
        too_big = RemoteResultTooLargeError(
            f"the result is larger than max_result_bytes={limit:,}", self.host,
            fix="keep fewer maps / head outputs, or raise max_result_bytes")
        for attempt in range(self.opts.retries + 1):
            buf = io.BytesIO()
            try:
                with httpx.Client(timeout=httpx.Timeout(self.opts.timeout)) as client:
                    with client.stream("GET", url) as r:
                        r.raise_for_status()
                        if int(r.headers.get("Content-Length", 0) or 0) > limit:
                            raise too_big
                        for chunk in r.iter_bytes(chunk_size=1 << 17):
                            buf.write(chunk)
                            if buf.tell() > limit:
                                raise too_big
                break
            except httpx.ConnectError:  # nothing received yet: safe to retry
                if attempt == self.opts.retries:
                    raise
                time.sleep(0.25 * 2**attempt)
        return self.finalize(buf.getvalue())

    def finalize(self, content: bytes):
        self.result_bytes = len(content)
        if len(content) > self.opts.max_result_bytes:
            raise RemoteResultTooLargeError(
                f"the result ({len(content):,} bytes) is larger than max_result_bytes={self.opts.max_result_bytes:,}",
                self.host, fix="keep fewer maps / head outputs, or raise max_result_bytes")
        return super().finalize(content)
