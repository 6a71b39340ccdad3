"""Random Loss Weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_mtl.engines.context import StepContext
from lit_mtl.weighting.base import Weighting


class RLW(Weighting):
    """Random loss weighting, Lin et al. 2022 (https://arxiv.org/abs/2111.10603).

    w = softmax(lambda), lambda ~ N(0, I_T), resampled every optimizer step. Note: the weights sum
    to 1 (not T as for equal weighting), as in the paper; multiply the learning rate accordingly
    when comparing with equal weighting.

    Args:
        seed: the draws are a pure function of (seed, optimizer step), so every DDP rank uses the
            same weights, all micro-batches of an accumulated step share them, and a resumed run
            draws what the uninterrupted run would. State: the step counter (checkpointed).

    Cost: O(T), no extra backward.
    """

    # declared state (add_state), typed for the type checker
    step: Tensor

    def __init__(self, num_tasks: int | None = None, seed: int = 0) -> None:
        super().__init__(num_tasks=num_tasks)
        self.seed = int(seed)
        self.add_state("step", torch.zeros((), dtype=torch.long))

    def sample(self) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.step))
        return torch.softmax(torch.randn(self.num_tasks, generator=gen), dim=0)

    def combine(self, ctx: StepContext) -> Tensor:
        return self._weighted_sum(self.sample().to(ctx.stacked.device), ctx.stacked, ctx.present)

    def update(self) -> None:
        self.step += 1
