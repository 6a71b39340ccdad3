"""The weighting base class: turn the T task losses of a step into one scalar to backpropagate.

Every method is called the same way, with the step's :class:`~lit_mtl.StepContext` (built by
``MultiTaskModule``, or by :func:`~lit_mtl.step_context` in your own module)::

    loss = weighting(step_context(losses, present=..., representation=z, heads=...))
    loss = weighting(losses, representation=z)      # the same: keywords build the context

Loss-based methods read only the losses. Gradient-based methods get per-task gradients from an
engine (:mod:`lit_mtl.engines`) and return a scalar whose ordinary backward (run by Lightning: AMP,
DDP, accumulation and clipping unchanged) applies the combined direction.

State is declared once with :meth:`Weighting.add_state` (name, default, reduction across ranks,
checkpointed or not), as torchmetrics does: states are buffers, so they are in the owning module's
``state_dict`` and outside DDP's gradient all-reduce. Parameters trained *by* the task loss
(uncertainty weighting's log-variances) are ordinary parameters returned by
:meth:`Weighting.parameter_groups`.

Updates after the optimizer step (GradNorm's w, FAMO's logits, step counters) happen by
themselves: a weighting that ran a training forward is updated once by the next ``step()`` of a
``torch.optim`` optimizer that holds the model's parameters (one global optimizer post-step hook).
Calling :meth:`Weighting.on_optimizer_step` yourself is harmless (it runs at most once per step);
with an optimizer that is not a ``torch.optim.Optimizer`` (no post-step hooks) call it after
each step.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.hooks import RemovableHandle

from lit_mtl._moved import moved_names
from lit_mtl.engines.context import StepContext, step_context
from lit_mtl.engines.distributed import all_reduce_max, all_reduce_sum, world_size

# the array helpers this module held before they moved to lit_mtl.functional.arrays
__getattr__ = moved_names(
    __name__, "lit_mtl.functional.arrays", ["as_array_like", "assign_where", "widened"]
)

Reduction = Literal["sum", "mean", "max"]

_NUMPY_DTYPES = (torch.float32, torch.float64, torch.bool, torch.int64)


#: weightings that ran a training forward since their last post-step update
_PENDING: weakref.WeakSet[Weighting] = weakref.WeakSet()
_HOOK: RemovableHandle | None = None


def _after_any_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for weighting in list(_PENDING):
        if weighting._owned_by(optimizer):
            weighting.on_optimizer_step()


def _ensure_hook() -> None:
    global _HOOK
    if _HOOK is None:
        _HOOK = register_optimizer_step_post_hook(_after_any_optimizer_step)


def _build_after(init: Any) -> Any:
    """``init`` followed by :meth:`Weighting.build` when T is known, once per construction (the
    outermost ``__init__`` of a chain of subclasses builds)."""

    @functools.wraps(init)
    def __init__(self: Weighting, *args: Any, **kw: Any) -> None:
        outermost = "_constructing" not in self.__dict__
        self.__dict__["_constructing"] = True
        try:
            init(self, *args, **kw)
        finally:
            if outermost:
                del self.__dict__["_constructing"]
        if outermost and self._num_tasks is not None:
            self.build(self._num_tasks, self._init_kinds or ["regression"] * self._num_tasks)

    __init__._builds_after = True  # type: ignore[attr-defined]
    return __init__


class Weighting(nn.Module):
    """Base class of the task-weighting methods.

    Args:
        num_tasks: number of tasks T. Optional: when the weighting is given to a
            :class:`~lit_mtl.MultiTaskModule`, the module binds it to its tasks; when given here,
            it must agree with the module's tasks (a clear error otherwise).
        task_kinds: the tasks' kinds for drop-in use (default: regression), passed to
            :meth:`build`; inside a MultiTaskModule the tasks' own kinds are used.

    Subclasses implement :meth:`combine` and may override :meth:`build` (declare per-task state
    once T is known: after construction when ``num_tasks`` is given, and again when a module
    binds the weighting to its tasks), :meth:`bind_encoder` (resolve a gradient target),
    :meth:`parameter_groups`, :meth:`update` (after each optimizer step) and
    :meth:`on_train_epoch_start`. A subclass may set its fields before or after calling
    ``super().__init__()``: :meth:`build` runs after the subclass's ``__init__`` returns.

    After each call, :attr:`last_weights` holds the (T,) weights applied to the task losses (for
    logging; detached).
    """

    # declared state (add_state), typed for the type checker
    last_weights: Tensor

    #: True for methods that differentiate the task losses w.r.t. z: the module then feeds each
    #: head its own view of z (:func:`~lit_mtl.task_views`) and puts the views in the context
    uses_task_representations: ClassVar[bool] = False
    #: what a gradient-based method differentiates (``"representation"``, ``"shared"``,
    #: ``"last_shared_layer"`` or an encoder module / parameter name); None for loss-based ones
    target: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every subclass's ``__init__`` is followed by :meth:`build` once T is known, whatever
        order the subclass sets its fields and calls ``super().__init__()`` in (the state a
        method declares in ``build`` exists after construction, for drop-in use)."""
        super().__init_subclass__(**kwargs)
        for old, new in (("_build", "build"), ("_bind_encoder", "bind_encoder")):
            if old in cls.__dict__ and new not in cls.__dict__:  # a method written before 0.2
                warnings.warn(
                    f"{cls.__name__}.{old} is now spelt {new}; the old name still works",
                    DeprecationWarning,
                    stacklevel=2,
                )
                setattr(cls, new, cls.__dict__[old])
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_builds_after", False):
            cls.__init__ = _build_after(init)  # type: ignore[method-assign]

    def __init__(
        self, num_tasks: int | None = None, task_kinds: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        if num_tasks is not None and int(num_tasks) < 1:
            raise ValueError(f"{type(self).__name__}: num_tasks must be >= 1, got {num_tasks}")
        self._num_tasks: int | None = None if num_tasks is None else int(num_tasks)
        self.task_names: list[str] = []
        self.task_kinds: list[str] = []
        self._state_specs: dict[str, tuple[Tensor, Reduction | None]] = {}
        #: the model's parameters (a plain tuple: the encoder owns them), to recognise its optimizer
        self._owner_params: tuple[Tensor, ...] = ()
        self._owned_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        #: the last training step's recompute function (FAMO) and shared parameters (drop-in)
        self._last_recompute: Any = None
        self._last_shared: tuple[Tensor, ...] | None = None
        #: the step's T x T Gramian where the method computes one (the diagnostics read it)
        self.last_gramian: Tensor | None = None
        #: the kinds given at construction (drop-in use), for the build that follows it
        self._init_kinds = list(task_kinds) if task_kinds is not None else None
        self.add_state("last_weights", torch.empty(0), persistent=False)
        if self._num_tasks is not None:
            self.last_weights = torch.ones(self._num_tasks)

    # ------------------------------------------------------------------ declared state
    def add_state(
        self,
        name: str,
        default: Tensor,
        reduction: Reduction | None = None,
        persistent: bool = True,
    ) -> None:
        """Declare a piece of state: a buffer (moves with the module, in its ``state_dict`` when
        ``persistent``), its default (for :meth:`reset_state`) and how it reduces across DDP
        ranks in :meth:`reduced_state` (None: identical on every rank by construction)."""
        if reduction not in (None, "sum", "mean", "max"):
            raise ValueError(f"reduction of state {name!r} must be sum, mean, max or None")
        self.register_buffer(name, default.clone(), persistent=persistent)
        self._state_specs[name] = (default.detach().clone(), reduction)

    def reduced_state(self, *names: str) -> dict[str, Tensor]:
        """Copies of the named states reduced across ranks as declared (one all-reduce per
        reduction kind: the states of one kind travel packed in one vector)."""
        out: dict[str, Tensor] = {}
        by_kind: dict[str, list[str]] = {}
        for name in names:
            if name not in self._state_specs:
                raise KeyError(f"{type(self).__name__} declares no state {name!r}")
            reduction = self._state_specs[name][1]
            if reduction is None or world_size() == 1:
                out[name] = getattr(self, name).clone()
            else:
                by_kind.setdefault(reduction, []).append(name)
        for kind, group in by_kind.items():
            tensors = [getattr(self, n) for n in group]
            packed = torch.cat([t.reshape(-1).double() for t in tensors])
            packed = all_reduce_max(packed) if kind == "max" else all_reduce_sum(packed)
            if kind == "mean":
                packed = packed / world_size()
            offset = 0
            for name, t in zip(group, tensors, strict=True):
                out[name] = packed[offset : offset + t.numel()].view_as(t).to(t.dtype)
                offset += t.numel()
        return out

    def state_arrays(self, *names: str) -> dict[str, Any]:
        """The named states as arrays to compute on in place: numpy views of the buffers' own
        memory when it is the CPU's (small per-step math at numpy's per-op cost, no copy), the
        buffers themselves otherwise (torch math on the device, no host copy). Write results
        with ``array[...] = value``; :func:`~lit_mtl.functional.arrays.as_array_like` brings
        inputs to the same kind."""
        out: dict[str, Any] = {}
        for name in names:
            if name not in self._state_specs:
                raise KeyError(f"{type(self).__name__} declares no state {name!r}")
            buffer = getattr(self, name)
            numpy_ok = buffer.device.type == "cpu" and buffer.dtype in _NUMPY_DTYPES
            out[name] = buffer.detach().numpy() if numpy_ok else buffer
        return out

    def reset_state(self, *names: str) -> None:
        """Set the named states back to their declared defaults."""
        for name in names:
            getattr(self, name).copy_(self._state_specs[name][0])

    # ------------------------------------------------------------------ binding
    @property
    def differentiates_representation(self) -> bool:
        """Whether the method takes per-task gradients w.r.t. the representation z (each task's
        loss must then read only its own view of z)."""
        return self.target == "representation"

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
        a named module or parameter, or all shared parameters) and names the parameters whose
        optimizer's steps trigger :meth:`update`. ``baseline_losses`` gives the loss of an
        uninformed predictor per task where known (log C for C-class cross-entropy).
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
        self.build(len(names), kinds)
        self.last_weights = torch.ones(len(names), device=self.last_weights.device)
        if encoder is not None:
            self._owner_params = tuple(encoder.parameters())
            self._owned_cache = weakref.WeakKeyDictionary()
            self.bind_encoder(encoder)

    def bind_encoder(self, encoder: nn.Module) -> None:
        """Resolve what the method differentiates (gradient-based methods)."""

    def build(self, num_tasks: int, task_kinds: Sequence[str]) -> None:
        """Declare per-task state (``add_state``, parameters). Called after construction when
        T is known, and by :meth:`bind` with the tasks' kinds."""

    # ------------------------------------------------------------------ main entry
    def forward(self, losses: StepContext | Tensor | Sequence[Tensor], **context: Any) -> Tensor:
        """Combine the T task losses of a step into one scalar.

        Args:
            losses: the step's :class:`~lit_mtl.StepContext`, or the T scalar task losses (a
                (T,) tensor for loss-based methods), with the context's other fields as keywords
                (``present``, ``representation``, ``task_representations``, ``heads``,
                ``shared_parameters``, ``loss_scale``, ``recompute_losses``; see
                :func:`~lit_mtl.step_context`).
        """
        if isinstance(losses, StepContext):
            if context:
                raise TypeError(
                    f"pass either a StepContext or keywords, not both: {sorted(context)}"
                )
            ctx = losses
        else:
            ctx = step_context(losses, **context)
        if self._num_tasks is None:
            raise RuntimeError(
                f"{type(self).__name__} is not bound to tasks: pass num_tasks=... or give it to a "
                "MultiTaskModule"
            )
        if ctx.num_tasks != self._num_tasks:
            raise ValueError(
                f"{type(self).__name__} expects {self._num_tasks} task losses, got {ctx.num_tasks}"
            )
        if torch.is_grad_enabled():
            self._last_recompute = ctx.recompute_losses
            self._last_shared = ctx.shared_parameters
            _ensure_hook()
            _PENDING.add(self)
        return self.combine(ctx)

    def combine(self, ctx: StepContext) -> Tensor:
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

    def _owned_by(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether ``optimizer`` trains the model this weighting serves (any optimizer when the
        weighting knows none of the model's parameters)."""
        known = self._owner_params + (self._last_shared or ())
        if not known:
            return True
        cached = self._owned_cache.get(optimizer)
        if cached is None:
            ids = {id(p) for p in known}  # identities of this process's objects (not pickled)
            cached = any(id(p) in ids for g in optimizer.param_groups for p in g["params"])
            self._owned_cache[optimizer] = cached
        return cached

    def on_optimizer_step(self) -> None:
        """Run :meth:`update` if a training forward happened since the last update (called by
        the optimizer post-step hook; calling it again in the same step does nothing)."""
        if self not in _PENDING:
            return
        _PENDING.discard(self)
        self.update()
        self._last_recompute = None

    def update(self) -> None:
        """The method's own update, once per optimizer step (after accumulation)."""

    def on_train_epoch_start(self) -> None:
        """Called at the start of every training epoch (e.g. DWA closes the previous epoch here,
        so that the epoch's losses, saved in a checkpoint, are never lost on resume)."""

    def __getstate__(self) -> dict[str, Any]:
        """Pickling (``ddp_spawn``, deep copies) drops the per-step transients and caches."""
        state = super().__getstate__()
        state["_owned_cache"] = None
        state["_last_recompute"] = None
        state["_last_shared"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._owned_cache = weakref.WeakKeyDictionary()

    def extra_repr(self) -> str:
        return f"num_tasks={self._num_tasks}"


Weighting.__init__ = _build_after(Weighting.__init__)  # type: ignore[method-assign]
