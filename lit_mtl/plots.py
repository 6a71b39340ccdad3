"""Moved to :mod:`lit_mtl.diagnostics.plots`.

This path keeps working (with a ``DeprecationWarning``) for scripts, configs and checkpoints
written before the move."""

from lit_mtl._moved import moved_names

__getattr__ = moved_names(
    __name__,
    "lit_mtl.diagnostics.plots",
    [
        "plot_delta_m",
        "plot_expert_use",
        "plot_gradient_conflicts",
        "plot_lr_schedule",
        "plot_task_weights",
        "plot_tradeoff",
    ],
)
