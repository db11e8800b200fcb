"""The averaging task: a sequence with one ``SEP``; predict the running mean of the numbers after it.

Each sequence has length ``T`` (BOS included):

* position 0 is ``BOS``;
* one ``SEP`` sits at a uniform random position ``s ∈ [1, T-2]`` (so at least one number follows it);
* every other position is a ``NUM`` token carrying a scalar value ``v_t ~ N(0, 1)`` (``v_t = 0`` on BOS/SEP).

The target at every position ``t > s`` is the running mean of the values after SEP,

.. math::  y_t = \\frac{1}{t - s} \\sum_{s < j \\le t} v_j ,

and the loss is the mean squared error over the post-SEP positions only (``mask``). This is our own
reconstruction of the paper's minimal problem (Zhang, Khan & Papyan, arXiv 2502.00919, §7): the paper's
exact setup (value distribution, lengths) is not public, see ``mechanism-spec.md`` §1.8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SinkwidgetsValueError

BOS, SEP, NUM = 0, 1, 2
TOKEN_TYPES = ("<bos>", "<sep>", "<num>")
MIN_T = 4


def _check_T(T: int) -> int:
    if isinstance(T, bool) or not isinstance(T, int) or T < MIN_T:
        raise SinkwidgetsValueError(f"sequence length T={T!r} is invalid: T must be an integer >= {MIN_T} "
                                    "(BOS, SEP and at least two numbers)")
    return T


@dataclass
class Batch:
    """One batch of averaging sequences (all tensors on CPU).

    Attributes
    ----------
    types : LongTensor ``[B, T]``
        Token type per position: ``BOS=0``, ``SEP=1``, ``NUM=2``.
    values : FloatTensor ``[B, T]``
        The scalar of each NUM token (0 on BOS and SEP).
    target : FloatTensor ``[B, T]``
        Running mean of the values after SEP at positions ``t > s`` (0 elsewhere).
    mask : BoolTensor ``[B, T]``
        ``True`` at the post-SEP positions ``t > s`` (where the loss is taken).
    sep : LongTensor ``[B]``
        SEP position ``s`` of each sequence.
    """

    types: torch.Tensor
    values: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    sep: torch.Tensor

    def __len__(self) -> int:
        return int(self.types.shape[0])

    @property
    def T(self) -> int:
        """Sequence length (BOS included)."""
        return int(self.types.shape[1])

    def __getitem__(self, idx) -> Batch:
        """Sub-batch (an ``int`` keeps the batch dimension, giving a batch of one)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return Batch(self.types[idx], self.values[idx], self.target[idx], self.mask[idx], self.sep[idx])

    def tokens(self, index: int = 0) -> list[str]:
        """Readable tokens of one sequence: ``"<bos>"``, ``"<sep>"`` and signed values such as ``"+0.53"``."""
        out = []
        for ty, v in zip(self.types[index].tolist(), self.values[index].tolist(), strict=True):
            out.append(TOKEN_TYPES[ty] if ty != NUM else f"{v:+.2f}")
        return out


def make_batch(batch_size: int, T: int = 16, generator: torch.Generator | int | None = None) -> Batch:
    """Sample ``batch_size`` sequences of the averaging task.

    Parameters
    ----------
    batch_size : int
        Number of sequences ``B`` (>= 1).
    T : int
        Sequence length including BOS (>= 4).
    generator : torch.Generator, int or None
        Source of randomness. An ``int`` is used as a seed for a fresh generator, so
        ``make_batch(8, 16, 0)`` is reproducible; ``None`` uses torch's global generator.

    Returns
    -------
    Batch
        ``types``/``values``/``target``/``mask`` of shape ``[B, T]`` and ``sep`` of shape ``[B]``.
    """
    T = _check_T(T)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SinkwidgetsValueError(f"batch_size={batch_size!r} is invalid: it must be a positive integer")
    if isinstance(generator, int) and not isinstance(generator, bool):
        generator = torch.Generator().manual_seed(generator)
    B = batch_size
    sep = torch.randint(1, T - 1, (B,), generator=generator)  # s in [1, T-2]
    pos = torch.arange(T)
    types = torch.full((B, T), NUM, dtype=torch.long)
    types[:, 0] = BOS
    types[torch.arange(B), sep] = SEP
    values = torch.randn(B, T, generator=generator)
    values = torch.where(types == NUM, values, torch.zeros(()))
    mask = pos[None, :] > sep[:, None]
    csum = torch.cumsum(values * mask, dim=1)
    count = torch.cumsum(mask.to(values.dtype), dim=1)
    target = torch.where(mask, csum / count.clamp(min=1.0), torch.zeros(()))
    return Batch(types=types, values=values, target=target, mask=mask, sep=sep)


class AveragingTask:
    """The averaging task as an object: ``task.sample(B, generator)`` → :class:`Batch`.

    Parameters
    ----------
    T : int
        Sequence length including BOS (default 16, >= 4).
    """

    def __init__(self, T: int = 16):
        self.T = _check_T(T)

    def sample(self, batch_size: int, generator: torch.Generator | int | None = None) -> Batch:
        """Sample a batch, see :func:`make_batch`."""
        return make_batch(batch_size, self.T, generator)

    @staticmethod
    def loss(pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Masked MSE, ``Σ_{b,t} m_bt (ŷ_bt − y_bt)² / Σ m_bt`` over post-SEP positions."""
        m = batch.mask.to(pred.dtype)
        return ((pred - batch.target) ** 2 * m).sum() / m.sum()

    def __repr__(self) -> str:
        return f"AveragingTask(T={self.T})"
