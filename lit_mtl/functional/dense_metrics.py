"""Dense-task metrics from sufficient statistics: segmentation, depth, surface normals.

Like :mod:`lit_mtl.functional.task_metrics`, every batch reduces to a fixed-length vector whose
sum over batches and DDP ranks gives the set's metrics; the first entry counts what the metrics
average over, so a task is *present* in a batch when it is positive.

**Two reductions**, named as the published tables use them (compare numbers only under the same):

``"pooled"`` (LibMTL's normals; the default)
    every valid pixel of the evaluated set counts once: mean errors over all pixels, the median
    of all pixels' angle errors, shares over all pixels.
``"per_batch"`` (the MTAN / CAGrad / Nash-MTL / FAMO code)
    each batch's value over its own valid pixels (the median too), then the unweighted mean over
    batches (``avg_cost += cost / num_batches``). Their segmentation metrics come from one
    confusion matrix over the set in both conventions, as here.

Layouts (after the count):

===============  =========================  ==============================================
task             pooled                     per_batch
===============  =========================  ==============================================
segmentation     tp, fp, fn per class       the same (confusion matrix over the set)
depth            sum abs err, sum rel err   batch means of abs err and rel err
normals          sum angle, 3 threshold      batch mean, median, 3 shares
                 counts, angle histogram
===============  =========================  ==============================================

Definitions (REFERENCE "Dense tasks"): a depth pixel is valid where the target is finite and not
0; a normal pixel where the target is finite and not the zero vector (the papers' code tests
``sum over channels != 0``, which differs only for a unit normal whose components sum to 0).
``abs_err`` = mean |d - d*|, ``rel_err`` = mean |d - d*| / d*; the angle is
``degrees(acos(clamp(<n, n*>, -1, 1)))`` with n the L2-normalised prediction;
``within_11_25`` etc. are the shares of pixels with an angle strictly below the threshold.
``miou`` = mean over classes of tp / (tp + fp + fn), over the classes that occur in the targets
or the predictions (a class absent from both has no IoU; the reference code's ``torch.mean``
would return NaN there); ``pix_acc`` = sum tp / labelled pixels.

**The pooled median** uses a histogram of the angle errors in bins of
:data:`ANGLE_BIN_DEGREES` (18 000 counts per task, whatever the set's size): memory is bounded
and the result is within half a bin (0.005 degrees) of the exact median of all pixels (the
midpoint of the bin holding each middle value). The shares and the mean are exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

DENSE_REDUCTIONS = ("pooled", "per_batch")
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)
ANGLE_BIN_DEGREES = 0.01
_ANGLE_BINS = round(180.0 / ANGLE_BIN_DEGREES)


def _check_reduction(reduction: str) -> None:
    if reduction not in DENSE_REDUCTIONS:
        raise ValueError(f"reduction must be one of {DENSE_REDUCTIONS}, got {reduction!r}")


def normal_statistics_size(reduction: str) -> int:
    """Length of a normals task's statistics vector (the count included)."""
    _check_reduction(reduction)
    if reduction == "pooled":  # count, sum, threshold counts, histogram
        return 2 + len(ANGLE_THRESHOLDS) + _ANGLE_BINS
    return 3 + len(ANGLE_THRESHOLDS)  # batches, mean, median, shares


# ---------------------------------------------------------------------------- validity
def depth_valid(target: Tensor) -> Tensor:
    """Valid depth pixels: finite and not 0 (the preprocessed files store 0 where unknown)."""
    return torch.isfinite(target) & (target != 0)


def normal_valid(target: Tensor) -> Tensor:
    """(N, H, W) valid normal pixels of an (N, 3, H, W) target: finite, not the zero vector."""
    return torch.isfinite(target).all(dim=1) & (target != 0).any(dim=1)


def angle_errors(pred: Tensor, target: Tensor) -> Tensor:
    """Per-pixel angle in degrees, (N, H, W), between L2-normalised ``pred`` and ``target``
    (both (N, 3, H, W)); the target is used as stored (unit vectors in the files)."""
    unit = torch.nn.functional.normalize(pred.float(), dim=1)
    cosine = (unit * target.float()).sum(dim=1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cosine))


