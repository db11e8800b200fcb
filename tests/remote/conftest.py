"""Fixtures for remote tests: a loopback NDIF-protocol server on 127.0.0.1 (started and stopped here)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SERVER = Path(__file__).with_name("loopback_server.py")
#: A fake key: the server requires it, and tests check it never shows up in errors or logs.
API_KEY = "sw-test-key-7f3a9c1e5b"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def allow_local_model_key(path: str) -> None:
    """Let nnsight name a local-directory model without asking the hub (``to_model_key``).

    nnsight canonicalises repo ids through the hub and caches them in a private dict; seeding it with the
    path itself is the one private hook the tests need (the loopback server loads that path).
    """
    from nnsight.modeling import huggingface as nhf

    nhf._ID_CACHE[str(path)] = str(path)


@pytest.fixture(scope="session")
def ndif_host(tmp_path_factory):
    """URL of a loopback server speaking nnsight's remote protocol; terminated (by its PID) at the end."""
    import importlib.util

    import httpx

    missing = [m for m in ("fastapi", "uvicorn", "websockets", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"the loopback NDIF server needs {missing}: pip install -e '.[dev]' "
                    "(fastapi, uvicorn, websockets, python-multipart)")

    port = free_port()
    log = tmp_path_factory.mktemp("ndif") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LOOPBACK_API_KEY": API_KEY}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, str(SERVER), "--port", str(port)], stdout=fh, stderr=subprocess.STDOUT,
                                env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"loopback server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"loopback server did not start in 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def server_config(host: str, **settings) -> None:
    import httpx

    httpx.post(f"{host}/_test/config", json=settings, timeout=10).raise_for_status()


def server_stats(host: str) -> dict:
    import httpx

    return httpx.get(f"{host}/_test/stats", timeout=10).json()


@pytest.fixture(scope="session")
def smollm2_dir():
    from sinkwidgets.models.fetch import fetch_model, is_cached, model_dir

    if not is_cached("smollm2-135m"):
        fetch_model("smollm2-135m")
    return str(model_dir("smollm2-135m"))


@pytest.fixture(scope="session")
def remote_smollm2(ndif_host, smollm2_dir):
    import sinkwidgets as sw

    allow_local_model_key(smollm2_dir)
    return sw.load_model(smollm2_dir, remote=True, host=ndif_host, api_key=API_KEY, timeout=30)


@pytest.fixture
def reset_server(ndif_host):
    server_config(ndif_host, deployed=None, delay=0.0, max_result_bytes=None)
    yield ndif_host
    server_config(ndif_host, deployed=None, delay=0.0, max_result_bytes=None)
