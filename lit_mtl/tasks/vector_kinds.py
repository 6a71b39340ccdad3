"""The vector task kinds: regression, binary, multiclass, multilabel.

Losses: regression MSE; binary and multilabel BCE with logits; multiclass cross-entropy. Their
statistics and metrics are :mod:`lit_mtl.functional.task_metrics`'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_mtl.functional.task_metrics import (
    label_table_metrics,
    label_table_statistics,
    multiclass_metrics,
    multiclass_statistics,
    regression_metrics,
)
from lit_mtl.tasks.kinds import IGNORE_INDEX, TaskKind, log_of, register_kind

if TYPE_CHECKING:
    from lit_mtl.tasks.spec import TaskSpec


class SquaredError(TaskKind):
    """The MSE loss over the labelled entries, with ``[count, sum of squared errors, sum of
    |errors|]`` statistics giving ``mse`` and ``mae`` (regression and dense regression)."""

    metric_directions: ClassVar[Mapping[str, bool]] = {"mse": False, "mae": False}
    uncertainty_form = "gaussian"

    def per_element_loss(
        self, spec: TaskSpec, pred: Tensor, target: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        safe_target = torch.where(present, target, pred.detach().to(target.dtype))
        return (pred.float() - safe_target.float()) ** 2, safe_target

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
        error = (pred.float() - safe_target.float()) * present
        return torch.stack([count.float(), per_element.detach().sum(), error.abs().sum()])

    def fast_evaluate(self, spec: TaskSpec, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        p, t = pred.float(), target.float()
        loss = F.mse_loss(p, t)
        n = t.numel()
        absolute = torch.sub(p.detach(), t).abs_().sum()  # one temporary (l1_loss: two)
        return loss, torch.stack([torch.full_like(absolute, n), loss.detach() * n, absolute])

    def statistics_size(self, num_outputs: int, reduction: str) -> int:
        return 3

    def metrics_of(self, num_outputs: int, stats: Tensor, reduction: str) -> dict[str, Tensor]:
        return regression_metrics(stats)


@register_kind
class RegressionKind(SquaredError):
    """``"regression"``: d real outputs (targets (N,) for d = 1, else (N, d)), MSE; NaN marks a
    missing label."""

    name = "regression"

    def shape_prediction(self, spec: TaskSpec, out: Tensor) -> Tensor:
        return out.reshape(out.shape[0]) if spec.num_outputs == 1 else out

    def check_target(self, spec: TaskSpec, target: Tensor, n: int, where: str) -> None:
        d = spec.num_outputs
        expected = (n,) if d == 1 else (n, d)
        if d == 1 and tuple(target.shape) == (n, 1):
            expected = (n, 1)
        if not target.is_floating_point():
            raise TypeError(
                f"{where}: regression targets must be floating point (NaN marks a missing "
                f"label), got dtype {target.dtype}"
            )
        _check_shape(target, expected, n, where)

    def align_target(self, spec: TaskSpec, pred: Tensor, target: Tensor) -> Tensor:
        if target.dim() == 2 and pred.dim() == 1:
            return target.reshape(-1)  # (N, 1) targets of a one-output task
        return target


class _ZeroOneLabels(TaskKind):
    """BCE with logits over 0/1 labels (NaN or -100 marks a missing one), with one 2 x 2 table
    per label as statistics."""

    class_labels = True
    uncertainty_form = "classification"
    percent_metrics = frozenset({"acc", "f1"})

    def labelled(self, spec: TaskSpec, target: Tensor) -> Tensor:
        if target.is_floating_point():
            return ~torch.isnan(target) & (target != IGNORE_INDEX)
        return target != IGNORE_INDEX

    def per_element_loss(
        self, spec: TaskSpec, pred: Tensor, target: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        safe_target = torch.where(present, target.float(), torch.zeros_like(target.float()))
        loss = F.binary_cross_entropy_with_logits(pred.float(), safe_target, reduction="none")
        return loss, safe_target

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
        return label_table_statistics(pred, safe_target, present)

    def fast_evaluate(self, spec: TaskSpec, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        loss = F.binary_cross_entropy_with_logits(pred.float(), target.float())
        return loss, label_table_statistics(pred.detach(), target, None)

    def statistics_size(self, num_outputs: int, reduction: str) -> int:
        return 1 + 4 * num_outputs

    def metrics_of(self, num_outputs: int, stats: Tensor, reduction: str) -> dict[str, Tensor]:
        return label_table_metrics(stats)

    def baseline_loss(self, num_outputs: int | None) -> float | None:
        return log_of(2)


@register_kind
class BinaryKind(_ZeroOneLabels):
    """``"binary"``: one logit per sample, targets (N,) 0/1; ranking metrics (``auroc``,
    ``auprc``) with ``MultiTaskModule(ranking_metrics=True)``."""

    name = "binary"
    fixed_outputs = 1
    ranked = True
    metric_directions: ClassVar[Mapping[str, bool]] = {
        "acc": True,
        "f1": True,
        "auroc": True,
        "auprc": True,
    }

    def shape_prediction(self, spec: TaskSpec, out: Tensor) -> Tensor:
        return out.reshape(out.shape[0])

    def check_target(self, spec: TaskSpec, target: Tensor, n: int, where: str) -> None:
        _check_shape(target, (n,), n, where)


class ClassIndices(TaskKind):
    """Cross-entropy over class indices; the spec's ``ignore_index`` marks a missing label
    (multiclass and segmentation)."""

    min_outputs = 2
    class_labels = True
    class_indices = True
    uncertainty_form = "classification"

    def labelled(self, spec: TaskSpec, target: Tensor) -> Tensor:
        return target != spec.ignore_index

    def per_element_loss(
        self, spec: TaskSpec, pred: Tensor, target: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        safe_target = torch.where(present, target, torch.zeros_like(target))
        return F.cross_entropy(pred.float(), safe_target.long(), reduction="none"), safe_target

    def fast_evaluate(self, spec: TaskSpec, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        # labels outside 0..C-1 become "missing" here (never an index error, which on an
        # accelerator is a device assert); the probe reports them after the step's read
        target = target.long()
        valid = (target >= 0) & (target < spec.num_outputs)
        safe_target = torch.where(valid, target, IGNORE_INDEX)
        loss = F.cross_entropy(pred.float(), safe_target, ignore_index=IGNORE_INDEX)
        return loss, self.class_statistics(spec, pred.detach(), safe_target, valid)

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
        return self.class_statistics(spec, pred, safe_target, present)

    def class_statistics(
        self, spec: TaskSpec, pred: Tensor, safe_target: Tensor, present: Tensor
    ) -> Tensor:
        """The statistics from the detached logits, the class indices and the labelled
        entries (a confusion matrix's counts)."""
        raise NotImplementedError

    def baseline_loss(self, num_outputs: int | None) -> float | None:
        return None if num_outputs is None else log_of(num_outputs)


@register_kind
class MulticlassKind(ClassIndices):
    """``"multiclass"``: C classes, targets (N,) integer class indices."""

    name = "multiclass"
    metric_directions: ClassVar[Mapping[str, bool]] = {"acc": True, "f1": True}
    percent_metrics = frozenset({"acc", "f1"})

    def check_target(self, spec: TaskSpec, target: Tensor, n: int, where: str) -> None:
        if target.is_floating_point() or target.dtype == torch.bool:
            raise TypeError(
                f"{where}: class targets must be an integer tensor of class indices "
                f"(use {spec.ignore_index} for a missing label), got dtype {target.dtype}"
            )
        _check_shape(target, (n,), n, where)

    def class_statistics(
        self, spec: TaskSpec, pred: Tensor, safe_target: Tensor, present: Tensor
    ) -> Tensor:
        return multiclass_statistics(pred, safe_target, spec.num_outputs, present)

    def statistics_size(self, num_outputs: int, reduction: str) -> int:
        return 1 + 3 * num_outputs

    def metrics_of(self, num_outputs: int, stats: Tensor, reduction: str) -> dict[str, Tensor]:
        return multiclass_metrics(stats, num_outputs)


@register_kind
class MultilabelKind(_ZeroOneLabels):
    """``"multilabel"``: L independent 0/1 labels, targets (N, L)."""

    name = "multilabel"
    metric_directions: ClassVar[Mapping[str, bool]] = {"acc": True, "f1": True}

    def check_target(self, spec: TaskSpec, target: Tensor, n: int, where: str) -> None:
        _check_shape(target, (n, spec.num_outputs), n, where)


def _check_shape(target: Tensor, expected: tuple[int, ...], n: int, where: str) -> None:
    if tuple(target.shape) != expected:
        raise ValueError(
            f"{where}: target shape {tuple(target.shape)} does not match the expected "
            f"{expected} for a batch of {n} samples"
        )
