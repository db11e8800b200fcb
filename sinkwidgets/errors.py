"""One family of errors shared by loading, tracing and remote tracing.

Everything the package raises on purpose for a model that cannot be loaded or traced is defined here, so the
layers that raise them (``models/``, ``tracing/``) need not import each other. Each message names the thing, the
value and the fix. This module imports nothing from the package.
"""

from __future__ import annotations


# ----------------------------------------------------------------------------- loading
class ModelNotFoundError(ValueError):
    """The model name is neither a known short name, a local directory, nor reachable on the hub."""


class HubUnreachableError(ConnectionError):
    """The Hugging Face hub could not be reached to download a model."""


class UnsupportedModelError(ValueError):
    """sinkwidgets cannot find or trace this architecture's attention probabilities."""


# ----------------------------------------------------------------------------- tracing
class TraceError(RuntimeError):
    """The model's attention could not be traced (wrong shapes, probabilities that do not sum to one)."""


class ChunkedUnsupportedError(ValueError):
    """The chunked path cannot recompute this model's attention (no rotary q/k to capture, or a mismatch)."""


class ReductionUnsupportedError(ValueError):
    """A requested in-trace quantity cannot be read from this model (e.g. per-head values of a fused q/k/v)."""


# ----------------------------------------------------------------------------- remote (NDIF)
class RemoteTraceError(RuntimeError):
    """A remote (NDIF) trace failed. ``host`` is the server, ``fix`` what to do about it."""

    def __init__(self, problem: str, host: str | None = None, fix: str | None = None):
        self.problem, self.host, self.fix = problem, host, fix
        text = problem if host is None else f"{problem} [NDIF host: {host}]"
        if fix:
            text += f". Fix: {fix}"
        super().__init__(text)


class RemoteConfigError(RemoteTraceError, ValueError):
    """The remote settings are unusable (bad host URL, a model NDIF cannot name)."""


class RemoteAuthError(RemoteTraceError):
    """No API key, or the server rejected it."""


class RemoteConnectionError(RemoteTraceError, ConnectionError):
    """The server could not be reached (refused, unknown host, dropped connection)."""


class RemoteTimeoutError(RemoteTraceError, TimeoutError):
    """The server did not answer in time."""


class RemoteServerError(RemoteTraceError):
    """The server reported an error; ``server_message`` is its text."""

    def __init__(self, problem: str, host: str | None = None, fix: str | None = None, server_message: str = ""):
        self.server_message = server_message
        super().__init__(problem, host, fix)


class ModelNotDeployedError(RemoteServerError):
    """The server does not serve this model."""


class RemoteResultTooLargeError(RemoteTraceError):
    """The result would be (or is) larger than ``max_result_bytes``."""
