"""Pure rules of the methods that weight losses (or gradient norms): tensors in, tensors out.

No state and no device round-trips: each rule takes (T,) tensors and an optional (T,) bool
``mask`` of the tasks that take part (the others get weight / gradient 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "db_mtl_ema",
    "db_mtl_scales",
    "dwa_weights",
    "famo_logit_gradient",
    "famo_weights",
    "gradnorm_weight_gradient",
    "uncertainty_weighted_terms",
    "uncertainty_weights",
]


def _all(values: Tensor, mask: Tensor | None) -> Tensor:
    return torch.ones_like(values, dtype=torch.bool) if mask is None else mask.bool()


def dwa_weights(previous: Tensor, before_previous: Tensor, temperature: float) -> Tensor:
    """DWA (Liu et al. 2019): lambda_k = T softmax_k(r_k / Temp), r_k = L_k(t-1) / L_k(t-2).

    >>> [round(w, 5) for w in dwa_weights(torch.tensor([0.5, 1.0]), torch.ones(2), 2.0).tolist()]
    [0.87565, 1.12435]
    """
    ratio = previous / before_previous
    return previous.numel() * torch.softmax(ratio / temperature, dim=0)


def uncertainty_weights(log_vars: Tensor, is_regression: Tensor) -> Tensor:
    """Kendall et al. 2018: effective weights 0.5 exp(-s_i) (regression), exp(-s_i) (other)."""
    return torch.where(is_regression, 0.5, 1.0) * torch.exp(-log_vars)


def uncertainty_weighted_terms(losses: Tensor, log_vars: Tensor, is_regression: Tensor) -> Tensor:
    """Per-task terms of Kendall et al.'s objective, with s_i = log sigma_i^2.

    regression:      0.5 * exp(-s_i) * L_i + 0.5 * s_i
    classification:        exp(-s_i) * L_i + 0.5 * s_i
    """
    return uncertainty_weights(log_vars, is_regression) * losses + 0.5 * log_vars


def gradnorm_weight_gradient(
    weights: Tensor,
    grad_norms: Tensor,
    losses: Tensor,
    initial_losses: Tensor,
    alpha: float,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """GradNorm (Chen et al. 2018): d L_grad / d w and L_grad over the tasks in ``mask``.

    G_i = w_i ||grad_W L_i||, G_bar = mean_i G_i, Ltilde_i = L_i / L_i(0),
    r_i = Ltilde_i / mean_j Ltilde_j, target_i = G_bar r_i^alpha (held constant),
    L_grad = sum_i |G_i - target_i|,  dL_grad/dw_i = sign(G_i - target_i) ||grad_W L_i||.

    >>> grad, l_grad = gradnorm_weight_gradient(
    ...     torch.ones(2), torch.tensor([1.0, 3.0]), torch.ones(2), torch.ones(2), alpha=1.5)
    >>> grad.tolist(), l_grad.item()
    ([-1.0, 3.0], 2.0)
    """
    keep = _all(weights, mask)
    count = keep.sum().clamp(min=1)
    norms = torch.where(keep, grad_norms, 0.0)
    g = weights * norms
    ratios = torch.where(keep, losses / torch.where(keep, initial_losses, 1.0), 0.0)
    mean_ratio = ratios.sum() / count
    g_bar = g.sum() / count
    target = g_bar * (ratios / mean_ratio) ** alpha
    diffs = torch.where(keep, g - target, 0.0)
    return torch.sign(diffs) * norms, diffs.abs().sum()


def _masked_softmax(logits: Tensor, keep: Tensor) -> Tensor:
    z = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=0)
    return torch.where(keep, z, 0.0)


def famo_weights(
    logits: Tensor, losses: Tensor, min_losses: Tensor, mask: Tensor | None = None
) -> Tensor:
    """FAMO (Liu et al. 2023): w_i = c z_i / l_i, z = softmax(xi), l = L - L_min + 1e-8,
    c = 1 / sum_j z_j / l_j (the weights of the tasks in ``mask`` sum to 1).

    The gradient of sum_i w_i L_i equals that of the authors' sum_i (z_i / c') log l_i.

    >>> famo_weights(torch.zeros(2), torch.tensor([1.0, 3.0]), torch.zeros(2)).tolist()
    [0.75, 0.25]
    """
    keep = _all(logits, mask)
    z = _masked_softmax(logits, keep)
    raw = torch.where(keep, z / (losses - min_losses + 1e-8), 0.0)
    return raw / raw.sum().clamp(min=torch.finfo(raw.dtype).tiny)


def famo_logit_gradient(
    logits: Tensor,
    before: Tensor,
    after: Tensor,
    min_losses: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """FAMO's delta = J_softmax(xi)^T (log l - log l'), l before and l' after the model step."""
    keep = _all(logits, mask)
    z = _masked_softmax(logits, keep)
    d = torch.where(
        keep, torch.log(before - min_losses + 1e-8) - torch.log(after - min_losses + 1e-8), 0.0
    )
    return torch.where(keep, z * (d - (z * d).sum()), 0.0)


def db_mtl_ema(
    buffer: Tensor, grads: Tensor, step: Tensor | int, beta: float, beta_sigma: float
) -> Tensor:
    """DB-MTL's gradient buffer (the authors' code): b <- g + (beta / step^beta_sigma) (b - g).

    ``step`` counts from 1; beta_sigma = 0 (their default) gives a plain EMA b <- (1 - beta) g +
    beta b (no bias correction: the first buffer is (1 - beta) g).
    """
    factor = beta / step**beta_sigma
    return grads + factor * (buffer - grads)


def db_mtl_scales(norms: Tensor, mask: Tensor | None = None) -> Tensor:
    """DB-MTL (Lin et al. 2023): alpha_i = max_j ||g_j|| / (||g_i|| + 1e-8), so every task's
    gradient is rescaled to the largest norm; 0 outside ``mask``.

    >>> db_mtl_scales(torch.tensor([1.0, 4.0])).round(decimals=5).tolist()
    [4.0, 1.0]
    """
    keep = _all(norms, mask)
    top = torch.where(keep, norms, 0.0).max()
    return torch.where(keep, top / (norms + 1e-8), 0.0)
