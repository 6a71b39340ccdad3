"""PCGrad (Yu et al., NeurIPS 2020): project conflicting gradients."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lit_mtl.functional.aggregation import pcgrad_coefficients
from lit_mtl.weighting.gramian import GramianWeighting


class PCGrad(GramianWeighting):
    """Gradient surgery, Yu et al. 2020 (https://arxiv.org/abs/2001.06782).

    For each task i, g_i' = g_i, then for j in a random order over the other tasks:
    if g_i' . g_j < 0: g_i' -= (g_i' . g_j / ||g_j||^2) g_j. The update is sum_i g_i', which stays
    a linear combination of the g's; its coefficients are computed exactly from the Gramian.

    Args:
        target: ``"shared"`` (the paper: shared parameters) or ``"representation"`` (cheaper).
        seed: the random orders are a pure function of (seed, optimizer step), so every DDP rank
            draws the same orders and a resumed run draws the ones the uninterrupted run would.

    A zero task gradient projects nothing and keeps coefficient 1; duplicated gradients never
    conflict with each other. Scale-invariant. State: the step counter (checkpointed).
    """

    # declared state (add_state), typed for the type checker
    step: Tensor

    default_target = "shared"

    def __init__(
        self,
        num_tasks: int | None = None,
        target: str | None = None,
        seed: int = 0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(num_tasks=num_tasks, target=target, chunk_size=chunk_size)
        self.seed = int(seed)
        self.add_state("step", torch.zeros((), dtype=torch.long))

    def orders(self, num_tasks: int) -> np.ndarray:
        if num_tasks <= 2:  # at most one other task: its order cannot matter, no draw needed
            return np.array([[0]]) if num_tasks == 1 else np.array([[1, 0], [0, 1]])
        rng = np.random.default_rng([self.seed, int(self.step)])
        return np.stack([rng.permutation(num_tasks) for _ in range(num_tasks)])

    def coefficients(self, gramian: np.ndarray, losses: np.ndarray) -> np.ndarray:
        return pcgrad_coefficients(gramian, self.orders(gramian.shape[0]))

    def update(self) -> None:
        self.step += 1
