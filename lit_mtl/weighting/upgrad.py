"""UPGrad (Quinton & Rey, 2024): project each task gradient onto the dual cone of all of them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lit_mtl.functional.aggregation import upgrad_coefficients
from lit_mtl.weighting.gramian import GramianWeighting


class UPGrad(GramianWeighting):
    """UPGrad, Quinton & Rey 2024 (https://arxiv.org/abs/2406.16232), TorchJD's default.

    With G = J J^T: for each task i, v^(i) = argmin_{v >= p_i e_i} v^T G v (the weights of the
    projection of p_i g_i onto the dual cone {d : J d >= 0}); the update is J^T sum_i v^(i). It
    conflicts with no task (every g_i . d >= 0) and is sum_i p_i g_i when no gradients conflict.
    Solved exactly on the Gramian by an active-set method (no QP package).

    Args:
        target: ``"shared"`` (default, as TorchJD's ``mtl_backward``) or ``"representation"``.
        preference: p (default 1/T each: the mean).
        norm_eps: as the authors' code: G is divided by its trace, ``reg_eps`` added to
            its diagonal.
        reg_eps: as ``norm_eps``.

    A zero task gradient is projected like any other (it keeps its own coefficient p_i for its
    head and constrains nothing); duplicated or dependent gradients need no special case (the
    ridge ``reg_eps`` keeps the QPs positive definite). Scale-invariant (the trace
    normalisation); DDP and cost as every Gramian method.
    """

    default_target = "shared"

    def __init__(
        self,
        num_tasks: int | None = None,
        target: str | None = None,
        preference: Sequence[float] | None = None,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(num_tasks=num_tasks, target=target, chunk_size=chunk_size)
        self.preference = None if preference is None else [float(p) for p in preference]
        self.norm_eps = float(norm_eps)
        self.reg_eps = float(reg_eps)

    def coefficients(self, gramian: np.ndarray, losses: np.ndarray) -> np.ndarray:
        p = None
        if self.preference is not None:
            if len(self.preference) != self.num_tasks:
                raise ValueError(
                    f"UPGrad: preference has {len(self.preference)} entries for "
                    f"{self.num_tasks} tasks"
                )
            if gramian.shape[0] == self.num_tasks:
                p = np.array(self.preference)
        return upgrad_coefficients(gramian, p, self.norm_eps, self.reg_eps)
