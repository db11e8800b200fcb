"""A progress bar for long steps that cannot count their own progress (a download, a conversion, a model load).

:func:`ticking` shows a ``tqdm.auto`` bar (a widget in notebooks, a line on standard error in terminals) with the
step's name and its elapsed time, redrawn every ``interval`` seconds by a background thread so the time moves
even while the step itself (``from_pretrained``, ``pip download``) never calls back. With ``delay`` the bar
appears only once the step has taken that long, so fast steps stay silent. ``TQDM_DISABLE=1`` (which the command
line sets for pipes and ``--json``) turns it off like every other bar.
"""

from __future__ import annotations

import contextlib
import threading
import time


@contextlib.contextmanager
def ticking(desc: str, *, enabled: bool = True, delay: float = 0.0, interval: float = 0.5):
    """Show ``desc`` and the elapsed time while the ``with`` block runs; yields the ``tqdm`` bar (or None).

    Parameters
    ----------
    desc : str
        What is happening, e.g. ``"loading smollm2-135m"``.
    enabled : bool
        False shows nothing (a ``quiet=True`` caller).
    delay : float
        Seconds before the bar appears (tqdm's ``delay``): steps shorter than this show nothing.
    interval : float
        Seconds between redraws of the elapsed time.
    """
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=None, desc=desc, bar_format="{desc}: {elapsed}", delay=delay, leave=False)
    stop = threading.Event()
    start = time.monotonic()

    def tick():
        while not stop.wait(interval):
            if time.monotonic() - start < delay:  # refresh() would draw the bar before its delay
                continue
            with contextlib.suppress(Exception):  # a closed stream or widget must not kill the step
                bar.refresh()

    thread = None
    if not bar.disable:
        thread = threading.Thread(target=tick, name=f"sinkwidgets-progress: {desc}", daemon=True)
        thread.start()
    try:
        yield bar
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=2 * interval + 1)
        bar.close()
