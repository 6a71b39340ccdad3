"""Task-weighting methods: one small class per method."""

from lit_mtl.weighting.base import Weighting, stack_losses
from lit_mtl.weighting.equal import EqualWeighting, StaticWeighting
from lit_mtl.weighting.uncertainty import UncertaintyWeighting, uncertainty_weighted_terms

__all__ = [
    "EqualWeighting",
    "StaticWeighting",
    "UncertaintyWeighting",
    "Weighting",
    "stack_losses",
    "uncertainty_weighted_terms",
]
