"""A functional Adam step on T numbers, for weights learned outside the task loss.

GradNorm's w and FAMO's logits are updated by their weighting with this step; the moments live in
the weighting's declared state, so every checkpoint carries them. Array math on the memory the
state lives in (torch tensors on any device, or numpy arrays): no host round-trip per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Array = Any  # a torch tensor or a numpy array


def adam_step(
    param: Array,
    grad: Array,
    exp_avg: Array,
    exp_avg_sq: Array,
    step: Array | int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> tuple[Array, Array, Array]:
    """One Adam step (Kingma & Ba) with L2 weight decay as in ``torch.optim.Adam``.

    ``step`` is the step's number (1 for the first step; an array keeps it on the device).
    Returns the new (param, exp_avg, exp_avg_sq); the inputs are not modified.

    Examples:
        >>> import torch
        >>> zeros = torch.zeros(2, dtype=torch.float64)
        >>> p, m, v = adam_step(zeros, torch.tensor([1.0, -2.0], dtype=torch.float64), zeros, zeros,
        ...                     step=1, lr=0.1)
        >>> [round(x, 6) for x in p.tolist()]
        [-0.1, 0.1]
    """
    beta1, beta2 = betas
    grad = grad + weight_decay * param if weight_decay else grad
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    bias1 = 1 - beta1**step
    bias2 = 1 - beta2**step
    denom = (exp_avg_sq / bias2) ** 0.5 + eps
    return param - (lr / bias1) * exp_avg / denom, exp_avg, exp_avg_sq


def split_weight_decay(groups: Sequence[dict]) -> list[dict]:
    """Each param group in two: its parameters of two or more dimensions as they were, the
    others (biases, norms' scales) with ``weight_decay=0`` (named ``{name}/no_decay``);
    empty groups are left out.

    Examples:
        >>> from torch import nn
        >>> layer = nn.Linear(2, 3)
        >>> groups = split_weight_decay([{"params": list(layer.parameters()), "name": "a"}])
        >>> [(g["name"], len(g["params"]), g.get("weight_decay")) for g in groups]
        [('a', 1, None), ('a/no_decay', 1, 0.0)]
    """
    out: list[dict] = []
    for group in groups:
        params = list(group["params"])
        matrices = [p for p in params if p.dim() >= 2]
        vectors = [p for p in params if p.dim() < 2]
        if matrices:
            out.append({**group, "params": matrices})
        if vectors:
            name = group.get("name", f"group{len(out)}")
            out.append(
                {**group, "params": vectors, "name": f"{name}/no_decay", "weight_decay": 0.0}
            )
    return out
