"""Task-weighting methods: one small class per method (formula and paper in each docstring)."""

from lit_mtl.weighting.aligned import AlignedMTL
from lit_mtl.weighting.base import Weighting, stack_losses, task_views
from lit_mtl.weighting.cagrad import CAGrad
from lit_mtl.weighting.dwa import DWA, dwa_weights
from lit_mtl.weighting.equal import EqualWeighting, StaticWeighting
from lit_mtl.weighting.famo import FAMO, famo_logit_gradient, famo_weights
from lit_mtl.weighting.gradient import GradientWeighting, resolve_shared_target
from lit_mtl.weighting.gradnorm import GradNorm, gradnorm_weight_gradient
from lit_mtl.weighting.imtl import IMTLG
from lit_mtl.weighting.mgda import MGDA, MGDAUB
from lit_mtl.weighting.nash import NashMTL
from lit_mtl.weighting.pcgrad import PCGrad
from lit_mtl.weighting.rlw import RLW
from lit_mtl.weighting.uncertainty import (
    UncertaintyWeighting,
    uncertainty_weighted_terms,
    uncertainty_weights,
)

__all__ = [
    "DWA",
    "FAMO",
    "IMTLG",
    "MGDA",
    "MGDAUB",
    "RLW",
    "AlignedMTL",
    "CAGrad",
    "EqualWeighting",
    "GradNorm",
    "GradientWeighting",
    "NashMTL",
    "PCGrad",
    "StaticWeighting",
    "UncertaintyWeighting",
    "Weighting",
    "dwa_weights",
    "famo_logit_gradient",
    "famo_weights",
    "gradnorm_weight_gradient",
    "resolve_shared_target",
    "stack_losses",
    "task_views",
    "uncertainty_weighted_terms",
    "uncertainty_weights",
]
