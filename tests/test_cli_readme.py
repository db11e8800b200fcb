"""The command line and the README's Python tour, run as a user would."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.models


def run_cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "sinkwidgets.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_scan_table_and_json():
    text = "The old lighthouse keeper climbed the stairs. Ships passed by in the dark, and he watched them go."
    out = run_cli("scan", text, "--model", "smollm2-135m")  # its speed is a benchmark matter, not a test's
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("model smollm2-135m") and "add_bos=False" in lines[0]
    rows = [l for l in lines if re.match(r"^\s+\d+\s+\d\.\d\d", l)]
    assert len(rows) == 30
    js = run_cli("scan", text, "--json")
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["model"] == "smollm2-135m" and len(data["layers"]) == 30
    assert data["layers"][0]["first_token_mass"] < 0.3 and data["layers"][20]["first_token_mass"] > 0.4
    assert any(t["k"] == 0 for t in data["layers"][20]["top_sinks"])


def test_scan_errors_are_one_line():
    out = run_cli("scan", "hi", "--model", "smolm2")
    assert out.returncode == 1 and "Did you mean" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("scan", "  ")
    assert out.returncode == 2 and "empty" in out.stderr  # a usage error, found before loading


def test_models_list():
    out = run_cli("models", "list", "--json")
    names = {r["name"]: r for r in json.loads(out.stdout)}
    assert set(names) >= {"smollm2-135m", "gemma3-270m", "minilm-l6"}
    assert names["smollm2-135m"]["cached"] is True


def test_readme_tour_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## The 60-second tour\s+```python\n(.*?)```", readme, re.S).group(1)
    code = "\n".join(line for line in block.splitlines())
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "lighthouse.npz").exists()


def test_readme_starts_with_two_commands():
    first = (ROOT / "README.md").read_text().split("```")[1].strip().splitlines()
    cmds = [l for l in first[1:] if l.strip()]
    assert len(cmds) == 2 and "sinkwidgets scan" in cmds[0] and cmds[1] == "bash .ci/run"
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()


def test_scan_html_writes_offline_page(tmp_path):
    out_html = tmp_path / "scan.html"
    text = "The cat sat on the mat. <img src=x onerror=alert(1)> Then it slept."
    out = run_cli("scan", text, "--html", str(out_html), "--save", str(tmp_path / "scan.npz"))
    assert out.returncode == 0, out.stderr
    page = out_html.read_text()
    assert page.lstrip().lower().startswith("<!doctype html") and "<script" in page
    assert "https://" not in page.split("<script", 1)[0]  # no external stylesheet or script in the head
    assert "<img src=x" not in page  # untrusted token text never lands in the markup as-is
    import sinkwidgets as sw

    tr = sw.SinkTrace.load(tmp_path / "scan.npz")
    assert tr.maps.shape == (30 * 9, tr.n_tokens, tr.n_tokens)  # short prompt + --html: every map kept (float16)
