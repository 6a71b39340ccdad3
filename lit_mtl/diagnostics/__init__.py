"""Diagnostics: what the tasks do to each other (task-gradient conflicts, expert use) and the
figures drawn from them, the task weights and the learning-rate schedules.

* :mod:`~lit_mtl.diagnostics.conflicts`: gradient cosines from the Gramian, the conflict share,
  :class:`GateUsage` for gated architectures (exported here);
* :mod:`~lit_mtl.diagnostics.plots`: pure figure functions, imported from that module (it is left
  out of ``import lit_mtl``; matplotlib, the ``plots`` extra, is imported when a figure is drawn).
"""

from lit_mtl.diagnostics.conflicts import (
    GateUsage,
    conflict_share,
    gradient_cosines,
    pair_names,
    task_gramian,
)

__all__ = [
    "GateUsage",
    "conflict_share",
    "gradient_cosines",
    "pair_names",
    "task_gramian",
]
