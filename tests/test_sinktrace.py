"""SinkTrace: construction checks, save/load round trip, clear errors for corrupt or foreign files."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from sinkwidgets import SinkTrace, SinkTraceFormatError

pytestmark = pytest.mark.unit  # no model, browser or notebook


def make(T=5, L=2, H=3, maps=True):
    rng = np.random.default_rng(0)
    kw = {}
    if maps:
        kw = dict(maps=rng.random((2, T, T)).astype(np.float16), map_index=[(0, 1), (1, 2)])
    return SinkTrace(
        sink_scores=rng.random((L, H, T)),
        tokens=[f"t{i}" for i in range(T)],
        first_token_mass=rng.random((L, H)),
        entropy=rng.random((L, H)),
        resid_norms=rng.random((L, T)),
        token_ids=np.arange(T),
        meta={"model": "unit", "add_bos": False, "text": "<img src=x onerror=alert(1)>"},
        **kw,
    )


def test_round_trip(tmp_path):
    tr = make()
    p = tr.save(tmp_path / "a.npz")
    back = SinkTrace.load(p)
    for name in ("sink_scores", "first_token_mass", "entropy", "resid_norms", "maps", "map_index", "token_ids"):
        assert np.array_equal(getattr(tr, name), getattr(back, name)), name
    assert back.tokens == tr.tokens and back.meta["text"] == tr.meta["text"]
    assert back.maps.dtype == np.float16
    assert np.allclose(back.get_map(1, 2), tr.maps[1].astype(np.float32))
    with pytest.raises(KeyError, match="keep_maps"):
        back.get_map(0, 0)
    assert not (tmp_path / "a.npz.tmp").exists()


def test_save_adds_suffix(tmp_path):
    p = make(maps=False).save(tmp_path / "trace")
    assert p.name == "trace.npz" and SinkTrace.load(p).n_tokens == 5


def test_shape_errors():
    with pytest.raises(ValueError, match="tokens"):
        SinkTrace(sink_scores=np.zeros((1, 1, 3)), tokens=["a"])
    with pytest.raises(ValueError, match=r"\[L, H, T\]"):
        SinkTrace(sink_scores=np.zeros((3, 3)), tokens=["a", "b", "c"])
    with pytest.raises(ValueError, match="first_token_mass"):
        SinkTrace(sink_scores=np.zeros((1, 2, 3)), tokens=list("abc"), first_token_mass=np.zeros((2, 2)))


def test_corrupt_and_foreign_files(tmp_path):
    good = make().save(tmp_path / "good.npz")
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SinkTraceFormatError, match="truncated|not a readable"):
        SinkTrace.load(tmp_path / "trunc.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(SinkTraceFormatError):
        SinkTrace.load(tmp_path / "text.npz")
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    with pytest.raises(SinkTraceFormatError, match="not a SinkTrace"):
        SinkTrace.load(tmp_path / "foreign.npz")
    # a newer format version
    header = {"format": "sinkwidgets.SinkTrace", "format_version": 999, "tokens": ["a"], "meta": {}}
    np.savez(tmp_path / "newer.npz", sink_scores=np.zeros((1, 1, 1)),
             __header__=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with pytest.raises(SinkTraceFormatError, match="upgrade"):
        SinkTrace.load(tmp_path / "newer.npz")
    # inconsistent arrays
    header["format_version"] = 1
    np.savez(tmp_path / "bad.npz", sink_scores=np.zeros((1, 1, 4)),
             __header__=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with pytest.raises(SinkTraceFormatError, match="inconsistent"):
        SinkTrace.load(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        SinkTrace.load(tmp_path / "missing.npz")
    assert zipfile.is_zipfile(good)


def test_load_and_analyse_without_torch_or_nnsight(tmp_path):
    p = make().save(tmp_path / "t.npz")
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'nnsight', 'transformers'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import sinkwidgets as sw
tr = sw.SinkTrace.load({str(p)!r})
print(sw.sink_ratio(tr, k=0, eps=0.3), len(sw.find_sinks(tr, eps=0.2)), sw.sinks_per_head(tr).mean_all)
assert 'torch' not in sys.modules and 'nnsight' not in sys.modules
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
