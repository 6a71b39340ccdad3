"""Pure rules of the methods that weight losses (or gradient norms): arrays in, arrays out.

No state and no device round-trips: each rule takes (T,) arrays and an optional (T,) bool ``mask``
of the tasks that take part (the others get weight / gradient 0). The per-step rules of GradNorm
and FAMO accept torch tensors (on any device) or numpy arrays alike (:func:`array_namespace`): a
weighting runs them on its own state's memory, with numpy where that memory is the CPU's (a few
microseconds for T numbers, against tens for torch's per-op dispatch) and with torch on an
accelerator (no copy to the host).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_mtl.functional.arrays import array_namespace

#: a torch tensor or a numpy array (the rules below accept either)
Array = Any


def _all(values: Array, mask: Array | None) -> Array:
    if mask is not None:
        return mask
    xp = array_namespace(values)
    return xp.ones_like(values, dtype=bool if xp is np else torch.bool)


def _positive(x: Array, floor: float) -> Array:
    """max(x, floor) for an array or a 0-d array."""
    return array_namespace(x).where(x > floor, x, floor)


def dwa_weights(previous: Tensor, before_previous: Tensor, temperature: float) -> Tensor:
    """DWA (Liu et al. 2019): lambda_k = T softmax_k(r_k / Temp), r_k = L_k(t-1) / L_k(t-2).

    Examples:
        >>> weights = dwa_weights(torch.tensor([0.5, 1.0]), torch.ones(2), 2.0)
        >>> [round(w, 5) for w in weights.tolist()]
        [0.87565, 1.12435]
    """
    ratio = previous / before_previous
    return previous.numel() * torch.softmax(ratio / temperature, dim=0)


#: Kendall et al.'s per-task term ``a exp(-b s) L + c s`` (s = log sigma^2) by the likelihood
#: the task loss is the negative log of, as (a, b, c); stationary point exp(b s*) = a b L / c
UNCERTAINTY_FORMS: dict[str, tuple[float, float, float]] = {
    # Gaussian, L = MSE: -log N(y; f, sigma^2) = L / (2 sigma^2) + log sigma; sigma^2* = L
    "gaussian": (0.5, 1.0, 0.5),
    # Laplace, L = mean |y - f|, scale b = sigma: L / b + log b; b* = L (the paper's L1 tasks)
    "laplace": (1.0, 0.5, 0.5),
    # softmax with temperature sigma^2 (the paper's Eq. 10 approximation); sigma^2* = 2 L
    "classification": (1.0, 1.0, 0.5),
    # von Mises-Fisher on the sphere, L = mean (1 - cos), concentration kappa = 1 / sigma^2:
    # -log vMF = kappa L - log kappa + const for large kappa; kappa* = 1 / L
    "von_mises_fisher": (1.0, 1.0, 1.0),
}


def uncertainty_form_table(forms: list[str] | tuple[str, ...]) -> Tensor:
    """(T, 3) float32 rows (a, b, c) of :data:`UNCERTAINTY_FORMS` for the named forms."""
    unknown = [f for f in forms if f not in UNCERTAINTY_FORMS]
    if unknown:
        raise ValueError(
            f"unknown uncertainty form(s) {unknown}; the forms are {sorted(UNCERTAINTY_FORMS)}"
        )
    return torch.tensor([UNCERTAINTY_FORMS[f] for f in forms], dtype=torch.float32)


def _form_rows(form: Tensor) -> Tensor:
    """(T, 3) rows from a (T, 3) table, or from a (T,) bool ``is_regression`` (True: gaussian,
    False: classification)."""
    if form.dtype == torch.bool:
        gaussian = torch.tensor(UNCERTAINTY_FORMS["gaussian"], device=form.device)
        classification = torch.tensor(UNCERTAINTY_FORMS["classification"], device=form.device)
        return torch.where(form[:, None], gaussian, classification)
    return form


def uncertainty_weights(log_vars: Tensor, form: Tensor) -> Tensor:
    """Kendall et al. 2018: the effective weight a_i exp(-b_i s_i) of each task loss.

    ``form``: the (T, 3) rows of :func:`uncertainty_form_table`, or a (T,) bool ``is_regression``
    (True: Gaussian 0.5 exp(-s); False: classification exp(-s)).

    >>> forms = uncertainty_form_table(["gaussian", "laplace"])
    >>> uncertainty_weights(torch.zeros(2), forms).tolist()
    [0.5, 1.0]
    """
    rows = _form_rows(form).to(log_vars.dtype)
    return rows[:, 0] * torch.exp(-rows[:, 1] * log_vars)


def uncertainty_weighted_terms(losses: Tensor, log_vars: Tensor, form: Tensor) -> Tensor:
    """Per-task terms of Kendall et al.'s objective, with s_i = log sigma_i^2:
    ``a_i exp(-b_i s_i) L_i + c_i s_i`` (:data:`UNCERTAINTY_FORMS`):

    gaussian:         0.5 * exp(-s_i) * L_i + 0.5 * s_i
    laplace:          exp(-s_i / 2) * L_i + 0.5 * s_i
    classification:   exp(-s_i) * L_i + 0.5 * s_i
    von_mises_fisher: exp(-s_i) * L_i + s_i
    """
    rows = _form_rows(form).to(log_vars.dtype)
    return uncertainty_weights(log_vars, rows) * losses + rows[:, 2] * log_vars


def gradnorm_weight_gradient(
    weights: Array,
    grad_norms: Array,
    losses: Array,
    initial_losses: Array,
    alpha: float,
    mask: Array | None = None,
) -> tuple[Array, Array]:
    """GradNorm (Chen et al. 2018): d L_grad / d w and L_grad over the tasks in ``mask``.

    G_i = w_i ||grad_W L_i||, G_bar = mean_i G_i, Ltilde_i = L_i / L_i(0),
    r_i = Ltilde_i / mean_j Ltilde_j, target_i = G_bar r_i^alpha (held constant),
    L_grad = sum_i |G_i - target_i|,  dL_grad/dw_i = sign(G_i - target_i) ||grad_W L_i||.

    >>> grad, l_grad = gradnorm_weight_gradient(
    ...     torch.ones(2), torch.tensor([1.0, 3.0]), torch.ones(2), torch.ones(2), alpha=1.5)
    >>> grad.tolist(), l_grad.item()
    ([-1.0, 3.0], 2.0)
    """
    xp = array_namespace(weights)
    keep = _all(weights, mask)
    count = _positive(keep.sum(), 1)
    norms = xp.where(keep, grad_norms, 0.0)
    g = weights * norms
    ratios = xp.where(keep, losses / xp.where(keep, initial_losses, 1.0), 0.0)
    mean_ratio = ratios.sum() / count
    g_bar = g.sum() / count
    diffs = xp.where(keep, g - g_bar * (ratios / mean_ratio) ** alpha, 0.0)
    return xp.sign(diffs) * norms, xp.abs(diffs).sum()


def _masked_softmax(logits: Array, keep: Array) -> Array:
    xp = array_namespace(logits)
    top = xp.where(keep, logits, logits.min()).max()
    e = xp.where(keep, xp.exp(xp.where(keep, logits, top) - top), 0.0)
    return e / _positive(e.sum(), 1e-30)


def famo_weights(
    logits: Array, losses: Array, min_losses: Array, mask: Array | None = None
) -> Array:
    """FAMO (Liu et al. 2023): w_i = c z_i / l_i, z = softmax(xi), l = L - L_min + 1e-8,
    c = 1 / sum_j z_j / l_j (the weights of the tasks in ``mask`` sum to 1).

    The gradient of sum_i w_i L_i equals that of the authors' sum_i (z_i / c') log l_i.

    >>> famo_weights(torch.zeros(2), torch.tensor([1.0, 3.0]), torch.zeros(2)).tolist()
    [0.75, 0.25]
    """
    xp = array_namespace(logits)
    keep = _all(logits, mask)
    z = _masked_softmax(logits, keep)
    raw = xp.where(keep, z / (losses - min_losses + 1e-8), 0.0)
    return raw / _positive(raw.sum(), 1e-30)


def famo_logit_gradient(
    logits: Array,
    before: Array,
    after: Array,
    min_losses: Array,
    mask: Array | None = None,
) -> Array:
    """FAMO's delta = J_softmax(xi)^T (log l - log l'), l before and l' after the model step."""
    xp = array_namespace(logits)
    keep = _all(logits, mask)
    z = _masked_softmax(logits, keep)
    d = xp.where(
        keep,
        xp.log(_positive(before - min_losses, 0.0) + 1e-8)
        - xp.log(_positive(after - min_losses, 0.0) + 1e-8),
        0.0,
    )
    return xp.where(keep, z * (d - (z * d).sum()), 0.0)


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
