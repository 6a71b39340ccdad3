"""Base of the gradient-based methods: per-task gradients of a shared target -> Gramian -> c.

Mechanism (one per step):

1. ``J`` (T, P): the gradient of each task's *own* loss tensor w.r.t. the shared target, by T calls
   of :func:`torch.autograd.grad` (no ``.grad`` written, no DDP all-reduce triggered). Each call
   only runs through that task's head (and the encoder when the target is a parameter set).
2. ``G = J J^T`` (T, T), made identical on every DDP rank (below).
3. Task coefficients ``c`` from G by the method's pure function (``lit_mtl.functional``).
4. Return ``(c.detach() * losses).sum()``: Lightning's ordinary backward then applies
   ``sum_i c_i g_i`` to the encoder and ``c_i`` times each head's own gradient to the heads.

Shared targets (``target=``):

* ``"representation"``: the encoder output z (the "UB" variants; cheapest, only heads are
  differentiated T times);
* ``"shared"``: all trainable encoder parameters (T extra encoder backwards);
* ``"last_shared_layer"``: the encoder's last weighted layer (GradNorm's default W);
* any other string: the name of an encoder submodule or parameter (``encoder.named_modules()`` /
  ``named_parameters()``).

DDP: for the representation each rank holds different samples, so the Gramian of the global batch is
the *sum* of the per-rank Gramians (one all-reduce of T x T numbers). For parameters the global
gradient is the *mean* of the per-rank gradients, so J itself is averaged (one all-reduce of T x P
numbers) before G is formed. Either way every rank solves the same problem and gets the same c; DDP
then averages the final backward as usual. A task absent on every rank is left out of the solver
(coefficient 0); presence is max-reduced across ranks.

fp16: with a GradScaler the per-task gradients are computed on ``scale * L_i`` and divided by the
scale (no underflow); a non-finite Gramian (overflow) keeps the previous coefficients for that step
and is counted in the ``nonfinite_steps`` buffer (the GradScaler then skips the step anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lit_mtl.functional.distributed import (
    all_reduce_max,
    all_reduce_mean,
    all_reduce_sum,
    masked_mean_over_ranks,
    world_size,
)
from lit_mtl.weighting.base import Weighting

__all__ = ["GradientWeighting", "resolve_shared_target"]

log = logging.getLogger(__name__)


def resolve_shared_target(encoder: nn.Module, target: str) -> list[nn.Parameter]:
    """Parameters of ``encoder`` named by ``target`` (see module docstring)."""
    if target == "shared":
        params = [p for p in encoder.parameters() if p.requires_grad]
    elif target == "last_shared_layer":
        finder = getattr(encoder, "last_shared_layer", None)
        if finder is not None:
            layer = finder()
        else:
            layers = [
                m
                for m in encoder.modules()
                if isinstance(getattr(m, "weight", None), nn.Parameter)
                and not isinstance(m, nn.modules.batchnorm._NormBase | nn.LayerNorm)
            ]
            if not layers:
                raise ValueError(f"{type(encoder).__name__} has no layer with a weight")
            layer = layers[-1]
        params = [layer.weight]
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


class _InjectGradients(torch.autograd.Function):
    """``value`` (a constant) as a graph node whose backward hands every input its precomputed
    gradient (times the incoming gradient): one node instead of a multiply and a sum per
    tensor."""

    @staticmethod
    def forward(ctx, value: Tensor, num_inputs: int, *tensors: Tensor) -> Tensor:  # type: ignore[override]
        ctx.num_inputs = num_inputs
        ctx.grads = tensors[num_inputs:]
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[no-untyped-def, override]
        grads = list(ctx.grads)
        ctx.grads = ()
        if grad_output.device.type != "cpu" or float(grad_output) != 1.0:
            grads = torch._foreach_mul(grads, grad_output)  # e.g. 1 / accumulation steps
        return (None, None, *grads, *([None] * ctx.num_inputs))


class GradientWeighting(Weighting):
    """Base of the methods that combine per-task gradients (see the module docstring).

    Args:
        num_tasks: T (optional inside a MultiTaskModule).
        target: the shared target: ``"representation"``, ``"shared"``, ``"last_shared_layer"`` or
            an encoder module/parameter name.

    Subclasses implement :meth:`coefficients` (numpy, on the Gramian of the present tasks).
    Cost per step: T ``autograd.grad`` calls through the heads (representation) or through heads
    and encoder (parameters), the Gramian (T^2 P flops) and a T x T solve on the CPU; memory: the
    T x P gradient matrix.
    """

    uses_task_representations = True

    def __init__(self, num_tasks: int | None = None, target: str = "representation") -> None:
        super().__init__(num_tasks=num_tasks)
        if not isinstance(target, str) or not target:
            raise ValueError(f"target must be a non-empty string, got {target!r}")
        self.target = target
        self._target_params: list[nn.Parameter] | None = None
        self._head_params: list[list[nn.Parameter]] | None = None
        self._fused: tuple[Tensor, list[list[Tensor | None]]] | None = None
        self._shared_jac: tuple[list[Tensor], list[Tensor]] | None = None
        self._warned_batched = False
        self.register_buffer("nonfinite_steps", torch.zeros((), dtype=torch.long))

    def bind_heads(self, heads: Sequence[nn.Module]) -> None:
        """Give the task heads (MultiTaskModule does): their gradients are then taken in the same
        backward pass as the gradients w.r.t. z, and the returned scalar backpropagates only
        through the encoder (the heads are not differentiated twice)."""
        if len(heads) != self.num_tasks:
            raise ValueError(f"{len(heads)} heads for {self.num_tasks} tasks")
        self._head_params = [list(h.parameters()) for h in heads]

    def _bind_encoder(self, encoder: nn.Module) -> None:
        if self.target != "representation":
            # a plain list: the parameters stay owned (and checkpointed) by the encoder
            self._target_params = resolve_shared_target(encoder, self.target)

    # ------------------------------------------------------------------ gradients
    def task_gradients(
        self,
        task_losses: Sequence[Tensor],
        present: Tensor,
        representation: Tensor | None,
        shared_params: Sequence[Tensor] | None,
        loss_scale: Tensor | float | None,
        task_representations: Sequence[Tensor] | None = None,
    ) -> list[Tensor]:
        """Per-task gradients of the shared target (0 for absent tasks) as float32 column blocks
        J = [J_1 | J_2 | ...]: one (T, P_k) block per target tensor (one (T, N*D) block for z),
        so that no (T, P) copy is made; :meth:`reduced_gramian` forms G = sum_k J_k J_k^T.

        With the representation z at hand, the per-task gradients w.r.t. z are computed first (T
        calls through the heads only); for a parameter target they are then pulled back through
        the encoder in *one* batched vector-Jacobian product (``is_grads_batched=True``), as
        TorchJD's ``mtl_backward`` does, instead of T encoder backwards.
        """
        params: list[Tensor] | None = None
        if self.target != "representation":
            chosen = shared_params if shared_params is not None else self._target_params
            if chosen is None:
                raise ValueError(
                    f"{type(self).__name__}(target={self.target!r}) needs shared_params=... in the "
                    "call or an encoder given to bind() (MultiTaskModule does this)"
                )
            params = [p for p in chosen if p.requires_grad]  # frozen groups are not a target
            if not params:
                raise ValueError(
                    f"{type(self).__name__}(target={self.target!r}): every target parameter is "
                    "frozen; use target='representation' while the encoder is frozen"
                )
        elif representation is None:
            raise ValueError(
                f"{type(self).__name__}(target='representation') needs representation=z "
                "(the shared encoder output) in the call"
            )
        flags = present.tolist()
        scaled = [loss * loss_scale if loss_scale is not None else loss for loss in task_losses]
        self._fused = None
        self._shared_jac = None
        if representation is not None and representation.requires_grad:
            if task_representations is not None and len(task_representations) == len(flags):
                gz, head_grads = self._grads_through_views(
                    scaled, flags, list(task_representations), self._head_params
                )
                if head_grads is not None:
                    if loss_scale is None:
                        self._fused = (gz, head_grads)
                    else:
                        unscale = 1.0 / loss_scale
                        self._fused = (
                            gz * unscale,
                            [[None if g is None else g * unscale for g in gs] for gs in head_grads],
                        )
            else:
                gz = self._grads_of(scaled, flags, [representation])[0]  # (T, *z.shape)
            if params is None:
                blocks = [gz.reshape(gz.shape[0], -1).float()]
            else:
                blocks = self._pull_back(representation, gz, params, scaled, flags)
        else:
            assert params is not None
            rows = self._grads_of(scaled, flags, params)
            blocks = [r.reshape(r.shape[0], -1).float() for r in rows]
        if loss_scale is not None:
            blocks = [b / loss_scale for b in blocks]
        if params is not None and self._fused is not None and self.target == "shared":
            # J covers every encoder parameter: the encoder's gradient is c @ J, no second
            # backward through the encoder is needed (as TorchJD's jac_to_grad)
            self._shared_jac = (params, blocks)
        return blocks

    @staticmethod
    def _grads_through_views(
        losses: Sequence[Tensor],
        flags: list[bool],
        views: list[Tensor],
        head_params: list[list[nn.Parameter]] | None = None,
    ) -> tuple[Tensor, list[list[Tensor | None]] | None]:
        """(T, *z.shape) d L_i / d z_i for per-task views z_i of z, and (when ``head_params`` is
        given) each head's own gradients, all in ONE backward pass: L_i depends on z only through
        z_i and on no other head, so the gradient of sum_i L_i w.r.t. z_i is d L_i / d z."""
        chosen = [i for i, f in enumerate(flags) if f and losses[i].requires_grad]
        out: Tensor | None = None
        heads: list[list[Tensor | None]] | None = None
        if head_params is not None:
            heads = [[None] * len(ps) for ps in head_params]
        if chosen:
            inputs: list[Tensor] = [views[i] for i in chosen]
            owners: list[tuple[int, int]] = []
            if head_params is not None:
                for i in chosen:
                    for k, p in enumerate(head_params[i]):
                        if p.requires_grad:
                            inputs.append(p)
                            owners.append((i, k))
            total = torch.stack([losses[i].reshape(()) for i in chosen]).sum()
            grads = torch.autograd.grad(total, inputs, retain_graph=True, allow_unused=True)
            view_grads = grads[: len(chosen)]
            if len(chosen) == len(flags) and all(g is not None for g in view_grads):
                out = torch.stack(view_grads)  # every task present: one allocation
            else:
                out = views[0].new_zeros((len(flags), *views[0].shape))
                for i, g in zip(chosen, view_grads, strict=True):
                    if g is not None:
                        out[i] = g
            if heads is not None:
                for (i, k), g in zip(owners, grads[len(chosen) :], strict=True):
                    heads[i][k] = g
        if out is None:
            out = views[0].new_zeros((len(flags), *views[0].shape))
        return out, heads

    @staticmethod
    def _grads_of(
        losses: Sequence[Tensor], flags: list[bool], inputs: list[Tensor]
    ) -> list[Tensor]:
        """Per input, the (T, *input.shape) stack of d loss_i / d input (zeros where absent)."""
        per_input: list[list[Tensor]] = [[] for _ in inputs]
        for flag, loss in zip(flags, losses, strict=True):
            if flag and loss.requires_grad:
                grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
            else:
                grads = (None,) * len(inputs)
            for k, (g, t) in enumerate(zip(grads, inputs, strict=True)):
                per_input[k].append(torch.zeros_like(t) if g is None else g)
        return [torch.stack(rows) for rows in per_input]

    def _pull_back(
        self,
        representation: Tensor,
        gz: Tensor,
        params: list[Tensor],
        losses: Sequence[Tensor],
        flags: list[bool],
    ) -> Tensor:
        """J's blocks (T, P_k): the T vector-Jacobian products of dz/dparams with the rows of gz."""
        try:
            grads = torch.autograd.grad(
                representation,
                params,
                grad_outputs=gz.to(representation.dtype),
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
        except RuntimeError as err:  # an op without a vmap rule: one backward per task
            if not self._warned_batched:
                log.warning(
                    "%s: batched backward failed (%s); using T backwards", type(self).__name__, err
                )
                self._warned_batched = True
            grads = tuple(self._grads_of(losses, flags, params))
        return [
            (g if g is not None else torch.zeros((gz.shape[0], *p.shape), device=gz.device))
            .reshape(gz.shape[0], -1)
            .float()
            for g, p in zip(grads, params, strict=True)
        ]

    def reduced_gramian(self, jacobian: Sequence[Tensor]) -> Tensor:
        """G = J J^T = sum_k J_k J_k^T over J's blocks, made identical across DDP ranks (summed
        for z, J averaged for parameters: one all-reduce of the concatenated J); float32 even
        under autocast."""
        if self.target != "representation" and world_size() > 1:
            jacobian = [all_reduce_mean(torch.cat(list(jacobian), dim=1))]
        with torch.autocast(jacobian[0].device.type, enabled=False):  # float32, also under AMP
            gramian = jacobian[0] @ jacobian[0].T
            for block in jacobian[1:]:
                gramian = gramian.addmm_(block, block.T)
        return all_reduce_sum(gramian) if self.target == "representation" else gramian

    # ------------------------------------------------------------------ combine
    def coefficients(self, gramian: np.ndarray, losses: np.ndarray) -> np.ndarray:
        """Task coefficients for the present tasks' Gramian (float64). Implemented by methods."""
        raise NotImplementedError

    def combine(
        self,
        losses: Tensor,
        *,
        task_losses: Sequence[Tensor],
        present: Tensor,
        representation: Tensor | None,
        shared_params: Sequence[Tensor] | None,
        loss_scale: Tensor | float | None,
        task_representations: Sequence[Tensor] | None = None,
    ) -> Tensor:
        present_all = all_reduce_max(present.to(torch.uint8)).bool()
        jacobian = self.task_gradients(
            task_losses,
            present_all & present,
            representation,
            shared_params,
            loss_scale,
            task_representations,
        )
        gramian = self.reduced_gramian(jacobian)  # (T, T)
        global_losses, _ = masked_mean_over_ranks(losses, present)
        weights = self._solve(gramian, global_losses, present_all)
        return self._finish(weights, losses, present_all, representation)

    def _finish(
        self, weights: Tensor, losses: Tensor, present: Tensor, representation: Tensor | None
    ) -> Tensor:
        """The scalar to backpropagate: its value is sum_i c_i L_i and so is its gradient.

        When the heads' gradients were taken with the gradients w.r.t. z, the returned scalar's
        graph is ``z . sum_i c_i dL_i/dz + sum_i c_i <head_i params, their gradients>`` (detached
        factors): the same gradients as backpropagating sum_i c_i L_i, without differentiating the
        heads a second time.
        """
        value = self._weighted_sum(weights, losses, present)
        fused, self._fused = self._fused, None
        if fused is None or representation is None or self._head_params is None:
            return value
        gz, head_grads = fused
        w = self.last_weights.float()
        inputs: list[Tensor] = []
        grads: list[Tensor] = []
        shared_jac, self._shared_jac = self._shared_jac, None
        with torch.autocast(gz.device.type, enabled=False):  # float32 sums, also under AMP
            if shared_jac is not None:  # encoder gradient c @ J directly on its parameters
                params, blocks = shared_jac
                for p, block in zip(params, blocks, strict=True):
                    inputs.append(p)
                    grads.append((w @ block).view_as(p).to(p.dtype))
            else:  # sum_i c_i gz_i
                combined = torch.tensordot(w, gz.float(), dims=1).to(representation.dtype)
                inputs.append(representation)
                grads.append(combined.detach())
        head_inputs: list[Tensor] = []
        head_grads_flat: list[Tensor] = []
        head_scales: list[float] = []
        w_list = w.tolist()
        for i, task_grads in enumerate(head_grads):
            for p, g in zip(self._head_params[i], task_grads, strict=True):
                if g is not None:
                    head_inputs.append(p)
                    head_grads_flat.append(g.to(p.dtype).detach())
                    head_scales.append(w_list[i])
        if head_inputs:
            if all(g.is_contiguous() for g in head_grads_flat):  # our own gradient tensors
                torch._foreach_mul_(head_grads_flat, head_scales)
            else:  # e.g. an expanded gradient: not writable in place
                head_grads_flat = list(torch._foreach_mul(head_grads_flat, head_scales))
            inputs += head_inputs
            grads += head_grads_flat
        return _InjectGradients.apply(value.detach(), len(inputs), *inputs, *grads)

    def _solve(self, gramian: Tensor, losses: Tensor, present: Tensor) -> Tensor:
        idx = [i for i, flag in enumerate(present.tolist()) if flag]
        if not idx:
            return losses.new_zeros(self.num_tasks)
        g = gramian.detach().to("cpu", torch.float64).numpy()
        if not np.isfinite(g).all():
            self.nonfinite_steps += 1
            log.warning(
                "%s: non-finite task gradients (fp16 overflow?); keeping the previous coefficients",
                type(self).__name__,
            )
            return self.last_weights.clone().to(losses.dtype)
        loss_values = losses.detach().to("cpu", torch.float64).numpy()
        if len(idx) == self.num_tasks:
            weights = self.coefficients(g, loss_values).tolist()
        else:
            coef = self.coefficients(g[np.ix_(idx, idx)], loss_values[idx]).tolist()
            weights = [0.0] * self.num_tasks
            for i, c in zip(idx, coef, strict=True):
                weights[i] = c
        return torch.tensor(weights, dtype=losses.dtype, device=losses.device)

    def extra_repr(self) -> str:
        return f"num_tasks={self._num_tasks}, target={self.target!r}"
