"""Engine: GradNorm's per-task gradient norms ||grad_W L_i|| of one layer W.

Generic path (always available, the reference): the per-task gradients of W from the parameter
engine (or of z for ``target="representation"``), their squared norms read off the Gramian's
diagonal before the backward.

Fast path (``fast=True``, used when it applies): GradNorm's weights of a step do not depend on that
step's gradients, so the loss is returned at once and ONE ordinary backward runs, as for equal
weighting. It needs W to be an ``nn.Linear`` of the encoder (a forward hook keeps its input a and
output u) and the heads to read :func:`~lit_mtl.task_views` of z. The views' node hands every
task's gradient c w_i dL_i/dz to a :class:`_LayerGradients` record during that backward; the
record pulls them back to u (ReLU's mask, the Jacobian's diagonal for other elementwise ops found
by inspecting the autograd graph, else one batched vector-Jacobian product), side by side in one
(M, k D) block B, and forms every grad_W L_i = (G_i^T a) / (c w_i) from ONE matrix product a^T B.
Everything that depends on torch internals (autograd node names, ``aten.threshold_backward``)
lives in this file; the tests run both paths and require equal results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lit_mtl.engines.context import StepContext
from lit_mtl.engines.distributed import all_reduce_mean, world_size
from lit_mtl.engines.jacobian import TaskJacobian
from lit_mtl.engines.parameters import ParameterEngine
from lit_mtl.engines.representation import RepresentationEngine
from lit_mtl.engines.views import is_task_views_of, set_views_listener

#: autograd nodes whose Jacobian is diagonal (elementwise ops of one differentiable input)
_ELEMENTWISE_NODES = frozenset(
    {
        "ReluBackward0",
        "LeakyReluBackward0",
        "GeluBackward0",
        "SiluBackward0",
        "TanhBackward0",
        "SigmoidBackward0",
        "EluBackward0",
        "HardtanhBackward0",
        "HardswishBackward0",
        "SoftplusBackward0",
        "MishBackward0",
        "NativeDropoutBackward0",
        "MulBackward0",  # with a constant, e.g. dropout's mask on the CPU
        "DivBackward0",
    }
)

#: ReLU's backward (keep the gradient where the output is > 0), writing into a given tensor
_THRESHOLD_BACKWARD = torch.ops.aten.threshold_backward.grad_input


def elementwise_chain(z: Tensor, u: Tensor) -> tuple[str, ...] | None:
    """The autograd nodes from ``u`` to ``z`` when each is elementwise in its one differentiable
    input (e.g. an activation or dropout) and z has u's shape (no broadcast), so that dz/du is
    diagonal; ``()`` when ``z`` is ``u``; None otherwise."""
    if z.shape != u.shape:
        return None
    target = u.grad_fn
    node = z.grad_fn
    names: list[str] = []
    while node is not target:
        if node is None or type(node).__name__ not in _ELEMENTWISE_NODES:
            return None
        inputs = [f for f, _ in node.next_functions if f is not None]
        if len(inputs) != 1:
            return None
        names.append(type(node).__name__)
        node = inputs[0]
    return tuple(names)


class PendingNorms:
    """The (T,) squared norms ||grad_W L_i||^2 of one micro-batch, once they are known."""

    def __init__(self, squared: Tensor | None = None) -> None:
        self._squared = squared

    @property
    def ready(self) -> bool:
        return self._squared is not None

    def squared_norms(self) -> Tensor:
        assert self._squared is not None
        return self._squared


class _LayerGradients(PendingNorms):
    """Per-task gradients of a Linear layer's weight, read off one ordinary backward (see the
    module docstring). ``root_hook`` (on the returned loss) records c, the gradient flowing into
    it (1 / accumulation steps, times the fp16 loss scale)."""

    def __init__(
        self, a: Tensor, u: Tensor, z: Tensor, weights: Tensor, tasks: list[int], num_tasks: int
    ) -> None:
        super().__init__()
        self.a = a.reshape(-1, a.shape[-1]).float()  # (M, E)
        self.u: Tensor | None = u
        self.z: Tensor | None = z
        self.chain = elementwise_chain(z, u)
        self.weights = weights if len(tasks) == num_tasks else weights[tasks]  # (k,)
        self.tasks = tasks
        self.num_tasks = num_tasks
        self.scale: Tensor | None = None
        self.rows: Tensor | None = None  # (k, E*D) grad_W L_i of self.tasks (DDP)

    @property
    def ready(self) -> bool:
        return self.scale is not None and (self._squared is not None or self.rows is not None)

    def root_hook(self, grad: Tensor) -> None:
        self.scale = grad.detach().float().reshape(())

    @torch.no_grad()
    def __call__(self, grads: Sequence[Tensor]) -> None:
        """Receive the T gradients c w_i dL_i/dz from the views' node, during the backward."""
        assert self.scale is not None and self.u is not None
        k, d = len(self.tasks), self.u.shape[-1]
        block = self._to_layer_output([grads[i] for i in self.tasks])  # (M, k*D)
        product = (self.a.mT @ block).view(-1, k, d)  # (E, k, D): column block i = (G_i^T a)^T
        scale = self.scale * self.weights  # (k,) c w_i; 0 for an absent task (zero gradient)
        scale = torch.where(scale != 0, scale, 1.0)
        if world_size() == 1:  # the norms at once, while the product is in cache
            sq = product.square_().sum((0, 2)) / (scale * scale)
            if k == self.num_tasks:
                self._squared = sq
            else:
                self._squared = sq.new_zeros(self.num_tasks)
                self._squared[self.tasks] = sq
        else:  # the gradients are averaged over ranks first (squared_norms)
            self.rows = product.transpose(0, 1).reshape(k, -1) / scale[:, None]
        self.u = self.z = None  # release the graph tensors

    def _to_layer_output(self, gz: list[Tensor]) -> Tensor:
        """(M, k*D) the gradients w.r.t. W's output u (M rows of D), side by side per task."""
        z, u, chain = self.z, self.u, self.chain
        assert z is not None and u is not None
        k, d = len(gz), u.shape[-1]
        if chain == ("ReluBackward0",):  # ReLU's own backward (keep where z > 0), each task
            out = gz[0].new_empty((*gz[0].shape[:-1], k, d))  # written into its block
            for i, g in enumerate(gz):
                _THRESHOLD_BACKWARD(g, z, 0, grad_input=out[..., i, :])
        elif chain == ():
            out = torch.stack(gz, dim=-2)
        elif chain is not None:  # elementwise: the Jacobian is diagonal, J^T 1 is the diagonal
            with torch.enable_grad():
                diagonal = torch.autograd.grad(z, u, torch.ones_like(z), retain_graph=True)[0]
            out = torch.stack(gz, dim=-2).mul_(diagonal.unsqueeze(-2))
        else:
            with torch.enable_grad():
                try:
                    gu = torch.autograd.grad(
                        z, u, torch.stack(gz), retain_graph=True, is_grads_batched=True
                    )[0]
                except RuntimeError:  # an op without a vmap rule
                    gu = torch.stack(
                        [torch.autograd.grad(z, u, g, retain_graph=True)[0] for g in gz]
                    )
            out = gu.movedim(0, -2)  # (..., k, D)
        return out.reshape(-1, k * d).float()

    def squared_norms(self) -> Tensor:
        """(T,) ||grad_W L_i||^2 (zeros for the tasks not present); under DDP of the grad_W L_i
        averaged over ranks, as the parameter engine does for its J."""
        if self._squared is not None:
            return self._squared
        assert self.rows is not None
        rows = self.rows.new_zeros((self.num_tasks, self.rows.shape[1]))
        rows[self.tasks] = self.rows
        rows = all_reduce_mean(rows)
        self._squared = (rows * rows).sum(1)
        return self._squared


