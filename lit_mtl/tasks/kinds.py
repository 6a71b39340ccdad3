"""Task kinds as objects: what a kind of task is, in one class per kind.

A :class:`TaskKind` owns everything that depends on what a task predicts: which specs are valid,
its default head, the shape of its prediction, the checks of a target, which entries are
labelled, the masked loss and its one-op fast path, the sufficient statistics of its metrics and
the metrics with their directions, the loss of an uninformed predictor, the form uncertainty
weighting takes (:data:`~lit_mtl.functional.UNCERTAINTY_FORMS`), and how a target map follows
the dense augmentation. :class:`~lit_mtl.tasks.Task` and everything else ask the kind; nothing
else branches on a kind's name.

A :class:`~lit_mtl.tasks.TaskSpec` names its kind by a string (``kind="binary"``, as in configs
and checkpoints); :func:`get_kind` returns the object. A new kind is one subclass registered with
:func:`register_kind` (the built-in kinds are in :mod:`lit_mtl.tasks.vector_kinds` and
:mod:`lit_mtl.tasks.dense_kinds`, registered when :mod:`lit_mtl.tasks` is imported; the
contributor recipe in the documentation walks through one).

>>> get_kind("binary").metric_directions["auroc"]
True
>>> get_kind("depth").uncertainty_form
'laplace'
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from lit_mtl.tasks.heads import PooledLinear

if TYPE_CHECKING:
    from lit_mtl.tasks.spec import TaskSpec

#: the label value that marks a missing class label (binary, multiclass, multilabel)
IGNORE_INDEX = -100
#: the metrics of a ranked kind computed from the epoch's scores, not from statistics
RANKING_METRICS = ("auroc", "auprc")

_REGISTRY: dict[str, TaskKind] = {}
_Kind = TypeVar("_Kind", bound="type[TaskKind]")


class TaskKind:
    """One kind of task: the rules a :class:`~lit_mtl.tasks.Task` of that kind follows.

    Subclasses set the class attributes and override what differs; the defaults are those of a
    vector task with float targets (NaN = missing). Instances hold no state (one per kind, in the
    registry); every method takes the task's :class:`~lit_mtl.tasks.TaskSpec` where it matters.
    """

    #: the name a spec and a config use (``TaskSpec(kind=name)``)
    name: ClassVar[str]
    #: predicts a map (N, d, H, W) from a feature map; the default head is a DenseHead
    dense: ClassVar[bool] = False
    #: the only valid ``num_outputs`` (binary 1, depth 1, normals 3), or None
    fixed_outputs: ClassVar[int | None] = None
    #: the smallest valid ``num_outputs`` (2 for class-index kinds)
    min_outputs: ClassVar[int] = 1
    #: labels are classes, checked on the step's label probe (binary, multiclass, ...)
    class_labels: ClassVar[bool] = False
    #: labels are class indices, a missing one marked by the spec's ``ignore_index``
    class_indices: ClassVar[bool] = False
    #: a loss with a one-op fast path (:meth:`fast_evaluate`); without one the masked path runs
    has_fast_path: ClassVar[bool] = True
    #: the metric names with whether higher is better, the primary metric first (the ranking
    #: metrics included where :attr:`ranked`)
    metric_directions: ClassVar[Mapping[str, bool]] = {}
    #: one score per sample that ranks them: ``MultiTaskModule(ranking_metrics=True)`` logs
    #: :data:`RANKING_METRICS` over the epoch's (score, label) pairs (binary)
    ranked: ClassVar[bool] = False
    #: the metrics shown in percent in comparison tables (shares in [0, 1])
    percent_metrics: ClassVar[frozenset[str]] = frozenset()
    #: the metrics' value depends on the dense reduction (``"pooled"`` / ``"per_batch"``)
    uses_dense_reduction: ClassVar[bool] = False
    #: the likelihood the loss is the negative log of
    #: (:data:`~lit_mtl.functional.UNCERTAINTY_FORMS`)
    uncertainty_form: ClassVar[str]
    #: how the dense augmentation resamples a target map: ``"nearest"`` or ``"bilinear"``; None
    #: for kinds whose target is not a map (passed through unchanged)
    resize_mode: ClassVar[str | None] = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------ the spec and the head
    def check_spec(self, spec: TaskSpec) -> None:
        """Raise a ``ValueError`` naming the task when ``spec`` is not valid for this kind."""
        fixed = self.fixed_outputs
        if fixed is not None and spec.num_outputs != fixed:
            raise ValueError(
                f"TaskSpec {spec.name!r}: a {self.name} task has num_outputs={fixed}, got "
                f"{spec.num_outputs}"
            )
        if spec.num_outputs < self.min_outputs:
            raise ValueError(
                f"TaskSpec {spec.name!r}: a {self.name} task needs num_outputs (classes) >= "
                f"{self.min_outputs}"
            )

    def default_head(self, in_features: int, num_outputs: int) -> nn.Module:
        """The head a task of this kind gets when none is given."""
        return PooledLinear(in_features, num_outputs)

    def shape_prediction(self, spec: TaskSpec, out: Tensor) -> Tensor:
        """The head's output (N, d) as the task's prediction (a vector kind with one output
        squeezes it to (N,))."""
        return out

    # ------------------------------------------------------------------ targets
    def check_target(self, spec: TaskSpec, target: Tensor, n: int, where: str) -> None:
        """Raise a clear error (``where`` names the task) when ``target`` has the wrong shape or
        dtype for a batch of ``n`` samples."""
        raise NotImplementedError

    def align_target(self, spec: TaskSpec, pred: Tensor, target: Tensor) -> Tensor:
        """The target in the prediction's layout, before the loss."""
        return target

    def labelled(self, spec: TaskSpec, target: Tensor) -> Tensor:
        """Boolean tensor, True where a label is present (the target's shape unless the kind
        says otherwise): float targets are missing where NaN, integer ones at -100."""
        if target.is_floating_point():
            return ~torch.isnan(target)
        return target != IGNORE_INDEX

    # ------------------------------------------------------------------ loss and statistics
    def per_element_loss(
        self, spec: TaskSpec, pred: Tensor, target: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(loss per entry, safe target)``: the float32 loss of every entry (not yet masked),
        computed on a target whose missing entries hold a harmless value, so no NaN enters the
        graph; the safe target is what the statistics read."""
        raise NotImplementedError

    def statistics(
        self,
        spec: TaskSpec,
        pred: Tensor,
        safe_target: Tensor,
        present: Tensor,
        count: Tensor,
        per_element: Tensor,
        reduction: str,
    ) -> Tensor:
        """The detached statistics vector of a batch (the labelled count first), from the
        detached prediction, the safe target, the labelled entries and their count, and the
        masked per-entry loss."""
        raise NotImplementedError

    def fast_evaluate(self, spec: TaskSpec, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, statistics) by one fused loss op, equal to the masked path up to round-off
        when the batch has no missing label (see :meth:`fast_path_exact`)."""
        raise NotImplementedError

    def fast_path_exact(self, low: float) -> bool:
        """Whether the fast path is exact for a class target whose smallest value is ``low``
        (and whose values are valid): a class-index loss ignores missing labels itself; a 0/1
        loss is exact when no label is missing (negative)."""
        return self.class_indices or low >= 0

    def statistics_size(self, num_outputs: int, reduction: str) -> int:
        """Length of the statistics vector (the count included)."""
        raise NotImplementedError

    def metrics_of(self, num_outputs: int, stats: Tensor, reduction: str) -> dict[str, Tensor]:
        """The metrics from summed statistics with a positive count."""
        raise NotImplementedError

    def metrics(self, num_outputs: int, stats: Tensor, reduction: str) -> dict[str, Tensor]:
        """The task's metrics from its summed statistics (float64 recommended); ``{}`` when no
        entry was counted."""
        if stats[0] <= 0:
            return {}
        return self.metrics_of(num_outputs, stats, reduction)

    def baseline_loss(self, num_outputs: int | None) -> float | None:
        """The loss of an uninformed predictor where known (log 2 for a 0/1 label, log C for C
        classes; None when ``num_outputs`` is needed and not given)."""
        return None

    # ------------------------------------------------------------------ dense augmentation
    def augmented_target(self, target: Tensor, scale: float, mirrored: bool) -> Tensor:
        """A target map after the scale-crop-flip resampling (:mod:`lit_mtl.data.dense_augment`):
        what the kind's values must do besides being resampled (depth / scale, a mirrored
        normal's x negated)."""
        return target


def register_kind(kind_class: _Kind) -> _Kind:
    """Class decorator: make a :class:`TaskKind` subclass available as ``TaskSpec(kind=name)``.
    Registering a name twice is an error."""
    name = getattr(kind_class, "name", None)
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"{kind_class.__name__}.name must be a non-empty string without '/'")
    if name in _REGISTRY and type(_REGISTRY[name]) is not kind_class:
        raise ValueError(
            f"task kind {name!r} is already registered ({type(_REGISTRY[name]).__name__})"
        )
    _REGISTRY[name] = kind_class()
    return kind_class


