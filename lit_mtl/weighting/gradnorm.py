"""GradNorm (Chen et al., ICML 2018): balance gradient norms by learning the task weights."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from lit_mtl.functional.distributed import all_reduce_mean, masked_mean_over_ranks
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


class _LastLayerGradients:
    """Per-task gradients of a Linear layer's weight, read off one ordinary backward by hooks.

    ``root_hook`` (on the returned loss) records c, the gradient flowing into it (1 / accumulation
    steps, times the fp16 loss scale); ``view_hook(i)`` receives c w_i dL_i/dz from task i's view of
    z; once all have arrived, they are pulled back to the layer's output u in one batched
    vector-Jacobian product (only through what lies between u and z) and
    grad_W L_i = G_i^T a / (c w_i) is formed by one matrix product.
    """

    def __init__(
        self, a: Tensor, u: Tensor, z: Tensor, weights: Tensor, tasks: list[int], num_tasks: int
    ) -> None:
        self.a = a.reshape(-1, a.shape[-1]).float()  # (M, E)
        self.u: Tensor | None = u
        self.z: Tensor | None = z
        self.weights = weights
        self.tasks = tasks
        self.num_tasks = num_tasks
        self.scale: Tensor | None = None
        self.grads: dict[int, Tensor] = {}
        self.rows: dict[int, Tensor] = {}

    @property
    def done(self) -> bool:
        return self.scale is not None and len(self.rows) == len(self.tasks)

    def root_hook(self, grad: Tensor) -> None:
        self.scale = grad.detach().float().reshape(())

    def view_hook(self, i: int):  # type: ignore[no-untyped-def]
        def hook(grad: Tensor) -> None:
            self.grads[i] = grad.detach()
            if len(self.grads) == len(self.tasks):  # the last one: all T at once
                self._pull_back()

        return hook

    def _pull_back(self) -> None:
        order = sorted(self.grads)
        gz = torch.stack([self.grads[i] for i in order])  # (k, *z.shape), c w_i dL_i/dz
        if self.u is not self.z:  # through what lies between W's output and z (e.g. ReLU)
            try:
                gu = torch.autograd.grad(
                    self.z, self.u, grad_outputs=gz, retain_graph=True, is_grads_batched=True
                )[0]
            except RuntimeError:  # an op without a vmap rule
                gu = torch.stack(
                    [
                        torch.autograd.grad(self.z, self.u, grad_outputs=g, retain_graph=True)[0]
                        for g in gz
                    ]
                )
        else:
            gu = gz
        k = gu.shape[0]
        g = gu.reshape(k, -1, gu.shape[-1]).float()  # (k, M, D)
        assert self.scale is not None
        scale = self.scale * self.weights[order]  # (k,) c w_i
        rows = torch.matmul(g.mT, self.a).reshape(k, -1)  # (k, D*E): G_i^T a, batched
        self.rows = dict(zip(order, (rows / scale[:, None]).unbind(0), strict=True))
        self.grads.clear()
        self.u = self.z = None  # release the graph tensors

    def squared_norms(self) -> Tensor:
        """(T,) ||grad_W L_i||^2 (zeros for the tasks not present); under DDP of the grad_W L_i
        averaged over ranks, as :meth:`GradientWeighting.reduced_gramian` does for parameters."""
        some = next(iter(self.rows.values()))
        jac = some.new_zeros((self.num_tasks, some.numel()))
        for i, row in self.rows.items():
            jac[i] = row
        jac = all_reduce_mean(jac)  # identity in a single process
        return (jac * jac).sum(1)


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
    read per-task views of z (as in MultiTaskModule), ONE ordinary backward, as for equal
    weighting: w of this step does not depend on this step's gradients, so the loss is returned at
    once and hooks read each task's dL_i/dz off that backward, pull them back to W's output in one
    batched product (only through what lies between W and z, e.g. its activation) and form
    grad_W L_i = G_i^T a from W's input a (one batched matrix product); the norms enter w's update
    in :meth:`on_optimizer_step`. Otherwise (other targets, drop-in use without views): per-task
    gradients w.r.t. z in one backward through the heads, pulled back to W in one batched
    vector-Jacobian product, before the final backward.
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
        return (
            bool(self._linear)
            and self._captured is not None
            and self._linear[0].weight.requires_grad
            and task_representations is not None
            and len(task_representations) == self.num_tasks
            and representation is not None
            and representation.requires_grad
            and torch.is_grad_enabled()
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
        self._accumulate(gramian.diagonal(), mean_losses, present_all)
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
        backward runs (as for equal weighting). Hooks read each task's gradient w.r.t. z off
        that backward (each head reads its own view of z), pull it back to W's output (through
        whatever lies between W and z), and form grad_W L_i = G_i^T a from W's input a; the norms
        are reduced across ranks and applied in :meth:`on_optimizer_step`."""
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
        for i in tasks:
            views[i].register_hook(record.view_hook(i))
        self._records.append((record, mean_losses.detach(), present_all))
        return value

    def _accumulate(self, sq_norms: Tensor, mean_losses: Tensor, present_all: Tensor) -> None:
        """Add dL_grad/dw of one micro-batch to the pending gradient (CPU float64 math on a few
        T-vectors; identical on all ranks: norms and losses are already rank-reduced)."""
        with torch.no_grad():
            packed = torch.cat(
                [
                    sq_norms.detach().double(),
                    mean_losses.detach().double(),
                    present_all.double(),
                    self.initial_losses.double(),
                    self.w.double(),
                ]
            ).cpu()
            sq, ml, pa, init, w = packed.view(5, -1).unbind(0)
            norms = sq.clamp(min=0).sqrt()  # ||grad_W L_i||
            pa = pa.bool()
            unset = torch.isnan(init) & pa
            if bool(unset.any()):
                init = torch.where(unset, ml, init)
                self.initial_losses.copy_(init)
            usable = pa & (init > 0) & torch.isfinite(norms)
            if int(usable.sum()) >= 2:
                grad_w, l_grad = gradnorm_weight_gradient(
                    w[usable], norms[usable], ml[usable], init[usable], self.alpha
                )
                full = torch.zeros_like(w)
                full[usable] = grad_w
                self.pending_grad.add_(full.to(self.pending_grad))
                self.pending_count += 1
                self.last_grad_loss.fill_(float(l_grad))

    @torch.no_grad()
    def on_optimizer_step(self, recompute_losses=None) -> None:  # type: ignore[no-untyped-def]
        records, self._records = self._records, []
        for record, mean_losses, present_all in records:
            if not record.done:
                continue  # no backward ran for that micro-batch (e.g. a skipped step)
            self._accumulate(record.squared_norms(), mean_losses, present_all)
        count = float(self.pending_count)
        if count == 0:
            return
        grad = self.pending_grad / count
        adam_step(self.w, grad, self.exp_avg, self.exp_avg_sq, self.adam_step, lr=self.lr)
        self.w.clamp_(min=self.min_weight)
        self.w.mul_(self.num_tasks / self.w.sum())
        self.pending_grad.zero_()
        self.pending_count.zero_()

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self._num_tasks}, alpha={self.alpha}, lr={self.lr}, target={self.target!r}"
        )
