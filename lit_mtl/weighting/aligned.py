"""Aligned-MTL (Senushkin et al., CVPR 2023): align the gradient system's condition number."""

from __future__ import annotations

import numpy as np

from lit_mtl.functional.aggregation import aligned_mtl_coefficients
from lit_mtl.weighting.gramian import GramianWeighting


class AlignedMTL(GramianWeighting):
    """Aligned-MTL, Senushkin et al. 2023 (https://arxiv.org/abs/2305.19000).

    With G = V diag(l) V^T (rank r), the balancing matrix B = sqrt(l_min) V diag(l^{-1/2}) V^T makes
    the balanced gradients orthogonal with equal norms (condition number 1); the update is their
    sum, i.e. coefficients c = B 1 (the authors' Procrustes solver, scale mode "min").

    Args:
        target: ``"shared"`` (Aligned-MTL) or ``"representation"`` (Aligned-MTL-UB).

    Scale-invariant (B depends on ratios of eigenvalues only). Dependent task gradients: the
    rank is cut at the authors' tolerance (T * float32 eps * the largest eigenvalue), so a
    round-off eigenvalue never becomes l_min. A zero task gradient gets the others' mean
    coefficient (it trains only its head).
    """

    default_target = "shared"

    def coefficients(self, gramian: np.ndarray, losses: np.ndarray) -> np.ndarray:
        return aligned_mtl_coefficients(gramian)
