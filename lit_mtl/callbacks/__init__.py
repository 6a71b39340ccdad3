"""Callbacks for any Lightning project: the training plots every :class:`~lit_mtl.MultiTaskModule`
run ends with, and weight averaging (EMA, SWA) on Lightning's ``WeightAveraging``.

* :mod:`~lit_mtl.callbacks.training_plots`: :class:`TrainingPlots` (task weights, learning-rate
  schedules, gradient conflicts, expert use, drawn at the end of fit);
* :mod:`~lit_mtl.callbacks.averaging`: :class:`EMA`, :class:`SWA`.
"""

from lit_mtl._moved import moved_names
from lit_mtl.callbacks.averaging import EMA, SWA, ModelWeightAveraging
from lit_mtl.callbacks.training_plots import TrainingPlots

__all__ = [
    "EMA",
    "SWA",
    "ModelWeightAveraging",
    "TrainingPlots",
]

# the helpers that lived in the one-file lit_mtl.callbacks before it became this package
__getattr__ = moved_names(
    __name__, "lit_mtl.callbacks.training_plots", ["LearningRateSchedule", "weights_tensor"]
)
