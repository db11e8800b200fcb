"""``load_model``: a short name, a hub id or a local directory → an nnsight-wrapped model ready to trace."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HubUnreachableError, ModelNotFoundError, SinkwidgetsValueError, UnsupportedModelError  # noqa: F401 - re-exported
from .registry import REGISTRY, ModelSpec, looks_like_hub_id, resolve_name, unknown_model_error  # noqa: F401


@dataclass
class ModelInfo:
    """What sinkwidgets knows about a loaded model (attached to it as ``model.sinkwidgets``)."""

    name: str  #: short name, hub id or local path as given
    hub_id: str | None
    path: str | None
    architecture: str
    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    head_dim: int
    context_length: int | None
    causal: bool
    add_bos: bool | None  #: documented default (None: follow the tokenizer)
    bos_note: str
    adapter: Any = None
    remote: bool = False
    extra: dict = field(default_factory=dict)


def hub_error(name: str, exc: BaseException) -> Exception:
    """The SinkwidgetsError to raise when loading ``name`` from the hub failed with ``exc`` (offline, gated, ...)."""
    text = f"{type(exc).__name__}: {exc}"
    from ..errors import SinkwidgetsRuntimeError
    from .hub import hub_offline

    offline = hub_offline()  # what the user set, never guessed from transformers' wording
    network = offline or any(
        s in text for s in ("Connection", "connect", "resolve", "Max retries", "timed out", "Temporary failure",
                            "LocalEntryNotFound", "couldn't connect", "Cannot reach", "Network")
    )
    if network:
        why = "hub access is disabled (HF_HUB_OFFLINE=1)" if offline else "the Hugging Face hub could not be reached"
        return HubUnreachableError(
            f"cannot load {name!r}: {why}. Use an offline model instead: `sinkwidgets models fetch smollm2-135m` "
            f"(also {', '.join(n for n in REGISTRY if n != 'smollm2-135m')}), then load_model('smollm2-135m'); "
            "or pass a local directory with a saved Hugging Face model."
        )
    if any(s in text for s in ("not a valid model identifier", "RepositoryNotFound", "404", "does not appear to have", "HFValidationError")):
        return unknown_model_error(name)
    return exc if isinstance(exc, Exception) else SinkwidgetsRuntimeError(
        f"load_model({name!r}) stopped: {text}; run it again (if it was interrupted) or check the log above")


def _local_error(target: str, spec: ModelSpec | None, exc: BaseException, what: str) -> Exception:
    """A clear error for a local model that fails to load: a damaged cached copy, or a folder without weights."""
    if spec is not None:  # a cached offline model: check its files against the digests recorded at fetch time
        from .fetch import cache_problems, damaged_message

        problems = cache_problems(spec.name, full=True)
        if problems is None or problems:
            return ModelNotFoundError(damaged_message(spec.name, problems or ["manifest unreadable"]))
    d = Path(target)
    if what == "load the weights" and d.is_dir() and not any(
        next(d.glob(pat), None) is not None for pat in ("*.safetensors", "*.bin", "*.pt", "*.gguf", "*.h5", "*.msgpack")
    ):
        return ModelNotFoundError(f"directory {target!r} has a config.json but no model weights (model.safetensors or "
                                  "pytorch_model.bin); save the model with save_pretrained(), or pass another folder")
    return ModelNotFoundError(f"cannot {what} at {target!r}: {type(exc).__name__}: {exc}")


def _resolve(name_or_path: str | os.PathLike, fetch: bool) -> tuple[str, ModelSpec | None, bool]:
    """→ (path or hub id to load, registry spec or None, is_local)."""
    name = str(name_or_path)
    spec = resolve_name(name)
    if spec is not None and not Path(name).is_dir():
        from .fetch import cache_problems, damaged_message, fetch_model, model_dir

        problems = cache_problems(spec.name)  # None: not cached; []: intact (what is_cached() asks)
        if problems == []:
            return str(model_dir(spec.name)), spec, True
        if fetch:
            return str(fetch_model(spec.name)), spec, True
        if problems:
            raise ModelNotFoundError(damaged_message(spec.name, problems))
        raise ModelNotFoundError(f"offline model {spec.name!r} is not fetched yet: run `sinkwidgets models fetch {spec.name}`")
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(f"directory {str(p)!r} has no config.json: it is not a saved Hugging Face model")
        return str(p), spec, True
    if looks_like_hub_id(name):  # not an existing path and shaped owner/name: a hub id, dots and all
        return name, None, False
    if p.exists():
        raise ModelNotFoundError(f"{name!r} is a file, not a model directory: pass the folder that holds config.json")
    if "/" in name or "\\" in name or name.startswith((".", "~")) or p.suffix:
        raise ModelNotFoundError(f"no model directory at {name!r} (the path does not exist), and it is not a hub id "
                                 "of the form 'owner/name'")
    raise unknown_model_error(name)


def load_model(
    name_or_path: str | os.PathLike,
    *,
    remote: bool = False,
    device: str | None = None,
    dtype: Any = None,
    fetch: bool = True,
    validate: bool | None = None,
    **hf_kwargs: Any,
):
    """Load a model for tracing attention sinks; returns an nnsight ``TransformersModel``.

    Parameters
    ----------
    name_or_path : str or path
        A short name from the registry (``smollm2-135m``, ``gemma3-270m``, ``minilm-l6``; see
        ``sinkwidgets models list``), a Hugging Face hub id (``"Qwen/Qwen3-0.6B"``), or a local directory
        holding a saved Hugging Face model.
    remote : bool
        Run traces on NDIF (nnsight ``remote=True``): the weights are not downloaded, only the config and
        tokenizer. Extra keywords ``host``, ``api_key``, ``timeout``, ``job_timeout``, ``max_result_bytes`` go to
        :func:`sinkwidgets.remote.load_remote_model` (see ``docs/remote.md``).
    device : str, optional
        ``"cpu"`` (default), ``"cuda"``, or ``"auto"`` to spread a large model with ``device_map="auto"``.
    dtype : torch dtype or str, optional
        ``torch.float32`` by default on CPU; ``"bfloat16"``/``"float16"`` pass through for GPUs.
    fetch : bool
        Download and convert an offline model on first use (``sinkwidgets models fetch`` does it explicitly).
    validate : bool, optional
        Run a 6-token probe to check that attention probabilities can be traced and sum to one. By default
        only for architectures outside the known families (the generic path).
    **hf_kwargs
        Passed to ``from_pretrained`` (e.g. ``revision``, ``trust_remote_code``).

    The model is switched to eager attention so its probabilities exist. ``model.sinkwidgets`` is a
    :class:`ModelInfo` with the architecture facts and the documented BOS default. The first call sets torch's and
    BLAS's threads from the CPUs this process may use (``models/threads.py``, ``sw.config()``, ``docs/threads.md``).
    """
    from .threads import apply_threads

    apply_threads()  # once per process, before torch is imported; respects OMP_NUM_THREADS and SINKWIDGETS_NUM_THREADS
    import torch

    from .adapters import adapter_for

    if remote:  # NDIF needs the tracing layer's remote loader, which sits above this package
        raise SinkwidgetsValueError("models.load_model loads local weights only; for NDIF use "
                         "sinkwidgets.load_model(name, remote=True) (sinkwidgets.tracing.load_model)")
    if device is not None and not isinstance(device, str):
        device = str(device)
    if device is not None and device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SinkwidgetsValueError(f"device={device!r} but this machine has no CUDA GPU (torch.cuda.is_available() is "
                             "False); use device='cpu' (the default), or install a CUDA build of torch on a GPU machine")
    elif device not in (None, "auto", "cpu", "mps"):
        raise SinkwidgetsValueError(f"device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto' (device_map), got {device!r}")

    target, spec, local = _resolve(name_or_path, fetch)
    if isinstance(dtype, str):
        try:
            dtype = getattr(torch, dtype)
        except AttributeError:
            raise SinkwidgetsValueError(f"unknown dtype {dtype!r}; use 'float32', 'bfloat16' or 'float16'") from None
    if dtype is None:
        dtype = torch.float32
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ._progress import ticking
    from .hub import check_hub, quiet_hub

    if not local and check_hub(target, str(name_or_path), revision=hf_kwargs.get("revision"),
                               token=hf_kwargs.get("token")):
        hf_kwargs = {**hf_kwargs, "local_files_only": True}  # hub off or unreachable, model in the local HF cache
    prev = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # a bar with the elapsed time once loading takes over 2 s (a hub download, a slow disk, a busy machine)
    with ticking(f"loading {name_or_path}", delay=2.0):
        try:
            try:
                with quiet_hub():
                    config = AutoConfig.from_pretrained(target, **hf_kwargs)
                    tok = AutoTokenizer.from_pretrained(target, **{k: v for k, v in hf_kwargs.items()
                                                                   if k in ("revision", "trust_remote_code", "local_files_only")})
            except Exception as exc:  # noqa: BLE001 - translated into a clear error below
                if local:
                    raise _local_error(target, spec, exc, "read the model") from exc
                raise hub_error(str(name_or_path), exc) from exc
            encoder = _is_encoder(config, spec)
            cls = AutoModel if encoder else AutoModelForCausalLM
            load_kwargs = dict(dtype=dtype, attn_implementation="eager", **hf_kwargs)
            if device == "auto":
                load_kwargs["device_map"] = "auto"
            try:
                with quiet_hub():
                    hf = cls.from_pretrained(target, **load_kwargs)
            except Exception as exc:  # noqa: BLE001
                if local:
                    raise _local_error(target, spec, exc, "load the weights") from exc
                raise hub_error(str(name_or_path), exc) from exc
        finally:
            hf_logging.set_verbosity(prev)
            hf_logging.enable_progress_bar()
    hf.eval().requires_grad_(False)
    if device not in (None, "auto", "cpu"):
        hf.to(device)
    try:
        hf.set_attn_implementation("eager")
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"{type(hf).__name__} cannot switch to eager attention ({exc}); its attention probabilities cannot be traced"
        ) from exc
    adapter = adapter_for(hf)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "left"

    from nnsight.modeling.transformers import TransformersModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformersModel(hf, tokenizer=tok, task="feature-extraction" if encoder else "text-generation")
    model.sinkwidgets = build_info(name_or_path, target if local else None, spec, hf, adapter)
    if validate or (validate is None and adapter.family == "generic"):
        from .check import validate_model

        validate_model(model)
    return model


def _is_encoder(config, spec: ModelSpec | None) -> bool:
    if spec is not None:
        return spec.task == "feature-extraction"
    if getattr(config, "is_encoder_decoder", False):
        from .adapters import SUPPORTED

        raise UnsupportedModelError(
            f"encoder-decoder models ({config.model_type}) are not supported yet; supported: {SUPPORTED}"
        )
    return config.model_type in ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2")


def build_info(name, path, spec, hf, adapter) -> ModelInfo:
    """The ``model.sinkwidgets`` ModelInfo of a loaded HF model ``hf`` (layers, heads, BOS, adapter, ...)."""
    from .adapters import get_path

    cfg = hf.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    H = getattr(text_cfg, "num_attention_heads", None) or text_cfg.n_head
    d = getattr(text_cfg, "hidden_size", None) or text_cfg.n_embd
    ctx = getattr(text_cfg, "max_position_embeddings", None) or getattr(text_cfg, "n_positions", None)
    return ModelInfo(
        name=str(name),
        hub_id=spec.hub_id if spec else (None if path else str(name)),
        path=path,
        architecture=type(hf).__name__,
        family=adapter.family,
        n_layers=len(get_path(hf, adapter.layers)),
        n_heads=int(H),
        n_kv_heads=int(getattr(text_cfg, "num_key_value_heads", None) or H),
        d_model=int(d),
        head_dim=int(getattr(text_cfg, "head_dim", None) or d // H),
        context_length=int(ctx) if ctx else None,
        causal=adapter.causal,
        add_bos=spec.add_bos if spec else None,
        bos_note=spec.bos_note if spec else "not in the registry: add_bos follows the tokenizer's default unless given",
        adapter=adapter,
    )
