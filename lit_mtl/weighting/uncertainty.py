"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lit_mtl.engines.context import StepContext
from lit_mtl.functional.loss_weighting import uncertainty_weighted_terms, uncertainty_weights
from lit_mtl.weighting.base import Weighting

__all__ = ["UncertaintyWeighting", "uncertainty_weighted_terms", "uncertainty_weights"]


class UncertaintyWeighting(Weighting):
    """Homoscedastic uncertainty weighting, Kendall et al. 2018 (https://arxiv.org/abs/1705.07115).

    Learns s_i = log sigma_i^2 per task and minimises ``sum_i term_i`` with

        regression:      0.5 * exp(-s_i) * L_i + 0.5 * s_i
        classification:        exp(-s_i) * L_i + 0.5 * s_i

    Stationary points: regression exp(s*) = L_i (sigma^2 = the task's MSE), classification
    exp(s*) = 2 L_i. The effective task weights (logged) are 0.5 exp(-s_i) and exp(-s_i).

    Args:
        num_tasks: T (optional when used inside a MultiTaskModule, which binds it to its tasks).
        task_kinds: kind per task for drop-in use ("regression" -> regression form, anything else
            -> classification form). Inside a MultiTaskModule the tasks' kinds are used.
        init_log_var: initial s_i (paper: robust for s in [-2, 5]); default 0 (sigma = 1).
        lr: optional learning rate for the s parameters' own param group (default: the
            optimizer's). The group never has weight decay.

    The s_i are ordinary parameters trained by the task loss with the network optimizer; under DDP
    their gradients are averaged like every other parameter, so ranks stay identical. A task with
    no label in the batch contributes exactly zero (neither term). Cost: O(T), no extra backward.

    Drop-in use in any LightningModule::

        self.weighting = UncertaintyWeighting(num_tasks=2, task_kinds=["regression", "multiclass"])
        ...
        loss = self.weighting(torch.stack([loss_a, loss_b]))

    >>> import torch
    >>> weighting = UncertaintyWeighting(task_kinds=["regression", "multiclass"])
    >>> weighting(torch.tensor([2.0, 1.0])).item()  # s = 0: 0.5 * 2 + 1 * 1 (+ 0.5 * s = 0)
    2.0
    >>> weighting.last_weights.tolist()
    [0.5, 1.0]
    """

    def __init__(
        self,
        num_tasks: int | None = None,
        task_kinds: Sequence[str] | None = None,
        init_log_var: float = 0.0,
        lr: float | None = None,
    ) -> None:
        self.init_log_var = float(init_log_var)
        self.lr = lr
        self._given_kinds = list(task_kinds) if task_kinds is not None else None
        if num_tasks is None and task_kinds is not None:
            num_tasks = len(task_kinds)
        if num_tasks is not None and task_kinds is not None and len(task_kinds) != num_tasks:
            raise ValueError(
                f"UncertaintyWeighting: num_tasks={num_tasks} but {len(task_kinds)} task_kinds"
            )
        super().__init__(num_tasks=num_tasks)
        if task_kinds is not None:
            self._build(len(task_kinds), task_kinds)

    def _build(self, num_tasks: int, task_kinds: Sequence[str]) -> None:
        self.log_vars = nn.Parameter(torch.full((num_tasks,), self.init_log_var))
        self.add_state(
            "is_regression",
            torch.tensor([k == "regression" for k in task_kinds], dtype=torch.bool),
        )

    def combine(self, ctx: StepContext) -> Tensor:
        losses, present = ctx.stacked, ctx.present
        log_vars = self.log_vars.to(losses.dtype)
        weights = uncertainty_weights(log_vars, self.is_regression)
        self.last_weights = (weights * present).detach()
        terms = weights * losses + 0.5 * log_vars  # uncertainty_weighted_terms, weights reused
        return (terms * present).sum()

    @property
    def sigma(self) -> Tensor:
        """Learned sigma_i = exp(s_i / 2) (detached)."""
        return torch.exp(0.5 * self.log_vars.detach())

    def parameter_groups(self) -> list[dict]:
        group: dict = {"params": [self.log_vars], "weight_decay": 0.0, "name": "weighting"}
        if self.lr is not None:
            group["lr"] = float(self.lr)
        return [group]

    def extra_repr(self) -> str:
        return f"num_tasks={self._num_tasks}, init_log_var={self.init_log_var}"
