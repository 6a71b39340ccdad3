"""DB-MTL (Lin, Ye, Zhang et al., 2023): dual balancing of loss scales and gradient magnitudes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lit_mtl.engines.context import StepContext
from lit_mtl.engines.jacobian import inject_gradients
from lit_mtl.engines.parameters import ParameterEngine
from lit_mtl.functional.loss_weighting import db_mtl_ema, db_mtl_scales
from lit_mtl.weighting.base import Weighting


class DBMTL(Weighting):
    """DB-MTL, Lin et al. 2023 (https://arxiv.org/abs/2308.12029).

    Loss-scale balance: every task trains on log(L_i + 1e-8). Gradient-magnitude balance: an EMA
    b_i of each task's gradient of log L_i w.r.t. the shared parameters (the authors' code:
    b_i <- g_i + beta / t^beta_sigma (b_i - g_i), t the step), and the shared parameters get
    sum_i alpha_i b_i with alpha_i = max_j ||b_j|| / ||b_i||: every task's gradient rescaled to the
    largest norm. Task-specific parameters (the heads) get the gradient of sum_i log L_i.

    Args:
        beta: the EMA factor (authors' default 0.9).
        beta_sigma: the step-dependent decay of beta (authors' default 0).
        target: the shared parameters: ``"shared"`` (default, the paper) or an encoder
            module/parameter name; the representation is no target (the EMA of gradients w.r.t.
            a batch's own z has no meaning, as the authors' code also refuses).

    Logged weights: alpha (the scale of each task's buffered gradient). DDP: the gradients are
    averaged over ranks before the EMA, so the buffer is identical on every rank. State
    (checkpointed): the step and the T x P buffer. Cost: per-task gradients of the shared
    parameters (one backward through the heads, one batched pull-back) and one ordinary backward.
    Under gradient accumulation each micro-batch is one EMA step, as in the authors' code (one
    step per backward call).
    """

    # declared state (add_state), typed for the type checker
    step: Tensor
    buffer: Tensor

    uses_task_representations = True

    def __init__(
        self,
        num_tasks: int | None = None,
        beta: float = 0.9,
        beta_sigma: float = 0.0,
        target: str = "shared",
    ) -> None:
        if target == "representation":
            raise ValueError(
                "DBMTL: target='representation' is not supported (its gradient buffer averages "
                "gradients over steps, which only has a meaning for parameters)"
            )
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"DBMTL: beta must be in [0, 1), got {beta}")
        self.beta = float(beta)
        self.beta_sigma = float(beta_sigma)
        self.target = target
        self.engine = ParameterEngine(target)
        super().__init__(num_tasks=num_tasks)

    def build(self, num_tasks: int, task_kinds: Sequence[str]) -> None:
        self.add_state("step", torch.zeros((), dtype=torch.long))

    def bind_encoder(self, encoder: nn.Module) -> None:
        self.engine.bind(encoder)
        size = sum(p.numel() for p in self.engine.params or [])
        self.add_state("buffer", torch.zeros(self.num_tasks, size))

    def combine(self, ctx: StepContext) -> Tensor:
        _, present_all = ctx.rank_mean_losses
        log_losses = tuple(torch.log(loss.float() + 1e-8) for loss in ctx.losses)
        log_ctx = dataclasses.replace(ctx, losses=log_losses, head_parameters=None)
        params, _ = self.engine.parameters_for(log_ctx, type(self).__name__)
        size = sum(p.numel() for p in params)
        if getattr(self, "buffer", None) is None or self.buffer.shape != (self.num_tasks, size):
            raise ValueError(
                f"DBMTL holds a gradient buffer for the parameters resolved at bind(); the step's "
                f"{len(params)} trainable target parameters ({size} numbers) differ: bind it to "
                "the encoder (MultiTaskModule does) and keep the target's parameters trainable"
            )
        flags = (present_all & ctx.present).tolist()
        jacobian = self.engine.jacobian(log_ctx, flags, type(self).__name__)
        local = torch.cat(jacobian.blocks, dim=1)  # (T, P) this rank's gradients of log L_i
        grads = torch.cat(jacobian.reduced_blocks(), dim=1).to(self.buffer.device)
        with torch.no_grad():
            self.step += 1
            ema = db_mtl_ema(self.buffer, grads, self.step.float(), self.beta, self.beta_sigma)
            keep = present_all.to(self.buffer.device)
            self.buffer.copy_(torch.where(keep[:, None], ema, self.buffer))
            scales = db_mtl_scales(self.buffer.norm(dim=1), keep)
            direction = scales @ self.buffer  # (P,)
            # the ordinary backward of sum_i log L_i gives the encoder sum_i g_i (this rank's):
            # the injected correction turns it into the direction (DDP averages both alike)
            correction = direction.to(local.device) - local.sum(0)
        self.last_weights = scales.detach().to(ctx.stacked.device)
        flags_all = present_all.tolist()
        value = torch.stack([v for v, f in zip(log_losses, flags_all, strict=True) if f])
        pieces = correction.split([p.numel() for p in params])
        grads_in = [c.view_as(p).to(p.dtype) for c, p in zip(pieces, params, strict=True)]
        return value.sum() + inject_gradients(value.new_zeros(()), params, grads_in)

    def extra_repr(self) -> str:
        return f"num_tasks={self._num_tasks}, beta={self.beta}, beta_sigma={self.beta_sigma}"
