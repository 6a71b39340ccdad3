"""A functional Adam step on T floats, for weights learned outside the task loss.

GradNorm's w and FAMO's logits are updated by their weighting with this step; its moments live in
the weighting's buffers, so the module's ``state_dict`` (and so every checkpoint) carries them.
The update touches T numbers once per optimizer step, so the weightings read and write their
buffers through host (numpy) views (:func:`host_arrays`) and do the math on Python floats: a few
microseconds instead of a dozen tensor ops.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

__all__ = ["adam_step", "host_arrays"]


def adam_step(
    param: Sequence[float],
    grad: Sequence[float],
    exp_avg: Sequence[float],
    exp_avg_sq: Sequence[float],
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> tuple[list[float], list[float], list[float]]:
    """One Adam step (Kingma & Ba) with L2 weight decay as in ``torch.optim.Adam``, on T floats.

    ``step`` is the step's number (1 for the first step). Returns the new (param, exp_avg,
    exp_avg_sq); plain float math, as the weightings update T numbers once per optimizer step.

    >>> p, m, v = adam_step([0.0, 0.0], [1.0, -2.0], [0.0, 0.0], [0.0, 0.0], step=1, lr=0.1)
    >>> [round(x, 6) for x in p]
    [-0.1, 0.1]
    """
    beta1, beta2 = betas
    bias1 = 1 - beta1**step
    bias2 = 1 - beta2**step
    new_param, new_avg, new_avg_sq = [], [], []
    for x, g, m, v in zip(param, grad, exp_avg, exp_avg_sq, strict=True):
        g = g + weight_decay * x
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        new_param.append(x - (lr / bias1) * m / (math.sqrt(v / bias2) + eps))
        new_avg.append(m)
        new_avg_sq.append(v)
    return new_param, new_avg, new_avg_sq


@contextmanager
def host_arrays(module: torch.nn.Module, names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
    """Numpy arrays of ``module``'s own named buffers, for small per-step math on the host.

    On the CPU (and a numpy dtype) each array *is* the buffer's memory, so in-place changes are
    the update (the views are cached on the module while the buffers keep their memory);
    otherwise (an accelerator, half precision) the arrays are float copies written back into the
    buffers when the block ends.
    """
    cache: dict[str, tuple[Tensor, int, np.ndarray]] = module.__dict__.setdefault(
        "_host_array_views", {}
    )
    arrays: dict[str, np.ndarray] = {}
    copied: list[tuple[Tensor, np.ndarray]] = []
    for name in names:
        buffer = module._buffers[name]
        assert buffer is not None, name
        hit = cache.get(name)
        if hit is not None and hit[0] is buffer and hit[1] == buffer.data_ptr():
            arrays[name] = hit[2]
        elif buffer.device.type == "cpu" and buffer.dtype not in (torch.bfloat16, torch.float16):
            arrays[name] = buffer.detach().numpy()  # the buffer's own memory
            cache[name] = (buffer, buffer.data_ptr(), arrays[name])
        else:  # a float copy, written back at the end
            host = buffer.detach().cpu()
            if host.dtype in (torch.bfloat16, torch.float16):
                host = host.float()
            arrays[name] = host.numpy()
            copied.append((buffer, arrays[name]))
    try:
        yield arrays
    finally:
        for buffer, array in copied:
            buffer.copy_(torch.from_numpy(array))
