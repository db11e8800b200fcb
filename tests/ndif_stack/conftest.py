"""A self-hosted NDIF server stack (ndif 0.1.2) on 127.0.0.1, started and stopped by a session fixture.

What runs (every service from the stack's own venv, ``$SW_NDIF_VENV``, default ``/tmp/sw-ndif-venv``, installed by
``bash .ci/ndif_stack_env.sh``; ``redis-server`` from Debian):

=============  ===========================================================================================
redis          request queue, status pub/sub; ``client-output-buffer-limit pubsub`` is lowered so that the
               inline-result cap (ndif: ``min(soft, hard // 2)``) is :data:`INLINE_CAP` = 256 KiB and large
               results take the S3 path cheaply
moto_server    the S3 object store (results over the cap, non-blocking statuses), presigned-URL downloads
ray head       one *logical* GPU declared (ndif's controller ignores nodes without one); no CUDA is used
controller     ndif's detached ``ControllerActor`` (placed by ``python -m ...controller.controller``)
api            ndif's FastAPI app under gunicorn, plus the queue dispatcher it spawns
=============  ===========================================================================================

Two models are pre-deployed through ndif's own ``ndif.cli.lib.deploy.deploy`` with their nnsight model key and
size (ndif 0.1.2 cannot size an nnsight 0.8.1 checkpoint itself): SmolLM2-135M from the offline model cache and a
tiny random Llama saved by the fixture. The model actor class is :mod:`cpu_actor` (this folder), selected with
ndif's ``NDIF_MODEL_IMPORT_PATH`` hook.

Process hygiene: every service is started with ``start_new_session=True``; its PID (= session id = process-group
id) is recorded, and teardown signals exactly the processes of those sessions / groups (TERM, then KILL after
10 s). Nothing is stopped by name (``ray stop`` kills every Ray on the machine, so it is never called).

If any service cannot start, the fixture fails with the service's name and its log tail: it never skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
VENV = Path(os.environ.get("SW_NDIF_VENV", "/tmp/sw-ndif-venv"))
#: Any key passes: ndif checks keys only when it has a Postgres (NDIF_POSTGRES_URL), and this stack has none.
API_KEY = "sw-ndif-stack-key-4b1d"
#: Results up to this many bytes come back inline on the websocket; larger ones through S3 (redis pubsub soft limit).
INLINE_CAP = 256 * 1024
#: ndif 0.1.2's API refuses a request body over about 1 MiB ("400: There was an error parsing the body"; measured:
#: a 0.90 MB blob is accepted, 1.10 MB refused).
REQUEST_CAP = 1024 * 1024
START_TIMEOUT = float(os.environ.get("SW_NDIF_START_TIMEOUT", "300"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_range(width: int = 64, avoid=()) -> tuple[int, int]:
    """A run of ``width`` consecutive free ports for Ray's workers (checked by binding each), holding none of
    ``avoid`` (the stack's other ports: Ray refuses to start when a component's port lies in the workers' range)."""
    import random

    rng = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(50):
        lo = rng.randrange(30000, 40000 - width)
        if any(lo <= p < lo + width for p in avoid):
            continue
        socks = []
        try:
            for p in range(lo, lo + width):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return lo, lo + width - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports for Ray's workers in 30000-40000")


def allow_local_model_key(path: str) -> None:
    """Let nnsight name a local-directory model without the hub (it canonicalises repo ids through the hub and
    caches them in a private dict; seeding it with the path itself is the one private hook needed)."""
    from nnsight.modeling import huggingface as nhf

    nhf._ID_CACHE[str(path)] = str(path)


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(lines[-n:]) or "(empty log)"


def _members(leaders: set[int]) -> set[int]:
    """Live PIDs whose session id or process-group id is one of ``leaders`` (read from /proc)."""
    out = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgid, sid = fields[0], int(fields[2]), int(fields[3])
        if state != "Z" and (sid in leaders or pgid in leaders):
            out.add(int(d))
    return out


@dataclass
class Stack:
    """The running stack: URLs, ports, logs, and the sessions it started (``sessions``: name → leader PID)."""

    root: Path
    env: dict
    ports: dict
    url: str = ""
    sessions: dict = field(default_factory=dict)
    procs: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def start(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        """Start one service in its own session, output to ``logs/<name>.log``; record its PID."""
        with open(self.log(name), "ab") as fh:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, cwd=self.root, start_new_session=True, **kw)
        self.sessions[name] = proc.pid
        self.procs[name] = proc
        return proc

    def fail(self, name: str, problem: str) -> None:
        pytest.fail(f"the self-hosted NDIF stack could not start: {name}: {problem}\n"
                    f"--- last lines of {self.log(name)}:\n{_tail(self.log(name))}", pytrace=False)

    def wait_for(self, name: str, ok, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        proc = self.procs.get(name)
        while True:
            with contextlib.suppress(Exception):
                if ok():
                    return
            if proc is not None and proc.poll() is not None and proc.returncode != 0:
                self.fail(name, f"exited with status {proc.returncode} before {what}")
            if time.monotonic() > deadline:
                self.fail(name, f"{what} did not happen within {timeout:g} s")
            time.sleep(0.3)

    def stop(self) -> dict:
        """TERM every process of the recorded sessions / groups, KILL what is left after 10 s. → counts."""
        leaders = set(self.sessions.values())
        pids = _members(leaders)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _members(leaders) and time.monotonic() < deadline:
            time.sleep(0.25)
            for p in self.procs.values():  # reap our direct children, so they do not linger as zombies
                with contextlib.suppress(Exception):
                    p.poll()
        killed = set()
        for pid in _members(leaders):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        for p in self.procs.values():
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
        return {"signalled": len(pids), "killed_after_10s": len(killed)}


def _service_env(root: Path, ports: dict) -> dict:
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "VIRTUAL_ENV", "NDIF_", "RAY_", "CONDA", "NNSIGHT"))}
    keep.update({
        "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "VIRTUAL_ENV": str(VENV),
        "PYTHONPATH": str(HERE),  # cpu_actor, for the Ray workers
        "HOME": str(root / "home"),  # gunicorn's control socket, ~/.ndif, caches: all inside the temp dir
        "NDIF_HOME": str(root / "home" / ".ndif"),
        "NDIF_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}",
        "NDIF_OBJECT_STORE_URL": f"http://127.0.0.1:{ports['s3']}",
        "NDIF_OBJECT_STORE_ACCESS_KEY": "testing", "NDIF_OBJECT_STORE_SECRET_KEY": "testing",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "NDIF_RAY_ADDRESS": f"ray://127.0.0.1:{ports['ray_client']}",
        "RAY_ADDRESS": f"127.0.0.1:{ports['gcs']}",
        "NDIF_API_PORT": str(ports["api"]),
        "NDIF_MODEL_IMPORT_PATH": "cpu_actor.CPUModelActor",
        "NDIF_DEFAULT_DTYPE": "float32", "NDIF_DEFAULT_PADDING_BIAS": "0",
        "NDIF_AUTOSCALING_MAX_REPLICAS": "1",  # one replica per model: a second would load another copy on CPU
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(root / "hf"),
        "RAY_USAGE_STATS_ENABLED": "0", "GRPC_ENABLE_FORK_SUPPORT": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # makes Ray resolve its node IP to 127.0.0.1, not eth0
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    })
    return keep


