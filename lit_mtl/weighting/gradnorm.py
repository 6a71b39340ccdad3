"""GradNorm (Chen et al., ICML 2018): balance gradient norms by learning the task weights."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lit_mtl.functional.distributed import all_reduce_mean, masked_mean_over_ranks, world_size
from lit_mtl.functional.optim import adam_step, host_arrays
from lit_mtl.weighting.base import _TaskViews
from lit_mtl.weighting.gradient import GradientWeighting

__all__ = ["GradNorm", "gradnorm_weight_gradient"]


def gradnorm_weight_gradient(
    weights: Sequence[float],
    grad_norms: Sequence[float],
    losses: Sequence[float],
    initial_losses: Sequence[float],
    alpha: float,
) -> tuple[list[float], float]:
    """d L_grad / d w and L_grad for GradNorm, over the tasks present (T numbers each).

    G_i = w_i ||grad_W L_i||, G_bar = mean_i G_i, Ltilde_i = L_i / L_i(0),
    r_i = Ltilde_i / mean_j Ltilde_j, target_i = G_bar r_i^alpha (held constant),
    L_grad = sum_i |G_i - target_i|,  dL_grad/dw_i = sign(G_i - target_i) ||grad_W L_i||.
    Plain float math: it runs once per optimizer step on T numbers.

    >>> gradnorm_weight_gradient([1, 1], [1, 3], [1, 1], [1, 1], alpha=1.5)
    ([-1.0, 3.0], 2.0)
    """
    norms = [float(n) for n in grad_norms]
    g = [float(w) * n for w, n in zip(weights, norms, strict=True)]
    ratios = [float(loss) / float(l0) for loss, l0 in zip(losses, initial_losses, strict=True)]
    mean_ratio = sum(ratios) / len(ratios)
    g_bar = sum(g) / len(g)
    diffs = [gi - g_bar * (ri / mean_ratio) ** alpha for gi, ri in zip(g, ratios, strict=True)]
    grad = [((d > 0) - (d < 0)) * n for d, n in zip(diffs, norms, strict=True)]
    return grad, sum(abs(d) for d in diffs)


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


class _LastLayerGradients:
    """Per-task gradients of a Linear layer's weight, read off one ordinary backward.

    ``root_hook`` (on the returned loss) records c, the gradient flowing into it (1 / accumulation
    steps, times the fp16 loss scale); the :func:`~lit_mtl.task_views` node calls the record with
    the T gradients c w_i dL_i/dz, which are pulled back to the layer's output u (only through
    what lies between u and z: ReLU's mask, the Jacobian's diagonal for other elementwise ops,
    else one batched vector-Jacobian product) side by side in one (M, k D) block B, so that all
    grad_W L_i = (G_i^T a) / (c w_i) come from ONE matrix product a^T B.
    """

    def __init__(
        self, a: Tensor, u: Tensor, z: Tensor, weights: Tensor, tasks: list[int], num_tasks: int
    ) -> None:
        self.a = a.reshape(-1, a.shape[-1]).float()  # (M, E)
        self.u: Tensor | None = u
        self.z: Tensor | None = z
        self.chain = elementwise_chain(z, u)
        self.weights = weights if len(tasks) == num_tasks else weights[tasks]  # (k,)
        self.tasks = tasks
        self.num_tasks = num_tasks
        self.scale: Tensor | None = None
        self.sq: Tensor | None = None  # (T,) squared norms (one process)
        self.rows: Tensor | None = None  # (k, E*D) grad_W L_i of self.tasks (DDP)

    @property
    def done(self) -> bool:
        return self.scale is not None and (self.sq is not None or self.rows is not None)

    def root_hook(self, grad: Tensor) -> None:
        self.scale = grad.detach().float().reshape(())

    @torch.no_grad()
    def __call__(self, grads: Sequence[Tensor]) -> None:
        """Receive the T gradients c w_i dL_i/dz from the views' node, during the backward."""
        assert self.scale is not None and self.u is not None
        k, d = len(self.tasks), self.u.shape[-1]
        block = self._to_layer_output([grads[i] for i in self.tasks])  # (M, k*D)
        product = (self.a.mT @ block).view(-1, k, d)  # (E, k, D): column block i = (G_i^T a)^T
        scale = self.scale * self.weights  # (k,) c w_i
        if world_size() == 1:  # the norms at once, while the product is in cache
            sq = product.square_().sum((0, 2)) / (scale * scale)
            if k == self.num_tasks:
                self.sq = sq
            else:
                self.sq = sq.new_zeros(self.num_tasks)
                self.sq[self.tasks] = sq
        else:  # the gradients are averaged over ranks first (on_optimizer_step)
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
        averaged over ranks, as :meth:`GradientWeighting.reduced_gramian` does for parameters."""
        if self.sq is not None:
            return self.sq
        assert self.rows is not None
        rows = self.rows.new_zeros((self.num_tasks, self.rows.shape[1]))
        rows[self.tasks] = self.rows
        rows = all_reduce_mean(rows)
        return (rows * rows).sum(1)


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
    Cost: when W is a Linear layer of the encoder (the default, last shared layer) and the heads
    read :func:`~lit_mtl.task_views` of z (as in MultiTaskModule), ONE ordinary backward, as for
    equal weighting: w of this step does not depend on this step's gradients, so the loss is
    returned at once; the views' node hands every task's c w_i dL_i/dz to GradNorm during that
    backward, which pulls them back to W's output (ReLU's mask, the diagonal of other elementwise
    ops, else one batched vector-Jacobian product) and forms every grad_W L_i = G_i^T a from W's
    input a in one matrix product (T N D E multiply-adds: the method's intrinsic cost); the norms
    enter w's update (float math on T numbers) in :meth:`on_optimizer_step`. Otherwise (other
    targets, drop-in use without task views): per-task gradients w.r.t. z in one backward through
    the heads, pulled back to W in one batched vector-Jacobian product, before the final backward.
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
        self._capture_handle: torch.utils.hooks.RemovableHandle | None = None
        # a tuple, so that nn.Module does not register the encoder's layer as our submodule
        self._linear: tuple[torch.nn.Linear, ...] = ()
        self._captured: tuple[Tensor, Tensor] | None = None
        self._records: list[tuple[_LastLayerGradients, Tensor, Tensor]] = []
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

    # ------------------------------------------------------------------ the fast path
    def _bind_encoder(self, encoder: torch.nn.Module) -> None:
        super()._bind_encoder(encoder)
        if self._capture_handle is not None:
            self._capture_handle.remove()
            self._capture_handle = None
        self._linear = ()
        params = self._target_params or []
        if len(params) != 1:
            return
        for module in encoder.modules():
            if isinstance(module, torch.nn.Linear) and module.weight is params[0]:
                self._linear = (module,)
                self._capture_handle = module.register_forward_hook(self._capture)
                break

    def _capture(self, module: torch.nn.Module, inputs: tuple, output: Tensor) -> None:
        """Forward hook on W's Linear: keep its input and output of the training forward."""
        if module.training and torch.is_grad_enabled() and output.requires_grad:
            self._captured = (inputs[0].detach(), output)

    def _fast_path_applies(self, representation, task_representations) -> bool:  # type: ignore[no-untyped-def]
        if not (
            self._linear
            and self._captured is not None
            and self._linear[0].weight.requires_grad
            and task_representations is not None
            and len(task_representations) == self.num_tasks
            and representation is not None
            and representation.grad_fn is not None
            and torch.is_grad_enabled()
        ):
            return False
        node = task_representations[0].grad_fn  # the views must come from task_views(z, T)
        return (
            isinstance(node, _TaskViews._backward_cls)
            and all(view.grad_fn is node for view in task_representations)
            and node.next_functions[0][0] is representation.grad_fn
        )

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
        if self._fast_path_applies(representation, task_representations):
            return self._combine_in_backward(
                losses, task_losses, present, representation, task_representations
            )
        self._captured = None
        jacobian = self.task_gradients(
            task_losses, present, representation, shared_params, loss_scale, task_representations
        )
        gramian = self.reduced_gramian(jacobian)
        mean_losses, present_all = masked_mean_over_ranks(losses, present)
        with host_arrays(self, self._STATE) as state:
            self._accumulate(state, [(gramian.diagonal(), mean_losses, present_all)])
        return self._finish(self.w.detach().to(losses.dtype), losses, present_all, representation)

    def _combine_in_backward(
        self,
        losses: Tensor,
        task_losses: Sequence[Tensor],
        present: Tensor,
        representation: Tensor,
        views: Sequence[Tensor],
    ) -> Tensor:
        """The weights of this step do not depend on this step's gradients (they only drive
        w's own update, applied after the step), so the loss is returned at once and ONE ordinary
        backward runs (as for equal weighting). The task views' node hands each task's gradient
        w.r.t. z to a :class:`_LastLayerGradients` record during that backward (a hook on the
        returned loss gives the scale c), which forms the norms of grad_W L_i; they are reduced
        across ranks and applied in :meth:`on_optimizer_step`."""
        a, u = self._captured  # type: ignore[misc]
        self._captured = None
        mean_losses, present_all = masked_mean_over_ranks(losses, present)
        weights = self.w.detach().to(losses.dtype)
        value = self._weighted_sum(weights, losses, present_all)
        tasks = [
            i
            for i, flag in enumerate(present_all.tolist())
            if flag and task_losses[i].requires_grad
        ]
        record = _LastLayerGradients(
            a, u, representation, self.last_weights.detach().float(), tasks, self.num_tasks
        )
        value.register_hook(record.root_hook)
        if tasks:
            views[0].grad_fn.listener = record  # the task_views node calls it in the backward
        self._records.append((record, mean_losses.detach(), present_all))
        return value

    #: the buffers of w's own update (host math in :meth:`_accumulate` / :meth:`on_optimizer_step`)
    _STATE = (
        "w",
        "initial_losses",
        "exp_avg",
        "exp_avg_sq",
        "adam_step",
        "pending_grad",
        "pending_count",
        "last_grad_loss",
    )

    def _accumulate(
        self, state: dict[str, np.ndarray], batches: list[tuple[Tensor, Tensor, Tensor]]
    ) -> None:
        """Add dL_grad/dw of each micro-batch (its squared norms, mean losses and presence, all
        (T,) and already rank-reduced, so identical on all ranks) to the pending gradient in
        ``state`` (:func:`host_arrays` of the buffers)."""
        if not batches:
            return
        initial = state["initial_losses"].tolist()
        for batch in batches:  # float math on T numbers
            sq, losses, present = (v.tolist() for v in batch)
            for i, (loss, flag) in enumerate(zip(losses, present, strict=True)):
                if flag and math.isnan(initial[i]):
                    initial[i] = loss  # L_i(0): the first step where task i is present
            norms = [math.sqrt(max(v, 0.0)) for v in sq]  # ||grad_W L_i||
            usable = [
                i
                for i, flag in enumerate(present)
                if flag and initial[i] > 0 and math.isfinite(norms[i])
            ]
            if len(usable) < 2:
                continue
            w = state["w"].tolist()
            grad_w, l_grad = gradnorm_weight_gradient(
                [w[i] for i in usable],
                [norms[i] for i in usable],
                [losses[i] for i in usable],
                [initial[i] for i in usable],
                self.alpha,
            )
            state["pending_grad"][usable] += grad_w
            state["pending_count"] += 1
            state["last_grad_loss"][...] = l_grad
        state["initial_losses"][:] = initial

    def on_optimizer_step(self, recompute_losses=None) -> None:  # type: ignore[no-untyped-def]
        records, self._records = self._records, []
        batches = [  # records without a backward (e.g. a skipped step) are dropped
            (record.squared_norms(), mean_losses, present_all)
            for record, mean_losses, present_all in records
            if record.done
        ]
        with host_arrays(self, self._STATE) as state:
            self._accumulate(state, batches)
            count = float(state["pending_count"])
            if count == 0:
                return
            step = int(state["adam_step"]) + 1
            w, state["exp_avg"][:], state["exp_avg_sq"][:] = adam_step(
                state["w"].tolist(),
                [g / count for g in state["pending_grad"].tolist()],
                state["exp_avg"].tolist(),
                state["exp_avg_sq"].tolist(),
                step,
                lr=self.lr,
            )
            w = [max(x, self.min_weight) for x in w]  # positive, then renormalised to sum T
            total = sum(w)
            state["w"][:] = [x * self.num_tasks / total for x in w]
            state["adam_step"][...] = step
            state["pending_grad"][...] = 0
            state["pending_count"][...] = 0

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self._num_tasks}, alpha={self.alpha}, lr={self.lr}, target={self.target!r}"
        )
