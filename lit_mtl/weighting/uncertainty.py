"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lit_mtl._moved import moved_names
from lit_mtl.engines.context import StepContext
from lit_mtl.functional.loss_weighting import (
    UNCERTAINTY_FORMS,
    uncertainty_form_table,
    uncertainty_weights,
)
from lit_mtl.tasks.kinds import get_kind
from lit_mtl.tasks.kinds import task_kinds as registered_kinds
from lit_mtl.weighting.base import Weighting

# a name this module re-exported before each name had one path
__getattr__ = moved_names(__name__, "lit_mtl.functional", ["uncertainty_weighted_terms"])


class UncertaintyWeighting(Weighting):
    """Homoscedastic uncertainty weighting, Kendall et al. 2018 (https://arxiv.org/abs/1705.07115).

    Learns s_i = log sigma_i^2 per task and minimises ``sum_i term_i``, each task's term the
    negative log-likelihood its loss comes from (:data:`~lit_mtl.functional.UNCERTAINTY_FORMS`):

        gaussian (MSE: regression, dense_regression):   0.5 * exp(-s_i) * L_i + 0.5 * s_i
        laplace (L1: depth):                            exp(-s_i / 2) * L_i + 0.5 * s_i
        classification (cross-entropy kinds):           exp(-s_i) * L_i + 0.5 * s_i
        von_mises_fisher (1 - cosine: normals):         exp(-s_i) * L_i + s_i

    Stationary points: gaussian exp(s*) = L_i (sigma^2 = the task's MSE), laplace
    exp(s* / 2) = L_i (the scale b = the mean absolute error), classification exp(s*) = 2 L_i,
    von_mises_fisher exp(s*) = L_i (kappa = 1 / L_i). The effective task weights (logged) are
    the factors of L_i.

    Args:
        num_tasks: T (optional when used inside a MultiTaskModule, which binds it to its tasks).
        task_kinds: kind per task for drop-in use; the form of each kind is its
            :attr:`~lit_mtl.tasks.TaskKind.uncertainty_form`. Inside a MultiTaskModule the
            tasks' kinds are used.
        forms: the form per task by name (overrides the kinds; e.g. ``"laplace"`` for a
            regression task trained with an L1 loss).
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

    # declared state (add_state), typed for the type checker
    form: Tensor

    def __init__(
        self,
        num_tasks: int | None = None,
        task_kinds: Sequence[str] | None = None,
        init_log_var: float = 0.0,
        lr: float | None = None,
        forms: Sequence[str] | None = None,
    ) -> None:
        self.init_log_var = float(init_log_var)
        self.lr = lr
        self._given_forms = list(forms) if forms is not None else None
        if forms is not None:
            uncertainty_form_table(list(forms))  # an unknown name fails here, not at bind time
        given = task_kinds if task_kinds is not None else forms
        if num_tasks is None and given is not None:
            num_tasks = len(given)
        for name, values in (("task_kinds", task_kinds), ("forms", forms)):
            if num_tasks is not None and values is not None and len(values) != num_tasks:
                raise ValueError(
                    f"UncertaintyWeighting: num_tasks={num_tasks} but {len(values)} {name}"
                )
        super().__init__(num_tasks=num_tasks, task_kinds=task_kinds)

    def build(self, num_tasks: int, task_kinds: Sequence[str] | None) -> None:
        self.log_vars = nn.Parameter(torch.full((num_tasks,), self.init_log_var))
        if self._given_forms is not None:
            forms = self._given_forms
        else:
            kinds = list(task_kinds) if task_kinds is not None else ["regression"] * num_tasks
            unknown = [k for k in kinds if k not in registered_kinds()]
            if unknown:
                raise ValueError(
                    f"UncertaintyWeighting: no uncertainty form for task kind(s) {unknown}; "
                    f"pass forms= (one of {sorted(UNCERTAINTY_FORMS)}) per task"
                )
            forms = [get_kind(k).uncertainty_form for k in kinds]
        self.forms = list(forms)
        # derived from the tasks' kinds (part of the model's arguments): not checkpointed
        self.add_state("form", uncertainty_form_table(self.forms), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints before the per-kind forms stored a bool `is_regression`, now derived
        state_dict.pop(prefix + "is_regression", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def combine(self, ctx: StepContext) -> Tensor:
        losses, present = ctx.stacked, ctx.present
        log_vars = self.log_vars.to(losses.dtype)
        form = self.form.to(losses.dtype)
        weights = uncertainty_weights(log_vars, form)
        self.last_weights = (weights * present).detach()
        terms = weights * losses + form[:, 2] * log_vars  # uncertainty_weighted_terms, reused
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
