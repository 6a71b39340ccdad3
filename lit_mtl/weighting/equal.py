"""Equal and static weighting: fixed task weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_mtl.engines.context import StepContext
from lit_mtl.weighting.base import Weighting


class EqualWeighting(Weighting):
    """Equal weighting: ``L = sum_i L_i`` (w_i = 1, the weights sum to T).

    The usual baseline of every MTL paper. Cost: nothing beyond the ordinary backward.
    DDP: stateless, identical on every rank.
    """

    def combine(self, ctx: StepContext) -> Tensor:
        weights = ctx.present.to(ctx.stacked.dtype)  # 1 where present, 0 where absent
        self.last_weights = weights
        return (ctx.stacked * weights).sum()


class StaticWeighting(Weighting):
    """Static weighting: ``L = sum_i w_i L_i`` with user-chosen fixed weights.

    Args:
        weights: one non-negative weight per task (their count fixes T).
    """

    # declared state (add_state), typed for the type checker
    weights: Tensor

    def __init__(self, weights: Sequence[float]) -> None:
        values = [float(w) for w in weights]
        if not values:
            raise ValueError("StaticWeighting: weights must not be empty")
        if any(w < 0 or w != w for w in values):
            raise ValueError(f"StaticWeighting: weights must be finite and >= 0, got {values}")
        super().__init__(num_tasks=len(values))
        self.add_state("weights", torch.tensor(values, dtype=torch.float32))

    def combine(self, ctx: StepContext) -> Tensor:
        return self._weighted_sum(self.weights, ctx.stacked, ctx.present)

    def extra_repr(self) -> str:
        return f"weights={self.weights.tolist()}"
