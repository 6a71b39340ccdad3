"""FAMO (Liu, Liang, Li, Zhang, Liu, NeurIPS 2023): fast adaptive multitask optimization."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_mtl.engines.context import StepContext
from lit_mtl.engines.distributed import masked_mean_over_ranks
from lit_mtl.functional.arrays import as_array_like, assign_where, widened
from lit_mtl.functional.loss_weighting import (
    famo_logit_gradient,
    famo_weights,
)
from lit_mtl.functional.optim import adam_step
from lit_mtl.weighting.base import Weighting


class FAMO(Weighting):
    """FAMO, Liu et al. 2023 (https://arxiv.org/abs/2306.03792).

    Logits xi (init 0), z = softmax(xi); the network gets sum_i w_i L_i with
    w_i = c z_i / l_i, c = 1 / sum_j (z_j / l_j), l = L - L_min + 1e-8 (weights sum to 1). After the
    model step the losses l' of the same batch are recomputed (one extra forward, no backward) and
    xi takes an Adam step (lr 0.025, weight decay gamma = 0.001) along
    delta = J_softmax(xi)^T (log l - log l'). O(1) in T: no per-task gradients.

    Args:
        lr: the logits' learning rate (paper: 0.025).
        weight_decay: gamma (paper: 0.001).
        min_losses: L_min per task (default 0).

    The losses after the step come from the step context's ``recompute_losses`` (MultiTaskModule
    provides it); in your own loop pass ``recompute_losses=`` to the weighting, or call
    :meth:`apply_losses_after_step` after the step. Under gradient accumulation the last
    micro-batch is the one recomputed. DDP: the losses before and after the step are averaged
    across ranks, so every rank applies the same update to xi. State (checkpointed): xi, its Adam
    moments, the last losses. The update runs on the state's own memory (numpy on the CPU, torch
    on an accelerator): no host copy per step.
    """

    # declared state (add_state), typed for the type checker
    logits: Tensor
    min_losses: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    adam_step: Tensor
    prev_losses: Tensor
    prev_present: Tensor

    def __init__(
        self,
        num_tasks: int | None = None,
        lr: float = 0.025,
        weight_decay: float = 0.001,
        min_losses: Sequence[float] | None = None,
    ) -> None:
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self._min_losses = list(min_losses) if min_losses is not None else None
        super().__init__(num_tasks=num_tasks)

    def build(self, num_tasks: int, task_kinds: Sequence[str]) -> None:
        if self._min_losses is not None and len(self._min_losses) != num_tasks:
            raise ValueError(
                f"FAMO: min_losses has {len(self._min_losses)} entries for {num_tasks} tasks"
            )
        mins = self._min_losses if self._min_losses is not None else [0.0] * num_tasks
        self.add_state("logits", torch.zeros(num_tasks))
        self.add_state("min_losses", torch.tensor(mins, dtype=torch.float32))
        self.add_state("exp_avg", torch.zeros(num_tasks))
        self.add_state("exp_avg_sq", torch.zeros(num_tasks))
        self.add_state("adam_step", torch.zeros(()))
        self.add_state("prev_losses", torch.zeros(num_tasks))
        self.add_state("prev_present", torch.zeros(num_tasks, dtype=torch.bool))

    def combine(self, ctx: StepContext) -> Tensor:
        mean_losses, present_all = ctx.rank_mean_losses
        state = self.state_arrays("logits", "min_losses", "prev_losses", "prev_present")
        losses = as_array_like(mean_losses, state["logits"], wide=True)
        present = as_array_like(present_all, state["logits"])
        state["prev_losses"][...] = losses
        state["prev_present"][...] = present
        weights = famo_weights(
            widened(state["logits"]), losses, widened(state["min_losses"]), present
        )
        weights = torch.as_tensor(weights, device=ctx.stacked.device, dtype=ctx.stacked.dtype)
        return self._weighted_sum(weights, ctx.stacked, present_all)

    def update(self) -> None:
        if self._last_recompute is None:
            raise RuntimeError(
                "FAMO needs the losses of the same batch after the optimizer step: pass "
                "recompute_losses=... in the step context (MultiTaskModule does), or call "
                "famo.apply_losses_after_step(losses_after) after the step yourself"
            )
        after, present = self._last_recompute()
        self.apply_losses_after_step(after, present)

    @torch.no_grad()
    def apply_losses_after_step(self, losses_after: Tensor, present: Tensor | None = None) -> None:
        """xi <- Adam step along J_softmax^T (log l - log l'), l' = ``losses_after`` (T,)."""
        if present is None:
            present = torch.ones_like(self.prev_present)
        after, present_all = masked_mean_over_ranks(losses_after.detach().float(), present.bool())
        state = self.state_arrays(*self._UPDATE_STATE)
        logits = state["logits"]
        after = as_array_like(after, logits, wide=True)
        both = as_array_like(present_all, logits) & state["prev_present"]
        usable = both.sum() >= 2  # no branch on it: on an accelerator nothing waits for the host
        logits = widened(logits)
        grad = famo_logit_gradient(
            logits, widened(state["prev_losses"]), after, widened(state["min_losses"]), both
        )
        step = widened(state["adam_step"]) + 1
        new_logits, exp_avg, exp_avg_sq = adam_step(
            logits,
            grad,
            widened(state["exp_avg"]),
            widened(state["exp_avg_sq"]),
            step,
            lr=self.lr,
            weight_decay=self.weight_decay,
        )
        assign_where(
            state, usable, logits=new_logits, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, adam_step=step
        )

    #: the state of the logits' own update
    _UPDATE_STATE = (
        "logits",
        "min_losses",
        "exp_avg",
        "exp_avg_sq",
        "adam_step",
        "prev_losses",
        "prev_present",
    )
