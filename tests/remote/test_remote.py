"""trace(remote=True) end to end against a loopback server running nnsight's own server code, and every
failure mode of the remote path (missing/wrong key, refused, unknown host, silent server, slow job, server
error, model not deployed, result too large). The API key must never appear in an error, a log or stdout."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from .conftest import API_KEY, free_port, server_config, server_stats

pytestmark = [pytest.mark.remote, pytest.mark.models]

TEXT = ("The old lighthouse keeper climbed the stairs every evening to light the lamp, watching the ships pass by "
        "in the dark while the storm grew stronger over the sea.")
GPL = "/usr/share/common-licenses/GPL-3"
FIELDS = ("sink_scores", "first_token_mass", "entropy", "resid_norms", "top_activations", "median_abs_activation",
          "maps", "head_outputs")


@pytest.fixture(autouse=True)
def no_key_in_output(caplog, capfd):
    """Every test: the key must not reach logs (any logger, DEBUG) or the terminal."""
    caplog.set_level(logging.DEBUG)
    yield
    out, err = capfd.readouterr()
    assert API_KEY not in caplog.text
    assert API_KEY not in out and API_KEY not in err


def assert_no_key(exc: BaseException) -> None:
    texts = [str(exc), repr(exc), str(getattr(exc, "fix", "")), str(getattr(exc, "server_message", ""))]
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        texts.append(str(cause))
    assert all(API_KEY not in t for t in texts)


def _compare(a, b, tol=1e-5):
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None), f
        if x is not None:
            assert x.shape == y.shape, f
            np.testing.assert_allclose(y.astype(np.float64), x.astype(np.float64), rtol=tol, atol=tol, err_msg=f)
    np.testing.assert_array_equal(a.top_act_tokens, b.top_act_tokens)
    np.testing.assert_array_equal(a.top_act_channels, b.top_act_channels)
    assert a.tokens == b.tokens


def test_remote_trace_equals_local(remote_smollm2, smollm2, reset_server):
    import sinkwidgets as sw

    texts = [TEXT, "The cat sat on the mat."]  # a padded batch of two
    kw = dict(add_bos=False, keep_maps=[(3, 1), (20, 4)], keep_head_outputs=[2], map_dtype="float32")
    remote = sw.trace(remote_smollm2, texts, **kw)
    eager = sw.trace(smollm2, texts, **kw)
    chunked = sw.trace(smollm2, texts, method="chunked", **kw)
    for r, e, c in zip(remote, eager, chunked, strict=True):
        assert r.meta["remote"] and r.meta["method"] == "chunked" and r.meta["remote_host"] == reset_server
        assert r.meta["remote_result_bytes"] > 0
        _compare(e, r)  # remote (SDPA + chunked recompute on the server) vs local eager attention
        _compare(c, r)  # and vs the same block run locally
        assert API_KEY not in str(r.meta) and API_KEY not in r.to_bytes().decode("latin-1")


def test_downloaded_bytes_grow_as_LHT_not_T2(remote_smollm2):
    import sinkwidgets as sw

    text = " ".join(open(GPL).read().split()) if __import__("os").path.exists(GPL) else TEXT * 40
    info = remote_smollm2.sinkwidgets
    L, H = info.n_layers, info.n_heads
    sizes = {}
    for T in (32, 64, 128, 256):
        tr = sw.trace(remote_smollm2, text, max_tokens=T, add_bos=False)
        assert tr.sink_scores.shape == (L, H, T)
        sizes[T] = tr.meta["remote_result_bytes"]
    print("downloaded bytes by T:", sizes)
    # linear in T: each doubling adds about twice the previous increment (T² would add four times as much)
    inc = [sizes[64] - sizes[32], sizes[128] - sizes[64], sizes[256] - sizes[128]]
    for a, b in zip(inc, inc[1:], strict=False):
        assert 1.6 < b / a < 2.5, sizes
    for T, n in sizes.items():
        assert n < 2.5 * L * H * T * 4 + 64_000, (T, n)  # about one float32 per (layer, head, token)
    assert sizes[256] < L * H * 256 * 256 * 4 / 25  # vs the full maps it replaces


# ----------------------------------------------------------------------------- failure modes
def _load(smollm2_dir, host, **kw):
    import sinkwidgets as sw

    from .conftest import allow_local_model_key

    allow_local_model_key(smollm2_dir)
    kw.setdefault("api_key", API_KEY)
    kw.setdefault("timeout", 10)
    return sw.load_model(smollm2_dir, remote=True, host=host, **kw)


def test_missing_key_is_a_clear_error(smollm2_dir, ndif_host, monkeypatch):
    import nnsight

    import sinkwidgets as sw
    from sinkwidgets.remote import RemoteAuthError

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    model = _load(smollm2_dir, ndif_host, api_key=None)
    with pytest.raises(RemoteAuthError, match="no NDIF API key") as ei:
        sw.trace(model, TEXT)
    assert ndif_host in str(ei.value) and "NDIF_API_KEY" in str(ei.value)


def test_key_from_environment(smollm2_dir, ndif_host, monkeypatch, reset_server):
    import sinkwidgets as sw

    monkeypatch.setenv("NDIF_API_KEY", API_KEY)
    model = _load(smollm2_dir, ndif_host, api_key=None)
    assert sw.trace(model, "Hello there, friend.").meta["remote"]


def test_wrong_key_is_rejected(smollm2_dir, ndif_host, reset_server):
    import sinkwidgets as sw
    from sinkwidgets.remote import RemoteAuthError

    model = _load(smollm2_dir, ndif_host, api_key="wrong-" + API_KEY[::-1])
    with pytest.raises(RemoteAuthError, match="rejected the API key") as ei:
        sw.trace(model, TEXT)
    assert ndif_host in str(ei.value) and API_KEY[::-1] not in str(ei.value)


def test_connection_refused(smollm2_dir):
    import sinkwidgets as sw
    from sinkwidgets.remote import RemoteConnectionError

    host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    model = _load(smollm2_dir, host)
    t0 = time.monotonic()
    with pytest.raises(RemoteConnectionError, match="connection refused") as ei:
        sw.trace(model, TEXT)
    assert time.monotonic() - t0 < 10
    assert host in str(ei.value) and "Fix:" in str(ei.value)
    assert_no_key(ei.value)


def test_unknown_host(smollm2_dir):
    import sinkwidgets as sw
    from sinkwidgets.remote import RemoteConnectionError

    model = _load(smollm2_dir, "https://ndif.invalid")
    with pytest.raises(RemoteConnectionError, match="resolve the host name") as ei:
        sw.trace(model, TEXT)
    assert "https://ndif.invalid" in str(ei.value)
    assert_no_key(ei.value)


def test_bad_host_url(smollm2_dir):
    import sinkwidgets as sw
    from sinkwidgets.remote import RemoteConfigError

    model = _load(smollm2_dir, "ndif.example.org")
    with pytest.raises(RemoteConfigError, match="not an http"):
        sw.trace(model, TEXT)


def test_silent_server_times_out(smollm2_dir, silent_host):
    import sinkwidgets as sw
    from sinkwidgets.remote import RemoteTimeoutError

    model = _load(smollm2_dir, silent_host, timeout=2)
    t0 = time.monotonic()
    with pytest.raises(RemoteTimeoutError, match="did not answer within timeout=2") as ei:
        sw.trace(model, TEXT)
    assert time.monotonic() - t0 < 15
    assert silent_host in str(ei.value)
    assert_no_key(ei.value)


def test_default_timeout_is_bounded():
    from sinkwidgets.remote import DEFAULT_TIMEOUT, RemoteOptions

    assert 0 < DEFAULT_TIMEOUT <= 60 and RemoteOptions().timeout == DEFAULT_TIMEOUT
    assert RemoteOptions().job_timeout is not None
    assert API_KEY not in repr(RemoteOptions(api_key=API_KEY))


def test_job_that_never_finishes_times_out(smollm2_dir, ndif_host, reset_server):
    import sinkwidgets as sw
    from sinkwidgets.remote import RemoteTimeoutError

    server_config(ndif_host, delay=30)
    model = _load(smollm2_dir, ndif_host, job_timeout=3)
    t0 = time.monotonic()
    with pytest.raises(RemoteTimeoutError, match="job_timeout=3") as ei:
        sw.trace(model, TEXT)
    assert time.monotonic() - t0 < 15
    assert ndif_host in str(ei.value)


def test_server_side_error_message_is_surfaced(remote_smollm2, monkeypatch, reset_server):
    """Without shipping the helpers by value the server cannot import sinkwidgets (as on NDIF): the server's
    own error message must reach the user."""
    import sinkwidgets as sw
    import sinkwidgets.tracing.remote as swr
    from sinkwidgets.remote import RemoteServerError

    monkeypatch.setattr(swr, "BY_VALUE_MODULES", ())
    with pytest.raises(RemoteServerError, match="No module named 'sinkwidgets") as ei:
        sw.trace(remote_smollm2, TEXT)
    assert reset_server in str(ei.value)
    assert "ModuleNotFoundError" in ei.value.server_message
    assert_no_key(ei.value)


def test_model_not_deployed(remote_smollm2, reset_server):
    import sinkwidgets as sw
    from sinkwidgets.remote import ModelNotDeployedError

    server_config(reset_server, deployed=["some-other/model"])
    with pytest.raises(ModelNotDeployedError, match="does not serve this model") as ei:
        sw.trace(remote_smollm2, TEXT)
    assert reset_server in str(ei.value) and "nnsight.net/status" in str(ei.value)


def test_result_too_large_is_refused_before_sending(remote_smollm2, ndif_host):
    import sinkwidgets as sw
    from sinkwidgets.remote import RemoteOptions, RemoteResultTooLargeError

    before = server_stats(ndif_host)["requests"]
    with pytest.raises(RemoteResultTooLargeError, match="max_result_bytes") as ei:
        sw.trace(remote_smollm2, TEXT, keep_maps="all", remote=RemoteOptions(max_result_bytes=100_000))
    assert server_stats(ndif_host)["requests"] == before  # nothing was sent
    assert ndif_host in str(ei.value) and "keep_maps" in str(ei.value)


def test_result_too_large_on_the_server(remote_smollm2, reset_server):
    import sinkwidgets as sw
    from sinkwidgets.remote import RemoteResultTooLargeError

    server_config(reset_server, max_result_bytes=1000)
    with pytest.raises(RemoteResultTooLargeError, match="too large") as ei:
        sw.trace(remote_smollm2, TEXT)
    assert reset_server in str(ei.value)


def test_local_directory_needs_a_hub_id(tmp_path):
    import sinkwidgets as sw
    from sinkwidgets.remote import RemoteConfigError

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RemoteConfigError, match="hub id"):
        sw.load_model(str(tmp_path), remote=True, api_key=API_KEY)


def test_head_outputs_and_eager_method(remote_smollm2):
    import sinkwidgets as sw

    with pytest.raises(ValueError, match="method='chunked'"):
        sw.trace(remote_smollm2, TEXT, method="eager")


def test_remote_units_equal_local(remote_smollm2, smollm2, reset_server):
    """Value vectors after W_O, pooled residuals and α through the engine's units: remote == local chunked."""
    from sinkwidgets.tracing import reductions as R
    from sinkwidgets.tracing import run_units

    texts = [TEXT, "The cat sat on the mat."]
    units = [R.AttentionSummary(), R.HeadValues({2: [2], 5: None}), R.PooledResidual([0, 9, 29])]
    remote = run_units(remote_smollm2, texts, units, add_bos=False)
    local = run_units(smollm2, texts, units, add_bos=False, method="chunked")
    for r, c in zip(remote, local, strict=True):
        assert r.meta["remote"] and r.token_ids.tolist() == c.token_ids.tolist()
        for key in ("sink_scores", "head_values", "pooled_mean", "pooled_last"):
            x, y = c.arrays[key], r.arrays[key]
            assert x.shape == y.shape, key
            np.testing.assert_allclose(y, x, rtol=0, atol=1e-5 * max(1.0, float(np.abs(x).max())), err_msg=key)
        assert r.arrays["head_value_index"].tolist() == [[2, 2]] + [[5, h] for h in range(9)]


def test_remote_collect_equals_local(remote_smollm2, smollm2, reset_server):
    """sinkwidgets.tags.collect on NDIF: α, per-head outputs, values, maps and pooled residuals equal the local
    chunked collection (the same reductions, run on the server)."""
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
