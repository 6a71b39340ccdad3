"""What a task is: its spec (plain data), its kind (the rules of its loss, checks and metrics),
its head, and the module that evaluates it.

A :class:`TaskSpec` is plain data (name, kind, output size) that a DataModule publishes right after
``__init__`` so the Lightning CLI can link it into the model. Its ``kind`` names a
:class:`TaskKind` (:mod:`lit_mtl.tasks.kinds`), which owns everything that depends on what the task
predicts. A :class:`Task` is the module built from a spec inside :class:`~lit_mtl.MultiTaskModule`:
its head, its masked loss, its metrics' statistics.
"""

from lit_mtl.tasks.batch import (
    TaskBatch,
    check_targets,
    is_multi_input,
    shared_inputs,
    total_batch_size,
    unpack_task_batch,
)
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
    RANKING_METRICS,
    TaskKind,
    get_kind,
    metric_name_directions,
    register_kind,
    task_kinds,
)
from lit_mtl.tasks.relations import check_task_relations, conditional_mask, with_derived
from lit_mtl.tasks.spec import TaskSpec, as_task_spec
from lit_mtl.tasks.task import WEIGHTED_DENOMINATORS, Task, product_logit
from lit_mtl.tasks.vector_kinds import (
    BinaryKind,
    MulticlassKind,
    MultilabelKind,
    RegressionKind,
    SquaredError,
)

__all__ = [
    "IGNORE_INDEX",
    "METRIC_DIRECTIONS",
    "RANKING_METRICS",
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
    "SquaredError",
    "Task",
    "TaskBatch",
    "TaskKind",
    "TaskSpec",
    "as_task_spec",
    "check_targets",
    "check_task_relations",
    "conditional_mask",
    "get_kind",
    "is_multi_input",
    "metric_name_directions",
    "product_logit",
    "register_kind",
    "shared_inputs",
    "task_kinds",
    "total_batch_size",
    "unpack_task_batch",
    "with_derived",
]
