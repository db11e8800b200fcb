"""CPU threads for torch and BLAS (issue 20 item 5, ``sinkwidgets/models/threads.py``): the bounds (affinity, cgroup
v2 / v1 quota, cpu_count) read from temporary folders, the load measured from ``/proc/stat`` texts, the override
variable and its errors, the choice applied once and only when the user set nothing, ``sw.config()`` and the line in
``sinkwidgets models list``. No model is loaded."""

from __future__ import annotations

import json
import os

import pytest

from sinkwidgets.errors import SinkwidgetsValueError
from sinkwidgets.models import threads as T

pytestmark = pytest.mark.unit


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def no_thread_env(monkeypatch):
    for k in (T.ENV_VAR, "OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def fresh(monkeypatch):
    """A process state in which no model was loaded yet; torch's and BLAS's threads are restored afterwards."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    old_torch = torch.get_num_threads()
    old_blas = {i["prefix"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    monkeypatch.setattr(T, "_APPLIED", None)
    yield torch
    torch.set_num_threads(old_torch)
    if old_blas:
        threadpool_limits(limits=old_blas)


def _blas_threads():
    from threadpoolctl import threadpool_info

    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


# ----------------------------------------------------------------------------- cgroup files
def test_cpu_max_parsing():
    assert T.parse_cpu_max("150000 100000") == 1.5
    assert T.parse_cpu_max("200000 100000\n") == 2.0
    assert T.parse_cpu_max("max 100000") is None
    assert T.parse_cpu_max("") is None and T.parse_cpu_max(None) is None
    assert T.parse_cpu_max("garbage here") is None


def test_cfs_parsing():
    assert T.parse_cfs("50000", "100000") == 0.5
    assert T.parse_cfs("-1", "100000") is None
    assert T.parse_cfs(None, "100000") is None and T.parse_cfs("x", "y") is None


def test_cgroup_v2_nested_quota_takes_the_smallest(tmp_path):
    proc = tmp_path / "proc_cgroup"
    _write(proc, "0::/user.slice/app\n")
    _write(tmp_path / "cg" / "cpu.max", "max 100000\n")
    _write(tmp_path / "cg" / "user.slice" / "cpu.max", "300000 100000\n")
    _write(tmp_path / "cg" / "user.slice" / "app" / "cpu.max", "150000 100000\n")
    cpus, source = T.cgroup_cpus(tmp_path / "cg", proc)
    assert cpus == 1.5
    assert source.endswith(os.path.join("user.slice", "app", "cpu.max"))


def test_cgroup_v2_without_limit(tmp_path):
    proc = tmp_path / "proc_cgroup"
    _write(proc, "0::/\n")
    _write(tmp_path / "cg" / "cpu.max", "max 100000\n")
    assert T.cgroup_cpus(tmp_path / "cg", proc) == (None, None)
    assert T.cgroup_cpus(tmp_path / "missing", tmp_path / "missing_proc") == (None, None)


def test_cgroup_v1_quota(tmp_path):
    proc = tmp_path / "proc_cgroup"
    _write(proc, "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n")
    base = tmp_path / "cg" / "cpu,cpuacct"
    _write(base / "cpu.cfs_quota_us", "-1\n")
    _write(base / "cpu.cfs_period_us", "100000\n")
    _write(base / "docker" / "abc" / "cpu.cfs_quota_us", "250000\n")
    _write(base / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    cpus, source = T.cgroup_cpus(tmp_path / "cg", proc)
    assert cpus == 2.5 and "abc" in source


def test_usable_cpus_takes_the_tightest_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "affinity_cpus", lambda: 4)
    monkeypatch.setattr(T.os, "cpu_count", lambda: 8)
    proc = tmp_path / "proc_cgroup"
    _write(proc, "0::/\n")
    assert T.usable_cpus(tmp_path / "cg", proc) == (4, "affinity mask of 4 CPUs")
    _write(tmp_path / "cg" / "cpu.max", "150000 100000\n")  # 1.5 CPUs: one thread, not two
    n, why = T.usable_cpus(tmp_path / "cg", proc)
    assert n == 1 and "cgroup quota 1.5" in why
    _write(tmp_path / "cg" / "cpu.max", "50000 100000\n")  # half a CPU: still one thread
    assert T.usable_cpus(tmp_path / "cg", proc)[0] == 1


def test_affinity(monkeypatch):
    monkeypatch.setattr(T.os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert T.affinity_cpus() == 3
    monkeypatch.delattr(T.os, "sched_getaffinity", raising=False)
    assert T.affinity_cpus() is None
    monkeypatch.setattr(T.os, "cpu_count", lambda: 6)
    assert T.usable_cpus("/nonexistent", "/nonexistent")[0] == 6


# ----------------------------------------------------------------------------- load
STAT0 = "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 5 0 5 50 0 0 0 0 0 0\ncpu1 5 0 5 50 0 0 0 0 0 0\nintr 1 2\n"
STAT1 = "cpu  110 0 10 200 0 0 0 0 0 0\ncpu0 105 0 5 50 0 0 0 0 0 0\ncpu1 5 0 5 150 0 0 0 0 0 0\nintr 1 2\n"


def test_idle_cpus_from_proc_stat():
    assert T.idle_cpus(STAT0, STAT1) == pytest.approx(1.0)  # cpu0 busy the whole time, cpu1 idle
    assert T.idle_cpus(STAT0, STAT1, cpus={0}) == pytest.approx(0.0)
    assert T.idle_cpus(STAT0, STAT1, cpus={1}) == pytest.approx(1.0)
    assert T.idle_cpus(STAT0, STAT0) is None  # no time passed
    assert T.idle_cpus("", "") is None


def test_auto_threads_follow_the_idle_cpus():
    assert T.auto_threads(2, None) == 2
    assert T.auto_threads(2, 1.9) == 2
    assert T.auto_threads(2, 1.0) == 1  # one busy neighbour on two cores
    assert T.auto_threads(2, 0.0) == 1
    assert T.auto_threads(8, 5.4) == 5
    assert T.auto_threads(4, 16.0) == 4  # never above the usable CPUs


def test_loadavg_free_cpus():
    assert T.loadavg_free_cpus(0.0, 2, 2) == 2.0
    assert T.loadavg_free_cpus(1.4, 2, 2) == pytest.approx(0.6)  # a shared 2-core machine: one thread
    assert T.loadavg_free_cpus(40.0, 64, 64) == pytest.approx(24.0)  # a big host: the quota bounds it later
    assert T.loadavg_free_cpus(9.0, 2, 2) == 0.0
    assert T.loadavg_free_cpus(None, 2, 2) is None and T.loadavg_free_cpus(1.0, None, 2) is None


def test_measure_free_cpus_takes_the_smaller(monkeypatch):
    monkeypatch.setattr(T, "measure_idle_cpus", lambda interval=0.25, proc_stat="/proc/stat": 1.9)
    monkeypatch.setattr(T, "affinity_cpus", lambda: 2)
    monkeypatch.setattr(T.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(T.os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    free, facts = T.measure_free_cpus()
    assert free == pytest.approx(0.8) and facts["idle_now"] == 1.9 and facts["loadavg_1min"] == 1.2
    assert T.auto_threads(2, free) == 1
    monkeypatch.setattr(T.os, "getloadavg", lambda: (0.05, 0.0, 0.0))
    assert T.measure_free_cpus()[0] == pytest.approx(1.9)


def test_measure_idle_cpus_reads_proc_stat(tmp_path):
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat on this platform")
    idle = T.measure_idle_cpus(0.05)
    assert idle is not None and 0.0 <= idle <= len(os.sched_getaffinity(0))
    assert T.measure_idle_cpus(0.0, tmp_path / "none") is None


# ----------------------------------------------------------------------------- the override and the user's settings
def test_override_values():
    assert T.parse_override(None) is None and T.parse_override("  ") is None
    assert T.parse_override("3") == 3 and T.parse_override(" 2 ") == 2
    assert T.parse_override("off") == "off" and T.parse_override("OFF") == "off"


@pytest.mark.parametrize("bad", ["0", "-2", "abc", "2.5", "auto"])
def test_override_errors_name_variable_value_and_fix(bad):
    with pytest.raises(SinkwidgetsValueError) as info:
        T.parse_override(bad)
    msg = str(info.value)
    assert T.ENV_VAR in msg and repr(bad) in msg and "positive whole number" in msg and "unset it" in msg


def test_choice_order(monkeypatch):
    monkeypatch.setattr(T, "affinity_cpus", lambda: 2)
    auto = T.choose_threads({}, "/nonexistent", "/nonexistent", idle=2.0)
    assert (auto["threads"], auto["source"]) == (2, "auto")
    busy = T.choose_threads({}, "/nonexistent", "/nonexistent", idle=1.0)
    assert busy["threads"] == 1 and "1.0 free" in busy["why"]
    over = T.choose_threads({T.ENV_VAR: "3", "OMP_NUM_THREADS": "1"}, "/nonexistent", "/nonexistent", idle=0.0)
    assert (over["threads"], over["source"]) == (3, T.ENV_VAR)  # the package's own variable wins
    omp = T.choose_threads({"OMP_NUM_THREADS": "1"}, "/nonexistent", "/nonexistent", idle=2.0)
    assert (omp["threads"], omp["source"]) == (None, "OMP_NUM_THREADS")
    off = T.choose_threads({T.ENV_VAR: "off"}, "/nonexistent", "/nonexistent", idle=0.0)
    assert (off["threads"], off["source"]) == (None, "off")
    user = T.choose_threads({}, "/nonexistent", "/nonexistent", torch_threads=1, idle=2.0)
    assert (user["threads"], user["source"]) == (None, "torch.set_num_threads")
    same = T.choose_threads({}, "/nonexistent", "/nonexistent", torch_threads=2, idle=2.0)  # torch's own default
    assert same["source"] == "auto"


# ----------------------------------------------------------------------------- applying once
def test_apply_once_sets_torch_and_blas(fresh, monkeypatch, no_thread_env):
    torch = fresh
    monkeypatch.setenv(T.ENV_VAR, "1")
    torch.set_num_threads(2)
    first = T.apply_threads()
    assert first["threads"] == 1 and first["source"] == T.ENV_VAR
    assert torch.get_num_threads() == 1
    assert _blas_threads() <= {1}
    monkeypatch.setenv(T.ENV_VAR, "2")  # a second call changes nothing: the choice is made once
    assert T.apply_threads() is first
    assert torch.get_num_threads() == 1


def test_apply_auto_uses_the_idle_cpus(fresh, monkeypatch, no_thread_env):
    torch = fresh
    monkeypatch.setattr(T, "affinity_cpus", lambda: 2)
    monkeypatch.setattr(T, "_torch_default", lambda: torch.get_num_threads())
    monkeypatch.setattr(T, "measure_idle_cpus", lambda interval=0.25, proc_stat="/proc/stat": 1.0)
    monkeypatch.setattr(T.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    got = T.apply_threads()
    assert (got["threads"], got["source"], got["idle_cpus"]) == (1, "auto", 1.0)
    assert got["load"]["idle_now"] == 1.0 and got["load"]["loadavg_1min"] == 0.0
    assert torch.get_num_threads() == 1


def test_apply_respects_omp_num_threads(fresh, monkeypatch, no_thread_env):
    torch = fresh
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(T, "measure_idle_cpus", lambda interval=0.25, proc_stat="/proc/stat": 2.0)
    monkeypatch.setattr(T, "affinity_cpus", lambda: 2)
    got = T.apply_threads()
    assert got["threads"] is None and got["source"] == "OMP_NUM_THREADS"
    assert torch.get_num_threads() == 1  # auto would have chosen 2


def test_apply_respects_torch_set_num_threads(fresh, monkeypatch, no_thread_env):
    torch = fresh
    monkeypatch.setattr(T, "_torch_default", lambda: 2)
    monkeypatch.setattr(T, "affinity_cpus", lambda: 2)
    monkeypatch.setattr(T, "measure_idle_cpus", lambda interval=0.25, proc_stat="/proc/stat": 2.0)
    torch.set_num_threads(1)  # the user's own choice before the first model
    got = T.apply_threads()
    assert got["source"] == "torch.set_num_threads" and torch.get_num_threads() == 1


def test_load_model_applies_the_choice_first(fresh, monkeypatch, no_thread_env):
    """load_model reads the variable before anything else: a bad value fails fast, naming the variable."""
    import sinkwidgets as sw

    monkeypatch.setenv(T.ENV_VAR, "many")
    with pytest.raises(SinkwidgetsValueError, match=T.ENV_VAR):
        sw.load_model("smollm2-135m")
    calls = []
    monkeypatch.setattr(T, "apply_threads", lambda: calls.append(1) or (_ for _ in ()).throw(KeyError("stop")))
    with pytest.raises(KeyError):
        sw.load_model("smollm2-135m")
    assert calls == [1]


# ----------------------------------------------------------------------------- reporting
def test_config_reports_choice_threads_and_versions(fresh, monkeypatch, no_thread_env):
    import sinkwidgets as sw

    monkeypatch.setenv(T.ENV_VAR, "1")
    before = sw.config()
    assert before["applied"] is False and before["threads"] == 1 and before["source"] == T.ENV_VAR
    T.apply_threads()
    c = sw.config()
    assert isinstance(c, dict) and c["applied"] is True
    assert c["threads"] == 1 and c["torch_threads"] == 1 and c["env"][T.ENV_VAR] == "1"
    assert c["usable_cpus"] >= 1 and set(c["limits"]) == {"affinity", "cgroup_quota", "cgroup_file", "cpu_count"}
    assert c["versions"]["torch"] and c["versions"]["numpy"] and c["versions"]["python"]
    assert any(b["threads"] == 1 for b in c["blas"])
    text = repr(c)
    assert "threads      1 (SINKWIDGETS_NUM_THREADS, applied)" in text and "usable CPUs" in text and "BLAS" in text
    json.dumps(c)  # plain data


def test_models_list_prints_the_thread_line(tmp_path, monkeypatch, capsys, no_thread_env):
    from sinkwidgets.cli import main

    monkeypatch.setenv("SINKWIDGETS_CACHE", str(tmp_path))
    monkeypatch.setenv(T.ENV_VAR, "3")
    assert main(["models", "list"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("threads: 3 for torch and BLAS (SINKWIDGETS_NUM_THREADS=3") and T.ENV_VAR in last
    monkeypatch.setenv(T.ENV_VAR, "zero")
    assert main(["models", "list"]) == 0
    assert "'zero'" in capsys.readouterr().out
    assert main(["models", "list", "--json"]) == 0
    json.loads(capsys.readouterr().out)  # the JSON listing stays plain JSON


def test_module_imports_only_errors_from_the_package():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(T.__file__).read_text())
    mods = {(n.level, n.module) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert mods == {(2, "errors")}, mods
