"""Moved to :mod:`lit_mtl.metrics.epoch`.

This path keeps working (with a ``DeprecationWarning``) for scripts, configs and checkpoints
written before the move."""

from lit_mtl._moved import moved_names

__getattr__ = moved_names(
    __name__, "lit_mtl.metrics.epoch", ["EpochRankingMetrics", "EpochTaskMetrics"]
)
