"""The plain description of a task, as a DataModule publishes it and a config writes it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from lit_mtl.tasks.kinds import IGNORE_INDEX, TaskKind, get_kind, task_kinds


@dataclass(frozen=True)
class TaskSpec:
    """Plain description of one task.

    Args:
        name: unique task name; the key of its targets in a batch and of its logged metrics.
        kind: the name of a registered :class:`~lit_mtl.tasks.TaskKind`: ``"regression"``,
            ``"binary"``, ``"multiclass"``, ``"multilabel"``, or a dense kind:
            ``"segmentation"``, ``"depth"``, ``"normals"``, ``"dense_regression"``.
        num_outputs: regression output dimension, number of classes (multiclass, segmentation),
            number of labels (multilabel), channels (dense regression); 1 for binary and depth,
            3 for normals.
        ignore_index: the label value that marks a missing class label (multiclass and
            segmentation; the NYUv2 / CityScapes files store -1).
        parent: a conditional task: its loss and metrics count only the samples where the
            parent task (a binary task) has a positive label (a conversion counted on clicks).
        product_of: a derived binary task without a head of its own: its probability is the
            product of these binary tasks' probabilities (ESMM: p(click and convert) =
            p(click) p(convert | click)), trained on every sample.

    >>> TaskSpec("segmentation", "multiclass", 13).to_dict()
    {'name': 'segmentation', 'kind': 'multiclass', 'num_outputs': 13}
    >>> TaskSpec("depth/left")
    Traceback (most recent call last):
    ...
    ValueError: TaskSpec.name 'depth/left' must not contain '/' or '.' ...
    """

    name: str
    kind: str = "regression"
    num_outputs: int = 1
    ignore_index: int = IGNORE_INDEX
    parent: str | None = None
    product_of: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"TaskSpec.name must be a non-empty string, got {self.name!r}")
        if "/" in self.name or "." in self.name:
            raise ValueError(
                f"TaskSpec.name {self.name!r} must not contain '/' or '.' (used in log keys and "
                "module names)"
            )
        if self.kind not in task_kinds():
            raise ValueError(
                f"TaskSpec {self.name!r}: kind must be one of {task_kinds()}, got {self.kind!r}"
            )
        if int(self.num_outputs) < 1:
            raise ValueError(
                f"TaskSpec {self.name!r}: num_outputs must be >= 1, got {self.num_outputs}"
            )
        self.task_kind.check_spec(self)
        if not isinstance(self.ignore_index, int) or 0 <= self.ignore_index < self.num_outputs:
            raise ValueError(
                f"TaskSpec {self.name!r}: ignore_index={self.ignore_index!r} must be an integer "
                f"outside the class indices 0..{self.num_outputs - 1}"
            )
        if self.parent is not None and (
            not isinstance(self.parent, str) or self.parent == self.name
        ):
            raise ValueError(
                f"TaskSpec {self.name!r}: parent must name another task, got {self.parent!r}"
            )
        if self.product_of is not None:
            factors = self.product_of
            if isinstance(factors, str) or len(factors) < 2 or self.name in factors:
                raise ValueError(
                    f"TaskSpec {self.name!r}: product_of must list at least two other tasks, got "
                    f"{factors!r}"
                )
            if self.kind != "binary":
                raise ValueError(
                    f"TaskSpec {self.name!r}: a product_of task is binary (a probability), got "
                    f"kind={self.kind!r}"
                )
            object.__setattr__(self, "product_of", tuple(str(f) for f in factors))

    @property
    def task_kind(self) -> TaskKind:
        """The kind as an object (:mod:`lit_mtl.tasks.kinds`): its loss, checks and metrics."""
        return get_kind(self.kind)

    @property
    def dense(self) -> bool:
        """Whether the task predicts a map (a dense kind)."""
        return self.task_kind.dense

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict; ``ignore_index`` only where it is not the default."""
        fields = asdict(self)
        if self.ignore_index == IGNORE_INDEX:
            del fields["ignore_index"]
        for optional in ("parent", "product_of"):
            if fields[optional] is None:
                del fields[optional]
        if self.product_of is not None:
            fields["product_of"] = list(self.product_of)
        return fields


def as_task_spec(spec: TaskSpec | Mapping[str, Any]) -> TaskSpec:
    """Accept a :class:`TaskSpec` or a mapping with its fields (as found in YAML and hparams)."""
    if isinstance(spec, TaskSpec):
        return spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - {
            "name",
            "kind",
            "num_outputs",
            "ignore_index",
            "parent",
            "product_of",
        }
        if unknown:
            raise ValueError(f"task spec {dict(spec)!r} has unknown keys {sorted(unknown)}")
        return TaskSpec(**spec)
    raise TypeError(f"expected a TaskSpec or a mapping, got {type(spec).__name__}: {spec!r}")
