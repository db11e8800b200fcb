"""Start and stop a throw-away JupyterLab server for browser tests and ``benchmarks/render.py``.

127.0.0.1 only, a free port, a random token, fresh settings / workspaces / runtime / config dirs; stopped
through ``POST /api/shutdown`` and then by the PID it started (never by name).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = os.environ.get("SW_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LOCAL_PREFIXES = ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:", "file:")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(url: str, token: str, method: str = "GET", timeout: float = 5.0):
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
        return json.loads(body) if body else None


@dataclass
class LabServer:
    base: str
    token: str
    root: Path
    state: Path
    proc: subprocess.Popen
    log_path: Path
    _log: object = field(repr=False, default=None)

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}?token={self.token}"

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        try:  # graceful: also shuts the kernels down
            api(f"{self.base}/api/shutdown", self.token, method="POST")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()


def start_lab(workdir: Path, extra_pythonpath: list[str] | None = None, timeout: float = 90.0) -> LabServer:
    """Start ``python -m jupyterlab`` in ``workdir/root`` with fresh state under ``workdir/state``."""
    root, state = workdir / "root", workdir / "state"
    root.mkdir(parents=True, exist_ok=True)
    settings = state / "user-settings"
    for rel, content in {
        # no news / update checks (they would need the network)
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
        # every cell attached to the DOM (no virtualisation side effects)
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }.items():
        f = settings / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(content))
    config = state / "config"
    config.mkdir(parents=True, exist_ok=True)
    # window.jupyterapp in JupyterLab and in Notebook 7 (tests drive the command registry)
    (config / "jupyter_server_config.json").write_text(json.dumps({
        "LabApp": {"expose_app_in_browser": True},
        "JupyterNotebookApp": {"expose_app_in_browser": True},
    }))
    port, token = free_port(), secrets.token_hex(16)
    pp = [str(p) for p in (extra_pythonpath or [])]
    env = dict(
        os.environ,
        JUPYTER_RUNTIME_DIR=str(state / "runtime"),
        JUPYTER_CONFIG_DIR=str(config),
        JUPYTER_DATA_DIR=str(state / "data"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"),
        IPYTHONDIR=str(state / "ipython"),
        JUPYTER_PLATFORM_DIRS="1",
        PYTHONPATH=os.pathsep.join(pp + [os.environ.get("PYTHONPATH", "")]).strip(os.pathsep),
    )
    # JUPYTER_DATA_DIR is fresh: the kernelspec of this interpreter still comes from sys.prefix.
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True",
           f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={state / 'workspaces'}",
           "--ServerApp.terminals_enabled=False", "--LabApp.check_for_updates_class="
           "jupyterlab.NeverCheckForUpdate"]
    log_path = state / "jupyterlab.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    server = LabServer(f"http://127.0.0.1:{port}", token, root, state, proc, log_path, log)
    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            log.close()
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            api(f"{server.base}/api/status", token)
            return server
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            if time.perf_counter() - t0 > timeout:
                server.stop()
                raise RuntimeError(f"jupyter lab did not answer within {timeout:.0f} s:\n{server.log_tail()}") from exc
            time.sleep(0.2)
