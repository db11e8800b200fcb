"""The tutorial series as a product: one repository URL, badges, stripped outputs, the teacher's checklist per
notebook, the shipped traces; and (slow) a clean virtual environment built from binder/ that runs notebook 01."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUT = ROOT / "tutorials"
NOTEBOOKS = sorted(TUT.glob("[0-9][0-9]_*.ipynb"))


def repo_url() -> str:
    """The one place that holds the repository URL: pyproject's [project.urls] (Repository, else Homepage)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.urls]", 1)[1].split("\n[", 1)[0]
    urls = dict(re.findall(r'^(\w+)\s*=\s*"([^"]+)"', section, flags=re.M))
    url = urls.get("Repository") or urls["Homepage"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
    return url


def _cells(nb: Path) -> list[dict]:
    return json.loads(nb.read_text(encoding="utf-8"))["cells"]


def _text(nb: Path) -> str:
    return "\n".join("".join(c["source"]) for c in _cells(nb))


@pytest.mark.unit
def test_series_exists():
    assert [p.name[:2] for p in NOTEBOOKS][:4] == ["01", "02", "03", "04"]


@pytest.mark.unit
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_badge_and_setup_cell(nb):
    slug = repo_url().removeprefix("https://github.com/")
    text = _text(nb)
    badge = f"https://colab.research.google.com/github/{slug}/blob/main/tutorials/{nb.name}"
    assert badge in "".join(_cells(nb)[0]["source"]), f"{nb.name}: first cell lacks the Colab badge {badge}"
    setup = "".join(_cells(nb)[1]["source"])
    assert '"google.colab" in sys.modules' in setup and f"git+{repo_url()}" in setup, setup
    assert "OPENBLAS_NUM_THREADS" in setup
    assert "<org>" not in text


@pytest.mark.unit
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_checklist(nb):
    cells = _cells(nb)
    text = _text(nb)
    assert "Learning goal" in "".join(cells[0]["source"])
    assert "## Reference check" in text and "assert" in text and "reference check passed" in text
    n_ex = len(re.findall(r"^\*\*\d\. ", text, flags=re.M))
    assert 2 <= n_ex <= 4, f"{nb.name}: {n_ex} exercises"
    assert text.count("<details>") >= n_ex
    assert "mechanism-spec" not in text and "recipes §" not in text  # internal documents users do not have
    for link in re.findall(r"\]\((\d\d_[\w.]+\.ipynb)\)", text):
        assert (TUT / link).exists(), f"{nb.name} links to missing {link}"


@pytest.mark.unit
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_stripped(nb):
    for c in _cells(nb):
        if c["cell_type"] == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, f"{nb.name} has outputs in git"


@pytest.mark.unit
def test_readme_binder_badge_and_toc():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    slug = repo_url().removeprefix("https://github.com/")
    assert "<org>" not in readme
    binder = re.findall(r"https://mybinder\.org/v2/gh/([\w.-]+/[\w.-]+)/", readme)
    assert binder and all(b == slug for b in binder), binder
    for nb in NOTEBOOKS:
        assert f"tutorials/{nb.name}" in readme, f"README's table of contents lacks {nb.name}"
    teachers = (TUT / "README.md").read_text(encoding="utf-8")
    for nb in NOTEBOOKS:
        assert nb.name in teachers, f"tutorials/README.md lacks {nb.name}"


@pytest.mark.unit
def test_teachers_exercise_table_matches_the_notebooks():
    """tutorials/README.md's "What each exercise checks" has one row per exercise of each notebook, numbered as in the
    notebook and naming a skill (a pasted time/memory column, as in commit 4698609, fails here)."""
    teachers = (TUT / "README.md").read_text(encoding="utf-8")
    section = teachers.split("## What each exercise checks", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in section.splitlines()
            if re.match(r"^\| \d\d \|", ln)]
    for nb in NOTEBOOKS:
        mine = [r for r in rows if r[0] == nb.name[:2]]
        n_ex = len(re.findall(r"^\*\*\d\. ", _text(nb), flags=re.M))
        assert [r[1].split()[0] for r in mine] == [str(i) for i in range(1, n_ex + 1)], (nb.name, mine)
        for r in mine:
            assert len(r) == 3 and not re.search(r"\d\s*(s|GB)\b", r[1] + " " + r[2]), r


@pytest.mark.unit
def test_shipped_traces():
    import sinkwidgets as sw

    files = sorted((TUT / "traces").glob("*.npz"))
    assert len(files) >= 3
    assert sum(f.stat().st_size for f in files) < 2_000_000
    for f in files:
        tr = sw.SinkTrace.load(f)
        assert tr.n_layers > 0 and tr.n_tokens > 8


@pytest.mark.slow
def test_binder_environment_runs_01(tmp_path):
    """Stand-in for a repo2docker build: a fresh venv from binder/'s files, then notebook 01 in it.

    What it reproduces: binder/requirements.txt (the package from the checkout plus its tutorial extras),
    binder/postBuild's model fetch, and a clean kernel running 01 with nbclient. What it cannot: the Docker image,
    runtime.txt's Python version (it uses this interpreter) and apt.txt (needs root in a container). Compromise:
    the venv is created with ``--system-site-packages``, so every dependency that CI already installed is reused
    instead of downloaded again (a full download of torch and transformers takes minutes and gigabytes here); pip
    still resolves binder/requirements.txt (without its PyTorch ``--extra-index-url`` line, which this machine
    cannot reach) and downloads from PyPI only what is missing (the build backend, hatchling). The models come from the user cache
    when already fetched (postBuild's command is idempotent).
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    reqs = [ln.strip() for ln in (ROOT / "binder" / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith(("#", "--"))]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)], check=True, cwd=ROOT, env=env)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *reqs], check=True, cwd=ROOT, env=env)
    post = (ROOT / "binder" / "postBuild").read_text()
    fetch = next(ln for ln in post.splitlines() if ln.startswith("sinkwidgets models fetch"))
    subprocess.run([str(venv / "bin" / "sinkwidgets"), *fetch.split()[1:]], check=True, env=env)
    run = subprocess.run(
        [str(py), "-c", "import sys, nbformat; from nbclient import NotebookClient; "
         "nb = nbformat.read(sys.argv[1], 4); NotebookClient(nb, timeout=600, kernel_name='python3').execute(); "
         "print('RAN', sum(c.cell_type == 'code' for c in nb.cells))", str(TUT / "01_seeing_sinks.ipynb")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and "RAN" in run.stdout, run.stdout[-2000:] + run.stderr[-4000:]
    check = subprocess.run([str(py), "-c", "import sinkwidgets, sys; print(sinkwidgets.__file__)"],
                           capture_output=True, text=True, env=env)
    assert str(ROOT) in check.stdout, check.stdout
