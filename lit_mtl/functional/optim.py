"""A functional Adam step on plain tensors (buffers), for weights learned outside the task loss.

GradNorm's w and FAMO's logits are updated by their weighting with this step; its moments live in
the weighting's buffers, so the module's ``state_dict`` (and so every checkpoint) carries them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["adam_step"]


@torch.no_grad()
def adam_step(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> None:
    """In-place Adam (Kingma & Ba) with L2 weight decay as in ``torch.optim.Adam``."""
    step += 1
    if weight_decay:
        grad = grad + weight_decay * param
    beta1, beta2 = betas
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    t = float(step.item())
    bias1 = 1 - beta1**t
    bias2 = 1 - beta2**t
    denom = (exp_avg_sq / bias2).sqrt().add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias1)
