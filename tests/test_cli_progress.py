"""The command line's progress on standard error and its token display: long steps say what they do (layer by
layer for a trace), quick steps and ``--quiet`` say nothing, stdout stays the result, whitespace tokens are visible.
"""

import io
import json
import time

import pytest

from sinkwidgets import cli
from sinkwidgets.widgets.synthetic import synthetic_trace

REAL_STATUS = cli.Status


class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def _restore_progress_env(monkeypatch):
    for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fast_status(monkeypatch):
    """main() builds a Status that announces at once and beats every 0.1 s (instead of after 1 s / every 10 s)."""
    monkeypatch.setattr(cli, "Status", lambda *a, **k: REAL_STATUS(*a, **{**k, "delay": 0.0, "interval": 0.02,
                                                                            "heartbeat": 0.1}))


@pytest.fixture
def slow_fake(monkeypatch):
    """A load and a trace that take 0.3 s each; the trace counts 4 layers through the status, as hooks would."""
    def load(name):
        with cli.STATUS.step(f"loading {name}"):
            time.sleep(0.3)
        return object()

    def run(model, text, **kw):
        with cli.STATUS.step("tracing 40 tokens", total=4, unit="layer"):
            for _ in range(4):
                time.sleep(0.08)
                cli.STATUS.advance()
        tokens = ["<s>", " ", "\n\n", "\t"] + [f"w{i}" for i in range(36)]
        return synthetic_trace(T=40, n_layers=4, n_heads=3, keep_maps=None, tokens=tokens)

    monkeypatch.setattr(cli, "_load_model", load)
    monkeypatch.setattr(cli, "_run_trace", run)


@pytest.mark.unit
def test_status_in_a_log_announces_beats_and_ends():
    out = io.StringIO()
    st = REAL_STATUS(out, delay=0.0, interval=0.02, heartbeat=0.05)
    assert not st.live
    with st.step("tracing 2,048 tokens", total=30, unit="layer"):
        for _ in range(12):
            st.advance()
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert lines[0] == "sinkwidgets: tracing 2,048 tokens ..."
    assert any("layer 12/30" in ln for ln in lines[1:-1]), lines
    assert lines[-1].startswith("sinkwidgets: tracing 2,048 tokens: done after ") and lines[-1].endswith(" s")


@pytest.mark.unit
def test_quick_steps_and_quiet_say_nothing():
    out = io.StringIO()
    with REAL_STATUS(out, delay=1.0, interval=0.02).step("loading x"):
        time.sleep(0.1)
    assert out.getvalue() == ""
    with REAL_STATUS(out, enabled=False, delay=0.0, interval=0.02).step("loading x"):
        time.sleep(0.1)
    assert out.getvalue() == ""


@pytest.mark.unit
def test_status_on_a_terminal_redraws_one_line_and_erases_it():
    out = _Tty()
    st = REAL_STATUS(out, delay=0.0, interval=0.02)
    assert st.live
    with st.step("loading smollm2-135m"):
        time.sleep(0.15)
    text = out.getvalue()
    assert "\n" not in text and text.count("\r\033[K") >= 2
    assert "sinkwidgets: loading smollm2-135m" in text and text.endswith("\r\033[K")


@pytest.mark.unit
def test_a_failed_step_says_it_stopped():
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt), REAL_STATUS(out, delay=0.0, interval=0.02).step("tracing"):
        time.sleep(0.1)
        raise KeyboardInterrupt
    assert "sinkwidgets: tracing: stopped after" in out.getvalue()


@pytest.mark.unit
def test_scan_shows_its_steps_on_stderr_only(fast_status, slow_fake, capsys):
    code = cli.main(["scan", "some text", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    json.loads(out)  # stdout is the JSON and nothing else
    assert "sinkwidgets: loading smollm2-135m ..." in err
    assert "sinkwidgets: tracing 40 tokens ..." in err and "done after" in err
    code = cli.main(["scan", "some text", "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    json.loads(out)


@pytest.mark.unit
def test_the_table_shows_whitespace_tokens(fast_status, slow_fake, capsys):
    tr = synthetic_trace(T=40, n_layers=4, n_heads=3, keep_maps=None,
                         tokens=[" ", "\n\n", "\t"] + [f"w{i}" for i in range(37)])
    tr.sink_scores[:, :, 1] = 0.9  # the newline token is a sink in every head
    summary = cli._scan_summary(tr, 0.3, 3)
    buf = io.StringIO()
    cli._print_table(summary, buf, legend=False)
    table = buf.getvalue()
    assert "token 0 = '\u2423'" in table
    assert "'\u23ce\u23ce'@1" in table and "'\\n\\n'" not in table
    assert summary["layers"][0]["top_sinks"][0]["token"] == "\n\n"  # the JSON keeps the raw token


@pytest.mark.models
def test_layer_ticks_count_the_blocks_of_a_real_trace(smollm2):
    """Forward hooks on the blocks count each layer once per forward pass and are removed afterwards."""
    import sinkwidgets as sw

    out = io.StringIO()
    st = REAL_STATUS(out, delay=0.0, interval=0.02)
    n = smollm2.sinkwidgets.n_layers
    with st.step("tracing", total=n, unit="layer"), cli._layer_ticks(smollm2, st):
        sw.trace(smollm2, "The cat sat on the mat. Then it slept for a long while.", progress=False)
    assert st._done == n
    with cli._layer_ticks(smollm2, st):
        pass
    sw.trace(smollm2, "The cat sat on the mat.", progress=False)
    assert st._done == n  # hooks gone
    with cli._layer_ticks(object(), st):  # a model without blocks: no count, no error
        pass


@pytest.mark.unit
def test_a_family_error_is_one_line_without_its_class_name(monkeypatch, capsys):
    from sinkwidgets.errors import SinkwidgetsError

    def load(name):
        raise SinkwidgetsError("the model cache is read-only; set SINKWIDGETS_CACHE to a writable folder")

    monkeypatch.setattr(cli, "_load_model", load)
    code = cli.main(["scan", "some text", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("sinkwidgets: error: the model cache is read-only;"), err
    assert "SinkwidgetsError" not in err and "Traceback" not in err
