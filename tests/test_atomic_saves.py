"""Saves are atomic: concurrent writers to one path never corrupt it, and a failed save leaves nothing behind."""

import threading

import numpy as np
import pytest
from _helpers import race

from sinkwidgets import SinkTrace
from sinkwidgets.widgets import save_html

pytestmark = pytest.mark.unit


def _trace(seed, T=64, L=4, H=4):
    rng = np.random.default_rng(seed)
    return SinkTrace(
        sink_scores=rng.random((L, H, T)),
        tokens=[f"t{i}" for i in range(T)],
        first_token_mass=rng.random((L, H)),
        maps=rng.random((L * H, T, T)).astype(np.float32),  # incompressible bytes: long writes that overlap
        map_index=[(ly, h) for ly in range(L) for h in range(H)],
        meta={"model": f"writer-{seed}"},
    )


def test_concurrent_trace_saves_leave_one_complete_file(tmp_path):
    traces = [_trace(i) for i in range(4)]
    target = tmp_path / "shared.npz"
    errors = race(lambda i: traces[i].save(target))
    assert [e for e in errors if not isinstance(e, threading.BrokenBarrierError)] == []
    back = SinkTrace.load(target)  # a complete file from exactly one writer, never a mix
    i = int(back.meta["model"].split("-")[1])
    assert np.array_equal(back.maps, traces[i].maps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.npz"]  # no temporary files left


def test_concurrent_save_html_leave_one_complete_page(tmp_path):
    traces = [_trace(i, T=32) for i in range(4)]
    target = tmp_path / "page.html"
    errors = race(lambda i: save_html(traces[i], target))
    assert [e for e in errors if not isinstance(e, threading.BrokenBarrierError)] == []
    text = target.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]


def test_failed_saves_leave_nothing_behind(tmp_path):
    tr = _trace(0, T=8)
    folder = tmp_path / "adir.npz"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="directory"):
        tr.save(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tr.save(tmp_path / "missing" / "x.npz")
    html_dir = tmp_path / "page.html"
    html_dir.mkdir()
    with pytest.raises(IsADirectoryError, match="directory"):
        save_html(tr, html_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.npz", "page.html"]
    assert list(folder.iterdir()) == [] and list(html_dir.iterdir()) == []


def test_a_write_that_raises_midway_leaves_the_old_file(tmp_path, monkeypatch):
    tr = _trace(0, T=8)
    target = tr.save(tmp_path / "t.npz")
    before = target.read_bytes()

    def boom(fh, **arrays):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _trace(1, T=8).save(target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npz"]


def test_saved_file_has_ordinary_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    p = _trace(0, T=8).save(tmp_path / "perm.npz")
    assert (p.stat().st_mode & 0o777) == (0o666 & ~mask)
