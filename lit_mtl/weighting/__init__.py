"""Task-weighting methods: one small class per method (formula and paper in each docstring)."""

from lit_mtl._moved import moved_names
from lit_mtl.weighting.aligned import AlignedMTL
from lit_mtl.weighting.base import Weighting
from lit_mtl.weighting.cagrad import CAGrad
from lit_mtl.weighting.db_mtl import DBMTL
from lit_mtl.weighting.dwa import DWA
from lit_mtl.weighting.equal import EqualWeighting, StaticWeighting
from lit_mtl.weighting.famo import FAMO
from lit_mtl.weighting.gradnorm import GradNorm
from lit_mtl.weighting.gramian import GramianWeighting
from lit_mtl.weighting.imtl import IMTLG
from lit_mtl.weighting.mgda import MGDA, MGDAUB
from lit_mtl.weighting.nash import NashMTL
from lit_mtl.weighting.pcgrad import PCGrad
from lit_mtl.weighting.rlw import RLW
from lit_mtl.weighting.uncertainty import UncertaintyWeighting
from lit_mtl.weighting.upgrad import UPGrad

__all__ = [
    "DBMTL",
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
    "GramianWeighting",
    "NashMTL",
    "PCGrad",
    "StaticWeighting",
    "UPGrad",
    "UncertaintyWeighting",
    "Weighting",
]

# the step context and the pure rules this package re-exported before each name had one path
__getattr__ = moved_names(
    __name__,
    {
        "lit_mtl.engines": [
            "StepContext",
            "stack_losses",
            "step_context",
            "resolve_shared_target",
            "task_views",
        ],
        "lit_mtl.functional": [
            "dwa_weights",
            "famo_logit_gradient",
            "famo_weights",
            "gradnorm_weight_gradient",
            "uncertainty_weighted_terms",
            "uncertainty_weights",
        ],
    },
)
