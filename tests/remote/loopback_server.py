"""A loopback NDIF server for tests: nnsight 0.8.1's remote wire protocol, executed by nnsight's own server code.

Test code only (never part of the package). It speaks what nnsight's ``RemoteBackend`` expects from NDIF:

- ``WS  /subscribe``: first frame ``{"session_id": ...}``; then JSON status frames; ``COMPLETED`` as a binary
  frame (``ResponseModel.pickle()``) whose ``data`` is the (zstd-compressed) result blob;
- ``POST /request``: multipart, form field ``data`` = ``RequestModel`` JSON, file ``blob`` = the payload;
  the ``ndif-api-key`` header must match ``--api-key`` (else HTTP 401, as NDIF rejects unknown keys);
- ``GET /ping``.

Requests run the way NDIF runs them: ``RequestModel.deserialize`` + ``tracer.execute`` against a model rebuilt
from the request's ``model_key`` (``Remotable.from_model_key``), and the block's saved frame locals are sent
back. ``sinkwidgets`` is made unimportable here, as on NDIF, so a block that needs it unless shipped by value
fails here too. ``POST /_test/config`` changes behaviour at run time for failure-mode tests: ``deployed``
(model-key substrings that are "deployed"; others get NDIF's not-deployed message), ``delay`` (seconds before
a job runs), ``max_result_bytes`` (larger results fail as too large). ``GET /_test/stats`` reports the last
result's size.

Run: ``LOOPBACK_API_KEY=KEY python loopback_server.py --port 8765`` (binds 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.abc
import io
import json
import linecache
import os
import sys
import threading
import traceback
import uuid

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _HideSinkwidgets(importlib.abc.MetaPathFinder):
    """NDIF does not have sinkwidgets installed: neither does this server."""

    def find_spec(self, name, path=None, target=None):
        if name == "sinkwidgets" or name.startswith("sinkwidgets."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _HideSinkwidgets())

import torch  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from nnsight.modeling.mixins.remotable import Remotable  # noqa: E402
from nnsight.schema.request import RequestModel  # noqa: E402
from nnsight.schema.response import ResponseModel, Status  # noqa: E402
from nnsight.tracing.globals import BLOCKS, SOURCES  # noqa: E402
from nnsight.tracing.tracer import _saves, dec, inc  # noqa: E402

NOT_DEPLOYED = ("Model is not dedicated and hotswapping is not supported for this API key. "
                "See https://nnsight.net/status/ for a list of scheduled models.")

app = FastAPI()
API_KEY: str | None = None
CONFIG: dict = {"deployed": None, "delay": 0.0, "max_result_bytes": None}
STATS: dict = {"requests": 0, "last_result_bytes": None, "last_payload_bytes": None}
MODELS: dict = {}
SESSIONS: dict[str, asyncio.Queue] = {}
LOCK = threading.Lock()  # one job at a time, like one model replica


def get_model(key: str):
    if key not in MODELS:
        model = Remotable.from_model_key(key, dispatch=True)
        model._module.requires_grad_(False)
        MODELS[key] = model
    return MODELS[key]


def run_block(req: RequestModel, blob: bytes) -> bytes:
    """Deserialize and execute the traced block with nnsight's server path; return the result blob."""
    with LOCK:
        model = get_model(req.model_key)
        model._remoteable_set_env(req.env)
        snapshot = (dict(linecache.cache), dict(SOURCES), dict(BLOCKS))
        try:
            tracer = RequestModel.deserialize(blob, model._remoteable_persistent_objects(), compress=req.compress)
            inc()
            try:
                tracer.execute(tracer.info.code)
                ids = _saves()
                saved = {k: v for k, v in tracer.info.frame.f_locals.items() if id(v) in ids}
            finally:
                dec()
        finally:
            for live, old in zip((linecache.cache, SOURCES, BLOCKS), snapshot, strict=True):
                live.clear()
                live.update(old)
            model.interleaver.cancel()
    buf = io.BytesIO()
    torch.save(saved, buf)
    data = buf.getvalue()
    if req.compress:
        import zstandard

        data = zstandard.ZstdCompressor(level=3).compress(data)
    return data


async def emit(req: RequestModel, rid: str, status: Status, description: str = "", data=None) -> None:
    queue = SESSIONS.get(req.session_id)
    if queue is None:
        return
    resp = ResponseModel(id=rid, status=status, description=description)
    final = status in (Status.COMPLETED, Status.ERROR)
    if data is not None:
        resp.data = data
        await queue.put((resp.pickle(), final))
    else:
        await queue.put((resp.model_dump_json(), final))


async def process(req: RequestModel, rid: str, blob: bytes) -> None:
    deployed = CONFIG["deployed"]
    if deployed is not None and not any(d in req.model_key for d in deployed):
        await emit(req, rid, Status.ERROR, NOT_DEPLOYED)
        return
    await emit(req, rid, Status.QUEUED, "Moved to position 1 in Queue.")
    if CONFIG["delay"]:
        await asyncio.sleep(CONFIG["delay"])
        if req.session_id not in SESSIONS:  # the client gave up: drop the job
            return
    await emit(req, rid, Status.RUNNING, "Your job has started running.")
    try:
        data = await asyncio.to_thread(run_block, req, blob)
    except Exception:  # noqa: BLE001 - the traceback is the server's message, as on NDIF
        await emit(req, rid, Status.ERROR, traceback.format_exc())
        return
    STATS["last_result_bytes"] = len(data)
    limit = CONFIG["max_result_bytes"]
    if limit is not None and len(data) > limit:
        await emit(req, rid, Status.ERROR, f"Result too large: {len(data)} bytes exceeds the limit of {limit} bytes.")
        return
    await emit(req, rid, Status.COMPLETED, "Your job has been completed.", data=data)


@app.post("/request")
async def create_request(request: Request, data: str = Form(...), blob: UploadFile = File(...)):  # noqa: B008
    if API_KEY is not None and request.headers.get("ndif-api-key") != API_KEY:
        return JSONResponse({"detail": "Missing or invalid API key."}, status_code=401)
    req = RequestModel.model_validate_json(data)
    rid = uuid.uuid4().hex
    payload = await blob.read()
    STATS["requests"] += 1
    STATS["last_payload_bytes"] = len(payload)
    first = ResponseModel(id=rid, status=Status.RECEIVED, description="Your job has been received.")
    asyncio.create_task(process(req, rid, payload))
    return JSONResponse(json.loads(first.model_dump_json()))


@app.websocket("/subscribe")
async def subscribe(ws: WebSocket):
    await ws.accept()
    sid = uuid.uuid4().hex
    queue = SESSIONS[sid] = asyncio.Queue()
    await ws.send_json({"session_id": sid})

    async def forward():
        while True:
            frame, final = await queue.get()
            await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_text(frame))
            if final:
                return

    async def watch():  # the client never sends; receive() returns on disconnect
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass

    tasks = [asyncio.create_task(forward()), asyncio.create_task(watch())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        SESSIONS.pop(sid, None)


@app.post("/_test/config")
async def set_config(request: Request):
    CONFIG.update(await request.json())
    return CONFIG


@app.get("/_test/stats")
async def stats():
    return STATS


@app.get("/ping")
async def ping():
    return "pong"


def main() -> None:
    global API_KEY
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--api-key", default=os.environ.get("LOOPBACK_API_KEY"),
                    help="the key clients must send (default: $LOOPBACK_API_KEY; none: no key required)")
    args = ap.parse_args()
    API_KEY = args.api_key
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
