"""Transfer learning: safe source loading, unfreezing schedules, discriminative LR, L2-SP."""

from lit_mtl.transfer.feature_cache import (
    CachedFeatureDataModule,
    FeatureInput,
    encoder_fingerprint,
)
from lit_mtl.transfer.l2sp import l2sp_penalty
from lit_mtl.transfer.loading import (
    CheckpointMismatchError,
    LoadReport,
    UnsafeCheckpointError,
    hf_folder_weights,
    load_source_into,
    map_keys,
    read_state_dict,
    replaced_source_keys,
)
from lit_mtl.transfer.module import TransferModule, resolve_layer_groups
from lit_mtl.transfer.schedule import (
    UnfreezeSchedule,
    UnfreezeScheduleCallback,
    discriminative_factors,
    named_param_groups,
)

__all__ = [
    "CachedFeatureDataModule",
    "CheckpointMismatchError",
    "FeatureInput",
    "LoadReport",
    "TransferModule",
    "UnfreezeSchedule",
    "UnfreezeScheduleCallback",
    "UnsafeCheckpointError",
    "discriminative_factors",
    "encoder_fingerprint",
    "hf_folder_weights",
    "l2sp_penalty",
    "load_source_into",
    "map_keys",
    "named_param_groups",
    "read_state_dict",
    "replaced_source_keys",
    "resolve_layer_groups",
]
