"""Gradient engines: how per-task gradients are obtained and the combined direction applied.

* :class:`RepresentationEngine`: per-task gradients w.r.t. the representation(s) the heads read
  (one z of any shape, or one z_i per task);
* :class:`ParameterEngine`: per-task gradients w.r.t. shared parameters;
* :class:`LayerNormEngine`: GradNorm's per-task gradient norms of one layer.

Each returns what a rule consumes (a :class:`TaskJacobian`: its Gramian or norms) and applies the
combined direction. The per-step input of all of them is the :class:`StepContext`.
"""

from lit_mtl.engines.context import StepContext, loss_scale_of, stack_losses, step_context
from lit_mtl.engines.distributed import (
    all_gather_columns,
    all_reduce_max,
    all_reduce_mean,
    all_reduce_sum,
    masked_mean_over_ranks,
    world_size,
)
from lit_mtl.engines.jacobian import Injection, TaskJacobian, float64_gramian, inject_gradients
from lit_mtl.engines.layer_norms import LayerNormEngine
from lit_mtl.engines.parameters import ParameterEngine, resolve_shared_target
from lit_mtl.engines.representation import (
    RepresentationEngine,
    gradients_of,
    representation_gradients,
)
from lit_mtl.engines.threads import single_threaded_blas
from lit_mtl.engines.views import task_views

__all__ = [
    "Injection",
    "LayerNormEngine",
    "ParameterEngine",
    "RepresentationEngine",
    "StepContext",
    "TaskJacobian",
    "all_gather_columns",
    "all_reduce_max",
    "all_reduce_mean",
    "all_reduce_sum",
    "float64_gramian",
    "gradients_of",
    "inject_gradients",
    "loss_scale_of",
    "masked_mean_over_ranks",
    "representation_gradients",
    "resolve_shared_target",
    "single_threaded_blas",
    "stack_losses",
    "step_context",
    "task_views",
    "world_size",
]
