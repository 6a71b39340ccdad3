"""CAGrad (Liu et al., NeurIPS 2021): conflict-averse gradient descent."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lit_mtl.functional.aggregation import cagrad_solve
from lit_mtl.weighting.gramian import GramianWeighting


class CAGrad(GramianWeighting):
    """Conflict-averse gradient descent, Liu et al. 2021 (https://arxiv.org/abs/2110.14048).

    d = g0 + (sqrt(phi) / ||g_w||) g_w with g0 = mean_i g_i, phi = c^2 ||g0||^2 and
    w = argmin_{w in simplex} g_w . g0 + sqrt(phi) ||g_w|| (maximises the worst local improvement
    within a ball of radius c ||g0|| around g0). c = 0 gives the mean gradient.

    Args:
        c: the radius factor (paper default 0.4).
        rescale: the authors' output scaling: 1 divides by 1 + c^2 (their default), 2 by 1 + c,
            0 none.
        target: ``"shared"`` (the paper) or ``"representation"``.

    ||d - g0|| <= c ||g0|| (rescale=0) holds on the training path because the Gramian is formed
    in float64 (from a float32 Gramian, ||g_w|| near a Pareto-stationary point is round-off).
    A zero task gradient counts in g0 like any other (it pulls the mean towards 0, as in the
    paper); dependent gradients need no special case. Scale-invariant; the inner problem is
    solved by projected gradient descent on the simplex,
    warm-started from the previous step's w (kept in a buffer, so a resumed run continues
    identically).
    """

    # declared state (add_state), typed for the type checker
    inner_w: Tensor

    default_target = "shared"
    gramian_dtype = torch.float64  # ||g_w|| near a Pareto-stationary point: see above

    def __init__(
        self,
        num_tasks: int | None = None,
        c: float = 0.4,
        rescale: int = 1,
        target: str | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if c < 0:
            raise ValueError(f"CAGrad: c must be >= 0, got {c}")
        if rescale not in (0, 1, 2):
            raise ValueError(f"CAGrad: rescale must be 0, 1 or 2, got {rescale}")
        super().__init__(num_tasks=num_tasks, target=target, chunk_size=chunk_size)
        self.c = float(c)
        self.rescale = int(rescale)

    def build(self, num_tasks: int, task_kinds) -> None:
        self.add_state("inner_w", torch.zeros(num_tasks, dtype=torch.float64))

    def coefficients(self, gramian: np.ndarray, losses: np.ndarray) -> np.ndarray:
        t = gramian.shape[0]
        previous = self.inner_w.cpu().numpy()
        warm = previous if t == len(previous) and previous.sum() > 0 else None
        coef, w = cagrad_solve(gramian, c=self.c, rescale=self.rescale, init=warm)
        if t == len(previous):
            self.inner_w.copy_(torch.as_tensor(w, dtype=torch.float64))
        return coef
