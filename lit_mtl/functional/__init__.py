"""Pure rules of the weighting methods: tensors or arrays in, tensors or arrays out. No module
state, no buffers, no Lightning, no cross-rank communication."""

from lit_mtl.functional.aggregation import (
    aligned_mtl_coefficients,
    cagrad_coefficients,
    cagrad_solve,
    dual_cone_projection_weights,
    imtl_g_coefficients,
    min_norm_coefficients,
    nash_mtl_coefficients,
    pcgrad_coefficients,
    project_to_simplex,
    upgrad_coefficients,
)
from lit_mtl.functional.loss_weighting import (
    UNCERTAINTY_FORMS,
    db_mtl_ema,
    db_mtl_scales,
    dwa_weights,
    famo_logit_gradient,
    famo_weights,
    gradnorm_weight_gradient,
    uncertainty_form_table,
    uncertainty_weighted_terms,
    uncertainty_weights,
)
from lit_mtl.functional.optim import adam_step

__all__ = [
    "UNCERTAINTY_FORMS",
    "adam_step",
    "aligned_mtl_coefficients",
    "cagrad_coefficients",
    "cagrad_solve",
    "db_mtl_ema",
    "db_mtl_scales",
    "dual_cone_projection_weights",
    "dwa_weights",
    "famo_logit_gradient",
    "famo_weights",
    "gradnorm_weight_gradient",
    "imtl_g_coefficients",
    "min_norm_coefficients",
    "nash_mtl_coefficients",
    "pcgrad_coefficients",
    "project_to_simplex",
    "uncertainty_form_table",
    "uncertainty_weighted_terms",
    "uncertainty_weights",
    "upgrad_coefficients",
]
