"""Pure math used by the weighting methods: no state, no Lightning."""

from lit_mtl.functional.aggregation import (
    aligned_mtl_coefficients,
    cagrad_coefficients,
    imtl_g_coefficients,
    min_norm_coefficients,
    nash_mtl_coefficients,
    pcgrad_coefficients,
    project_to_simplex,
)
from lit_mtl.functional.distributed import (
    all_reduce_max,
    all_reduce_mean,
    all_reduce_sum,
    masked_mean_over_ranks,
    world_size,
)
from lit_mtl.functional.optim import adam_step

__all__ = [
    "adam_step",
    "aligned_mtl_coefficients",
    "all_reduce_max",
    "all_reduce_mean",
    "all_reduce_sum",
    "cagrad_coefficients",
    "imtl_g_coefficients",
    "masked_mean_over_ranks",
    "min_norm_coefficients",
    "nash_mtl_coefficients",
    "pcgrad_coefficients",
    "project_to_simplex",
    "world_size",
]
