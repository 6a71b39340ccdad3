"""FAMO (Liu, Liang, Li, Zhang, Liu, NeurIPS 2023): fast adaptive multitask optimization."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_mtl.functional.distributed import masked_mean_over_ranks
from lit_mtl.functional.optim import adam_step
from lit_mtl.weighting.base import Weighting

__all__ = ["FAMO", "famo_logit_gradient", "famo_weights"]


def famo_weights(logits: Tensor, losses: Tensor, min_losses: Tensor) -> Tensor:
    """w_i = c z_i / l_i, z = softmax(xi), l = L - L_min + 1e-8, c = 1 / sum_j z_j / l_j (sum 1).

    The gradient of sum_i w_i L_i equals that of the authors' sum_i (z_i / c') log l_i.
    """
    z = torch.softmax(logits, dim=0)
    shifted = losses - min_losses + 1e-8
    raw = z / shifted
    return raw / raw.sum()


def famo_logit_gradient(
    logits: Tensor, before: Tensor, after: Tensor, min_losses: Tensor
) -> Tensor:
    """delta = J_softmax(xi)^T (log l - log l'), l before and l' after the model step."""
    z = torch.softmax(logits, dim=0)
    d = torch.log(before - min_losses + 1e-8) - torch.log(after - min_losses + 1e-8)
    return z * (d - (z * d).sum())


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

    Under gradient accumulation the last micro-batch is the one recomputed. DDP: the losses before
    and after the step are averaged across ranks, so every rank applies the same update to xi.
    State (checkpointed): xi, its Adam moments, the last losses.
    """

    needs_losses_after_step = True

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

    def _build(self, num_tasks: int, task_kinds: Sequence[str]) -> None:
        if self._min_losses is not None and len(self._min_losses) != num_tasks:
            raise ValueError(
                f"FAMO: min_losses has {len(self._min_losses)} entries for {num_tasks} tasks"
            )
        mins = self._min_losses if self._min_losses is not None else [0.0] * num_tasks
        self.register_buffer("logits", torch.zeros(num_tasks))
        self.register_buffer("min_losses", torch.tensor(mins, dtype=torch.float32))
        self.register_buffer("exp_avg", torch.zeros(num_tasks))
        self.register_buffer("exp_avg_sq", torch.zeros(num_tasks))
        self.register_buffer("adam_step", torch.zeros(()))
        self.register_buffer("prev_losses", torch.zeros(num_tasks))
        self.register_buffer("prev_present", torch.zeros(num_tasks, dtype=torch.bool))

    def combine(self, losses: Tensor, *, present: Tensor, **_: object) -> Tensor:
        mean_losses, present_all = masked_mean_over_ranks(losses, present)
        with torch.no_grad():
            self.prev_losses.copy_(mean_losses)
            self.prev_present.copy_(present_all)
            weights = torch.zeros_like(self.logits)
            idx = present_all.nonzero().flatten()
            if idx.numel():
                weights[idx] = famo_weights(
                    self.logits[idx], mean_losses[idx], self.min_losses[idx]
                )
        return self._weighted_sum(weights.to(losses.dtype), losses, present_all)

    @torch.no_grad()
    def on_optimizer_step(self, recompute_losses=None) -> None:  # type: ignore[no-untyped-def]
        if recompute_losses is None:
            raise RuntimeError(
                "FAMO.on_optimizer_step needs recompute_losses (the losses of the same batch after "
                "the step); MultiTaskModule passes it. In your own loop call "
                "famo.update(losses_after_step)."
            )
        after, present = recompute_losses()
        self.update(after, present)

    @torch.no_grad()
    def update(self, losses_after: Tensor, present: Tensor | None = None) -> None:
        """xi <- Adam step along J_softmax^T (log l - log l') (drop-in use: call after the step)."""
        if present is None:
            present = torch.ones_like(self.prev_present)
        after, present_all = masked_mean_over_ranks(losses_after.float(), present.bool())
        both = present_all & self.prev_present
        if int(both.sum()) < 2:
            return
        idx = both.nonzero().flatten()
        grad = torch.zeros_like(self.logits)
        grad[idx] = famo_logit_gradient(
            self.logits[idx], self.prev_losses[idx], after[idx], self.min_losses[idx]
        )
        adam_step(
            self.logits,
            grad,
            self.exp_avg,
            self.exp_avg_sq,
            self.adam_step,
            lr=self.lr,
            weight_decay=self.weight_decay,
        )
