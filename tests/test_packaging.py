"""The package as a user gets it: ``python -m build`` makes an sdist and a wheel that carry the JS/CSS assets and
``py.typed``; ``twine check`` passes; the wheel installed into a fresh virtual environment imports from there (not
from this checkout), renders a saved SinkTrace to offline HTML, and its command line starts.

The venv gets the wheel with ``--no-deps`` and then sees the heavy dependencies (torch etc.) through the
site-packages of the interpreter running the tests (:func:`_share_site_packages`): whatever that interpreter is (a
venv, a conda env, the system Python), the wheel meets the same dependencies by construction. The test asserts that
``sinkwidgets`` itself is imported from the venv, not from the checkout.
"""

import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ["sinkwidgets/py.typed", "sinkwidgets/widgets/static/sinkwidgets.js", "sinkwidgets/widgets/static/sinkwidgets.css"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = next(out.glob("sinkwidgets-*.whl"))
    sdist = next(out.glob("sinkwidgets-*.tar.gz"))
    return wheel, sdist


def test_wheel_and_sdist_carry_the_assets(dists):
    wheel, sdist = dists
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(ASSETS) <= names, set(ASSETS) - names
    with tarfile.open(sdist) as tf:
        members = {m.split("/", 1)[1] for m in tf.getnames() if "/" in m}
    assert set(ASSETS) <= members, set(ASSETS) - members
    assert wheel.stat().st_size < 2_000_000  # no model weights or traces slipped in


def test_twine_check(dists):
    pytest.importorskip("twine")
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dists)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


USE = r"""
import os, sys, pathlib
import sinkwidgets as sw
from sinkwidgets import SinkTrace
from sinkwidgets.widgets import save_html, synthetic_trace
here = pathlib.Path(sw.__file__).resolve()
print("FILE", here)
assert (here.parent / "py.typed").is_file()
tr = synthetic_trace(T=24, n_layers=3, n_heads=2, keep_maps="all")
p = tr.save("t.npz")
back = SinkTrace.load(p)
page = save_html(back, "t.html").read_text(encoding="utf-8")
assert "mountStandalone" in page and "<script src=" not in page, "page not self-contained"
print("HTML", len(page))
"""


def _parent_site_dirs() -> list[str]:
    """The site directories of the interpreter running the tests: its site-packages (a venv's own, plus the base
    interpreter's when it was made with ``--system-site-packages``; a conda env's; the system Python's
    dist-packages) and the user site when that interpreter reads it."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    out = []
    for d in dirs:
        if os.path.isdir(d) and d not in out and Path(d).resolve() != ROOT:
            out.append(d)
    return out


def _share_site_packages(py: Path) -> tuple[Path, list[str]]:
    """Make the venv of ``py`` see the running interpreter's site directories, after its own.

    One ``.pth`` file in the venv's site-packages calls ``site.addsitedir`` on each directory, so their own ``.pth``
    files (namespace packages, editable installs of dependencies) work too. The venv's site-packages stays first on
    ``sys.path``, so the wheel installed there wins over any other copy of sinkwidgets (an editable install of this
    checkout included). ``--system-site-packages`` is not enough: from a venv it exposes the *base* interpreter, not
    the venv where the user installed the dependencies.
    """
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True, timeout=120).stdout.strip())
    dirs = _parent_site_dirs()
    lines = [f"import site; site.addsitedir({d!r})" for d in dirs]
    (purelib / "_sinkwidgets_test_parent_site.pth").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return purelib, dirs


def test_wheel_in_a_fresh_venv(dists, tmp_path):
    wheel, _ = dists
    venv = tmp_path / "venv"
    # --without-pip: a Debian system Python without python3-venv has no ensurepip, and the venv needs no pip of its own
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    # the wheel goes in while the venv sees only itself, so pip cannot mistake another sinkwidgets for it; the running
    # interpreter's pip installs into the venv (pip >= 22.3: --python), else the venv gets its own pip first
    install = ["install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q", str(wheel)]
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), *install], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0 and "--python" in proc.stderr:
        subprocess.run([str(py), "-m", "ensurepip", "-q"], check=True, timeout=300)
        proc = subprocess.run([str(py), "-m", "pip", *install], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    purelib, dirs = _share_site_packages(py)
    assert dirs, "the running interpreter reports no site-packages to share"
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    out = subprocess.run([str(py), "-c", USE], cwd=work, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, f"site dirs shared: {dirs}\n" + out.stderr[-3000:]
    imported = Path(out.stdout.split("FILE ", 1)[1].splitlines()[0])
    assert venv.resolve() in imported.parents, f"imported {imported}, not the wheel in {venv}"
    assert imported.parent.parent == purelib.resolve(), (imported, purelib)
    assert ROOT not in imported.parents
    assert (work / "t.html").is_file() and (work / "t.npz").is_file()
    cli = venv / "bin" / "sinkwidgets"
    assert cli.is_file()
    for argv in (["--version"], ["scan", "--help"], ["models", "list"]):
        run = subprocess.run([str(cli), *argv], cwd=work, capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0 and "Traceback" not in run.stderr, (argv, run.stderr[-2000:])
    assert "tok0-max" in subprocess.run([str(cli), "scan", "--help"], capture_output=True, text=True, env=env,
                                        timeout=300).stdout
    shutil.rmtree(venv, ignore_errors=True)
