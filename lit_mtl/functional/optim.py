"""A functional Adam step on plain arrays (buffers), for weights learned outside the task loss.

GradNorm's w and FAMO's logits are updated by their weighting with this step; its moments live in
the weighting's buffers, so the module's ``state_dict`` (and so every checkpoint) carries them.
The update touches T numbers once per optimizer step, so the weightings run it on host (numpy)
views of their buffers (:func:`host_arrays`): a few microseconds instead of a dozen tensor ops.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = ["adam_step", "host_arrays"]

Array = TypeVar("Array", Tensor, np.ndarray)


def adam_step(
    param: Array,
    grad: Array,
    exp_avg: Array,
    exp_avg_sq: Array,
    step: Array,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> None:
    """In-place Adam (Kingma & Ba) with L2 weight decay as in ``torch.optim.Adam``.

    Works on torch tensors (call under ``torch.no_grad()``) and on numpy arrays alike; ``step`` is
    a 0-d counter incremented in place.

    >>> p, m, v, t = np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(())
    >>> adam_step(p, np.array([1.0, -2.0]), m, v, t, lr=0.1)
    >>> p.round(6).tolist(), float(t)
    ([-0.1, 0.1], 1.0)
    """
    step += 1
    if weight_decay:
        grad = grad + weight_decay * param
    beta1, beta2 = betas
    exp_avg *= beta1
    exp_avg += (1 - beta1) * grad
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * grad * grad
    t = float(step)
    bias1 = 1 - beta1**t
    bias2 = 1 - beta2**t
    param -= (lr / bias1) * exp_avg / ((exp_avg_sq / bias2) ** 0.5 + eps)


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
