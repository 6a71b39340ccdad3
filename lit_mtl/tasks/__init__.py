"""What a task is: its spec (plain data), its kind (the rules of its loss, checks and metrics),
its head, and the module that evaluates it.

A :class:`TaskSpec` is plain data (name, kind, output size) that a DataModule publishes right after
``__init__`` so the Lightning CLI can link it into the model. Its ``kind`` names a
:class:`TaskKind` (:mod:`lit_mtl.tasks.kinds`), which owns everything that depends on what the task
predicts. A :class:`Task` is the module built from a spec inside :class:`~lit_mtl.MultiTaskModule`:
its head, its masked loss, its metrics' statistics.
"""

from lit_mtl.tasks.dense_kinds import (
    DenseKind,
    DenseRegressionKind,
    DepthKind,
    NormalsKind,
    SegmentationKind,
)
from lit_mtl.tasks.heads import DenseHead, PooledLinear
from lit_mtl.tasks.kinds import (
    IGNORE_INDEX,
    METRIC_DIRECTIONS,
    TaskKind,
    get_kind,
    metric_name_directions,
    register_kind,
    task_kinds,
)
from lit_mtl.tasks.spec import TaskSpec, as_task_spec
from lit_mtl.tasks.task import WEIGHTED_DENOMINATORS, Task, product_logit
from lit_mtl.tasks.vector_kinds import BinaryKind, MulticlassKind, MultilabelKind, RegressionKind

__all__ = [
    "IGNORE_INDEX",
    "METRIC_DIRECTIONS",
    "WEIGHTED_DENOMINATORS",
    "BinaryKind",
    "DenseHead",
    "DenseKind",
    "DenseRegressionKind",
    "DepthKind",
    "MulticlassKind",
    "MultilabelKind",
    "NormalsKind",
    "PooledLinear",
    "RegressionKind",
    "SegmentationKind",
    "Task",
    "TaskKind",
    "TaskSpec",
    "as_task_spec",
    "get_kind",
    "metric_name_directions",
    "product_logit",
    "register_kind",
    "task_kinds",
]