@dataclass
class _Captured:
    a: Tensor  # W's input (detached)
    u: Tensor  # W's output (in the graph)


class LayerNormEngine:
    """Per-task squared gradient norms of one layer W (GradNorm).

    Args:
        target: W: ``"last_shared_layer"``, an encoder module/parameter name, ``"shared"`` or
            ``"representation"``.
        fast: use the single-backward path where it applies (see the module docstring).
    """

    def __init__(self, target: str = "last_shared_layer", fast: bool = True) -> None:
        self.target = target
        self.fast = bool(fast)
        self.gradients: RepresentationEngine | ParameterEngine = (
            RepresentationEngine() if target == "representation" else ParameterEngine(target)
        )
        self._linear: tuple[nn.Linear, ...] = ()  # a tuple: not registered as a submodule
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._captured: _Captured | None = None
        #: the kind of the last step's path ("single backward" or "two pass"), for tests/logs
        self.last_path: str | None = None
        self.last_chain: tuple[str, ...] | None = None

    def bind(self, encoder: nn.Module) -> None:
        if isinstance(self.gradients, ParameterEngine):
            self.gradients.bind(encoder)
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._linear = ()
        params = getattr(self.gradients, "params", None) or []
        if not self.fast or len(params) != 1:
            return
        for module in encoder.modules():
            if isinstance(module, nn.Linear) and module.weight is params[0]:
                self._linear = (module,)
                self._handle = module.register_forward_hook(self._capture)
                break

    def _capture(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        """Forward hook on W's Linear: keep its input and output of the training forward."""
        if module.training and torch.is_grad_enabled() and output.requires_grad:
            self._captured = _Captured(inputs[0].detach(), output)

    def _fast_path_applies(self, ctx: StepContext, captured: _Captured | None) -> bool:
        return bool(
            self.fast
            and self._linear
            and captured is not None
            and self._linear[0].weight.requires_grad
            and ctx.shared_parameters is None
            and ctx.representation is not None
            and ctx.task_representations is not None
            and torch.is_grad_enabled()
            and is_task_views_of(ctx.task_representations, ctx.representation)
        )

    def norms(
        self, ctx: StepContext, present: Tensor, weights: Tensor, value: Tensor, owner: str
    ) -> tuple[PendingNorms, Tensor]:
        """(the pending squared norms, the scalar to backpropagate) for weights ``weights`` (T,)
        applied to the losses (``value`` = sum_i w_i L_i, with its graph). ``present`` (T,) bool:
        the tasks present on some rank (an absent task has weight 0 and a zero gradient; the
        fast path reads no flag on the host)."""
        captured, self._captured = self._captured, None
        if captured is not None and self._fast_path_applies(ctx, captured):
            assert ctx.representation is not None  # the fast path applies to a shared z only
            tasks = [i for i, loss in enumerate(ctx.losses) if loss.requires_grad]
            record = _LayerGradients(
                captured.a,
                captured.u,
                ctx.representation,
                weights.float(),
                tasks,
                ctx.num_tasks,
            )
            value.register_hook(record.root_hook)
            if tasks:
                set_views_listener(ctx.task_representations, record)  # type: ignore[arg-type]
            self.last_path, self.last_chain = "single backward", record.chain
            return record, value
        jacobian: TaskJacobian = self.gradients.jacobian(ctx, present.tolist(), owner)
        squared = jacobian.gramian().diagonal().clone()
        self.last_path, self.last_chain = "two pass", None
        return PendingNorms(squared), jacobian.apply(weights, value)
