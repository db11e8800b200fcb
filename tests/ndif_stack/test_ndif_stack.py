"""The remote suite against the real NDIF server software (ndif 0.1.2: Redis queue, Ray controller and model actors,
FastAPI/gunicorn API, S3 result store), self-hosted on 127.0.0.1 by the ``ndif_stack`` fixture (conftest.py).

The loopback server of tests/remote runs nnsight's server-side code in one process; these tests send the same
requests through NDIF's own queue, dispatcher, model actors and object store: traces, ``sw.tags.collect``, an
interventions (mask_sink, project_out,
ablate_massive, add_sink) and an explorer experiment equal the local ones; the blocking websocket and the non-blocking polling
paths; a result over the inline cap travels through a presigned S3 URL; the real server's failures (model not
deployed, a request over its size limit, a dropped connection) reach the user as the package's remote errors; and
a burst of concurrent requests all complete.

Run: ``bash .ci/ndif_stack_env.sh && python -m pytest -m ndif_stack tests/ndif_stack -p no:nbmake -o addopts=''``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import pytest
from _helpers import same_intervention

from .conftest import API_KEY, INLINE_CAP, REQUEST_CAP, allow_local_model_key, moto_presigned_gets

pytestmark = [pytest.mark.ndif_stack, pytest.mark.models]

TEXT = ("The old lighthouse keeper climbed the stairs every evening to light the lamp, watching the ships pass by "
        "in the dark while the storm grew stronger over the sea.")
TEXTS = ["The old lighthouse keeper climbed the stairs every evening. Ships passed by in the dark.",
         "Bread is made from flour, water, salt and yeast, and it rises in a warm place."]
FIELDS = ("sink_scores", "first_token_mass", "entropy", "resid_norms", "top_activations", "median_abs_activation",
          "maps", "head_outputs")


def compare(local, remote, tol=1e-5):
    for f in FIELDS:
        x, y = getattr(local, f), getattr(remote, f)
        assert (x is None) == (y is None), f
        if x is not None:
            assert x.shape == y.shape, f
            np.testing.assert_allclose(y.astype(np.float64), x.astype(np.float64), rtol=tol, atol=tol, err_msg=f)
    np.testing.assert_array_equal(local.top_act_tokens, remote.top_act_tokens)
    assert local.tokens == remote.tokens


def no_key(exc: BaseException) -> None:
    texts = [str(exc), repr(exc), str(getattr(exc, "fix", "")), str(getattr(exc, "server_message", ""))]
    assert all(API_KEY not in t for t in texts)


# ----------------------------------------------------------------------------- results equal local
def test_remote_trace_equals_local(ndif_stack, remote_smollm2, smollm2):
    """A padded batch of two through NDIF's queue and a Ray model actor: every summary and the kept maps equal the
    local eager and chunked traces."""
    import sinkwidgets as sw

    texts = [TEXT, "The cat sat on the mat."]
    kw = dict(add_bos=False, keep_maps=[(3, 1), (20, 4)], keep_head_outputs=[2], map_dtype="float32")
    remote = sw.trace(remote_smollm2, texts, **kw)
    eager = sw.trace(smollm2, texts, **kw)
    chunked = sw.trace(smollm2, texts, method="chunked", **kw)
    for r, e, c in zip(remote, eager, chunked, strict=True):
        assert r.meta["remote"] and r.meta["remote_host"] == ndif_stack.url and r.meta["remote_result_bytes"] > 0
        assert r.maps.shape[0] == 2
        compare(e, r)
        compare(c, r)


def test_tiny_model_remote_equals_local(tiny_models):
    """The second deployed model (a random 2-layer Llama): α and maps equal local, with `keep_maps="all"`."""
    import sinkwidgets as sw

    local, remote = tiny_models
    kw = dict(add_bos=False, keep_maps="all", map_dtype="float32")
    r = sw.trace(remote, TEXTS[1], **kw)
    compare(sw.trace(local, TEXTS[1], method="chunked", **kw), r)
    compare(sw.trace(local, TEXTS[1], method="eager", **kw), r)
    assert r.sink_scores.shape[:2] == (2, 4) and r.maps.shape[0] == 2 * 4


def test_tags_collect_equals_local(remote_smollm2, smollm2):
    from sinkwidgets import tags

    texts = [TEXT, "The cat sat on the mat. It was warm."]
    kw = dict(heads=[(1, 1), (2, 2)], layers=[0, 9], batch_size=2, progress=False)
    r = tags.collect(remote_smollm2, texts, **kw)
    c = tags.collect(smollm2, texts, method="chunked", **kw)
    assert r.meta["remote"] and r.token_ids.tolist() == c.token_ids.tolist()
    for key in ("sink_scores", "first_token_mass", "head_outputs", "head_values", "pooled_mean", "pooled_last"):
        x, y = getattr(c, key), getattr(r, key)
        assert x.shape == y.shape, key
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-5 * max(1.0, float(np.abs(x).max())), err_msg=key)
    np.testing.assert_allclose(r.maps.astype(np.float32), c.maps.astype(np.float32), atol=1e-3)


def test_mask_sink_equals_local(remote_smollm2, smollm2):
    import sinkwidgets as sw

    r = sw.mask_sink(remote_smollm2, TEXTS, ["12-29", [18]], attention_layers=[18])
    loc = sw.mask_sink(smollm2, TEXTS, ["12-29", [18]], attention_layers=[18])
    assert r.meta["remote"] and not loc.meta["remote"] and r.conditions == loc.conditions
    for c in r.conditions:
        for x, y in zip(r.nll[c], loc.nll[c], strict=True):
            np.testing.assert_allclose(x, y, atol=1e-4, err_msg=c)
    for k in ("sink_delta", "tv", "sink_mass"):
        np.testing.assert_allclose(r.attention[k], loc.attention[k], atol=1e-4, err_msg=k)
    assert r.delta["layers 12-29"] > 0.3 and abs(r.delta["layers 12-29"] - loc.delta["layers 12-29"]) < 1e-4


def test_other_interventions_equal_local(remote_smollm2, smollm2):
    """project_out, ablate_massive (zero and mean) and add_sink through NDIF's queue and a Ray model actor: the
    per-token NLL and attention statistics equal local to 1e-4."""
    from sinkwidgets.interventions import ablate_massive, add_sink, find_massive, project_out

    def same(a, b):
        assert a.meta["remote"] and not b.meta["remote"]
        same_intervention(a, b)

    basis = np.random.default_rng(0).normal(size=(576, 2))
    same(project_out(remote_smollm2, TEXTS, 11, basis, attention_layers=[12, 20]),
         project_out(smollm2, TEXTS, 11, basis, attention_layers=[12, 20]))
    spec = find_massive(smollm2, TEXTS)
    r = ablate_massive(remote_smollm2, TEXTS, spec=spec, attention_layers=[12, 18])
    same(r, ablate_massive(smollm2, TEXTS, spec=spec, attention_layers=[12, 18]))
    assert r.delta["zero"] > 1.0  # zeroing the massive activation hurts, remotely as locally
    same(add_sink(remote_smollm2, TEXTS, "\n"), add_sink(smollm2, TEXTS, "\n"))


def test_explorer_experiment_equals_local(remote_smollm2, smollm2):
    """`SinkExplorer(trace, model=remote_model).experiment("mask", ...)` runs its edit and control on NDIF."""
    import sinkwidgets as sw

    tr = sw.trace(smollm2, TEXTS[0], method="chunked")
    r = sw.SinkExplorer(tr, model=remote_smollm2).experiment("mask", token=0, layers="all")
    loc = sw.SinkExplorer(tr, model=smollm2).experiment("mask", token=0, layers="all")
    assert r.result.meta["remote"] and r.trace.meta["remote"] and not loc.result.meta["remote"]
    np.testing.assert_allclose(r.dnll, loc.dnll, atol=1e-4)
    assert abs(r.mean_dnll - loc.mean_dnll) < 1e-4 and abs(r.control_dnll - loc.control_dnll) < 1e-4
    assert r.mean_dnll > 0.3
    np.testing.assert_allclose(r.trace.sink_scores, loc.trace.sink_scores, atol=1e-4)


# ----------------------------------------------------------------------------- transport paths
@contextlib.contextmanager
def _plain_nnsight(model):
    """nnsight's own RemoteBackend pickles the model object's attributes: take sinkwidgets' ModelInfo off it (NDIF
    cannot import sinkwidgets), and give nnsight the key."""
    import nnsight

    info = model.__dict__.pop("sinkwidgets", None)
    old = nnsight.CONFIG.API.APIKEY
    nnsight.CONFIG.API.APIKEY = API_KEY
    try:
        yield model
    finally:
        nnsight.CONFIG.API.APIKEY = old
        if info is not None:
            model.__dict__["sinkwidgets"] = info


def test_non_blocking_polling_path(ndif_stack, remote_smollm2, smollm2):
    """`blocking=False`: POST /request without a session, then poll GET /response/{id}; ndif keeps statuses and
    the result in the object store (S3), and the logits equal a local forward pass. (sinkwidgets' own traces use
    the blocking path; this checks the server's polling path with plain nnsight.)"""
    before = moto_presigned_gets(ndif_stack)
    with _plain_nnsight(remote_smollm2) as m:
        with m.trace(TEXT, remote=ndif_stack.url, blocking=False) as tracer:
            logits = m.lm_head.output.save()  # noqa: F841 - filled in when the job completes
        backend = tracer.backend
        assert backend.job_id
        result, polls, deadline = None, 0, time.monotonic() + 120
        while result is None and time.monotonic() < deadline:
            time.sleep(0.2)
            result = backend()
            polls += 1
    assert result is not None, f"no result after {polls} polls (last status {backend.status})"
    with smollm2.trace(TEXT):
        local = smollm2.lm_head.output.save()
    remote = result["logits"]
    assert remote.shape == local.shape
    np.testing.assert_allclose(remote.float().numpy(), local.float().numpy(), atol=2e-4, rtol=1e-4)
    assert moto_presigned_gets(ndif_stack) > before  # downloaded through a presigned URL


def test_large_result_goes_through_s3(ndif_stack, remote_smollm2, smollm2):
    """Kept maps over the inline cap (redis pubsub limit) are uploaded to S3 and downloaded by presigned URL; a
    small result right after comes back inline (no new S3 GET)."""
    import sinkwidgets as sw

    maps = [(layer, h) for layer in range(0, 30, 2) for h in range(9)]  # 135 maps, float32
    before = moto_presigned_gets(ndif_stack)
    r = sw.trace(remote_smollm2, TEXT, add_bos=False, keep_maps=maps, map_dtype="float32")
    assert r.meta["remote_result_bytes"] > INLINE_CAP
    assert moto_presigned_gets(ndif_stack) == before + 1
    loc = sw.trace(smollm2, TEXT, add_bos=False, keep_maps=maps, map_dtype="float32", method="chunked")
    compare(loc, r)
    small = sw.trace(remote_smollm2, "The cat sat on the mat.", add_bos=False)
    assert small.meta["remote_result_bytes"] < INLINE_CAP
    assert moto_presigned_gets(ndif_stack) == before + 1


# ----------------------------------------------------------------------------- failures
def test_model_not_deployed(ndif_stack, tiny_models, tmp_path):
    """A model the server does not serve (a saved copy of the tiny model under another path): NDIF's own answer
    arrives as ModelNotDeployedError naming the host."""
    import shutil

    import sinkwidgets as sw
    from sinkwidgets.remote import ModelNotDeployedError

    src = ndif_stack.models["tiny"][0]
    other = tmp_path / "not-deployed"
    shutil.copytree(src, other)
    allow_local_model_key(str(other))
    model = sw.load_model(str(other), remote=True, host=ndif_stack.url, api_key=API_KEY, timeout=30,
                          job_timeout=120)
    with pytest.raises(ModelNotDeployedError, match="does not serve this model") as ei:
        sw.trace(model, TEXT)
    assert ndif_stack.url in str(ei.value) and "Fix:" in str(ei.value)
    no_key(ei.value)


def test_request_over_the_server_size_limit(ndif_stack, tiny_models):
    """A request over the API's body limit (about 1 MiB: REQUEST_CAP) is refused before it is queued; the user gets
    RemoteResultTooLargeError naming the request's size and the fix; the server serves the next request."""
    import torch

    import sinkwidgets as sw
    from sinkwidgets.remote import RemoteResultTooLargeError
    from sinkwidgets.tracing.edits import ProjectOut

    local, remote = tiny_models
    text = "The cat sat on the mat."
    T = len(sw.trace(local, text).tokens)
    rank = int(1.3 * REQUEST_CAP) // (64 * 4)  # U [64, rank] float32, random (zstd cannot shrink it): ~1.3 MiB
    big = ProjectOut(0, torch.randn(64, rank), torch.ones(1, T))
    with pytest.raises(RemoteResultTooLargeError, match="request .* is too large for the server") as ei:
        sw.trace(remote, text, edits=[big])
    msg = str(ei.value)
    assert ndif_stack.url in msg and "MiB" in msg and "edits" in msg, msg
    no_key(ei.value)
    small = ProjectOut(0, torch.linalg.qr(torch.randn(64, 4))[0], torch.ones(1, T))  # the same edit, small: runs
    r = sw.trace(remote, text, edits=[small])
    np.testing.assert_allclose(r.sink_scores, sw.trace(local, text, edits=[small], method="chunked").sink_scores,
                               atol=1e-5)


class _DroppingProxy:
    """A TCP proxy to the API that cuts every open websocket once a job has been submitted (``POST /request``
    passed through): the network dropping the connection while the job runs."""

    def __init__(self, port: int):
        self.target = port
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(32)
        self.url = f"http://127.0.0.1:{self.srv.getsockname()[1]}"
        self.submitted = threading.Event()
        self.posts = 0
        self.sockets: list[socket.socket] = []
        self.websockets: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.srv.settimeout(0.2)
        while not self.stop.is_set():
            try:
                c, _ = self.srv.accept()
            except OSError:
                continue
            u = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [c, u]
            threading.Thread(target=self._pipe, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c, False), daemon=True).start()

    def _pipe(self, src, dst, upstream):
        first = True
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream and first:
                    if data.startswith(b"GET /subscribe"):
                        self.websockets += [src, dst]
                first = False
                dst.sendall(data)
                if upstream and data.startswith(b"POST /request"):
                    self.posts += 1
                    threading.Timer(0.05, self._drop).start()
        except OSError:
            pass

    def _drop(self):
        self.submitted.set()
        for s in self.websockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self):
        self.stop.set()
        for s in self.sockets + [self.srv]:
            with contextlib.suppress(OSError):
                s.close()


