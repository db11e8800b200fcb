"""Models: the registry of short names, offline fetch + convert + cache, hub ids, architecture adapters."""

from .fetch import ModelFetchError, cache_dir, fetch_model, is_cached, list_models
from .loading import HubUnreachableError, ModelInfo, ModelNotFoundError, load_model
from .registry import REGISTRY, ModelSpec, resolve_name

__all__ = [
    "REGISTRY",
    "ModelSpec",
    "ModelInfo",
    "ModelFetchError",
    "ModelNotFoundError",
    "HubUnreachableError",
    "cache_dir",
    "fetch_model",
    "is_cached",
    "list_models",
    "load_model",
    "resolve_name",
]


def __getattr__(name):
    if name == "UnsupportedModelError":
        from ..errors import UnsupportedModelError

        return UnsupportedModelError
    raise AttributeError(name)
