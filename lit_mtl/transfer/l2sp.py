"""L2-SP (Li, Grandvalet & Davoine, ICML 2018): regularise toward the source weights."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn


def is_l2sp_weight(module: nn.Module, name: str) -> bool:
    """Weight matrices / kernels only (the authors' choice): not biases, not normalisation."""
    return name == "weight" and not isinstance(
        module, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm
    )


def l2sp_penalty(
    transferred: Mapping[str, tuple[Tensor, Tensor]],
    new_weights: Iterable[Tensor],
    alpha: float,
    beta: float,
) -> Tensor:
    """Omega = alpha/2 sum ||w - w_source||^2 (transferred) + beta/2 sum ||w||^2 (new weights).

    ``transferred`` maps names to (current weight, source weight) pairs.
    """
    device = next(iter(transferred.values()))[0].device if transferred else None
    total = torch.zeros((), device=device)
    for w, w0 in transferred.values():
        total = total + 0.5 * alpha * (w - w0).pow(2).sum()
    for w in new_weights:
        total = total.to(w.device) + 0.5 * beta * w.pow(2).sum()
    return total
