"""Gradient engines: how per-task gradients are obtained and the combined direction applied.

* :class:`RepresentationEngine`: per-task gradients w.r.t. the representation(s) the heads read
  (one z of any shape, or one z_i per task);
* :class:`ParameterEngine`: per-task gradients w.r.t. shared parameters;
* :class:`LayerNormEngine`: GradNorm's per-task gradient norms of one layer.

Each returns what a rule consumes (a :class:`TaskJacobian`: its Gramian or norms) and applies the
combined direction. The per-step input of all of them is the :class:`StepContext`.
"""

from lit_mtl.engines.context import StepContext, loss_scale_of, stack_losses, step_context
from lit_mtl.engines.jacobian import TaskJacobian, float64_gramian
from lit_mtl.engines.layer_norms import LayerNormEngine
from lit_mtl.engines.parameters import ParameterEngine, resolve_shared_target
from lit_mtl.engines.representation import RepresentationEngine
from lit_mtl.engines.views import task_views

__all__ = [
    "LayerNormEngine",
    "ParameterEngine",
    "RepresentationEngine",
    "StepContext",
    "TaskJacobian",
    "float64_gramian",
    "loss_scale_of",
    "resolve_shared_target",
    "stack_losses",
    "step_context",
    "task_views",
]