def get_kind(name: str) -> TaskKind:
    """The registered kind named ``name``; a ``ValueError`` listing the kinds otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task kind {name!r}; the kinds are {task_kinds()}") from None


def task_kinds() -> tuple[str, ...]:
    """The names of the registered kinds, in registration order."""
    return tuple(_REGISTRY)


def metric_name_directions() -> dict[str, bool]:
    """``{metric name: higher is better}`` over every registered kind, each kind's primary
    metric first. A name two kinds share must have one direction (checked)."""
    directions: dict[str, bool] = {}
    for kind_name in task_kinds():
        for metric, higher in _REGISTRY[kind_name].metric_directions.items():
            if directions.setdefault(metric, higher) != higher:
                raise ValueError(f"metric {metric!r} has two directions across the task kinds")
    return directions


class _KindMetricDirections(Mapping[str, Mapping[str, bool]]):
    """``{kind name: {metric: higher is better}}`` read from the registry when used."""

    def __getitem__(self, kind_name: str) -> Mapping[str, bool]:
        if kind_name not in task_kinds():
            raise KeyError(kind_name)
        return _REGISTRY[kind_name].metric_directions

    def __iter__(self) -> Iterator[str]:
        return iter(task_kinds())

    def __len__(self) -> int:
        return len(task_kinds())


#: metric names by task kind, with whether higher is better (a live view of the registry)
METRIC_DIRECTIONS: Mapping[str, Mapping[str, bool]] = _KindMetricDirections()


def log_of(count: int) -> float:
    """``log(count)``: the cross-entropy of a uniform guess over ``count`` outcomes."""
    return math.log(float(count))
