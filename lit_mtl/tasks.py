"""Task descriptions: what one task predicts, how its loss and metrics are computed.

A :class:`TaskSpec` is plain data (name, kind, output size) that a DataModule publishes right after
``__init__`` so the Lightning CLI can link it into the model. A :class:`Task` is the module built
from a spec inside :class:`~lit_mtl.MultiTaskModule`: its head, its masked loss, its metrics.

Missing labels
--------------
A sample may lack the label of some task. It is marked by

* ``NaN`` in a regression (or multilabel) target,
* :data:`IGNORE_INDEX` (``-100``) in a class target (binary, multiclass, multilabel),
* or an explicit boolean mask (``True`` = labelled) given next to the targets.

Such samples are excluded from the task's loss and metrics. A batch in which a task has no label at
all gives that task a loss of exactly zero that is still connected to the head's graph (so DDP sees
every parameter used), never ``NaN``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelAccuracy,
    MultilabelF1Score,
)
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError

__all__ = ["IGNORE_INDEX", "Task", "TaskKind", "TaskSpec", "as_task_spec"]

TaskKind = Literal["regression", "binary", "multiclass", "multilabel"]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class TaskSpec:
    """Plain description of one task.

    Args:
        name: unique task name; the key of its targets in a batch and of its logged metrics.
        kind: ``"regression"``, ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        num_outputs: regression output dimension, number of classes (multiclass), number of labels
            (multilabel); must be 1 for binary.

    >>> TaskSpec("segmentation", "multiclass", 13).to_dict()
    {'name': 'segmentation', 'kind': 'multiclass', 'num_outputs': 13}
    >>> TaskSpec("depth/left")
    Traceback (most recent call last):
    ...
    ValueError: TaskSpec.name 'depth/left' must not contain '/' or '.' ...
    """

    name: str
    kind: TaskKind = "regression"
    num_outputs: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"TaskSpec.name must be a non-empty string, got {self.name!r}")
        if "/" in self.name or "." in self.name:
            raise ValueError(
                f"TaskSpec.name {self.name!r} must not contain '/' or '.' (used in log keys and "
                "module names)"
            )
        if self.kind not in TASK_KINDS:
            raise ValueError(
                f"TaskSpec {self.name!r}: kind must be one of {TASK_KINDS}, got {self.kind!r}"
            )
        if int(self.num_outputs) < 1:
            raise ValueError(
                f"TaskSpec {self.name!r}: num_outputs must be >= 1, got {self.num_outputs}"
            )
        if self.kind == "binary" and self.num_outputs != 1:
            raise ValueError(
                f"TaskSpec {self.name!r}: a binary task has num_outputs=1, got {self.num_outputs}"
            )
        if self.kind == "multiclass" and self.num_outputs < 2:
            raise ValueError(
                f"TaskSpec {self.name!r}: a multiclass task needs num_outputs (classes) >= 2"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_task_spec(spec: TaskSpec | Mapping[str, Any]) -> TaskSpec:
    """Accept a :class:`TaskSpec` or a mapping with its fields (as found in YAML and hparams)."""
    if isinstance(spec, TaskSpec):
        return spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"name", "kind", "num_outputs"}
        if unknown:
            raise ValueError(f"task spec {dict(spec)!r} has unknown keys {sorted(unknown)}")
        return TaskSpec(**spec)
    raise TypeError(f"expected a TaskSpec or a mapping, got {type(spec).__name__}: {spec!r}")


def default_metrics(spec: TaskSpec) -> MetricCollection:
    """The torchmetrics used for a task of this kind (names are the logged metric names)."""
    ignore = {"ignore_index": IGNORE_INDEX}
    if spec.kind == "regression":
        return MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError()})
    if spec.kind == "binary":
        return MetricCollection({"acc": BinaryAccuracy(**ignore), "f1": BinaryF1Score(**ignore)})
    if spec.kind == "multiclass":
        c = spec.num_outputs
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes=c, average="micro", **ignore),
                "f1": MulticlassF1Score(num_classes=c, average="macro", **ignore),
            }
        )
    c = spec.num_outputs
    return MetricCollection(
        {
            "acc": MultilabelAccuracy(num_labels=c, **ignore),
            "f1": MultilabelF1Score(num_labels=c, average="macro", **ignore),
        }
    )


class Task(nn.Module):
    """One task inside a :class:`~lit_mtl.MultiTaskModule`: a head, a masked loss and metrics.

    Args:
        spec: the task's description.
        in_features: width of the shared representation the head reads.
        head: optional custom head; default ``nn.Linear(in_features, num_outputs)``.

    The head maps the representation ``z`` (N, in_features) to a prediction of shape (N, d) with
    d = ``num_outputs``; binary and 1-d regression predictions are squeezed to (N,).
    """

    def __init__(self, spec: TaskSpec, in_features: int, head: nn.Module | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.head = head if head is not None else nn.Linear(in_features, spec.num_outputs)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    def forward(self, z: Tensor) -> Tensor:
        out = self.head(z)  # (N, d)
        if self.spec.kind == "binary" or (
            self.spec.kind == "regression" and self.spec.num_outputs == 1
        ):
            out = out.reshape(out.shape[0])  # (N,)
        return out

    # ------------------------------------------------------------------ validation
    def check_target(self, pred: Tensor, target: Tensor) -> None:
        """Raise a clear error when ``target`` has the wrong shape or dtype for this task."""
        spec = self.spec
        n = pred.shape[0]
        where = f"task {spec.name!r} ({spec.kind}, num_outputs={spec.num_outputs})"
        if not isinstance(target, Tensor):
            raise TypeError(f"{where}: target must be a Tensor, got {type(target).__name__}")
        if spec.kind == "multiclass":
            expected: tuple[int, ...] = (n,)
            if target.is_floating_point() or target.dtype == torch.bool:
                raise TypeError(
                    f"{where}: class targets must be an integer tensor of class indices "
                    f"(use {IGNORE_INDEX} for a missing label), got dtype {target.dtype}"
                )
        elif spec.kind == "binary":
            expected = (n,)
        elif spec.kind == "multilabel":
            expected = (n, spec.num_outputs)
        else:
            expected = (n,) if spec.num_outputs == 1 else (n, spec.num_outputs)
            if spec.num_outputs == 1 and tuple(target.shape) == (n, 1):
                return
            if not target.is_floating_point():
                raise TypeError(
                    f"{where}: regression targets must be floating point (NaN marks a missing "
                    f"label), got dtype {target.dtype}"
                )
        if tuple(target.shape) != expected:
            raise ValueError(
                f"{where}: target shape {tuple(target.shape)} does not match the expected "
                f"{expected} for a batch of {n} samples"
            )

    # ------------------------------------------------------------------ masking
    def labelled(self, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Boolean tensor, same shape as the target, True where a label is present."""
        if target.is_floating_point():
            present = ~torch.isnan(target)
            if self.spec.kind != "regression":
                present &= target != IGNORE_INDEX
        else:
            present = target != IGNORE_INDEX
        if mask is not None:
            mask = mask.to(device=target.device, dtype=torch.bool)
            if mask.shape[0] != target.shape[0]:
                raise ValueError(
                    f"task {self.spec.name!r}: mask has {mask.shape[0]} rows but the target "
                    f"has {target.shape[0]}"
                )
            while mask.dim() < present.dim():
                mask = mask.unsqueeze(-1)
            present = present & mask
        return present

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean loss over labelled entries; exactly ``0 * pred.sum()`` when none is labelled.

        regression: MSE; binary and multilabel: BCE with logits; multiclass: cross-entropy.
        """
        if self.spec.kind == "regression" and target.dim() == 2 and pred.dim() == 1:
            target = target.reshape(-1)
        present = self.labelled(target, mask)
        count = present.sum()
        # Fill missing entries with a harmless value so no NaN enters the graph, then mask.
        if self.spec.kind == "multiclass":
            safe_target = torch.where(present, target, torch.zeros_like(target))
            per_elem = F.cross_entropy(pred.float(), safe_target.long(), reduction="none")
        elif self.spec.kind == "regression":
            safe_target = torch.where(present, target, pred.detach().to(target.dtype))
            per_elem = (pred.float() - safe_target.float()) ** 2
        else:
            safe_target = torch.where(present, target.float(), torch.zeros_like(target.float()))
            per_elem = F.binary_cross_entropy_with_logits(
                pred.float(), safe_target, reduction="none"
            )
        per_elem = per_elem * present
        return per_elem.sum() / count.clamp(min=1)

    def metric_inputs(
        self, pred: Tensor, target: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | None:
        """(pred, target) restricted to labelled samples for torchmetrics; None if none labelled."""
        if self.spec.kind == "regression" and target.dim() == 2 and pred.dim() == 1:
            target = target.reshape(-1)
        present = self.labelled(target, mask)
        pred = pred.detach().float()
        if self.spec.kind == "multilabel":
            rows = present.any(dim=1)
            target = torch.where(present, target, torch.full_like(target, IGNORE_INDEX))
            if not rows.any():
                return None
            return pred[rows], target[rows].long()
        if self.spec.kind == "regression":
            rows = present if present.dim() == 1 else present.all(dim=1)
            if not rows.any():
                return None
            return pred[rows], target[rows].float()
        if not present.any():
            return None
        return pred[present], target[present].long()

    def baseline_loss(self) -> float | None:
        """Loss of an uninformed predictor where known: log C for C-class cross-entropy."""
        if self.spec.kind == "multiclass":
            return math.log(self.spec.num_outputs)
        if self.spec.kind in ("binary", "multilabel"):
            return math.log(2.0)
        return None
