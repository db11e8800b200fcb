"""softmax₁, defined once for numpy arrays and torch tensors.

Both :mod:`sinkwidgets.lessons.handmade` (the hand-made numpy head of tutorial 02) and :mod:`sinkwidgets.toy.model`
(``attn="softmax1"`` in the trainable toy) call this one function. It imports only numpy; a torch tensor is
handled with torch's own functions (torch accepts numpy's ``axis`` / ``keepdims`` spellings), so the toy keeps its
dtype, device and autograd graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["softmax1"]


def softmax1(z: Any, axis: int = -1) -> Any:
    """softmax₁ along ``axis``: :math:`a_j = e^{z_j} / (1 + \\sum_i e^{z_i})` (Xiao et al. 2024, StreamingLLM, Eq. 2).

    The ``1`` is :math:`e^0`, the weight an extra key with logit 0 would get: softmax₁ equals an ordinary softmax
    over ``[z, 0]`` with the last (null) entry dropped, i.e. attention with one more all-zero key and value. The
    weights sum to less than one. Computed stably: with :math:`m = \\max(0, \\max_j z_j)`,
    :math:`a_j = e^{z_j - m} / (e^{-m} + \\sum_i e^{z_i - m})`; ``-inf`` entries get 0.

    Parameters
    ----------
    z : numpy array (or anything ``np.asarray`` takes) or torch.Tensor, any shape
        Logits. A numpy input is computed in float64; a tensor keeps its dtype and device, and ``m`` is detached
        (it cancels out of the result, so gradients are unchanged).
    axis : int
        The axis that is normalised (the keys), default the last.

    Returns
    -------
    Same type and shape as ``z``.
    """
    if type(z).__module__.startswith("torch"):
        import torch as xp  # already imported by whoever made the tensor
    else:
        xp = np
        z = np.asarray(z, dtype=np.float64)
    m = xp.amax(z, axis=axis, keepdims=True).clip(min=0.0)
    if xp is not np:
        m = m.detach()
    e = xp.exp(z - m)
    return e / (xp.exp(-m) + e.sum(axis=axis, keepdims=True))
