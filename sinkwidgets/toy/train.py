"""Training loop for the toy averaging problem, logging the emergence metrics as it goes."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

import torch

from ..errors import SinkwidgetsValueError
from .metrics import emergence_metrics
from .model import TinyTransformer, ToyConfig
from .task import AveragingTask, make_batch

_RECORD_KEYS = ("step", "loss", "train_loss", "catch", "pre_to_bos", "release_mass", "release_unif", "tag_ev",
                "pc1_ev", "catch_head", "release_head")


class TrainResult(list):
    """The history of one run: a list of records (dicts), plus the trained model and its settings.

    Each record has ``step`` (updates done), ``loss`` (held-out masked MSE), ``train_loss`` (mean batch loss
    since the previous record; None at step 0), ``catch``, ``pre_to_bos``, ``release_mass``, ``release_unif``,
    ``tag_ev``, ``pc1_ev``, ``catch_head``, ``release_head`` (see :mod:`sinkwidgets.toy.metrics`). Records hold
    only numbers that are reproducible for a given seed; wall-clock times are in :attr:`times`.

    Attributes
    ----------
    model : TinyTransformer
        The trained model (in eval mode).
    config : ToyConfig
    seed : int
    steps : int
    times : list of float
        Seconds since the start of training at each record.
    wall_time : float
        Total seconds (training and evaluation).
    """

    def __init__(self, records=(), *, model=None, config=None, seed=None, steps=None, times=None, wall_time=None):
        super().__init__(records)
        self.model = model
        self.config = config
        self.seed = seed
        self.steps = steps
        self.times = list(times or [])
        self.wall_time = wall_time

    @property
    def final(self) -> dict:
        """The last record."""
        return self[-1]

    def column(self, key: str) -> list:
        """One metric over the records, e.g. ``result.column("catch")``."""
        return [r[key] for r in self]

    def __repr__(self) -> str:
        f = self[-1] if self else {}
        return (f"TrainResult(seed={self.seed}, steps={self.steps}, records={len(self)}, "
                f"loss={f.get('loss', float('nan')):.3g}, catch={f.get('catch', float('nan')):.3f}, "
                f"release_mass={f.get('release_mass', float('nan')):.3f}, tag_ev={f.get('tag_ev', float('nan')):.3f}, "
                f"wall_time={self.wall_time if self.wall_time is None else round(self.wall_time, 1)}s)")


@contextmanager
def _threads(n: int | None):
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def lr_factor(cfg: ToyConfig, i: int, steps: int) -> float:
    """Multiplier of ``cfg.lr`` for update ``i`` (0-based): linear warm-up over ``cfg.warmup`` updates, then
    constant or a cosine decay ``½(1 + cos(π·p))`` to 0 at the last update (``p`` = progress after warm-up)."""
    w = cfg.warmup
    if i < w:
        return (i + 1) / (w + 1)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "wsd":
        n_decay = max(1, round(cfg.decay_frac * steps))
        left = steps - i  # updates left including this one
        return 1.0 if left > n_decay else left / n_decay
    p = (i - w) / max(1, steps - w)
    return 0.5 * (1.0 + math.cos(math.pi * p))


@torch.no_grad()
def evaluate(model: TinyTransformer, batch=None) -> dict:
    """Emergence metrics of ``model`` on ``batch`` (default: the config's held-out batch).

    Returns the dict of :func:`sinkwidgets.toy.metrics.emergence_metrics`.
    """
    cfg = model.config
    if batch is None:
        batch = make_batch(cfg.eval_size, cfg.T, cfg.eval_seed)
    was = model.training
    model.eval()
    try:
        return emergence_metrics(model(batch.types, batch.values, return_internals=True), batch)
    finally:
        model.train(was)


def train(seed: int = 0, steps: int = 600, *, config: ToyConfig | None = None, progress: bool = True,
          num_threads: int | None = 1, **options) -> TrainResult:
    """Train a :class:`TinyTransformer` on the averaging task and log the emergence of catch, tag, release.

    Adam (AdamW if ``weight_decay > 0``) at constant ``lr`` on fresh batches of ``batch_size`` sequences,
    minimising the masked MSE. The initial weights and every training batch come from one
    ``torch.Generator`` seeded with ``seed``; the held-out batch from ``eval_seed``. Runs on CPU, so the
    same seed (and thread count) gives an identical history.

    Parameters
    ----------
    seed : int
        Seed of the weights and the data.
    steps : int
        Optimiser updates (> 0).
    config : ToyConfig, optional
        Base options; ``**options`` override its fields.
    progress : bool
        Show a ``tqdm.auto`` progress bar with the current loss and catch.
    num_threads : int or None
        ``torch.set_num_threads`` during training (restored afterwards); 1 is fastest for these tiny models.
        None leaves torch's setting alone.
    **options
        Fields of :class:`ToyConfig`, e.g. ``T=16, d_model=32, n_heads=1, ln=False, pos="none",
        attn="softmax", kv_bias=False, key_bias=False, sink_token=False, gate=None, lr=1e-3,
        batch_size=256, log_every=25``.

    Returns
    -------
    TrainResult
        A list of records (``train(...)[-1]["loss"]`` is the final held-out loss) with ``.model``,
        ``.config``, ``.times`` and ``.wall_time``.

    Raises
    ------
    ValueError
        For a bad ``steps``, ``seed`` or option (the message names the value and the allowed options).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise SinkwidgetsValueError(f"steps={steps!r} is invalid: it must be a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SinkwidgetsValueError(f"seed={seed!r} is invalid: it must be an integer, e.g. seed=0")
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                    or num_threads < 1):
        raise SinkwidgetsValueError(f"num_threads={num_threads!r} is invalid: use None or a positive integer")
    unknown = sorted(set(options) - set(ToyConfig.option_names()))
    if unknown:
        raise SinkwidgetsValueError(f"unknown option(s) {unknown}; allowed: {', '.join(ToyConfig.option_names())}")
    cfg = ToyConfig(**{**(config.to_dict() if config is not None else {}), **options})

    with _threads(num_threads):
        gen = torch.Generator().manual_seed(seed)
        model = TinyTransformer(cfg, generator=gen)
        task = AveragingTask(cfg.T)
        eval_batch = make_batch(cfg.eval_size, cfg.T, cfg.eval_seed)
        if cfg.weight_decay > 0:
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(cfg, i, steps))
        records, times = [], []
        t0 = time.perf_counter()
        running, n_running = 0.0, 0

        def log(step: int) -> dict:
            nonlocal running, n_running
            m = evaluate(model, eval_batch)
            rec = {"step": step, "train_loss": (running / n_running) if n_running else None}
            rec.update({k: m[k] for k in _RECORD_KEYS if k in m})
            records.append({k: rec[k] for k in _RECORD_KEYS})
            times.append(time.perf_counter() - t0)
            running, n_running = 0.0, 0
            return rec

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=f"toy seed {seed}", leave=False)
        model.train()
        log(0)
        for step in range(1, steps + 1):
            batch = task.sample(cfg.batch_size, gen)
            loss = task.loss(model(batch.types, batch.values), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
            n_running += 1
            if step % cfg.log_every == 0 or step == steps:
                rec = log(step)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.2e}", catch=f"{rec['catch']:.2f}")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        model.eval()
        wall = time.perf_counter() - t0
    return TrainResult(records, model=model, config=cfg, seed=seed, steps=steps, times=times, wall_time=wall)
