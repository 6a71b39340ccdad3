"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_mtl.functional.distributed import all_reduce_sum
from lit_mtl.weighting.base import Weighting

__all__ = ["DWA", "dwa_weights"]


def dwa_weights(previous: Tensor, before_previous: Tensor, temperature: float) -> Tensor:
    """lambda_k = T softmax_k(r_k / Temp), r_k = L_k(t-1) / L_k(t-2) (epoch-average losses)."""
    ratio = previous / before_previous
    return previous.numel() * torch.softmax(ratio / temperature, dim=0)


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

    def __init__(self, num_tasks: int | None = None, temperature: float = 2.0) -> None:
        if temperature <= 0:
            raise ValueError(f"DWA: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        super().__init__(num_tasks=num_tasks)

    def _build(self, num_tasks: int, task_kinds: Sequence[str]) -> None:
        self.register_buffer("epoch_sum", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("epoch_count", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("history", torch.full((2, num_tasks), float("nan")))
        self.register_buffer("epochs_closed", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(num_tasks))

    def combine(self, losses: Tensor, *, present: Tensor, **_: object) -> Tensor:
        with torch.no_grad():
            self.epoch_sum += (losses.detach() * present).to(torch.float64)
            self.epoch_count += present.to(torch.float64)
        return self._weighted_sum(self.weights, losses, present)

    @torch.no_grad()
    def on_train_epoch_start(self) -> None:
        count = all_reduce_sum(self.epoch_count)
        if float(count.sum()) == 0:
            return
        total = all_reduce_sum(self.epoch_sum)
        average = torch.where(count > 0, total / count.clamp(min=1), self.history[1].double())
        self.history[0] = self.history[1]
        self.history[1] = average.to(self.history.dtype)
        self.epochs_closed += 1
        self.epoch_sum.zero_()
        self.epoch_count.zero_()
        if int(self.epochs_closed) >= 2 and bool(torch.isfinite(self.history).all()):
            self.weights.copy_(dwa_weights(self.history[1], self.history[0], self.temperature))

    def extra_repr(self) -> str:
        return f"num_tasks={self._num_tasks}, temperature={self.temperature}"
