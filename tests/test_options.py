"""RunOptions: the shared run options are checked once (each error names the option, the value and the fix), numpy
scalars are accepted, ``options=`` and keywords combine by documented rules, and entry points give the same
results either way. Also: the options module sits at the bottom of the tracing layers, and no module imports
another subpackage's private helpers (beyond a recorded list that may only shrink)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from sinkwidgets.tracing.options import DEFAULT, DEFAULTS, RunOptions

PKG = Path(__file__).resolve().parents[1] / "sinkwidgets"


# ----------------------------------------------------------------------------- validation
@pytest.mark.unit
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(add_bos="no"), TypeError, r"add_bos must be True, False or None .*got 'no'.*e\.g\. add_bos=True"),
    (dict(max_tokens=1), ValueError, r"max_tokens must be an integer >= 2 or None, got 1, e\.g\. max_tokens=512"),
    (dict(max_tokens="10"), ValueError, r"max_tokens must be an integer >= 2 or None, got '10'"),
    (dict(max_tokens=2.5), ValueError, r"max_tokens must be an integer >= 2 or None, got 2\.5"),
    (dict(batch_size=0), ValueError, r"batch_size must be an integer >= 1, got 0, e\.g\. batch_size=8"),
    (dict(batch_size=True), ValueError, r"batch_size must be an integer >= 1, got True"),
    (dict(method="fast"), ValueError, r"method must be 'auto', 'eager' or 'chunked', got 'fast'; 'auto' picks"),
    (dict(method="exact"), ValueError, r"got 'exact' \('exact' and 'mask' are streaming methods: pass them as "
                                       r"streaming_ppl\(\.\.\., method=\.\.\.\)\)"),
    (dict(remote=3), TypeError, r"remote must be False, True, an NDIF host URL or a RemoteOptions, got 3; "
                                r"e\.g\. remote=True"),
    (dict(remote="  "), TypeError, r"remote must be .*got '  '"),
    (dict(progress="yes"), TypeError, r"progress must be True, False or None .*got 'yes'; e\.g\. progress=False"),
])
def test_bad_options_name_the_option_the_value_and_the_fix(kwargs, exc, match):
    from sinkwidgets.errors import SinkwidgetsError

    with pytest.raises(exc, match=match) as info:
        RunOptions(**kwargs)
    assert isinstance(info.value, SinkwidgetsError)


@pytest.mark.unit
def test_numpy_scalars_are_accepted_and_stored_as_python_values():
    o = RunOptions(add_bos=np.bool_(True), max_tokens=np.int32(64), batch_size=np.int64(4), progress=np.bool_(False),
                   remote=np.bool_(False))
    assert (o.add_bos, o.max_tokens, o.batch_size, o.progress, o.remote) == (True, 64, 4, False, False)
    assert [type(v) for v in (o.add_bos, o.max_tokens, o.batch_size, o.progress, o.remote)] == [bool, int, int,
                                                                                               bool, bool]


@pytest.mark.unit
def test_options_are_frozen_and_show_what_is_set():
    o = RunOptions(max_tokens=512)
    assert repr(o) == "RunOptions(max_tokens=512)" and o.given == ("max_tokens",)
    assert o.batch_size is DEFAULT and repr(DEFAULT) == "DEFAULT"
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.batch_size = 4
    assert dataclasses.replace(o, batch_size=2) == RunOptions(max_tokens=512, batch_size=2)
    assert RunOptions(remote="https://ndif.example", method="chunked").given == ("method", "remote")


# ----------------------------------------------------------------------------- resolve
def _entry(model=None, *, add_bos=None, max_tokens=2048, batch_size=8, options=None):
    return RunOptions.resolve(options, _entry, add_bos=add_bos, max_tokens=max_tokens, batch_size=batch_size)


@pytest.mark.unit
def test_resolve_combines_keywords_and_options_by_the_documented_rules():
    # keywords alone: the entry point's defaults and the table's defaults for options it has no keyword for
    assert _entry() == RunOptions(add_bos=None, max_tokens=2048, batch_size=8, method="auto", remote=False,
                                  progress=None)
    assert _entry(batch_size=np.int64(2)).batch_size == 2
    # an option set in options= wins over a keyword left at its default
    o = RunOptions(max_tokens=64, progress=False, method="eager")
    r = _entry(options=o)
    assert (r.max_tokens, r.progress, r.method, r.batch_size) == (64, False, "eager", 8)
    assert r.given == tuple(DEFAULTS)  # every field set
    # the same value in both is fine; different values are an error naming both
    assert _entry(max_tokens=64, options=o).max_tokens == 64
    with pytest.raises(ValueError, match=r"max_tokens is given twice: max_tokens=128 and "
                                         r"options=RunOptions\(max_tokens=64, method='eager', progress=False\); "
                                         r"pass it once"):
        _entry(max_tokens=128, options=o)
    # keywords are checked as the options are
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        _entry(batch_size=0)
    with pytest.raises(TypeError, match=r"options must be a RunOptions .*got dict"):
        _entry(options={"max_tokens": 64})
    with pytest.raises(TypeError, match=r"not run options"):
        RunOptions.resolve(None, _entry, windows=3)


# ----------------------------------------------------------------------------- layering
def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield 0, a.name, []


@pytest.mark.unit
def test_options_module_is_the_bottom_of_the_tracing_layers():
    """tracing/options.py imports no sinkwidgets module but errors, so api, the executors, tags and streaming can
    all import it without a cycle."""
    found = [(lvl, mod) for lvl, mod, _ in _imports(PKG / "tracing" / "options.py")
             if lvl or mod.startswith("sinkwidgets")]
    assert found == [(2, "errors")], found


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


#: Private names imported across subpackages when this test was written; remove entries as they are fixed (the
#: test fails on any new one, and says when a recorded one is gone).
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()  # none left: sinktrace.check_array / jsonable and
# models.loading.hub_error / build_info are public now


@pytest.mark.unit
def test_no_module_imports_another_subpackages_private_helpers():
    """``from X import _name`` where X lives in another subpackage than the importer is a private helper used
    across a boundary: make it public in the right layer instead (as tags.collect now imports ``encode`` from
    tracing/options.py, not ``_encode`` from tracing/api.py)."""
    found = set()
    for path in PKG.rglob("*.py"):
        me = _module_name(path)
        is_pkg = path.name == "__init__.py"
        mine = me if is_pkg else me.rpartition(".")[0]
        for level, module, names in _imports(path):
            if level:
                base = mine.split(".")
                base = base[: len(base) - (level - 1)]
                target = ".".join(base + ([module] if module else []))
            else:
                target = module
            if not target.startswith("sinkwidgets"):
                continue
            home = target if (PKG.parent / target.replace(".", "/")).is_dir() else target.rpartition(".")[0]
            for n in names:
                if n.startswith("_") and not n.startswith("__") and home != mine:
                    found.add((me, target, n))
    assert ("sinkwidgets.tags.collect", "sinkwidgets.tracing.api", "_encode") not in found
    assert found <= KNOWN_PRIVATE_IMPORTS, sorted(found - KNOWN_PRIVATE_IMPORTS)


# ----------------------------------------------------------------------------- entry points: options= == keywords
@pytest.mark.models
def test_public_tokenize_and_encode_equal_the_engines(smollm2, gemma3):
    """tracing/options.py's tokenize/encode give what sw.tracing.tokenize and sw.trace give."""
    import sinkwidgets as sw
    from sinkwidgets.tracing import options as O
    from sinkwidgets.tracing import tokenize

    texts = ["The cat sat.", "<bos> Hello there", "  spaced  out  text  "]
    for model in (smollm2, gemma3):
        for add_bos in (None, True, False):
            for t in texts:
                assert O.tokenize(model, t, add_bos) == tokenize(model, t, add_bos)
        enc = O.encode(model, texts, RunOptions(max_tokens=3))
        traced = sw.trace(model, texts, max_tokens=3)
        assert [e.ids for e in enc] == [tr.token_ids.tolist() for tr in traced]
        assert [e.used_bos for e in enc] == [tr.meta["add_bos"] for tr in traced]
        assert [e.n_original for e in enc] == [len(tokenize(model, t, None)[0]) for t in texts]
        assert all(len(e.ids) <= 3 for e in enc)


