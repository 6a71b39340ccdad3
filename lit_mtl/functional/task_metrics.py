"""Task metrics from sufficient statistics: one short vector per task and step, summed over steps.

Every task kind reduces a batch to a fixed-length float vector whose sum over batches (and ranks)
determines the epoch's metrics exactly. The first entry is always the number of labelled entries
(the task is *present* in a batch when it is positive). Layouts:

============  =====================================  ======================================
kind          statistics (after the count)            metrics
============  =====================================  ======================================
regression    sum of squared errors, of |errors|      ``mse``, ``mae`` (per labelled entry)
binary        tn, fp, fn, tp                          ``acc``, ``f1``
multiclass    tp, fp, fn per class (3 C)              ``acc`` (micro), ``f1`` (macro)
multilabel    tn, fp, fn, tp per label (4 L)          ``acc``, ``f1`` (both macro)
============  =====================================  ======================================

``dense_regression`` uses the regression layout over every labelled pixel and channel; the
other dense kinds (segmentation, depth, normals) are in :mod:`lit_mtl.functional.dense_metrics`.

A prediction is positive where its logit is > 0 (probability > 0.5); a class prediction is the
arg-max. The reductions are torchmetrics' (``BinaryAccuracy``, ``MulticlassAccuracy(average=
"micro")``, ``MulticlassF1Score(average="macro")``: classes never seen in targets or predictions
do not count; ``MultilabelAccuracy`` / ``MultilabelF1Score`` macro over all labels; 0 where a
denominator is 0). One difference: torchmetrics reads predictions that all lie in [0, 1] as
probabilities, these functions always read logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_mtl.functional.dense_metrics import (
    DENSE_METRIC_DIRECTIONS,
    dense_metrics_from_statistics,
    dense_statistics_size,
)

__all__ = [
    "METRIC_DIRECTIONS",
    "class_statistics",
    "metrics_from_statistics",
    "regression_statistics",
    "statistics_size",
]

#: metric names by task kind, with whether higher is better (binary ``auroc`` / ``auprc``: logged
#: with ``MultiTaskModule(ranking_metrics=True)``, :mod:`lit_mtl.functional.ranking_metrics`)
METRIC_DIRECTIONS: dict[str, dict[str, bool]] = {
    "regression": {"mse": False, "mae": False},
    "binary": {"acc": True, "f1": True, "auroc": True, "auprc": True},
    "multiclass": {"acc": True, "f1": True},
    "multilabel": {"acc": True, "f1": True},
    "dense_regression": {"mse": False, "mae": False},
    **DENSE_METRIC_DIRECTIONS,
}


def statistics_size(kind: str, num_outputs: int, reduction: str = "pooled") -> int:
    """Length of a task's statistics vector (the count included); ``reduction`` is that of the
    dense kinds (:mod:`lit_mtl.functional.dense_metrics`)."""
    if kind in DENSE_METRIC_DIRECTIONS:
        return dense_statistics_size(kind, num_outputs, reduction)
    if kind in ("regression", "dense_regression"):
        return 3
    if kind == "binary":
        return 5
    if kind == "multiclass":
        return 1 + 3 * num_outputs
    if kind == "multilabel":
        return 1 + 4 * num_outputs
    raise ValueError(f"unknown task kind {kind!r}")


def regression_statistics(error: Tensor, count: Tensor | int, squared_sum: Tensor) -> Tensor:
    """``[count, sum of squared errors, sum of |errors|]`` (3,) float32.

    Args:
        error: prediction - target, 0 at unlabelled entries (detached).
        count: number of labelled entries.
        squared_sum: the sum of squared errors (the loss's numerator, detached).
    """
    count = torch.as_tensor(count, dtype=torch.float32, device=error.device)
    return torch.stack([count, squared_sum.float(), error.abs().sum().float()])


def class_statistics(
    logits: Tensor, target: Tensor, kind: str, num_outputs: int, present: Tensor | None
) -> Tensor:
    """The statistics vector of a batch of a class task (see the module docstring).

    Args:
        logits: (N,) for binary, (N, C) multiclass, (N, L) multilabel (detached).
        target: class indices (multiclass) or 0/1 values, same leading shape.
        kind: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        num_outputs: C or L (1 for binary).
        present: bool, the target's shape, True where labelled; None when all are.
    """
    if kind == "multiclass":
        c = num_outputs
        predicted = logits.argmax(dim=1)  # (N,)
        cell = target.long() * c + predicted  # row = true class, column = predicted
        bins = c * c
        if present is not None:
            cell = torch.where(present, cell, bins)  # unlabelled: one extra bin, dropped
        confusion = torch.bincount(cell, minlength=bins + 1)[:bins].reshape(c, c)
        tp = confusion.diagonal()
        fp = confusion.sum(dim=0) - tp
        fn = confusion.sum(dim=1) - tp
        count = confusion.sum().reshape(1)
        return torch.cat([count, tp, fp, fn]).float()
    # binary (one label) and multilabel (L labels): one 2 x 2 table per label
    labels = 1 if kind == "binary" else num_outputs
    positive = (logits > 0).long()
    truth = (target > 0.5).long() if target.is_floating_point() else target.long().clamp(0, 1)
    cell = 2 * truth + positive  # 0 tn, 1 fp, 2 fn, 3 tp
    if kind == "multilabel":
        cell = cell + 4 * torch.arange(labels, device=cell.device)  # (N, L): label-major bins
    bins = 4 * labels
    if present is not None:
        cell = torch.where(present, cell, bins)
    table = torch.bincount(cell.reshape(-1), minlength=bins + 1)[:bins]
    return torch.cat([table.sum().reshape(1), table]).float()


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))


def metrics_from_statistics(
    kind: str, num_outputs: int, stats: Tensor, reduction: str = "pooled"
) -> dict[str, Tensor]:
    """The task's metrics from its summed statistics (float64 recommended); ``{}`` when no entry
    was labelled. ``reduction`` applies to the dense kinds."""
    if kind in DENSE_METRIC_DIRECTIONS:
        return dense_metrics_from_statistics(kind, num_outputs, stats, reduction)
    count = stats[0]
    if count <= 0:
        return {}
    if kind in ("regression", "dense_regression"):
        return {"mse": stats[1] / count, "mae": stats[2] / count}
    if kind == "multiclass":
        c = num_outputs
        tp, fp, fn = stats[1 : 1 + c], stats[1 + c : 1 + 2 * c], stats[1 + 2 * c : 1 + 3 * c]
        f1 = _safe_divide(2 * tp, 2 * tp + fp + fn)
        seen = (tp + fp + fn) > 0  # classes absent from targets and predictions do not count
        macro = _safe_divide((f1 * seen).sum(), seen.sum().to(f1.dtype))
        return {"acc": tp.sum() / count, "f1": macro}
    table = stats[1:].reshape(-1, 4)  # (labels, [tn, fp, fn, tp])
    tn, fp, fn, tp = table.unbind(dim=1)
    acc = _safe_divide(tp + tn, tp + tn + fp + fn)
    f1 = _safe_divide(2 * tp, 2 * tp + fp + fn)
    return {"acc": acc.mean(), "f1": f1.mean()}
