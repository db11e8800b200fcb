"""Shared fixtures: the offline models are fetched once (download + convert) and cached per user."""

import os
import socket
import threading

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from _prompts import ENGLISH, LONG_TEXT  # noqa: F401  (re-exported for fixtures)


@pytest.fixture(scope="session")
def smollm2():
    import sinkwidgets as sw

    return sw.load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    import sinkwidgets as sw

    return sw.load_model("gemma3-270m")


@pytest.fixture(scope="session")
def minilm():
    import sinkwidgets as sw

    return sw.load_model("minilm-l6")


@pytest.fixture
def one_blas_thread():
    """One BLAS / OpenMP thread for the test: OpenBLAS starts one thread per core and thrashes on shared cores (an
    SVD 6x slower). Use with ``pytest.mark.usefixtures("one_blas_thread")``."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture
def silent_host():
    """``http://127.0.0.1:PORT`` of a local listener that accepts connections and never says a word (a hub or NDIF
    server that hangs); stopped and closed at the end of the test."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(0.2)
    stop, conns = threading.Event(), []

    def serve():
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    th.join(5)
    for c in conns:
        c.close()
    srv.close()
