"""The command line: arguments checked before any model work, one-line errors (no tracebacks), a truthful
``--save``, a legend, consistent numbers, a short-prompt warning, a clean stdout, and a quiet broken pipe.

The model and the trace are replaced by fakes (no model is loaded), except where marked ``models``.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import save_tiny

from sinkwidgets import cli
from sinkwidgets.widgets.synthetic import synthetic_trace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_progress_env(monkeypatch):
    """scan --json switches progress bars off through the environment; undo that after each test."""
    for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    yield
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()


class _MustNotLoad(AssertionError):
    pass


@pytest.fixture
def no_load(monkeypatch):
    def boom(name):
        raise _MustNotLoad(f"the model was loaded for {name!r} before the arguments were checked")

    monkeypatch.setattr(cli, "_load_model", boom)


@pytest.fixture
def fake_model(monkeypatch):
    """A fake load and trace: ``calls`` records the trace arguments, the trace has ``n`` tokens."""
    state = {"n": 40, "calls": [], "print_junk": False}

    def load(name):
        if state["print_junk"]:
            print("Loading checkpoint shards: 100%|██████████| 2/2")  # what a chatty library might do
        return object()

    def run(model, text, **kw):
        state["calls"].append(kw)
        n = state["n"]
        return synthetic_trace(T=n, n_layers=4, n_heads=3, keep_maps=None, tokens=[f"w{i}" for i in range(n)])

    monkeypatch.setattr(cli, "_load_model", load)
    monkeypatch.setattr(cli, "_run_trace", run)
    return state


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.unit
@pytest.mark.parametrize(("argv", "match"), [
    (["scan", "text", "--eps", "1.5"], "--eps 1.5"),
    (["scan", "text", "--eps", "nan"], "--eps nan"),
    (["scan", "text", "--eps", "-0.1"], "--eps -0.1"),
    (["scan", "text", "--max-tokens", "0"], "--max-tokens 0"),
    (["scan", "text", "--top", "-1"], "--top -1"),
    (["scan", "text", "--save", "/etc/passwd/x.npz"], "does not exist"),
    (["scan", "   "], "empty"),
    (["scan"], "needs a prompt"),
])
def test_bad_arguments_fail_before_loading(no_load, capsys, argv, match):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.unit
def test_bad_paths_fail_before_loading(no_load, capsys, tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir.npz").mkdir()
    prompt = tmp_path / "p.txt"
    prompt.write_text("The cat sat on the mat.")
    cases = [
        (["scan", "--file", str(tmp_path / "adir")], "is a directory"),
        (["scan", "--file", str(tmp_path / "missing.txt")], "does not exist"),
        (["scan", "text", "--file", str(prompt)], "not both"),
        (["scan", "text", "--save", str(tmp_path / "adir")], "is a directory"),  # adir -> adir.npz, a directory
        (["scan", "text", "--save", str(tmp_path / "no" / "x.npz")], "does not exist"),
        (["scan", "text", "--html", str(tmp_path / "adir")], "is a directory"),
        (["scan", "text", "--html", str(tmp_path / "no" / "x.html")], "does not exist"),
    ]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    cases.append((["scan", "--file", str(bad)], "not UTF-8"))
    for argv, match in cases:
        code, out, err = _run(capsys, *argv)
        assert code == 2 and match in err and "Traceback" not in err, (argv, err)


@pytest.mark.unit
def test_runtime_os_errors_are_one_line(monkeypatch, capsys):
    def load(name):
        raise PermissionError(13, "Permission denied", "/root/.cache/sinkwidgets/models")

    monkeypatch.setattr(cli, "_load_model", load)
    code, out, err = _run(capsys, "scan", "some text")
    assert code == 1 and "Permission denied" in err and "/root/.cache/sinkwidgets/models" in err
    assert "Traceback" not in err


@pytest.mark.unit
def test_save_reports_the_file_it_wrote(fake_model, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, "scan", "some text", "--save", "out")
    assert code == 0, err
    assert (tmp_path / "out.npz").is_file() and not (tmp_path / "out").exists()
    assert "trace saved to out.npz" in out
    code, out, err = _run(capsys, "scan", "some text", "--save", "t.npz", "--json")
    assert json.loads(out)["saved"] == "t.npz"


@pytest.mark.unit
def test_top_zero_and_top_n(fake_model, capsys):
    code, out, _ = _run(capsys, "scan", "x", "--top", "0", "--json")
    assert all(row["top_sinks"] == [] for row in json.loads(out)["layers"])
    code, out, _ = _run(capsys, "scan", "x", "--top", "2", "--json")
    assert max(len(row["top_sinks"]) for row in json.loads(out)["layers"]) == 2


@pytest.mark.unit
def test_table_has_a_legend_and_consistent_numbers(fake_model, capsys):
    code, out, err = _run(capsys, "scan", "some text")
    assert code == 0, err
    for column in ("layer", "tok0", "tok0-max", "sink%", "entropy", "sinks", "first-token mass", "sink heads",
                   "sinks/head"):
        assert re.search(rf"^\s+{re.escape(column)}\s", out, re.M), column  # one legend line per column
    header = out.splitlines()[1]
    measured = re.sub(r"\(alpha_0 > [\d.]+\)", "", header.split("·", 1)[1])  # eps is echoed as given
    numbers = re.findall(r"\d+(?:\.\d+)?", measured)
    assert numbers and all(re.fullmatch(r"\d+\.\d\d|\d+", n) for n in numbers), header
    rows = [line for line in out.splitlines() if re.match(r"^\s+\d+\s+\d\.\d\d", line)]
    assert len(rows) == 4
    for row in rows:
        cells = row.split()
        assert re.fullmatch(r"\d\.\d\d", cells[1]) and re.fullmatch(r"\d\.\d\d", cells[2])
        assert re.fullmatch(r"\d+%", cells[3]) and re.fullmatch(r"\d+\.\d\d", cells[4])
    code, out, _ = _run(capsys, "scan", "some text", "--no-legend")
    assert "columns:" not in out


@pytest.mark.unit
def test_help_carries_the_legend(capsys):
    with pytest.raises(SystemExit):
        cli.main(["scan", "--help"])
    out = capsys.readouterr().out
    assert "tok0-max" in out and "Sink_0^eps" in out


@pytest.mark.unit
def test_short_prompt_warning(fake_model, capsys):
    fake_model["n"] = 3
    code, out, err = _run(capsys, "scan", "Some text.")
    assert code == 0
    assert "only 3 tokens" in err and "0.42" in err and "only 3 tokens" not in out
    code, out, err = _run(capsys, "scan", "Some text.", "--json")
    assert "only 3 tokens" in json.loads(out)["warnings"][0]
    fake_model["n"] = 40
    code, out, err = _run(capsys, "scan", "A longer prompt.", "--json")
    assert json.loads(out)["warnings"] == [] and "warning" not in err


@pytest.mark.unit
def test_uniform_baseline():
    assert cli.uniform_first_token_mass(3) == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert cli.uniform_first_token_mass(2) == pytest.approx(0.5)


@pytest.mark.unit
def test_json_stdout_stays_clean_when_libraries_print(fake_model, capsys):
    fake_model["print_junk"] = True
    code, out, err = _run(capsys, "scan", "some text", "--json")
    assert code == 0
    json.loads(out)  # nothing but the JSON
    assert "Loading checkpoint shards" in err


@pytest.mark.unit
def test_json_turns_progress_bars_off(fake_model, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    _run(capsys, "scan", "some text", "--json")
    assert os.environ.get("TQDM_DISABLE") == "1"
    # tqdm reads TQDM_* when it is imported: the command line must set it before anything imports tqdm
    code = ("import sys, sinkwidgets.cli as c; c.build_parser(); assert 'tqdm' not in sys.modules, 'tqdm imported early'; "
            "c._quiet_progress(); from tqdm.auto import tqdm; assert tqdm(range(3)).disable; print('OFF')")
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == "OFF", out.stderr[-2000:]


@pytest.mark.unit
def test_broken_pipe_is_quiet(tmp_path):
    """The reader goes away before anything is written (as `| head` does): no error text, exit 141."""
    env = {**os.environ, "SINKWIDGETS_CACHE": str(tmp_path)}
    code = ("import sys, sinkwidgets.cli as c\n"
            "def many(args):\n"
            "    for i in range(20000):\n"
            "        sys.stdout.write('row %d\\n' % i)\n"
            "    return 0\n"
            "c.cmd_models = many\n"  # main() builds its parser after this, so `models` runs `many`
            "sys.exit(c.main(['models', 'list']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # nobody reads: every write hits a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == "", err


@pytest.mark.unit
def test_models_list_into_head_is_quiet(tmp_path):
    env = {**os.environ, "SINKWIDGETS_CACHE": str(tmp_path)}
    out = subprocess.run(f"{sys.executable} -m sinkwidgets.cli models list | head -c 1", shell=True,
                         capture_output=True, text=True, env=env, timeout=60)
    assert "Broken pipe" not in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.models
def test_model_folder_without_weights(tmp_path, capsys):
    import transformers as tf

    d = save_tiny(tmp_path / "noweights", tf.LlamaConfig(vocab_size=49152, hidden_size=64, num_hidden_layers=2,
                                                         num_attention_heads=4, intermediate_size=128))  # no weights
    code, out, err = _run(capsys, "scan", "some text for the model", "--model", str(d))
    assert code == 1 and "no model weights" in err and "Traceback" not in err, err


@pytest.mark.models
def test_cli_in_process_after_a_trace(smollm2, no_load, capsys):
    """Once nnsight has traced, every object has a ``save`` attribute (nnsight patches ``object``); argparse then
    skipped --save's default and the CLI, run in the same process, failed on a bound method. It must not."""
    import sinkwidgets as sw

    sw.trace(smollm2, "The cat sat on the mat.")
    assert hasattr(object(), "save")  # the patch this test is about
    assert cli.build_parser().parse_args(["scan", "some text"]).save_path is None
    code, out, err = _run(capsys, "scan", "some text", "--top", "-1")
    assert code == 2 and "--top -1" in err and out == ""
