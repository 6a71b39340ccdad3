"""MGDA (Sener & Koltun, NeurIPS 2018): the min-norm point of the task gradients' convex hull."""

from __future__ import annotations

from typing import Literal

import numpy as np

from lit_mtl.functional.aggregation import min_norm_coefficients
from lit_mtl.weighting.gramian import GramianWeighting

Normalization = Literal["none", "l2", "loss", "loss+"]


class MGDA(GramianWeighting):
    """Multiple-gradient descent, Sener & Koltun 2018 (https://arxiv.org/abs/1810.04650).

    c = argmin_{c in simplex} || sum_i c_i g_i ||^2 (Frank-Wolfe in the paper; solved exactly here
    by Wolfe's min-norm-point algorithm on the Gramian). Two tasks: the closed form
    gamma = clip(((g2 - g1) . g2) / ||g1 - g2||^2, 0, 1). The coefficients sum to 1.

    Args:
        target: ``"shared"`` (all shared parameters, the paper's MGDA) by default;
            ``"representation"`` is MGDA-UB (see :class:`MGDAUB`).
        normalization: as in the authors' code, the gradients are divided by n_i before solving:
            ``"none"`` (default, the paper's algorithm), ``"l2"`` (n_i = ||g_i||), ``"loss"``
            (n_i = L_i), ``"loss+"`` (n_i = L_i ||g_i||). As in their code the solution is then
            applied to the unnormalised losses.

    A zero task gradient puts 0 in the convex hull: the min-norm point is 0 (the point is
    Pareto-stationary, as the paper defines it), the zero task gets coefficient 1 and the others
    0. Duplicated or dependent gradients need no special case. Scale-invariant; DDP and cost as
    in :class:`~lit_mtl.weighting.gramian.GramianWeighting`.
    """

    default_target = "shared"

    def __init__(
        self,
        num_tasks: int | None = None,
        target: str | None = None,
        normalization: Normalization = "none",
        chunk_size: int | None = None,
    ) -> None:
        if normalization not in ("none", "l2", "loss", "loss+"):
            raise ValueError(
                f"normalization must be 'none', 'l2', 'loss' or 'loss+', got {normalization!r}"
            )
        super().__init__(num_tasks=num_tasks, target=target, chunk_size=chunk_size)
        self.normalization = normalization

    def coefficients(self, gramian: np.ndarray, losses: np.ndarray) -> np.ndarray:
        norms = np.sqrt(np.maximum(np.diag(gramian), 1e-300))
        if self.normalization == "l2":
            n = norms
        elif self.normalization == "loss":
            n = np.maximum(losses, 1e-12)
        elif self.normalization == "loss+":
            n = np.maximum(losses, 1e-12) * norms
        else:
            n = np.ones_like(norms)
        return min_norm_coefficients(gramian / np.outer(n, n))


class MGDAUB(MGDA):
    """MGDA-UB (Sener & Koltun 2018): MGDA on the gradients w.r.t. the shared representation z,
    an upper bound that needs only one backward through the encoder."""

    def __init__(
        self,
        num_tasks: int | None = None,
        normalization: Normalization = "none",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(num_tasks, "representation", normalization, chunk_size)