@pytest.mark.models
def test_collect_gives_the_same_data_with_options_or_keywords(smollm2):
    from sinkwidgets import tags
    from sinkwidgets.tags.collect import residual_rows

    texts = ["The cat sat on the mat. It slept.", "A dog barked! Then silence.", "One more line of text here."]
    kw = dict(heads=[(1, 1), (3, 0)], layers=[2], pool=("mean", "last"))
    a = tags.collect(smollm2, texts, **kw, add_bos=True, max_tokens=9, batch_size=2, method="eager", progress=False)
    b = tags.collect(smollm2, texts, **kw, options=RunOptions(add_bos=True, max_tokens=9, batch_size=2,
                                                             method="eager", progress=False))
    assert a.meta == b.meta and a.meta["batch_size"] == 2 and a.tokens == b.tokens
    for f in ("offsets", "token_ids", "sink_scores", "first_token_mass", "maps", "head_outputs", "head_values",
              "pooled_mean", "pooled_last"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert max(len(t) for t in a.tokens) == 9
    with pytest.raises(ValueError, match="batch_size is given twice"):
        tags.collect(smollm2, texts, **kw, batch_size=4, options=RunOptions(batch_size=2))
    with pytest.raises(ValueError, match="method must be 'auto', 'eager' or 'chunked', got 'fast'"):
        tags.collect(smollm2, texts, **kw, method="fast")
    ra = residual_rows(smollm2, texts, 2, max_tokens=7, batch_size=2)
    rb = residual_rows(smollm2, texts, 2, options=RunOptions(max_tokens=7, batch_size=2))
    assert len(ra) == 3 and all(x.shape[0] <= 7 for x in ra)
    for x, y in zip(ra, rb):
        np.testing.assert_array_equal(x, y)


@pytest.mark.models
def test_trace_and_run_units_give_the_same_with_options_or_keywords(smollm2):
    import sinkwidgets as sw
    from sinkwidgets.tracing import reductions as R
    from sinkwidgets.tracing import run_units

    assert sw.RunOptions is RunOptions
    texts = ["The cat sat on the mat. It slept.", "A dog barked! Then silence.", "One more line of text here."]
    opts = RunOptions(add_bos=True, max_tokens=7, batch_size=2, method="eager", progress=False)
    a = sw.trace(smollm2, texts, add_bos=True, max_tokens=7, batch_size=2, method="eager", progress=False)
    b = sw.trace(smollm2, texts, options=opts)
    for x, y in zip(a, b):
        timeless = {k: v for k, v in x.meta.items() if k != "trace_seconds"}
        assert timeless == {k: v for k, v in y.meta.items() if k != "trace_seconds"}
        assert x.tokens == y.tokens and x.meta["add_bos"] is True
        assert len(x.tokens) <= 7 and x.meta["method"] == "eager"
        for f in ("token_ids", "sink_scores", "first_token_mass", "maps"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f), err_msg=f)
    ra = run_units(smollm2, texts, [R.AttentionSummary()], add_bos=True, max_tokens=7, batch_size=2,
                   method="eager", progress=False)
    rb = run_units(smollm2, texts, [R.AttentionSummary()], options=opts)
    for x, y in zip(ra, rb):
        assert x.tokens == y.tokens and x.meta.keys() == y.meta.keys() and x.meta["add_bos"] == y.meta["add_bos"]
        for k in x.arrays:
            np.testing.assert_array_equal(x.arrays[k], y.arrays[k], err_msg=k)
    with pytest.raises(ValueError, match="max_tokens is given twice"):
        sw.trace(smollm2, texts, max_tokens=5, options=opts)
    with pytest.raises(ValueError, match="batch_size is given twice"):
        run_units(smollm2, texts, [R.AttentionSummary()], batch_size=4, options=opts)
    with pytest.raises(TypeError, match="options must be a RunOptions"):
        sw.trace(smollm2, texts, options={"batch_size": 2})
