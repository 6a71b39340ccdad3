"""Gramian methods: a rule on the T x T Gramian of the task gradients, plus a default target.

One step:

1. an engine (:mod:`lit_mtl.engines`) gives J, the per-task gradients of the shared target:
   ``"representation"`` (z of any shape, or per-task z_i: the "UB" variants, cheapest),
   ``"shared"`` (all trainable encoder parameters), ``"last_shared_layer"`` or an encoder
   module/parameter name;
2. ``G = J J^T`` (in the method's ``gramian_dtype``), identical on every DDP rank;
3. the method's rule maps G (and the losses) to task coefficients c (:mod:`lit_mtl.functional`);
4. the engine applies ``sum_i c_i g_i``: the returned scalar's backward is that of sum_i c_i L_i.

A task absent on every rank is left out of the rule (coefficient 0). fp16: the engines compute
the per-task gradients of ``scale * L_i`` and unscale them; a non-finite Gramian (overflow) keeps
the previous coefficients and is counted in the ``nonfinite_steps`` state (the GradScaler then
skips the step anyway).

A new Gramian method is one class: a ``coefficients`` rule and its ``default_target``.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from lit_mtl.engines.context import StepContext
from lit_mtl.engines.parameters import ParameterEngine
from lit_mtl.engines.representation import RepresentationEngine
from lit_mtl.engines.threads import single_threaded_blas
from lit_mtl.weighting.base import Weighting

log = logging.getLogger(__name__)


def engine_for(
    target: str, chunk_size: int | None = None
) -> RepresentationEngine | ParameterEngine:
    """The engine that computes per-task gradients of ``target``."""
    if not isinstance(target, str) or not target:
        raise ValueError(f"target must be a non-empty string, got {target!r}")
    if target == "representation":
        return RepresentationEngine(chunk_size)
    if chunk_size is not None:
        raise ValueError("chunk_size applies to target='representation' only")
    return ParameterEngine(target)


class GramianWeighting(Weighting):
    """Base of the methods whose coefficients are a function of the task gradients' Gramian.

    Args:
        num_tasks: T (optional inside a MultiTaskModule).
        target: the shared target (see the module docstring); default: the method's
            ``default_target``.
        chunk_size: with ``target="representation"``, form the Gramian this many tasks at a
            time (memory 2 x chunk_size x |z| instead of T x |z|; see
            :class:`~lit_mtl.engines.RepresentationEngine`).

    Subclasses implement :meth:`coefficients` (numpy, on the Gramian of the present tasks).
    Cost per step: per-task gradients (one backward through the heads for z; plus one batched
    pull-back through the encoder for parameters), the Gramian (T^2 P flops) and a T x T solve
    on the CPU (one device-to-host copy of T x T numbers); memory: the T x P gradient matrix.
    """

    # declared state (add_state), typed for the type checker
    nonfinite_steps: Tensor

    uses_task_representations = True
    #: the target the method's paper uses
    default_target: ClassVar[str] = "representation"
    #: the precision G is formed in (:meth:`~lit_mtl.engines.TaskJacobian.gramian`): float32
    #: products, as the authors' codes, for the rules whose answer keeps float32's precision
    #: from them; float64 for a rule that reads a small quantity from G (CAGrad's ||g_w||).
    #: Measured cost: ``benchmarks/gramian_precision.py``.
    gramian_dtype: ClassVar[torch.dtype] = torch.float32

    def __init__(
        self, num_tasks: int | None = None, target: str | None = None, chunk_size: int | None = None
    ) -> None:
        super().__init__(num_tasks=num_tasks)
        self.target = self.default_target if target is None else target
        self.engine = engine_for(self.target, chunk_size)
        self.add_state("nonfinite_steps", torch.zeros((), dtype=torch.long))
        self.last_gramian: Tensor | None = None

    def bind_encoder(self, encoder: nn.Module) -> None:
        if isinstance(self.engine, ParameterEngine):
            self.engine.bind(encoder)

    # ------------------------------------------------------------------ the rule
    def coefficients(self, gramian: np.ndarray, losses: np.ndarray) -> np.ndarray:
        """Task coefficients for the present tasks' Gramian (float64). Implemented by methods."""
        raise NotImplementedError

    # ------------------------------------------------------------------ one step
    def combine(self, ctx: StepContext) -> Tensor:
        mean_losses, present_all = ctx.rank_mean_losses
        flags = (present_all & ctx.present).tolist()
        jacobian = self.engine.jacobian(ctx, flags, owner=type(self).__name__)
        gramian = jacobian.gramian(self.gramian_dtype)
        self.last_gramian = gramian.detach()  # the step's T x T Gramian (diagnostics read it)
        weights = self._solve(gramian, mean_losses, present_all)
        value = self._weighted_sum(weights, ctx.stacked, present_all)
        return jacobian.apply(self.last_weights, value)

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
        with single_threaded_blas():  # no second thread pool fighting torch's for the cores
            if len(idx) == self.num_tasks:
                coef = self.coefficients(g, loss_values).tolist()
            else:
                coef = self.coefficients(g[np.ix_(idx, idx)], loss_values[idx]).tolist()
        if len(idx) == self.num_tasks:
            weights = coef
        else:
            weights = [0.0] * self.num_tasks
            for i, c in zip(idx, coef, strict=True):
                weights[i] = c
        return torch.tensor(weights, dtype=losses.dtype, device=losses.device)

    def extra_repr(self) -> str:
        return f"num_tasks={self._num_tasks}, target={self.target!r}"
