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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_mtl.functional.task_metrics import class_statistics, statistics_size

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
    def check_target(self, target: Tensor, n: int) -> None:
        """Raise a clear error when ``target`` has the wrong shape or dtype for this task (a
        batch of ``n`` samples)."""
        spec = self.spec
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
                expected = (n, 1)
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

    # ------------------------------------------------------------------ label probe
    @property
    def probe_size(self) -> int:
        """Length of :meth:`probe`'s vector (0 for regression: a missing label shows as a
        non-finite fast-path loss)."""
        return 0 if self.spec.kind == "regression" else 3

    def probe(self, target: Tensor) -> Tensor:
        """Reductions of a class target, read on the host with the step's losses (one read for
        all tasks) by :meth:`fast_path_exact`: ``[min, max, sum |t - round(t)|]`` (NaN where a
        float target has a NaN, or the batch is empty). Empty for regression."""
        if self.spec.kind == "regression":
            return target.new_empty(0, dtype=torch.float32)
        if target.numel() == 0:
            return torch.full((3,), math.nan, device=target.device)
        values = target.to(torch.uint8) if target.dtype == torch.bool else target
        low, high = torch.aminmax(values)
        if values.is_floating_point():
            fraction = (values - values.round()).abs().sum()
        else:
            fraction = torch.zeros((), device=values.device)
        return torch.stack([low.float(), high.float(), fraction.float()])

    def fast_path_exact(self, probe: Sequence[float], target: Tensor) -> bool:
        """Whether :meth:`evaluate`'s fast path is exact for this batch, given its loss is finite
        (regression: always; multiclass: always, ``cross_entropy`` ignores missing labels;
        binary and multilabel: when no label is missing). Raises a ``ValueError`` naming the
        task and the value for a label the task cannot take; a target with NaN is checked on
        the masked path instead."""
        if self.spec.kind == "regression":
            return True
        low, high, fraction = probe
        if math.isnan(low) or math.isnan(high) or math.isnan(fraction):
            return False
        self._check_label_range(low, high)
        if fraction > 0:
            self._check_labels(target, self.labelled(target))
        return self.spec.kind == "multiclass" or low >= 0

    def _check_label_range(self, low: float, high: float) -> None:
        spec = self.spec
        upper = spec.num_outputs - 1 if spec.kind == "multiclass" else 1
        for value in (high, low):
            if value == IGNORE_INDEX or 0 <= value <= upper:
                continue
            allowed = (
                f"class indices 0..{upper}" if spec.kind == "multiclass" else "0 or 1 (binary)"
            )
            raise ValueError(
                f"task {spec.name!r} ({spec.kind}): label {value:g} in the batch; labels must be "
                f"{allowed}, with {IGNORE_INDEX}"
                + (" or NaN" if spec.kind != "multiclass" else "")
                + " marking a missing label"
            )

    def _check_labels(self, target: Tensor, present: Tensor) -> None:
        """Check every labelled entry's value (a host read; only for batches that need it)."""
        if self.spec.kind == "regression" or not bool(present.any()):
            return
        labelled = target[present]
        low, high = torch.aminmax(
            labelled.to(torch.uint8) if labelled.dtype == torch.bool else labelled
        )
        self._check_label_range(float(low), float(high))
        if labelled.is_floating_point():
            fractional = labelled[labelled != labelled.round()]
            if fractional.numel():
                raise ValueError(
                    f"task {self.spec.name!r} ({self.spec.kind}): label {float(fractional[0]):g} "
                    f"in the batch; labels must be 0 or 1, with {IGNORE_INDEX} or NaN marking a "
                    "missing label"
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

    # ------------------------------------------------------------------ loss and statistics
    @property
    def statistics_size(self) -> int:
        """Length of the statistics vector :meth:`evaluate` returns."""
        return statistics_size(self.spec.kind, self.spec.num_outputs)

    def evaluate(
        self, pred: Tensor, target: Tensor, mask: Tensor | None = None, fast: bool = False
    ) -> tuple[Tensor, Tensor]:
        """(loss, statistics) of a batch: the mean loss over labelled entries and the detached
        sufficient statistics of the task's metrics
        (:mod:`lit_mtl.functional.task_metrics`; the first entry is the labelled count).

        regression: MSE; binary and multilabel: BCE with logits; multiclass: cross-entropy.
        The masked path (the default) checks the labels and gives exactly ``0 * pred.sum()``
        when no entry is labelled. ``fast`` (no mask) takes one fused loss op instead: equal
        to the masked path up to float round-off when :meth:`fast_path_exact` holds and the
        loss is finite (a missing regression label makes it NaN), otherwise to be redone.
        """
        kind = self.spec.kind
        if kind == "regression" and target.dim() == 2 and pred.dim() == 1:
            target = target.reshape(-1)
        if fast and mask is None:
            return self._evaluate_fast(pred, target)
        present = self.labelled(target, mask)
        count = present.sum()
        # Fill missing entries with a harmless value so no NaN enters the graph, then mask.
        if kind == "multiclass":
            safe_target = torch.where(present, target, torch.zeros_like(target))
            self._check_labels(target, present)
            per_elem = F.cross_entropy(pred.float(), safe_target.long(), reduction="none")
        elif kind == "regression":
            safe_target = torch.where(present, target, pred.detach().to(target.dtype))
            per_elem = (pred.float() - safe_target.float()) ** 2
        else:
            safe_target = torch.where(present, target.float(), torch.zeros_like(target.float()))
            self._check_labels(target, present)
            per_elem = F.binary_cross_entropy_with_logits(
                pred.float(), safe_target, reduction="none"
            )
        per_elem = per_elem * present
        loss = per_elem.sum() / count.clamp(min=1)
        if kind == "regression":
            error = (pred.detach().float() - safe_target.float()) * present
            squared = per_elem.detach().sum()
            stats = torch.stack([count.float(), squared, error.abs().sum()])
        else:
            stats = class_statistics(
                pred.detach(), safe_target, kind, self.spec.num_outputs, present
            )
        return loss, stats

    def _evaluate_fast(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        kind = self.spec.kind
        num_outputs = self.spec.num_outputs
        if kind == "regression":
            p, t = pred.float(), target.float()
            loss = F.mse_loss(p, t)
            n = t.numel()
            absolute = torch.sub(p.detach(), t).abs_().sum()  # one temporary (l1_loss: two)
            stats = torch.stack([torch.full_like(absolute, n), loss.detach() * n, absolute])
            return loss, stats
        if kind == "multiclass":
            # labels outside 0..C-1 become "missing" here (never an index error, which on an
            # accelerator is a device assert); the probe reports them after the step's read
            target = target.long()
            valid = (target >= 0) & (target < num_outputs)
            safe_target = torch.where(valid, target, IGNORE_INDEX)
            loss = F.cross_entropy(pred.float(), safe_target, ignore_index=IGNORE_INDEX)
            stats = class_statistics(pred.detach(), safe_target, kind, num_outputs, valid)
            return loss, stats
        loss = F.binary_cross_entropy_with_logits(pred.float(), target.float())
        return loss, class_statistics(pred.detach(), target, kind, num_outputs, None)

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean loss over labelled entries; exactly ``0 * pred.sum()`` when none is labelled
        (:meth:`evaluate` without the statistics)."""
        return self.evaluate(pred, target, mask)[0]

    def baseline_loss(self) -> float | None:
        """Loss of an uninformed predictor where known: log C for C-class cross-entropy."""
        if self.spec.kind == "multiclass":
            return math.log(self.spec.num_outputs)
        if self.spec.kind in ("binary", "multilabel"):
            return math.log(2.0)
        return None
