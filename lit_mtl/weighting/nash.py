"""Nash-MTL (Navon et al., ICML 2022): multi-task learning as a bargaining game."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lit_mtl.engines.context import StepContext
from lit_mtl.functional.aggregation import nash_mtl_coefficients
from lit_mtl.weighting.gramian import GramianWeighting


class NashMTL(GramianWeighting):
    """Nash-MTL, Navon et al. 2022 (https://arxiv.org/abs/2202.01017).

    The Nash bargaining solution d = sum_i alpha_i g_i with alpha > 0 solving G alpha = 1 / alpha
    (elementwise), found exactly by damped Newton on the strictly convex
    f(alpha) = alpha^T G alpha / 2 - sum_i log alpha_i (the authors iterate CVXPY problems).

    Args:
        target: ``"shared"`` (the paper) or ``"representation"``.
        normalize_gramian: solve with G / ||G||_F for conditioning and scale the solution back,
            as the authors' code does (its constraint keeps the factor); either way alpha is the
            paper's: alpha_i (G alpha)_i = 1, ||d|| = sqrt(T) at any gradient scale
            (orthogonal gradients: alpha_i = 1 / ||g_i||).
        update_weights_every: recompute alpha every k optimizer steps (authors' option; 1 =
            every step); in between the previous alpha is reused and no gradient is computed.

    The paper clips the update norm at 1: use Lightning's ``gradient_clip_val=1.0``.
    A task with a zero gradient gets coefficient 1 (the authors' initial alpha; it trains only its
    head) and the others bargain among themselves; dependent conflicting gradients (0 in their
    convex hull) have no Nash solution: a small ridge keeps the solve finite
    (:func:`~lit_mtl.functional.nash_mtl_coefficients`).
    State: the last alpha and the step counter (checkpointed).
    """

    # declared state (add_state), typed for the type checker
    step: Tensor
    alpha: Tensor

    default_target = "shared"

    def __init__(
        self,
        num_tasks: int | None = None,
        target: str | None = None,
        normalize_gramian: bool = True,
        update_weights_every: int = 1,
        chunk_size: int | None = None,
    ) -> None:
        if update_weights_every < 1:
            raise ValueError(f"update_weights_every must be >= 1, got {update_weights_every}")
        super().__init__(num_tasks=num_tasks, target=target, chunk_size=chunk_size)
        self.normalize_gramian = bool(normalize_gramian)
        self.update_weights_every = int(update_weights_every)
        self.add_state("step", torch.zeros((), dtype=torch.long))

    def build(self, num_tasks: int, task_kinds) -> None:
        self.add_state("alpha", torch.zeros(num_tasks, dtype=torch.float64))

    def coefficients(self, gramian: np.ndarray, losses: np.ndarray) -> np.ndarray:
        return nash_mtl_coefficients(gramian, normalize=self.normalize_gramian)

    def combine(self, ctx: StepContext) -> Tensor:
        reuse = int(self.step) % self.update_weights_every != 0 and bool((self.alpha > 0).any())
        if reuse:
            return self._weighted_sum(self.alpha.to(ctx.stacked.dtype), ctx.stacked, ctx.present)
        out = super().combine(ctx)
        self.alpha.copy_(self.last_weights.to(torch.float64))
        return out

    def update(self) -> None:
        self.step += 1
