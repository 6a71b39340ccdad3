"""Task metrics from sufficient statistics: one short vector per task and step, summed over steps.

Every task kind reduces a batch to a fixed-length float vector whose sum over batches (and ranks)
determines the epoch's metrics exactly. The first entry is always the number of labelled entries
(the task is *present* in a batch when it is positive). Which kind uses which function is the
kind's own business (:mod:`lit_mtl.tasks.kinds`); the layouts of the built-in kinds:

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


def regression_metrics(stats: Tensor) -> dict[str, Tensor]:
    """``mse`` and ``mae`` from ``[count, sum of squared errors, sum of |errors|]``."""
    count = stats[0]
    return {"mse": stats[1] / count, "mae": stats[2] / count}


def multiclass_statistics(
    logits: Tensor, target: Tensor, num_classes: int, present: Tensor | None
) -> Tensor:
    """``[count, tp(C), fp(C), fn(C)]`` of a batch of a multiclass task.

    Args:
        logits: (N, C) (detached).
        target: (N,) class indices.
        num_classes: C.
        present: bool (N,), True where labelled; None when all are.
    """
    c = num_classes
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


def label_table_statistics(logits: Tensor, target: Tensor, present: Tensor | None) -> Tensor:
    """``[count, (tn, fp, fn, tp) per label]`` of a batch of a binary task (logits (N,), one
    label) or a multilabel task (logits (N, L)); target 0/1 values of the same shape, present
    bool of that shape (None when all are labelled)."""
    labels = 1 if logits.dim() == 1 else logits.shape[1]
    positive = (logits > 0).long()
    truth = (target > 0.5).long() if target.is_floating_point() else target.long().clamp(0, 1)
    cell = 2 * truth + positive  # 0 tn, 1 fp, 2 fn, 3 tp
    if logits.dim() == 2:
        cell = cell + 4 * torch.arange(labels, device=cell.device)  # (N, L): label-major bins
    bins = 4 * labels
    if present is not None:
        cell = torch.where(present, cell, bins)
    table = torch.bincount(cell.reshape(-1), minlength=bins + 1)[:bins]
    return torch.cat([table.sum().reshape(1), table]).float()


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))


def multiclass_metrics(stats: Tensor, num_classes: int) -> dict[str, Tensor]:
    """``acc`` (micro) and ``f1`` (macro over the classes seen) from the summed statistics."""
    c = num_classes
    tp, fp, fn = stats[1 : 1 + c], stats[1 + c : 1 + 2 * c], stats[1 + 2 * c : 1 + 3 * c]
    f1 = _safe_divide(2 * tp, 2 * tp + fp + fn)
    seen = (tp + fp + fn) > 0  # classes absent from targets and predictions do not count
    macro = _safe_divide((f1 * seen).sum(), seen.sum().to(f1.dtype))
    return {"acc": tp.sum() / stats[0], "f1": macro}


def label_table_metrics(stats: Tensor) -> dict[str, Tensor]:
    """``acc`` and ``f1``, both macro over the labels, from the summed 2 x 2 tables."""
    table = stats[1:].reshape(-1, 4)  # (labels, [tn, fp, fn, tp])
    tn, fp, fn, tp = table.unbind(dim=1)
    acc = _safe_divide(tp + tn, tp + tn + fp + fn)
    f1 = _safe_divide(2 * tp, 2 * tp + fp + fn)
    return {"acc": acc.mean(), "f1": f1.mean()}
