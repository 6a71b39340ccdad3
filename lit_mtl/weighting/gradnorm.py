"""GradNorm (Chen et al., ICML 2018): balance gradient norms by learning the task weights."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from lit_mtl.functional.distributed import masked_mean_over_ranks
from lit_mtl.functional.optim import adam_step
from lit_mtl.weighting.gradient import GradientWeighting

__all__ = ["GradNorm", "gradnorm_weight_gradient"]


def gradnorm_weight_gradient(
    weights: Tensor, grad_norms: Tensor, losses: Tensor, initial_losses: Tensor, alpha: float
) -> tuple[Tensor, Tensor]:
    """d L_grad / d w and L_grad for GradNorm (all (T,) over the tasks present).

    G_i = w_i ||grad_W L_i||, G_bar = mean_i G_i, Ltilde_i = L_i / L_i(0),
    r_i = Ltilde_i / mean_j Ltilde_j, target_i = G_bar r_i^alpha (held constant),
    L_grad = sum_i |G_i - target_i|,  dL_grad/dw_i = sign(G_i - target_i) ||grad_W L_i||.
    """
    g = weights * grad_norms
    ratio = losses / initial_losses
    r = ratio / ratio.mean()
    target = g.mean() * r**alpha
    diff = g - target
    return torch.sign(diff) * grad_norms, diff.abs().sum()


class GradNorm(GradientWeighting):
    """GradNorm, Chen et al. 2018 (https://arxiv.org/abs/1711.02257).

    The network is trained on sum_i w_i L_i; the weights w are trained, by their own Adam
    (lr 0.025), on L_grad = sum_i |G_i - G_bar r_i^alpha| with the target held constant, where
    G_i = ||grad_W (w_i L_i)||, W = the last shared layer, r_i = (L_i / L_i(0)) / mean_j(...).
    After every update w is kept positive and renormalised to sum_i w_i = T; w(0) = 1.

    Args:
        alpha: the restoring-force strength (paper: 1.5 on NYUv2, 0.12 on the toy).
        lr: learning rate of w's Adam (paper: 0.025).
        target: W: ``"last_shared_layer"`` (default, the paper), an encoder module/parameter
            name, ``"shared"`` (all shared parameters) or ``"representation"``.
        initial_loss: L_i(0): ``"first"`` (the loss at the first step) or ``"log_c"`` (log C for
            C-class cross-entropy, log 2 for binary/multilabel tasks, the first step for
            regression tasks), the paper's option.
        min_weight: w is clamped at this positive floor before renormalisation.

    Under gradient accumulation dL_grad/dw is averaged over the micro-batches and w is updated once
    per optimizer step. DDP: the gradient norms come from the rank-reduced Gramian and the losses
    are averaged across ranks, so every rank computes the same update and w stays identical.
    State (all in the module's state_dict): w, L(0), w's Adam moments and the pending gradient.
    Cost: T gradient calls to W (only the heads and the last layer are differentiated for the
    default W).
    """

    def __init__(
        self,
        num_tasks: int | None = None,
        alpha: float = 1.5,
        lr: float = 0.025,
        target: str = "last_shared_layer",
        initial_loss: Literal["first", "log_c"] = "first",
        min_weight: float = 1e-4,
    ) -> None:
        if initial_loss not in ("first", "log_c"):
            raise ValueError(f"initial_loss must be 'first' or 'log_c', got {initial_loss!r}")
        if lr <= 0:
            raise ValueError(f"GradNorm: lr must be > 0, got {lr}")
        self.alpha = float(alpha)
        self.lr = float(lr)
        self.initial_loss = initial_loss
        self.min_weight = float(min_weight)
        super().__init__(num_tasks=num_tasks, target=target)

    def _build(self, num_tasks: int, task_kinds: Sequence[str]) -> None:
        self.register_buffer("w", torch.ones(num_tasks))
        init = torch.full((num_tasks,), float("nan"))
        if self.initial_loss == "log_c":
            for i, kind in enumerate(task_kinds):
                if kind in ("binary", "multilabel"):
                    init[i] = math.log(2.0)  # multiclass: log C arrives through bind()
        self.register_buffer("initial_losses", init)
        self.register_buffer("exp_avg", torch.zeros(num_tasks))
        self.register_buffer("exp_avg_sq", torch.zeros(num_tasks))
        self.register_buffer("adam_step", torch.zeros(()))
        self.register_buffer("pending_grad", torch.zeros(num_tasks))
        self.register_buffer("pending_count", torch.zeros(()))
        self.register_buffer("last_grad_loss", torch.zeros(()))

    def bind(self, task_names, task_kinds=None, encoder=None, baseline_losses=None) -> None:  # type: ignore[no-untyped-def]
        super().bind(task_names, task_kinds, encoder, baseline_losses)
        if self.initial_loss == "log_c" and baseline_losses is not None:
            self.set_initial_losses(baseline_losses)  # log C per classification task

    def set_initial_losses(self, values: Sequence[float | None]) -> None:
        """Fix L_i(0) explicitly (e.g. log C); None keeps "first step" for that task."""
        for i, v in enumerate(values):
            if v is not None:
                self.initial_losses[i] = float(v)

    def combine(
        self,
        losses,
        *,
        task_losses,
        present,
        representation,
        shared_params,
        loss_scale,
        task_representations=None,
    ):  # type: ignore[no-untyped-def]
        present_all = present
        jacobian = self.task_gradients(
            task_losses, present, representation, shared_params, loss_scale, task_representations
        )
        gramian = self.reduced_gramian(jacobian)
        norms = gramian.diagonal().clamp(min=0).sqrt()  # ||grad_W L_i||, identical on all ranks
        mean_losses, present_all = masked_mean_over_ranks(losses, present)
        with torch.no_grad():
            unset = torch.isnan(self.initial_losses) & present_all
            self.initial_losses[unset] = mean_losses[unset].to(self.initial_losses.dtype)
            usable = present_all & (self.initial_losses > 0) & torch.isfinite(norms)
            if bool(usable.sum() >= 2):
                idx = usable.nonzero().flatten()
                grad_w, l_grad = gradnorm_weight_gradient(
                    self.w[idx],
                    norms[idx].to(self.w.dtype),
                    mean_losses[idx].to(self.w.dtype),
                    self.initial_losses[idx],
                    self.alpha,
                )
                full = torch.zeros_like(self.w)
                full[idx] = grad_w
                self.pending_grad += full
                self.pending_count += 1
                self.last_grad_loss.fill_(float(l_grad))
        return self._finish(self.w.detach().to(losses.dtype), losses, present_all, representation)

    @torch.no_grad()
    def on_optimizer_step(self, recompute_losses=None) -> None:  # type: ignore[no-untyped-def]
        if float(self.pending_count) == 0:
            return
        grad = self.pending_grad / self.pending_count
        adam_step(self.w, grad, self.exp_avg, self.exp_avg_sq, self.adam_step, lr=self.lr)
        self.w.clamp_(min=self.min_weight)
        self.w.mul_(self.num_tasks / self.w.sum())
        self.pending_grad.zero_()
        self.pending_count.zero_()

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self._num_tasks}, alpha={self.alpha}, lr={self.lr}, target={self.target!r}"
        )
