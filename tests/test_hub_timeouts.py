"""Hub access is bounded: a proxy that accepts and never answers, or a name that does not resolve, gives one clear
error in seconds (no retry noise, no blame on HF_HUB_OFFLINE unless it is set); a cached model still loads."""

import os
import subprocess
import sys

import pytest
from _helpers import save_tiny

LOAD = """
import sys, time
import sinkwidgets as sw
t = time.perf_counter()
try:
    sw.load_model(sys.argv[1])
except sw.models.HubUnreachableError as e:
    print("UNREACHABLE", round(time.perf_counter() - t, 1))
    print(e)
"""


def _load(model, tmp_path, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    full.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"), SINKWIDGETS_HUB_TIMEOUT="1",
                **env)
    return subprocess.run([sys.executable, "-c", LOAD, model], capture_output=True, text=True, env=full, timeout=120)


@pytest.mark.unit
def test_silent_host_gives_one_clear_error(silent_host, tmp_path):
    out = _load("HuggingFaceTB/SmolLM2-135M", tmp_path, HTTPS_PROXY=silent_host, HTTP_PROXY=silent_host)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("UNREACHABLE"), (out.stdout, out.stderr[-2000:])
    took = float(out.stdout.split()[1])
    assert took < 15, took  # bounded: 1 s per request here
    msg = out.stdout
    assert "could not be reached" in msg and silent_host in msg and "sinkwidgets models fetch smollm2-135m" in msg
    assert "HF_HUB_OFFLINE" not in msg
    assert "Retry" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


@pytest.mark.unit
def test_unresolvable_endpoint_is_quick_and_quiet(tmp_path):
    out = _load("Qwen/Qwen3-0.6B", tmp_path, HF_ENDPOINT="https://no-such-host.invalid")
    assert out.stdout.startswith("UNREACHABLE"), (out.stdout, out.stderr[-2000:])
    assert float(out.stdout.split()[1]) < 15
    assert "no-such-host.invalid" in out.stdout and "HF_HUB_OFFLINE" not in out.stdout
    assert "Retry" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2, out.stderr[-2000:]


@pytest.mark.unit
def test_offline_mode_is_named_only_when_set(tmp_path):
    out = _load("Qwen/Qwen3-0.6B", tmp_path, HF_HUB_OFFLINE="1")
    assert out.stdout.startswith("UNREACHABLE") and "HF_HUB_OFFLINE=1" in out.stdout, out.stdout


@pytest.mark.unit
def test_timeout_setting_is_checked(monkeypatch):
    from sinkwidgets.models.hub import hub_timeout

    monkeypatch.setenv("SINKWIDGETS_HUB_TIMEOUT", "2.5")
    assert hub_timeout() == 2.5
    monkeypatch.setenv("SINKWIDGETS_HUB_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="SINKWIDGETS_HUB_TIMEOUT='soon'"):
        hub_timeout()
    monkeypatch.setenv("SINKWIDGETS_HUB_TIMEOUT", "0")
    with pytest.raises(ValueError, match="positive"):
        hub_timeout()


@pytest.mark.models
def test_cached_model_loads_when_the_hub_is_silent(silent_host, tmp_path):
    """A model in the local Hugging Face cache loads although the hub does not answer."""
    import transformers as tf

    rev = "0" * 40
    snap = tmp_path / "hf" / "hub" / "models--test-org--tiny-llama" / "snapshots" / rev
    save_tiny(snap, tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=49152, hidden_size=32, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=64)))
    refs = snap.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text(rev)
    code = LOAD.replace("    sw.load_model(sys.argv[1])", "    m = sw.load_model(sys.argv[1]); print('LOADED', m.sinkwidgets.hub_id)")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"), SINKWIDGETS_HUB_TIMEOUT="1",
               HTTPS_PROXY=silent_host, HTTP_PROXY=silent_host)
    out = subprocess.run([sys.executable, "-c", code, "test-org/tiny-llama"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert "LOADED test-org/tiny-llama" in out.stdout, (out.stdout, out.stderr[-2000:])
