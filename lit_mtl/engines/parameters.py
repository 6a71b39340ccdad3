"""Engine: per-task gradients w.r.t. shared parameters.

With one shared representation z at hand, the per-task gradients w.r.t. z are computed first
(one backward through the heads, :mod:`lit_mtl.engines.representation`) and pulled back through
the encoder in ONE batched vector-Jacobian product (``is_grads_batched=True``, as TorchJD's
``mtl_backward``), instead of T encoder backwards; an op without a vmap rule falls back to T
backwards (logged once). Without a shared z (per-task representations, or none given): T
backwards of the task losses. Works whatever the architecture: only the parameters matter.

DDP: the global gradient is the rank mean of the per-rank gradients, so J itself is averaged
(one all-reduce of T x P numbers) before the Gramian is formed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from lit_mtl.engines.context import StepContext
from lit_mtl.engines.jacobian import Injection, TaskJacobian
from lit_mtl.engines.representation import gradients_of, representation_gradients, scaled_losses
from lit_mtl.models.base import encoder_hooks

log = logging.getLogger(__name__)


def resolve_shared_target(encoder: nn.Module, target: str) -> list[nn.Parameter]:
    """Parameters of ``encoder`` named by ``target``.

    ``"shared"``: the encoder's ``shared_parameters()`` (every trainable parameter unless an
    architecture declares a subset: :mod:`lit_mtl.models.base`); ``"last_shared_layer"``: the
    weight of the encoder's ``last_shared_layer()`` (by default its last module with a weight
    that is not a normalisation layer: GradNorm's W); otherwise the name of an encoder parameter
    or submodule.
    """
    hooks = encoder_hooks(encoder)  # the encoder contract (lit_mtl.models.base)
    if target == "shared":
        params = [p for p in hooks.shared_parameters() if p.requires_grad]
    elif target == "last_shared_layer":
        params = [cast(nn.Parameter, hooks.last_shared_layer().weight)]
    else:
        named_params = dict(encoder.named_parameters())
        named_modules = dict(encoder.named_modules())
        if target in named_params:
            params = [named_params[target]]
        elif target in named_modules and target:
            params = [p for p in named_modules[target].parameters() if p.requires_grad]
        else:
            raise ValueError(
                f"shared target {target!r} is neither 'representation', 'shared', "
                f"'last_shared_layer' nor a module/parameter of the encoder; modules: "
                f"{[n for n in named_modules if n][:12]}..."
            )
    if not params:
        raise ValueError(f"shared target {target!r} selects no trainable parameter")
    return params


class ParameterEngine:
    """Per-task gradients w.r.t. a set of shared parameters, as a :class:`TaskJacobian`.

    Args:
        target: ``"shared"``, ``"last_shared_layer"`` or an encoder module/parameter name,
            resolved by :meth:`bind`.
    """

    def __init__(self, target: str = "shared") -> None:
        self.target = target
        self.params: list[nn.Parameter] | None = None
        self.whole_encoder = target == "shared"
        self._warned_batched = False
        #: memory reused across steps for the stacked per-task gradients w.r.t. z
        self.scratch: dict[str, Tensor] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "scratch": {}}  # pickled without the step's memory

    def bind(self, encoder: nn.Module) -> None:
        """Resolve the target in the encoder (a plain list: the encoder owns the parameters)."""
        self.params = resolve_shared_target(encoder, self.target)
        # "shared" covers the whole encoder unless the encoder declares a subset (architectures)
        self.whole_encoder = (
            self.target == "shared" and not encoder_hooks(encoder).declares_shared_parameters
        )

    def parameters_for(self, ctx: StepContext, owner: str) -> tuple[list[Tensor], bool]:
        """(trainable target parameters, whether they are every trainable encoder parameter)."""
        chosen = ctx.shared_parameters if ctx.shared_parameters is not None else self.params
        if chosen is None:
            raise ValueError(
                f"{owner}(target={self.target!r}) needs shared_parameters=... in the step context "
                "or an encoder given to bind() (MultiTaskModule does this)"
            )
        params = [p for p in chosen if p.requires_grad]  # frozen groups are not a target
        if not params:
            raise ValueError(
                f"{owner}(target={self.target!r}): every target parameter is frozen; use "
                "target='representation' while the encoder is frozen"
            )
        covers = self.whole_encoder and ctx.shared_parameters is None
        return params, covers

    def jacobian(
        self, ctx: StepContext, flags: list[bool], owner: str = "weighting"
    ) -> TaskJacobian:
        params, covers_encoder = self.parameters_for(ctx, owner)
        losses = scaled_losses(ctx)
        z = ctx.representation
        if z is None or not z.requires_grad:
            rows = gradients_of(losses, flags, params)
            return TaskJacobian(self._unscaled_blocks(ctx, rows), "mean")
        gz, heads = representation_gradients(
            ctx, flags, losses, with_heads=ctx.head_parameters is not None, buffer=self.scratch
        )
        blocks = self._unscaled_blocks(ctx, self._pull_back(z, gz, params, losses, flags))
        injection = None
        if heads is not None and ctx.head_parameters is not None:
            unscale = 1.0 if ctx.loss_scale is None else 1.0 / ctx.loss_scale
            if ctx.loss_scale is not None:
                heads = [[None if g is None else g * unscale for g in gs] for gs in heads]
            if covers_encoder:  # J covers the whole encoder: its gradient is c @ J directly
                injection = Injection(list(params), blocks, None, ctx.head_parameters, heads)
            else:  # sum_i c_i dL_i/dz, backpropagated through the encoder from z
                injection = Injection([z], [gz * unscale], None, ctx.head_parameters, heads)
        return TaskJacobian(blocks, "mean", injection=injection)

    @staticmethod
    def _unscaled_blocks(ctx: StepContext, rows: Sequence[Tensor]) -> list[Tensor]:
        blocks = [r.reshape(r.shape[0], -1).float() for r in rows]
        if ctx.loss_scale is not None:
            blocks = [b / ctx.loss_scale for b in blocks]
        return blocks

    def _pull_back(
        self,
        z: Tensor,
        gz: Tensor,
        params: list[Tensor],
        losses: Sequence[Tensor],
        flags: list[bool],
    ) -> list[Tensor]:
        """The T vector-Jacobian products of dz/dparams with the rows of gz, (T, *p.shape) each."""
        try:
            grads = torch.autograd.grad(
                z,
                params,
                grad_outputs=gz.to(z.dtype),
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
        except RuntimeError as err:  # an op without a vmap rule: one backward per task
            if not self._warned_batched:
                log.warning("batched backward failed (%s); using T backwards", err)
                self._warned_batched = True
            grads = tuple(gradients_of(losses, flags, params))
        return [
            g if g is not None else torch.zeros((gz.shape[0], *p.shape), device=gz.device)
            for g, p in zip(grads, params, strict=True)
        ]
