"""The README tells the truth: its 60-second tour runs, and every figure its comments state is what the code gives;
no placeholder is left in it, and its Binder link points at the repository named in pyproject.toml."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _tour():
    return re.search(r"## The 60-second tour\s+```python\n(.*?)```", README, re.S).group(1)


def _run_tour(tmp_path, monkeypatch):
    """Execute the tour statement by statement; return {source line: (value, comment)} for the expression lines."""
    monkeypatch.chdir(tmp_path)
    src = _tour()
    lines = src.splitlines()
    ns: dict = {}
    results = {}
    for node in ast.parse(src).body:
        code = lines[node.lineno - 1]
        comment = code.split("#", 1)[1].strip() if "#" in code else ""
        key = code.split("#", 1)[0].strip()
        if isinstance(node, ast.Expr):
            results[key] = (eval(compile(ast.Expression(node.value), "<README>", "eval"), ns), comment)
        else:
            exec(compile(ast.Module([node], []), "<README>", "exec"), ns)
    return results


@pytest.mark.models
def test_tour_figures_are_true(tmp_path, monkeypatch):
    res = _run_tour(tmp_path, monkeypatch)
    value, comment = res["tr"]
    assert repr(value) == comment
    value, comment = res["tr.sink_scores.shape"]
    assert comment.startswith(str(value) + ":")

    ftm, comment = res["tr.first_token_mass.mean(1)"]
    m = re.search(r"([\d.]+) and ([\d.]+) in layers 0-1, ([\d.]+)-([\d.]+) from layer (\d+)", comment)
    assert m, comment
    l0, l1, lo, hi, start = float(m[1]), float(m[2]), float(m[3]), float(m[4]), int(m[5])
    assert round(float(ftm[0]), 2) == l0 and round(float(ftm[1]), 2) == l1
    assert round(float(ftm[start:].min()), 2) == lo and round(float(ftm[start:].max()), 2) == hi

    ratio, comment = res["sw.sink_ratio(tr, k=0, eps=0.3)"]
    assert f"{ratio:.2f}" == comment.split(":")[0]

    sinks, comment = res["sw.find_sinks(tr, eps=0.2, exclude_first=True)"]
    assert len(sinks) == int(comment.split()[0])
    pos = int(re.search(r"'(.+?)' at (\d+)", comment)[2])
    tok = re.search(r"'(.+?)' at (\d+)", comment)[1]
    assert sinks[0].k == pos and sinks[0].token == tok

    massive, comment = res["sw.massive_activations(tr)"]
    assert len(massive) == int(comment.split()[0])
    channel = int(re.search(r"channel (\d+)", comment)[1])
    approx = float(re.search(r"~([\d,]+)", comment)[1].replace(",", ""))
    assert {a.token for a in massive} == {0} and {a.channel for a in massive} == {channel}
    assert abs(np.median([a.value for a in massive]) - approx) / approx < 0.02
    assert (tmp_path / "lighthouse.npz").is_file()


@pytest.mark.unit
def test_tour_states_its_figures():
    tour = _tour()
    assert "T=15" in tour and "(30, 9, 15)" in tour  # the prompt has 15 tokens, not 20


@pytest.mark.unit
def test_no_placeholders_and_binder_matches_pyproject():
    assert "<org>" not in README and "--file essay.txt" not in README
    urls = (ROOT / "pyproject.toml").read_text().split("[project.urls]", 1)[1].split("\n[", 1)[0]
    repo = re.search(r'Homepage = "https://github\.com/([^/"]+/[^/"]+?)/?"', urls)[1]
    binder = re.findall(r"https://mybinder\.org/v2/gh/([^/]+/[^/]+)/", README)
    assert binder and set(binder) == {repo}


@pytest.mark.unit
def test_readme_sizes_match_the_registry():
    from sinkwidgets.models.registry import REGISTRY

    for name, spec in REGISTRY.items():
        row = next(line for line in README.splitlines() if line.startswith(f"| `{name}`"))
        assert f"{spec.approx_download_mb} MB / " in row, row


@pytest.mark.models
def test_readme_sizes_on_disk_are_measured():
    from sinkwidgets.models.fetch import list_models

    for row in list_models():
        if not row["cached"]:
            continue
        line = next(line for line in README.splitlines() if line.startswith(f"| `{row['name']}`"))
        on_disk = float(re.search(r"MB / ([\d,]+) MB", line)[1].replace(",", ""))
        assert abs(on_disk - row["disk_mb"]) <= 0.02 * row["disk_mb"] + 1, (row["name"], on_disk, row["disk_mb"])
