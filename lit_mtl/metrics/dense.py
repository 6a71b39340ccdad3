"""Dense-task metrics as torchmetrics objects: mIoU / pixel accuracy, depth errors, normal angles.

Drop-in pieces for any Lightning project: ``update(pred, target)`` per batch, ``compute()`` for the
set. Each holds one statistics vector (:mod:`lit_mtl.functional.dense_metrics`, the same functions
:class:`~lit_mtl.MultiTaskModule` uses) as a torchmetrics state summed across DDP ranks, so the
value over several ranks is the value over the union of their batches. ``reduction`` names the
convention (``"pooled"``: all valid pixels of the set, default; ``"per_batch"``: the mean of the
batches' values, as the MTAN / CAGrad / Nash-MTL / FAMO code).

>>> metric = DepthMetrics()
>>> metric.update(torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[[2.0, 0.0]]]]))  # one valid
>>> {k: round(float(v), 3) for k, v in metric.compute().items()}
{'abs_err': 1.0, 'rel_err': 0.5}
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lit_mtl.functional.dense_metrics import (
    DENSE_REDUCTIONS,
    depth_statistics,
    depth_valid,
    normal_statistics,
    normal_valid,
    segmentation_statistics,
)
from lit_mtl.tasks.kinds import get_kind


class _DenseMetric(Metric):
    # declared state (add_state), typed for the type checker
    statistics: Tensor
    full_state_update = False
    is_differentiable = False
    kind = ""

    def __init__(self, num_outputs: int, reduction: str) -> None:
        super().__init__()
        if reduction not in DENSE_REDUCTIONS:
            raise ValueError(f"reduction must be one of {DENSE_REDUCTIONS}, got {reduction!r}")
        self.num_outputs = int(num_outputs)
        self.reduction = reduction
        size = get_kind(self.kind).statistics_size(self.num_outputs, reduction)
        self.add_state("statistics", torch.zeros(size, dtype=torch.float64), "sum")

    def _add(self, statistics: Tensor) -> None:
        self.statistics += statistics.to(self.statistics)

    def compute(self) -> dict[str, Tensor]:
        """The set's metrics (``{}`` when nothing valid was seen)."""
        return get_kind(self.kind).metrics(self.num_outputs, self.statistics, self.reduction)


class SegmentationMetrics(_DenseMetric):
    """``miou`` and ``pix_acc`` from one confusion matrix over the set (both conventions).

    Args:
        num_classes: C.
        ignore_index: label of unlabelled pixels (-1 in the NYUv2 / CityScapes files).

    ``update(logits (N, C, H, W), target (N, H, W))``; labels outside 0..C-1 other than
    ``ignore_index`` are an error.
    """

    kind = "segmentation"

    def __init__(self, num_classes: int, ignore_index: int = -1, reduction: str = "pooled"):
        super().__init__(num_classes, reduction)
        self.ignore_index = int(ignore_index)

    def update(self, logits: Tensor, target: Tensor) -> None:
        present = target != self.ignore_index
        labels = target[present]
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_outputs):
            low, high = labels.min().item(), labels.max().item()
            raise ValueError(
                f"SegmentationMetrics: labels must be 0..{self.num_outputs - 1} or "
                f"ignore_index={self.ignore_index}, got {low}..{high}"
            )
        safe = torch.where(present, target, 0)
        self._add(segmentation_statistics(logits.detach(), safe, present))


class DepthMetrics(_DenseMetric):
    """``abs_err`` and ``rel_err`` over valid pixels (finite, target not 0).

    ``update(pred, target)``, both (N, 1, H, W) or (N, H, W).
    """

    kind = "depth"

    def __init__(self, reduction: str = "pooled") -> None:
        super().__init__(1, reduction)

    def update(self, pred: Tensor, target: Tensor) -> None:
        valid = depth_valid(target)
        safe = torch.where(valid, target, 1.0)
        self._add(depth_statistics(pred.reshape(target.shape), safe, valid, self.reduction))


class NormalMetrics(_DenseMetric):
    """``angle_mean``, ``angle_median`` (degrees) and ``within_11_25`` / ``within_22_5`` /
    ``within_30`` (shares) over valid pixels (finite, target not the zero vector). The
    prediction is L2-normalised first. Pooled median: within 0.005 degrees of the exact one
    (:mod:`lit_mtl.functional.dense_metrics`).

    ``update(pred (N, 3, H, W), target (N, 3, H, W))``.
    """

    kind = "normals"

    def __init__(self, reduction: str = "pooled") -> None:
        super().__init__(3, reduction)

    def update(self, pred: Tensor, target: Tensor) -> None:
        valid = normal_valid(target)
        safe = torch.where(valid[:, None], target, 0.0)
        self._add(normal_statistics(pred, safe, valid, self.reduction))
