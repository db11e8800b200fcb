"""One family of errors for everything the package raises on purpose.

:class:`SinkwidgetsError` is the base of every error class sinkwidgets defines, here or in the modules that raise
them (``InterventionError``, ``StreamingError``, ``SinkTraceFormatError``, ``TagDataFormatError``, the command
line's ``UsageError``, the widgets' ``WidgetValueError``), so ``except sinkwidgets.errors.SinkwidgetsError`` catches
every deliberate failure and nothing else. Each subclass also derives from the built-in it refines (``ValueError``
for a bad argument or file, ``TypeError`` for a wrong type, ``KeyError``, ``IndexError``, ``FileNotFoundError``,
``IsADirectoryError``, ``RuntimeError``, ``ConnectionError``, ``TimeoutError``), so code written as
``except ValueError`` keeps working. ``tests/test_errors.py`` walks the
package and checks that every exception class defined in it joins this family.

The errors of loading, tracing and remote tracing are defined here, so the layers that raise them (``models/``,
``tracing/``) need not import each other. Each message names the thing, the value and the fix. This module imports
nothing from the package, so every layer may import it.
"""

from __future__ import annotations


class SinkwidgetsError(Exception):
    """Base of every error sinkwidgets raises on purpose. Catch it to handle any of them, and only them."""


class SinkwidgetsValueError(SinkwidgetsError, ValueError):
    """An argument or input has the right type but an unusable value (out of range, empty, reversed, non-finite)."""


class SinkwidgetsTypeError(SinkwidgetsError, TypeError):
    """An argument has the wrong type (a string where a list of ints is expected, a float where an int is)."""


class SinkwidgetsKeyError(SinkwidgetsError, KeyError):
    """A lookup of something the object does not hold (a head that was not collected, a map that was not kept)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SinkwidgetsRuntimeError(SinkwidgetsError, RuntimeError):
    """A step failed for a reason outside the arguments (no frontend to render, a model that answers differently)."""


class SinkwidgetsIndexError(SinkwidgetsError, IndexError):
    """An index outside a sequence the object holds (a prompt number beyond a TagData's prompts)."""


class SinkwidgetsFileNotFoundError(SinkwidgetsError, FileNotFoundError):
    """A file to read, or the folder of a file to write, does not exist."""


class SinkwidgetsIsADirectoryError(SinkwidgetsError, IsADirectoryError):
    """A path meant to name a file names a directory."""


# ----------------------------------------------------------------------------- loading
class ModelNotFoundError(SinkwidgetsValueError):
    """The model name is neither a known short name, a local directory, nor reachable on the hub."""


class HubUnreachableError(SinkwidgetsError, ConnectionError):
    """The Hugging Face hub could not be reached to download a model."""


class UnsupportedModelError(SinkwidgetsValueError):
    """sinkwidgets cannot find or trace this architecture's attention probabilities."""


class ModelFetchError(SinkwidgetsError, RuntimeError):
    """Downloading, verifying or converting an offline model failed (``sinkwidgets.models.fetch``)."""


# ----------------------------------------------------------------------------- tracing
class TraceError(SinkwidgetsError, RuntimeError):
    """The model's attention could not be traced (wrong shapes, probabilities that do not sum to one)."""


class ChunkedUnsupportedError(SinkwidgetsValueError):
    """The chunked path cannot recompute this model's attention (no rotary q/k to capture, or a mismatch)."""


class ReductionUnsupportedError(SinkwidgetsValueError):
    """A requested in-trace quantity cannot be read from this model (e.g. per-head values of a fused q/k/v)."""


# ----------------------------------------------------------------------------- remote (NDIF)
class RemoteTraceError(SinkwidgetsError, RuntimeError):
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
