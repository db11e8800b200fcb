"""Helpers shared by several test modules (imported as ``from _helpers import ...``, like ``_prompts``)."""

from __future__ import annotations

import threading


def race(write, n_writers=4, rounds=3, timeout=60):
    """Run ``write(i)`` for ``i`` in ``range(n_writers)`` on ``n_writers`` threads, ``rounds`` times, every round
    released at once by a barrier (so the writes overlap); return the exceptions raised. A writer that raises aborts
    the barrier so the others stop waiting (they then raise ``threading.BrokenBarrierError``), and no wait lasts
    longer than ``timeout`` seconds, so a stuck writer cannot hang the test."""
    errors = []
    barrier = threading.Barrier(n_writers)

    def run(i):
        try:
            for _ in range(rounds):
                barrier.wait(timeout=timeout)
                write(i)
        except BaseException as exc:  # noqa: BLE001 - collected and reported by the test
            errors.append(exc)
            barrier.abort()  # the other writers stop waiting for this one

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def save_tiny(folder, model):
    """Save ``model`` (a tiny random-init transformers model, or only its config: a folder without weights) and the
    SmolLM2 tokenizer (from the offline model cache) to ``folder``; return ``folder`` as a Path, ready for
    ``sinkwidgets.load_model``."""
    from pathlib import Path

    import transformers as tf

    from sinkwidgets.models.fetch import model_dir

    folder = Path(folder)
    model.save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(model_dir("smollm2-135m")).save_pretrained(folder)
    return folder


def same_intervention(a, b, tol=1e-4):
    """Two InterventionResults hold the same numbers: NLL per text and condition, the attention statistics, ΔNLL."""
    import numpy as np

    assert a.conditions == b.conditions
    for c in a.conditions:
        for x, y in zip(a.nll[c], b.nll[c], strict=True):
            np.testing.assert_allclose(x, y, atol=tol, err_msg=c)
    for k in ("sink_delta", "tv", "sink_mass"):
        if a.attention:
            np.testing.assert_allclose(a.attention[k], b.attention[k], atol=tol, err_msg=k)
    for c in a.conditions[1:]:
        assert abs(a.delta[c] - b.delta[c]) < tol, c
