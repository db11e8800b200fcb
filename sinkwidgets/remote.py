"""Remote tracing on NDIF: the public names (options, errors, remote loading) of :mod:`sinkwidgets.tracing.remote`.

Kept as its own module so that ``from sinkwidgets.remote import RemoteOptions, RemoteAuthError`` reads the way the
docs use it; the code lives in :mod:`sinkwidgets.tracing.remote`.
"""

from .tracing.remote import (  # noqa: F401
    BY_VALUE_MODULES,
    DEFAULT_JOB_TIMEOUT,
    DEFAULT_MAX_RESULT_BYTES,
    DEFAULT_TIMEOUT,
    KEY_URL,
    STATUS_URL,
    ModelNotDeployedError,
    RemoteAuthError,
    RemoteConfigError,
    RemoteConnectionError,
    RemoteOptions,
    RemoteResultTooLargeError,
    RemoteServerError,
    RemoteSession,
    RemoteTimeoutError,
    RemoteTraceError,
    classify_server_message,
    load_remote_model,
    options_for,
    run_remote,
    translate,
)
