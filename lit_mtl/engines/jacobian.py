"""The per-task Jacobian an engine hands a rule, and how the combined direction is applied.

An engine computes J (one row per task: the task's gradient w.r.t. the target) as column blocks
``J = [J_1 | J_2 | ...]`` (one (T, P_k) block per target tensor, no (T, P) copy). A rule reads
the Gramian ``G = J J^T`` (or its diagonal, the squared norms) and returns coefficients c; the
engine then applies ``sum_i c_i g_i`` with ONE graph node (:class:`_InjectGradients`) when the
heads' gradients were taken with J, or by the ordinary backward of ``sum_i c_i L_i`` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from lit_mtl.engines.distributed import all_reduce_mean, all_reduce_sum, world_size

#: float64 copies of J are made this many columns at a time (cache-sized: measured fastest)
GRAMIAN_CHUNK_COLUMNS = 1 << 16


def float64_gramian(blocks: Sequence[Tensor], others: Sequence[Tensor] | None = None) -> Tensor:
    """sum_k A_k B_k^T in float64 for float32 column blocks A_k (T_a, P_k), B_k (T_b, P_k)
    (``others=None``: B = A, the Gramian). Each product of two float32 numbers is exact in
    float64, so the only error is float64's accumulation. ``GRAMIAN_CHUNK_COLUMNS`` columns are
    converted at a time: the transient memory is bounded whatever P is. Cost on a 2-core CPU:
    1.5-8x the float32 product, 0.1-0.8 of a training step with the same P
    (``benchmarks/gramian_precision.py``)."""
    others = blocks if others is None else others
    first = blocks[0]
    out = torch.zeros(
        (first.shape[0], others[0].shape[0]), dtype=torch.float64, device=first.device
    )
    with torch.autocast(first.device.type, enabled=False):
        for a, b in zip(blocks, others, strict=True):
            step = GRAMIAN_CHUNK_COLUMNS
            for start in range(0, a.shape[1], step):
                a64 = a[:, start : start + step].double()
                b64 = a64 if b is a else b[:, start : start + step].double()
                out.addmm_(a64, b64.T)
    return out


def _multiply(tensors: list[Tensor], scales: list[float] | Tensor, in_place: bool) -> list[Tensor]:
    """tensors[k] * scales[k] (or * one tensor): torch's fused ``_foreach_mul`` where this torch
    has it, else one multiply per tensor (the public fallback)."""
    fused = getattr(torch, "_foreach_mul_" if in_place else "_foreach_mul", None)
    if fused is not None:
        out = fused(tensors, scales)
        return tensors if in_place else list(out)
    if isinstance(scales, Tensor):
        return [t.mul_(scales) if in_place else t * scales for t in tensors]
    return [t.mul_(s) if in_place else t * s for t, s in zip(tensors, scales, strict=True)]


class _InjectGradients(torch.autograd.Function):
    """``value`` (a constant) as a graph node whose backward hands every input its precomputed
    gradient (times the incoming gradient): one node instead of a multiply and a sum per
    tensor."""

    @staticmethod
    def forward(ctx, value: Tensor, num_inputs: int, *tensors: Tensor) -> Tensor:
        ctx.num_inputs = num_inputs
        ctx.grads = tensors[num_inputs:]
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grads = list(ctx.grads)
        ctx.grads = ()
        if grad_output.device.type != "cpu" or float(grad_output) != 1.0:
            grads = _multiply(grads, grad_output, in_place=False)  # e.g. 1 / accumulation steps
        return (None, None, *grads, *([None] * ctx.num_inputs))


def inject_gradients(value: Tensor, inputs: Sequence[Tensor], grads: Sequence[Tensor]) -> Tensor:
    """A scalar equal to ``value`` whose backward adds ``grads[k]`` (times the incoming gradient)
    to ``inputs[k]``."""
    return _InjectGradients.apply(value.detach(), len(inputs), *inputs, *grads)


@dataclass
class Injection:
    """What lets an engine apply ``sum_i c_i g_i`` without differentiating the heads again.

    Attributes:
        targets: the tensors that receive the combined gradient: ``[z]`` (shared representation),
            the T per-task representations, or the shared parameters.
        per_task: for each target, the stacked (T, *target.shape) per-task gradients (shared z,
            parameters: the target receives ``sum_i c_i per_task[i]``), or None for per-task
            representations (target i receives ``c_i * rows[i]``, see ``rows``).
        rows: the (T, *z_i.shape) gradients of per-task representations.
        head_parameters / head_gradients: each head's parameters and its task's gradients of them.
    """

    targets: list[Tensor]
    per_task: list[Tensor] | None
    rows: Tensor | None
    head_parameters: Sequence[Sequence[Tensor]]
    head_gradients: list[list[Tensor | None]]


@dataclass
class TaskJacobian:
    """The T task gradients of one step, as a rule consumes them.

    Attributes:
        blocks: J's column blocks, float32, (T, P_k) each (empty when only the Gramian was kept,
            e.g. in chunked mode).
        reduction: across DDP ranks: ``"sum"`` of the Gramians (representations: each rank holds
            other samples) or ``"mean"`` of J (parameters: the global gradient is the rank mean).
        gramian_value: the Gramian when it was formed chunk by chunk.
        injection: see :class:`Injection`; None when the direction is applied by the ordinary
            backward of ``sum_i c_i L_i``.
    """

    blocks: list[Tensor]
    reduction: Literal["sum", "mean"]
    gramian_value: Tensor | None = None
    injection: Injection | None = None
    _reduced: list[Tensor] | None = field(default=None, repr=False)

    def reduced_blocks(self) -> list[Tensor]:
        """J's blocks made identical across ranks ("mean": one all-reduce of the concatenated J)."""
        if self._reduced is None:
            if self.reduction == "mean" and world_size() > 1 and self.blocks:
                self._reduced = [all_reduce_mean(torch.cat(self.blocks, dim=1))]
            else:
                self._reduced = self.blocks
        return self._reduced

    def gramian(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """(T, T) G = J J^T, identical on every rank (also under autocast).

        ``dtype=torch.float32``: float32 products (the authors' codes, fastest). ``float64``:
        the float32 J's exact products accumulated in float64 (:func:`float64_gramian`), so a
        small quantity read from G (sqrt(w^T G w) near a Pareto-stationary point, a small
        eigenvalue) keeps float32's precision instead of half of it.
        """
        if self.gramian_value is not None:
            gramian = self.gramian_value.to(dtype)
        elif dtype == torch.float64:
            gramian = float64_gramian(self.reduced_blocks())
        else:
            blocks = self.reduced_blocks()
            with torch.autocast(blocks[0].device.type, enabled=False):
                gramian = blocks[0] @ blocks[0].T
                for block in blocks[1:]:
                    gramian = gramian.addmm_(block, block.T)
        return all_reduce_sum(gramian) if self.reduction == "sum" else gramian

    def apply(self, weights: Tensor, value: Tensor) -> Tensor:
        """The scalar to backpropagate for coefficients c = ``weights`` (T,): its value is
        ``value`` (= sum_i c_i L_i, with its graph) and its gradient that of sum_i c_i L_i.

        With an :class:`Injection` the returned scalar's graph is one node that hands the
        targets ``sum_i c_i g_i`` and each head ``c_i`` times its gradient (detached factors):
        the same gradients, without differentiating the heads a second time.
        """
        injection, self.injection = self.injection, None
        if injection is None:
            return value
        w = weights.detach().float()
        inputs: list[Tensor] = []
        grads: list[Tensor] = []
        with torch.autocast(w.device.type, enabled=False):  # float32 sums, also under AMP
            if injection.per_task is not None:
                for target, stack in zip(injection.targets, injection.per_task, strict=True):
                    combined = torch.tensordot(w, stack.reshape(stack.shape[0], -1).float(), 1)
                    inputs.append(target)
                    grads.append(combined.view_as(target).to(target.dtype).detach())
            else:
                assert injection.rows is not None
                for i, target in enumerate(injection.targets):
                    inputs.append(target)
                    grads.append((injection.rows[i] * w[i]).to(target.dtype).detach())
        head_inputs: list[Tensor] = []
        head_grads: list[Tensor] = []
        scales: list[float] = []
        w_list = w.tolist()
        for i, task_grads in enumerate(injection.head_gradients):
            for p, g in zip(injection.head_parameters[i], task_grads, strict=True):
                if g is not None:
                    head_inputs.append(p)
                    head_grads.append(g.to(p.dtype).detach())
                    scales.append(w_list[i])
        if head_inputs:
            if all(g.is_contiguous() for g in head_grads):  # our own gradient tensors
                _multiply(head_grads, scales, in_place=True)
            else:  # e.g. an expanded gradient: not writable in place
                head_grads = _multiply(head_grads, scales, in_place=False)
            inputs += head_inputs
            grads += head_grads
        return inject_gradients(value, inputs, grads)
