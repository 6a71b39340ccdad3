"""Metrics: delta-m against single-task baselines, the dense-task torchmetrics, and the per-task
epoch accumulators :class:`~lit_mtl.MultiTaskModule` logs from.

* :mod:`~lit_mtl.metrics.delta`: delta-m (function and torchmetrics ``DeltaM``), the metric
  directions, published baselines;
* :mod:`~lit_mtl.metrics.dense`: mIoU / pixel accuracy, depth errors, normal angles as torchmetrics;
* :mod:`~lit_mtl.metrics.epoch`: every task's epoch loss, metrics and ranking metrics, packed and
  reduced across DDP ranks once per epoch.

The pure statistics behind them live in :mod:`lit_mtl.functional`.
"""

from lit_mtl.metrics.delta import (
    DELTA_M_CONVENTIONS,
    HIGHER_IS_BETTER,
    NYUV2_SINGLE_TASK_BASELINE,
    DeltaM,
    delta_m,
    higher_is_better,
    metric_directions,
)
from lit_mtl.metrics.dense import DepthMetrics, NormalMetrics, SegmentationMetrics
from lit_mtl.metrics.epoch import EpochRankingMetrics, EpochTaskMetrics

__all__ = [
    "DELTA_M_CONVENTIONS",
    "HIGHER_IS_BETTER",
    "NYUV2_SINGLE_TASK_BASELINE",
    "DeltaM",
    "DepthMetrics",
    "EpochRankingMetrics",
    "EpochTaskMetrics",
    "NormalMetrics",
    "SegmentationMetrics",
    "delta_m",
    "higher_is_better",
    "metric_directions",
]