def test_dropped_connection(ndif_stack, smollm2_dir):
    """The websocket drops after the job is submitted: RemoteConnectionError (not a hang, not a raw websocket
    error), naming the host; the job is not resubmitted."""
    import sinkwidgets as sw
    from sinkwidgets.remote import RemoteConnectionError

    proxy = _DroppingProxy(ndif_stack.ports["api"])
    try:
        model = sw.load_model(smollm2_dir, remote=True, host=proxy.url, api_key=API_KEY, timeout=20)
        t0 = time.monotonic()
        with pytest.raises(RemoteConnectionError, match="closed the connection") as ei:
            sw.trace(model, TEXT * 3, keep_maps="all")
        assert proxy.submitted.is_set() and proxy.posts == 1 and time.monotonic() - t0 < 30
        assert proxy.url in str(ei.value)
        no_key(ei.value)
    finally:
        proxy.close()


# ----------------------------------------------------------------------------- load
def test_burst_of_concurrent_requests(ndif_stack, remote_smollm2, smollm2):
    """Eight traces at once (threads): all complete, none lost or swapped (each equals its own local trace)."""
    import sinkwidgets as sw

    texts = [f"Request number {i}: the {w} sat on the mat and looked at the rain." for i, w in
             enumerate(["cat", "dog", "fox", "owl", "bee", "ant", "elk", "yak"])]
    out: dict[int, object] = {}
    errors: list[BaseException] = []

    def run(i):
        try:
            out[i] = sw.trace(remote_smollm2, texts[i], add_bos=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    took = time.monotonic() - t0
    assert not errors, errors
    assert sorted(out) == list(range(8)), f"lost: {sorted(set(range(8)) - set(out))}"
    for i, tr in out.items():
        assert tr.meta["text"] == texts[i]
        loc = sw.trace(smollm2, texts[i], add_bos=False, method="chunked")
        np.testing.assert_allclose(tr.sink_scores, loc.sink_scores, atol=1e-5, err_msg=str(i))
    print(f"8 concurrent remote traces in {took:.1f} s")
