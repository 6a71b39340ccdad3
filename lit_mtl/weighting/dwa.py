"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_mtl.engines.context import StepContext
from lit_mtl.functional.loss_weighting import dwa_weights
from lit_mtl.weighting.base import Weighting


class DWA(Weighting):
    """Dynamic Weight Average, Liu et al. 2019 (https://arxiv.org/abs/1803.10704).

    lambda_k(t) = T exp(r_k(t-1) / Temp) / sum_i exp(r_i(t-1) / Temp), with
    r_k(t-1) = L_k(t-1) / L_k(t-2) from epoch-average training losses; lambda = 1 for the first two
    epochs. The weights sum to T.

    Args:
        temperature: Temp (paper: 2).

    State (checkpointed): the running sums of this epoch's losses and the last two epoch averages.
    An epoch is closed at the start of the next one, so a checkpoint written at an epoch's end
    still carries that epoch's losses and a resumed run computes the same weights. DDP: sums and
    counts are all-reduced when an epoch is closed, so every rank holds the same history.
    Cost: O(T), no extra backward.
    """

    # declared state (add_state), typed for the type checker
    epoch_sum: Tensor
    epoch_count: Tensor
    history: Tensor
    epochs_closed: Tensor
    weights: Tensor

    def __init__(self, num_tasks: int | None = None, temperature: float = 2.0) -> None:
        if temperature <= 0:
            raise ValueError(f"DWA: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        super().__init__(num_tasks=num_tasks)

    def build(self, num_tasks: int, task_kinds: Sequence[str]) -> None:
        # this epoch's per-rank sums (summed over ranks when the epoch is closed)
        self.add_state("epoch_sum", torch.zeros(num_tasks, dtype=torch.float64), reduction="sum")
        self.add_state("epoch_count", torch.zeros(num_tasks, dtype=torch.float64), reduction="sum")
        self.add_state("history", torch.full((2, num_tasks), float("nan")))
        self.add_state("epochs_closed", torch.zeros((), dtype=torch.long))
        self.add_state("weights", torch.ones(num_tasks))

    def combine(self, ctx: StepContext) -> Tensor:
        losses, present = ctx.stacked, ctx.present
        with torch.no_grad():
            self.epoch_sum += (losses.detach() * present).to(torch.float64)
            self.epoch_count += present.to(torch.float64)
        return self._weighted_sum(self.weights, losses, present)

    @torch.no_grad()
    def on_train_epoch_start(self) -> None:
        reduced = self.reduced_state("epoch_sum", "epoch_count")
        count, total = reduced["epoch_count"], reduced["epoch_sum"]
        if float(count.sum()) == 0:
            return
        average = torch.where(count > 0, total / count.clamp(min=1), self.history[1].double())
        self.history[0] = self.history[1]
        self.history[1] = average.to(self.history.dtype)
        self.epochs_closed += 1
        self.reset_state("epoch_sum", "epoch_count")
        if int(self.epochs_closed) >= 2 and bool(torch.isfinite(self.history).all()):
            self.weights.copy_(dwa_weights(self.history[1], self.history[0], self.temperature))

    def extra_repr(self) -> str:
        return f"num_tasks={self._num_tasks}, temperature={self.temperature}"
