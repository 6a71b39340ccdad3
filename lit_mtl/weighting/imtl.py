"""IMTL-G (Liu et al., ICLR 2021): impartial multi-task learning, gradient part."""

from __future__ import annotations

import numpy as np

from lit_mtl.functional.aggregation import imtl_g_coefficients
from lit_mtl.weighting.gramian import GramianWeighting


class IMTLG(GramianWeighting):
    """IMTL-G, Liu et al. 2021 (https://openreview.net/forum?id=IMPnRXEWpvr).

    Finds d = sum_i a_i g_i with sum_i a_i = 1 whose projections d . u_i onto every unit task
    gradient u_i = g_i / ||g_i|| are equal: a_{2:T} = g_1 U^T (D U^T)^{-1}, a_1 = 1 - sum a_{2:T},
    D_j = g_1 - g_j, U_j = u_1 - u_j.

    Args:
        target: ``"representation"`` (the paper computes the gradients w.r.t. the shared feature z)
            or ``"shared"``.

    Scale-invariant. A zero task gradient (no unit vector) is left out of the equations and gets
    the others' mean coefficient (it trains only its head); dependent gradients are solved by
    the pseudo-inverse (exact when a solution exists, least squares otherwise), never the trivial
    d = 0 (:func:`~lit_mtl.functional.imtl_g_coefficients`).
    """

    default_target = "representation"

    def coefficients(self, gramian: np.ndarray, losses: np.ndarray) -> np.ndarray:
        return imtl_g_coefficients(gramian)