def _http_ok(url: str, needle: str = "") -> bool:
    import httpx

    r = httpx.get(url, timeout=2)
    return r.status_code == 200 and needle in r.text


def _make_tiny_llama(folder: Path) -> Path:
    """A 2-layer random Llama (d = 64, 4 heads, 2 KV heads; seed 0) with SmolLM2's tokenizer."""
    import torch
    import transformers as tf

    from sinkwidgets.models.fetch import model_dir

    torch.manual_seed(0)
    tok = tf.AutoTokenizer.from_pretrained(model_dir("smollm2-135m"))
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    tf.LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


DEPLOY = """
import json, sys
from ndif.cli.lib.deploy import deploy
res = deploy(json.load(open(sys.argv[1])), on_message=lambda m: print(m, flush=True))
print("DEPLOY-RESULT " + json.dumps(res, default=str), flush=True)
"""


def _start_stack(stack: Stack, models: dict) -> None:
    p, bin_ = stack.ports, VENV / "bin"
    t0 = time.monotonic()
    stack.start("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(p["redis"]), "--save", "",
                          "--appendonly", "no", "--daemonize", "no", "--dir", str(stack.root),
                          "--client-output-buffer-limit", f"pubsub {4 * INLINE_CAP} {INLINE_CAP} 60"])
    stack.start("moto", [str(bin_ / "moto_server"), "-H", "127.0.0.1", "-p", str(p["s3"])])
    import psutil

    resources = {"head": 10, "cuda_memory_bytes": 8_000_000_000, "cpu_memory_bytes": psutil.virtual_memory().total}
    ray = stack.start("ray", [
        str(bin_ / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={p['gcs']}",
        "--num-cpus=6", "--num-gpus=1", f"--resources={json.dumps(resources)}",
        "--object-store-memory=300000000", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={p['dashboard']}", f"--dashboard-agent-listen-port={p['agent_http']}",
        f"--dashboard-agent-grpc-port={p['agent_grpc']}", f"--metrics-export-port={p['metrics']}",
        f"--node-manager-port={p['node_manager']}", f"--object-manager-port={p['object_manager']}",
        f"--runtime-env-agent-port={p['runtime_env']}", f"--ray-client-server-port={p['ray_client']}",
        f"--min-worker-port={p['workers'][0]}", f"--max-worker-port={p['workers'][1]}",
        f"--temp-dir={stack.root / 'ray'}", "--disable-usage-stats"])
    stack.wait_for("redis", lambda: socket.create_connection(("127.0.0.1", p["redis"]), 1).close() is None, 30,
                   "listening")
    try:
        rc = ray.wait(timeout=START_TIMEOUT / 2)
    except subprocess.TimeoutExpired:
        stack.fail("ray", f"`ray start` did not return within {START_TIMEOUT / 2:g} s")
    if rc != 0:
        stack.fail("ray", f"`ray start` exited with status {rc}")
    stack.timings["ray_s"] = round(time.monotonic() - t0, 1)

    ctl = stack.start("controller", [str(bin_ / "python"), "-m", "ndif.services.ray.deployments.controller.controller"])
    try:
        rc = ctl.wait(timeout=START_TIMEOUT / 2)
    except subprocess.TimeoutExpired:
        stack.fail("controller", f"the controller launcher did not return within {START_TIMEOUT / 2:g} s")
    if rc != 0:
        stack.fail("controller", f"the controller launcher exited with status {rc}")
    stack.timings["controller_s"] = round(time.monotonic() - t0, 1)

    stack.start("api", [str(bin_ / "gunicorn"), "--config", "python:ndif.services.api.gunicorn_conf",
                        "--bind", f"127.0.0.1:{p['api']}", "--control-socket", str(stack.root / "gunicorn.ctl"),
                        "ndif.services.api.app:app"])
    stack.wait_for("moto", lambda: _http_ok(f"http://127.0.0.1:{p['s3']}/moto-api/"), 60, "S3 answering")
    stack.wait_for("api", lambda: _http_ok(f"{stack.url}/connected", "connected"), START_TIMEOUT / 2,
                   "GET /connected answering 'connected' (the dispatcher reaching Ray)")
    stack.timings["api_s"] = round(time.monotonic() - t0, 1)

    specs = [{"checkpoint": str(path), "model_key": key, "pinned": True, "size_bytes": _weights_bytes(path),
              "dtype": "float32", "actor_class": "cpu_actor.CPUModelActor"} for path, key in models.values()]
    spec_file = stack.root / "deploy.json"
    spec_file.write_text(json.dumps(specs))
    dep = stack.start("deploy", [str(bin_ / "python"), "-c", DEPLOY, str(spec_file)])
    try:
        rc = dep.wait(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        stack.fail("deploy", f"deploying {list(models)} did not finish within {START_TIMEOUT:g} s")
    text = stack.log("deploy").read_text(errors="replace")
    if rc != 0 or "DEPLOY-RESULT" not in text:
        stack.fail("deploy", f"ndif's deploy exited with status {rc}")
    result = json.loads(text.split("DEPLOY-RESULT ", 1)[1].splitlines()[0])
    bad = [(d.get("checkpoint"), d.get("status"), d.get("error")) for d in result.get("deployments", [])
           if d.get("status") != "READY"]
    if bad or len(result.get("deployments", [])) != len(models):
        stack.fail("deploy", f"not every model is READY: {bad or result}")
    stack.timings["deploy_s"] = round(time.monotonic() - t0, 1)


@pytest.fixture(scope="session")
def ndif_stack(tmp_path_factory):
    """The running :class:`Stack`; ``stack.url`` is the API's ``http://127.0.0.1:PORT``, ``stack.models`` maps
    ``"smollm2"`` / ``"tiny"`` to ``(local dir, model key)``. Stopped (by recorded session) at the end."""
    missing = [str(VENV / "bin" / exe) for exe in ("python", "ray", "gunicorn", "moto_server")
               if not (VENV / "bin" / exe).exists()]
    if shutil.which("redis-server") is None:
        missing.append("redis-server on PATH")
    if missing:
        pytest.fail(f"the self-hosted NDIF stack is not installed (missing {missing}): run "
                    f"`bash .ci/ndif_stack_env.sh` (SW_NDIF_VENV={VENV})", pytrace=False)

    import sinkwidgets as sw
    from sinkwidgets.models.fetch import fetch_model, is_cached, model_dir

    if not is_cached("smollm2-135m"):
        fetch_model("smollm2-135m")
    root = Path(tempfile.mkdtemp(prefix="swndif-"))  # short: Ray's unix sockets live under it
    for d in ("logs", "home", "hf"):
        (root / d).mkdir()
    names = ("redis", "s3", "gcs", "ray_client", "dashboard", "agent_http", "agent_grpc", "metrics", "node_manager",
             "object_manager", "runtime_env", "api")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    ports["workers"] = free_range(avoid=list(ports.values()))
    stack = Stack(root=root, env=_service_env(root, ports), ports=ports, url=f"http://127.0.0.1:{ports['api']}")

    models = {}
    tiny = _make_tiny_llama(root / "tiny-llama")
    for name, path in (("smollm2", Path(model_dir("smollm2-135m"))), ("tiny", tiny)):
        allow_local_model_key(str(path))
        m = sw.load_model(str(path), remote=True, host=stack.url, api_key=API_KEY)
        models[name] = (path, m.to_model_key())
    stack.models = models

    t0 = time.monotonic()
    try:
        _start_stack(stack, models)
        stack.timings["ready_s"] = round(time.monotonic() - t0, 1)
        print(f"\n[ndif stack] ready in {stack.timings}", file=sys.stderr)
        yield stack
    finally:
        t1 = time.monotonic()
        counts = stack.stop()
        print(f"\n[ndif stack] stopped in {time.monotonic() - t1:.1f} s: {counts}", file=sys.stderr)
        if os.environ.get("SW_NDIF_KEEP_LOGS"):
            print(f"[ndif stack] logs kept in {root / 'logs'}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def smollm2_dir(ndif_stack):
    return str(ndif_stack.models["smollm2"][0])


@pytest.fixture(scope="session")
def remote_smollm2(ndif_stack):
    import sinkwidgets as sw

    path = str(ndif_stack.models["smollm2"][0])
    allow_local_model_key(path)
    return sw.load_model(path, remote=True, host=ndif_stack.url, api_key=API_KEY, timeout=60)


@pytest.fixture(scope="session")
def tiny_models(ndif_stack):
    """(local, remote) sinkwidgets models of the tiny random Llama."""
    import sinkwidgets as sw

    path = str(ndif_stack.models["tiny"][0])
    allow_local_model_key(path)
    return sw.load_model(path), sw.load_model(path, remote=True, host=ndif_stack.url, api_key=API_KEY, timeout=60)


def moto_presigned_gets(stack: Stack) -> int:
    """How many presigned S3 GETs (``X-Amz-Signature`` in the query) moto has answered so far."""
    text = stack.log("moto").read_text(errors="replace")
    return sum(1 for line in text.splitlines() if '"GET /' in line and "X-Amz-Signature" in line)
