"""FAMO (Liu, Liang, Li, Zhang, Liu, NeurIPS 2023): fast adaptive multitask optimization."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lit_mtl.functional.distributed import masked_mean_over_ranks
from lit_mtl.functional.optim import adam_step, host_arrays
from lit_mtl.weighting.base import Weighting

__all__ = ["FAMO", "famo_logit_gradient", "famo_weights"]


def _softmax(logits: Sequence[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(float(x) - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def famo_weights(
    logits: Sequence[float], losses: Sequence[float], min_losses: Sequence[float]
) -> list[float]:
    """w_i = c z_i / l_i, z = softmax(xi), l = L - L_min + 1e-8, c = 1 / sum_j z_j / l_j (sum 1).

    The gradient of sum_i w_i L_i equals that of the authors' sum_i (z_i / c') log l_i. Plain float
    math on the T numbers.

    >>> [round(w, 6) for w in famo_weights([0.0, 0.0], [1.0, 3.0], [0.0, 0.0])]  # raw (1/2, 1/6)
    [0.75, 0.25]
    """
    z = _softmax(logits)
    raw = [
        zi / (float(loss) - float(low) + 1e-8)
        for zi, loss, low in zip(z, losses, min_losses, strict=True)
    ]
    total = sum(raw)
    return [r / total for r in raw]


def famo_logit_gradient(
    logits: Sequence[float],
    before: Sequence[float],
    after: Sequence[float],
    min_losses: Sequence[float],
) -> list[float]:
    """delta = J_softmax(xi)^T (log l - log l'), l before and l' after the model step (floats)."""
    z = _softmax(logits)
    d = [
        math.log(float(b) - float(low) + 1e-8) - math.log(float(a) - float(low) + 1e-8)
        for b, a, low in zip(before, after, min_losses, strict=True)
    ]
    zd = sum(zi * di for zi, di in zip(z, d, strict=True))
    return [zi * (di - zd) for zi, di in zip(z, d, strict=True)]


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
    #: the buffers of the logits' update (host math in :meth:`update`)
    _STATE = (
        "logits",
        "min_losses",
        "exp_avg",
        "exp_avg_sq",
        "adam_step",
        "prev_losses",
        "prev_present",
    )

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
        values, flags = mean_losses.tolist(), present_all.tolist()
        weights = [0.0] * len(values)
        with host_arrays(self, ("logits", "min_losses", "prev_losses", "prev_present")) as state:
            state["prev_losses"][:] = values
            state["prev_present"][:] = flags
            idx = [i for i, flag in enumerate(flags) if flag]
            if idx:
                logits, mins = state["logits"].tolist(), state["min_losses"].tolist()
                chosen = famo_weights(
                    [logits[i] for i in idx], [values[i] for i in idx], [mins[i] for i in idx]
                )
                for i, w in zip(idx, chosen, strict=True):
                    weights[i] = w
        return self._weighted_sum(
            torch.tensor(weights, dtype=losses.dtype, device=losses.device), losses, present_all
        )

    def on_optimizer_step(self, recompute_losses=None) -> None:  # type: ignore[no-untyped-def]
        if recompute_losses is None:
            raise RuntimeError(
                "FAMO.on_optimizer_step needs recompute_losses (the losses of the same batch after "
                "the step); MultiTaskModule passes it. In your own loop call "
                "famo.update(losses_after_step)."
            )
        after, present = recompute_losses()
        self.update(after, present)

    def update(self, losses_after: Tensor, present: Tensor | None = None) -> None:
        """xi <- Adam step along J_softmax^T (log l - log l') (drop-in use: call after the step)."""
        if present is None:
            present = torch.ones_like(self.prev_present)
        after, present_all = masked_mean_over_ranks(losses_after.detach().float(), present.bool())
        values, flags = after.tolist(), present_all.tolist()
        with host_arrays(self, self._STATE) as state:
            both = [i for i, flag in enumerate(flags) if flag and state["prev_present"][i]]
            if len(both) < 2:
                return
            logits, before = state["logits"].tolist(), state["prev_losses"].tolist()
            mins = state["min_losses"].tolist()
            grad = [0.0] * len(flags)
            delta = famo_logit_gradient(
                [logits[i] for i in both],
                [before[i] for i in both],
                [values[i] for i in both],
                [mins[i] for i in both],
            )
            for i, d in zip(both, delta, strict=True):
                grad[i] = d
            step = int(state["adam_step"]) + 1
            state["logits"][:], state["exp_avg"][:], state["exp_avg_sq"][:] = adam_step(
                logits,
                grad,
                state["exp_avg"].tolist(),
                state["exp_avg_sq"].tolist(),
                step,
                lr=self.lr,
                weight_decay=self.weight_decay,
            )
            state["adam_step"][...] = step