def exact_median(values: Tensor) -> Tensor:
    """numpy's median of a 1-d tensor: the middle value, or the mean of the two middle values."""
    n = values.numel()
    low = torch.kthvalue(values, (n + 1) // 2).values
    if n % 2:
        return low
    high = torch.kthvalue(values, n // 2 + 1).values
    return (low + high) / 2


# ---------------------------------------------------------------------------- statistics
def segmentation_statistics(logits: Tensor, target: Tensor, present: Tensor) -> Tensor:
    """``[labelled pixels, tp(C), fp(C), fn(C)]`` of (N, C, H, W) logits against (N, H, W)
    class indices, over the ``present`` pixels."""
    c = logits.shape[1]
    predicted = logits.argmax(dim=1)  # (N, H, W)
    bins = c * c
    cell = torch.where(present, target.long() * c + predicted, bins).reshape(-1)
    confusion = torch.bincount(cell, minlength=bins + 1)[:bins].reshape(c, c)
    tp = confusion.diagonal()
    fp = confusion.sum(dim=0) - tp
    fn = confusion.sum(dim=1) - tp
    return torch.cat([confusion.sum().reshape(1), tp, fp, fn]).float()


def depth_statistics(pred: Tensor, target: Tensor, valid: Tensor, reduction: str) -> Tensor:
    """pooled: ``[valid pixels, sum |d - d*|, sum |d - d*| / d*]``; per_batch: ``[1, mean abs
    err, mean rel err]`` of this batch (``[0, 0, 0]`` when no pixel is valid)."""
    _check_reduction(reduction)
    safe = torch.where(valid, target.float(), torch.ones_like(target, dtype=torch.float32))
    error = (pred.detach().float() - safe).abs() * valid
    count = valid.sum().float()
    sums = torch.stack([count, error.sum(), (error / safe.abs()).sum()])
    if reduction == "pooled":
        return sums
    scale = torch.where(count > 0, 1.0 / count.clamp(min=1.0), torch.zeros_like(count))
    return torch.stack([(count > 0).float(), sums[1] * scale, sums[2] * scale])


def normal_statistics(pred: Tensor, target: Tensor, valid: Tensor, reduction: str) -> Tensor:
    """pooled: ``[valid pixels, sum of angles, counts below 11.25 / 22.5 / 30, histogram]``;
    per_batch: ``[1, mean, median, shares below 11.25 / 22.5 / 30]`` of this batch
    (zeros when no pixel is valid). Angles in degrees (:func:`angle_errors`)."""
    _check_reduction(reduction)
    angles = angle_errors(pred.detach(), torch.where(valid[:, None], target, 0.0))[valid]
    count = torch.tensor(float(angles.numel()), device=angles.device)
    below = torch.stack([(angles < t).sum() for t in ANGLE_THRESHOLDS]).float()
    if reduction == "pooled":
        index = (angles / ANGLE_BIN_DEGREES).long().clamp_(0, _ANGLE_BINS - 1)
        histogram = torch.bincount(index, minlength=_ANGLE_BINS).float()
        return torch.cat([count.reshape(1), angles.sum().reshape(1), below, histogram])
    if angles.numel() == 0:
        return angles.new_zeros(3 + len(ANGLE_THRESHOLDS))
    head = torch.stack([count.new_ones(()), angles.mean(), exact_median(angles)])
    return torch.cat([head, below / count])


# ---------------------------------------------------------------------------- metrics
def _histogram_median(histogram: Tensor, count: Tensor) -> Tensor:
    """The median from the angle histogram: the mean of the midpoints of the bins holding the
    middle value(s) (within half a bin of numpy's median of the pixels)."""
    cumulative = histogram.cumsum(0)
    n = int(count.item())
    ranks = [(n + 1) // 2] if n % 2 else [n // 2, n // 2 + 1]
    wanted = torch.tensor(ranks, dtype=cumulative.dtype, device=cumulative.device)
    bins = torch.searchsorted(cumulative, wanted)  # first bin whose cumulative count >= rank
    return ((bins.to(histogram.dtype) + 0.5) * ANGLE_BIN_DEGREES).mean()


def segmentation_metrics(stats: Tensor, num_classes: int) -> dict[str, Tensor]:
    """``miou`` (over the classes seen) and ``pix_acc`` from the summed confusion counts."""
    c = num_classes
    tp, fp, fn = stats[1 : 1 + c], stats[1 + c : 1 + 2 * c], stats[1 + 2 * c : 1 + 3 * c]
    union = tp + fp + fn
    seen = union > 0
    iou = tp[seen] / union[seen]
    return {"miou": iou.mean(), "pix_acc": tp.sum() / stats[0]}


def depth_metrics(stats: Tensor) -> dict[str, Tensor]:
    """``abs_err`` and ``rel_err`` from the summed depth statistics (either reduction)."""
    return {"abs_err": stats[1] / stats[0], "rel_err": stats[2] / stats[0]}


def normal_metrics(stats: Tensor, reduction: str) -> dict[str, Tensor]:
    """The angle mean and median and the shares within 11.25 / 22.5 / 30 degrees from the
    summed normals statistics of ``reduction``."""
    _check_reduction(reduction)
    count, k = stats[0], len(ANGLE_THRESHOLDS)
    if reduction == "pooled":
        shares = stats[2 : 2 + k] / count
        mean, median = stats[1] / count, _histogram_median(stats[2 + k :], count)
    else:
        shares = stats[3 : 3 + k] / count
        mean, median = stats[1] / count, stats[2] / count
    names = ("within_11_25", "within_22_5", "within_30")
    out = {"angle_mean": mean, "angle_median": median}
    out.update({name: shares[i] for i, name in enumerate(names)})
    return out
