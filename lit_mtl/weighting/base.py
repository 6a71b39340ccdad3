"""The weighting base class: turn the T task losses of a step into one scalar to backpropagate.

Every method, loss-based or gradient-based, is called the same way from the training step::

    loss = weighting(task_losses, present=present, representation=z, shared_params=params)

``task_losses`` is a sequence of T scalar tensors (or a stacked (T,) tensor). Loss-based methods
read only the values; gradient-based methods differentiate
each task's *own* loss tensor with respect to a shared target (the representation ``z`` or the
shared parameters) with :func:`torch.autograd.grad`, compute task coefficients ``c`` from the
per-task gradients, and return ``(c.detach() * losses).sum()``, so that one ordinary backward (run
by Lightning: AMP, DDP, accumulation and clipping unchanged) applies the combined direction.

State that a method learns outside the task loss (e.g. GradNorm's weights) lives in buffers of the
weighting, so it is part of the owning LightningModule's ``state_dict`` (saved in checkpoints) and
outside DDP's gradient all-reduce. Parameters trained *by* the task loss (uncertainty weighting's
log-variances) are ordinary parameters returned by :meth:`Weighting.parameter_groups`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = ["Weighting", "stack_losses", "task_views"]


def stack_losses(losses: Tensor | Sequence[Tensor]) -> Tensor:
    """Stack T scalar losses into a float32 (T,) tensor (keeps the graph)."""
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(f"losses must be a (T,) tensor, got shape {tuple(losses.shape)}")
        return losses.float()
    items = list(losses)
    for i, item in enumerate(items):
        if not isinstance(item, Tensor) or item.numel() != 1:
            raise ValueError(f"losses[{i}] must be a scalar tensor, got {item!r}")
    return torch.stack([item.reshape(()).float() for item in items])


class _TaskViews(torch.autograd.Function):
    """T aliases of z, one per head, in ONE graph node.

    Its backward receives every task's gradient w.r.t. z at once (instead of T view nodes whose
    gradients autograd adds one by one), hands them to a listener set on the node by a
    weighting (GradNorm reads per-task gradients off the ordinary backward this
    way) and returns their sum to z. ``torch.autograd.grad`` w.r.t. the views captures each
    task's gradient without running this node.
    """

    @staticmethod
    def forward(ctx, z: Tensor, num_tasks: int) -> tuple[Tensor, ...]:  # type: ignore[override]
        ctx.listener = None
        return tuple(z.view_as(z) for _ in range(num_tasks))

    @staticmethod
    def backward(ctx, *grads: Tensor):  # type: ignore[no-untyped-def, override]
        listener, ctx.listener = ctx.listener, None
        if listener is not None:
            listener(grads)
        if len(grads) == 1:
            return grads[0], None
        total = grads[0] + grads[1]
        for g in grads[2:]:
            total.add_(g)
        return total, None


def task_views(representation: Tensor, num_tasks: int) -> list[Tensor]:
    """One view of the shared representation z per task head, for gradient-based weightings.

    Feed head i the i-th view and pass the list as ``task_representations=`` to the weighting:
    the per-task gradients w.r.t. z (and every head's own gradients) then come from a single
    backward pass, and GradNorm reads its gradient norms off the ordinary backward. The views
    alias z (no copy); heads must not modify them in place.

    >>> z = torch.ones(4, 3, requires_grad=True)
    >>> views = task_views(z, 2)
    >>> len(views), views[0].shape
    (2, torch.Size([4, 3]))
    """
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    if not representation.requires_grad:
        return [representation] * num_tasks
    return list(_TaskViews.apply(representation, int(num_tasks)))


class Weighting(nn.Module):
    """Base class of the task-weighting methods.

    Args:
        num_tasks: number of tasks T. Optional: when the weighting is given to a
            :class:`~lit_mtl.MultiTaskModule`, the module binds it to its tasks; when given here,
            it must agree with the module's tasks (a clear error otherwise).

    Subclasses implement :meth:`combine` and may override :meth:`_build` (create per-task
    parameters/buffers once T is known), :meth:`parameter_groups`, and the training hooks
    :meth:`on_optimizer_step` / :meth:`on_train_epoch_end`.

    After each call, :attr:`last_weights` holds the (T,) weights applied to the task losses (for
    logging; detached).
    """

    #: True for methods that need the task losses recomputed on the same batch after the optimizer
    #: step (FAMO); the owning module then passes ``recompute_losses`` to :meth:`on_optimizer_step`.
    needs_losses_after_step: ClassVar[bool] = False
    #: True for methods that differentiate the task losses w.r.t. z (the module then feeds each
    #: head its own view of z and passes the views as ``task_representations``)
    uses_task_representations: ClassVar[bool] = False

    def __init__(self, num_tasks: int | None = None) -> None:
        super().__init__()
        if num_tasks is not None and int(num_tasks) < 1:
            raise ValueError(f"{type(self).__name__}: num_tasks must be >= 1, got {num_tasks}")
        self._num_tasks: int | None = None if num_tasks is None else int(num_tasks)
        self.task_names: list[str] = []
        self.task_kinds: list[str] = []
        self.register_buffer("last_weights", torch.empty(0), persistent=False)
        if self._num_tasks is not None:
            self._build(self._num_tasks, ["regression"] * self._num_tasks)
            self.last_weights = torch.ones(self._num_tasks)

    # ------------------------------------------------------------------ binding
    @property
    def num_tasks(self) -> int:
        if self._num_tasks is None:
            raise RuntimeError(
                f"{type(self).__name__} is not bound to tasks yet: pass num_tasks=... or give it "
                "to a MultiTaskModule"
            )
        return self._num_tasks

    def bind(
        self,
        task_names: Sequence[str],
        task_kinds: Sequence[str] | None = None,
        encoder: nn.Module | None = None,
        baseline_losses: Sequence[float | None] | None = None,
    ) -> None:
        """Attach the weighting to the owning module's tasks (called by MultiTaskModule).

        ``encoder`` lets gradient-based methods resolve their shared target (the last shared layer,
        a named module or parameter, or all shared parameters). ``baseline_losses`` gives the loss
        of an uninformed predictor per task where known (log C for C-class cross-entropy).
        """
        names = list(task_names)
        kinds = list(task_kinds) if task_kinds is not None else ["regression"] * len(names)
        if len(kinds) != len(names):
            raise ValueError(f"{len(names)} task names but {len(kinds)} task kinds")
        if self._num_tasks is not None and self._num_tasks != len(names):
            raise ValueError(
                f"{type(self).__name__} was configured for num_tasks={self._num_tasks} but the "
                f"module has {len(names)} tasks {names}"
            )
        self._num_tasks = len(names)
        self.task_names = names
        self.task_kinds = kinds
        self._build(len(names), kinds)
        self.last_weights = torch.ones(len(names), device=self.last_weights.device)
        if encoder is not None:
            self._bind_encoder(encoder)

    def _bind_encoder(self, encoder: nn.Module) -> None:
        """Resolve what the method differentiates (gradient-based methods)."""

    def _build(self, num_tasks: int, task_kinds: Sequence[str]) -> None:
        """Create per-task parameters/buffers. Called on construction (if T is known) and bind."""

    # ------------------------------------------------------------------ main entry
    def forward(
        self,
        losses: Tensor | Sequence[Tensor],
        *,
        present: Tensor | None = None,
        representation: Tensor | None = None,
        shared_params: Sequence[Tensor] | None = None,
        loss_scale: Tensor | float | None = None,
        task_representations: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Combine T task losses into one scalar.

        Args:
            losses: T scalar loss tensors (or a (T,) tensor).
            present: optional (T,) bool tensor; False for a task with no label in this batch. Such
                a task contributes exactly zero.
            representation: the shared representation ``z`` (gradient methods on ``z``).
            shared_params: the shared parameters (gradient methods on parameters); default: the
                ones resolved from the encoder given to :meth:`bind`.
            task_representations: optional per-task views of z (``z.view_as(z)``, one fed to
                each head); with them gradient methods get all T gradients w.r.t. z in a single
                backward pass instead of T.
            loss_scale: the fp16 GradScaler's current scale, if any. Gradient methods compute the
                per-task gradients of ``loss_scale * L_i`` (no fp16 underflow) and unscale them.
        """
        task_losses = list(losses) if not isinstance(losses, Tensor) else list(losses.unbind())
        stacked = stack_losses(losses)
        if self._num_tasks is None:
            raise RuntimeError(
                f"{type(self).__name__} is not bound to tasks: pass num_tasks=... or give it to a "
                "MultiTaskModule"
            )
        if stacked.shape[0] != self._num_tasks:
            raise ValueError(
                f"{type(self).__name__} expects {self._num_tasks} task losses, got "
                f"{stacked.shape[0]}"
            )
        if present is None:
            present = torch.ones(self._num_tasks, dtype=torch.bool, device=stacked.device)
        else:
            present = present.to(device=stacked.device, dtype=torch.bool).reshape(-1)
            if present.shape[0] != self._num_tasks:
                raise ValueError(
                    f"present has {present.shape[0]} entries, expected {self._num_tasks}"
                )
        return self.combine(
            stacked,
            task_losses=task_losses,
            present=present,
            representation=representation,
            shared_params=shared_params,
            loss_scale=loss_scale,
            task_representations=task_representations,
        )

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
        """Return the scalar to backpropagate; set :attr:`last_weights`. Implemented by methods."""
        raise NotImplementedError

    def _weighted_sum(self, weights: Tensor, losses: Tensor, present: Tensor) -> Tensor:
        """sum_i w_i L_i over present tasks; records the weights."""
        weights = weights.to(losses.dtype) * present
        self.last_weights = weights.detach().clone()
        return (weights * losses).sum()

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict]:
        """Optimizer param groups of the weighting's trainable parameters (no weight decay)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        return [{"params": params, "weight_decay": 0.0, "name": "weighting"}]

    def on_optimizer_step(
        self, recompute_losses: Callable[[], tuple[Tensor, Tensor]] | None = None
    ) -> None:
        """Called once per optimizer step (after accumulation), for methods with own updates.

        ``recompute_losses`` (given when :attr:`needs_losses_after_step`) returns the (T,) task
        losses of the last batch under the updated parameters.
        """

    def on_train_epoch_start(self) -> None:
        """Called at the start of every training epoch (e.g. DWA closes the previous epoch here,
        so that the epoch's losses, saved in a checkpoint, are never lost on resume)."""

    def extra_repr(self) -> str:
        return f"num_tasks={self._num_tasks}"
