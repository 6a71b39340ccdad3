"""The per-step context every weighting receives: one immutable object, built once per step.

``MultiTaskModule`` builds it in its training step; drop-in users build it with
:func:`step_context` (or pass the same keywords to the weighting, which calls it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from lit_mtl.engines.distributed import masked_mean_over_ranks

#: the function that recomputes the T task losses of the step's batch after the optimizer step
#: (FAMO's l'), returning ((T,) losses, (T,) presence)
RecomputeLosses = Callable[[], tuple[Tensor, Tensor]]


def stack_losses(losses: Tensor | Sequence[Tensor]) -> Tensor:
    """Stack T scalar losses into a float32 (T,) tensor (keeps the graph)."""
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(f"losses must be a (T,) tensor, got shape {tuple(losses.shape)}")
        return losses.float()
    items = list(losses)
    if all(isinstance(t, Tensor) and t.dim() == 0 and t.dtype == torch.float32 for t in items):
        return torch.stack(items)  # the usual case: float32 scalars
    for i, item in enumerate(items):
        if not isinstance(item, Tensor) or item.numel() != 1:
            raise ValueError(f"losses[{i}] must be a scalar tensor, got {item!r}")
    return torch.stack([item.reshape(()).float() for item in items])


@dataclass(frozen=True, eq=False)
class StepContext:
    """What one training step hands its weighting.

    Attributes:
        losses: the T task losses, each its own scalar tensor (its own graph: gradient engines
            differentiate each task's loss, never an element of a stacked vector).
        present: (T,) bool, False for a task without any label in this batch.
        representation: the shared representation z, any shape ``(N, ...)``, or None.
        task_representations: what each task's head read: the :func:`~lit_mtl.task_views` of z,
            or T per-task representations z_i of equal shape (mixture-of-experts, attention), or
            None.
        head_parameters: per task, the parameters only that task uses (its head); with them the
            engines take the heads' gradients in the same backward as the gradients w.r.t. z.
        shared_parameters: the shared parameters (parameter-target engines), or None to use the
            ones the weighting resolved from the encoder it was bound to.
        loss_scale: the fp16 GradScaler's current scale, or None.
        recompute_losses: recomputes the step's task losses after the optimizer step (FAMO).
    """

    losses: tuple[Tensor, ...]
    present: Tensor
    representation: Tensor | None = None
    task_representations: tuple[Tensor, ...] | None = None
    head_parameters: tuple[tuple[Tensor, ...], ...] | None = None
    shared_parameters: tuple[Tensor, ...] | None = None
    loss_scale: Tensor | float | None = None
    recompute_losses: RecomputeLosses | None = None

    @property
    def num_tasks(self) -> int:
        return len(self.losses)

    @cached_property
    def stacked(self) -> Tensor:
        """(T,) float32 losses (graph kept)."""
        return stack_losses(self.losses)

    @cached_property
    def rank_mean_losses(self) -> tuple[Tensor, Tensor]:
        """((T,) detached losses averaged over the ranks where each task is present, (T,) global
        presence): identical on every DDP rank; one all-reduce, done once per step."""
        return masked_mean_over_ranks(self.stacked, self.present)

    @property
    def per_task_representations(self) -> bool:
        """True when each task reads its own z_i (no single shared z)."""
        return self.representation is None and self.task_representations is not None


def step_context(
    losses: Tensor | Sequence[Tensor],
    *,
    present: Tensor | None = None,
    representation: Tensor | None = None,
    task_representations: Sequence[Tensor] | None = None,
    heads: Sequence[nn.Module] | None = None,
    shared_parameters: Sequence[Tensor] | None = None,
    loss_scale: Tensor | float | None = None,
    recompute_losses: RecomputeLosses | None = None,
) -> StepContext:
    """Build the :class:`StepContext` of one step (validates shapes; the drop-in entry point).

    Args:
        losses: T scalar task losses (or a (T,) tensor: only for loss-based methods).
        present: (T,) bool; default all present.
        representation: the shared z (any shape ``(N, ...)``).
        task_representations: the views of z each head read (:func:`~lit_mtl.task_views`), or
            T per-task representations of equal shape (then leave ``representation`` None).
        heads: the T task heads (their parameters become ``head_parameters``).
        shared_parameters: the shared parameters for parameter-target methods.
        loss_scale: the fp16 GradScaler's scale (:func:`loss_scale_of`).
        recompute_losses: see :class:`StepContext` (FAMO).

    >>> import torch
    >>> ctx = step_context([torch.tensor(1.0), torch.tensor(2.0)])
    >>> ctx.num_tasks, ctx.present.tolist()
    (2, [True, True])
    """
    items = list(losses.unbind()) if isinstance(losses, Tensor) else list(losses)
    if isinstance(losses, Tensor) and losses.dim() != 1:
        raise ValueError(f"losses must be a (T,) tensor, got shape {tuple(losses.shape)}")
    for i, item in enumerate(items):
        if not isinstance(item, Tensor) or item.numel() != 1:
            raise ValueError(f"losses[{i}] must be a scalar tensor, got {item!r}")
    t = len(items)
    if t == 0:
        raise ValueError("losses must not be empty")
    device = items[0].device
    if present is None:
        flags = torch.ones(t, dtype=torch.bool, device=device)
    else:
        flags = present.to(device=device, dtype=torch.bool).reshape(-1)
        if flags.shape[0] != t:
            raise ValueError(f"present has {flags.shape[0]} entries for {t} task losses")
    views: tuple[Tensor, ...] | None = None
    if task_representations is not None:
        views = tuple(task_representations)
        if len(views) != t:
            raise ValueError(f"task_representations has {len(views)} entries for {t} task losses")
        shapes = {tuple(v.shape) for v in views}
        if len(shapes) != 1:
            raise ValueError(f"task_representations must all have one shape, got {sorted(shapes)}")
        if representation is not None and tuple(representation.shape) not in shapes:
            raise ValueError(
                f"task_representations have shape {shapes.pop()} but representation has "
                f"{tuple(representation.shape)}"
            )
    head_params: tuple[tuple[Tensor, ...], ...] | None = None
    if heads is not None:
        heads = list(heads)
        if len(heads) != t:
            raise ValueError(f"{len(heads)} heads for {t} task losses")
        head_params = tuple(tuple(h.parameters()) for h in heads)
    return StepContext(
        losses=tuple(items),
        present=flags,
        representation=representation,
        task_representations=views,
        head_parameters=head_params,
        shared_parameters=None if shared_parameters is None else tuple(shared_parameters),
        loss_scale=loss_scale,
        recompute_losses=recompute_losses,
    )


def loss_scale_of(scaler: object | None) -> Tensor | float | None:
    """The current scale of an enabled ``torch.amp.GradScaler`` (None when absent or disabled).

    Reads the scale tensor without a host sync where the scaler exposes it (``_scale``, set once
    the scaler has run); otherwise the public ``get_scale()``.
    """
    if scaler is None or not getattr(scaler, "is_enabled", lambda: False)():
        return None
    scale = getattr(scaler, "_scale", None)
    if isinstance(scale, Tensor):
        return scale
    return float(scaler.get_scale())  # type: ignore[attr-defined]
