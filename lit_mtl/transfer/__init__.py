"""Transfer learning: safe source loading, unfreezing schedules, discriminative LR, L2-SP."""

from lit_mtl._moved import moved_names
from lit_mtl.transfer.feature_cache import (
    CachedFeatureDataModule,
    FeatureInput,
    encoder_fingerprint,
)
from lit_mtl.transfer.l2sp import is_l2sp_weight, l2sp_penalty
from lit_mtl.transfer.loading import (
    HF_WEIGHT_FILES,
    CheckpointMismatchError,
    LoadReport,
    hf_folder_weights,
    load_source_into,
    map_keys,
    read_state_dict,
    replaced_source_keys,
)
from lit_mtl.transfer.lora import (
    ADAPTABLE,
    adapter_state_dict,
    inject_lora,
    load_adapters,
    lora_module_names,
    merge_lora,
    save_adapters,
)
from lit_mtl.transfer.module import TransferModule, resolve_layer_groups
from lit_mtl.transfer.schedule import (
    UnfreezeSchedule,
    UnfreezeScheduleCallback,
    discriminative_factors,
    named_param_groups,
)

__all__ = [
    "ADAPTABLE",
    "HF_WEIGHT_FILES",
    "CachedFeatureDataModule",
    "CheckpointMismatchError",
    "FeatureInput",
    "LoadReport",
    "TransferModule",
    "UnfreezeSchedule",
    "UnfreezeScheduleCallback",
    "adapter_state_dict",
    "discriminative_factors",
    "encoder_fingerprint",
    "hf_folder_weights",
    "inject_lora",
    "is_l2sp_weight",
    "l2sp_penalty",
    "load_adapters",
    "load_source_into",
    "lora_module_names",
    "map_keys",
    "merge_lora",
    "named_param_groups",
    "read_state_dict",
    "replaced_source_keys",
    "resolve_layer_groups",
    "save_adapters",
]

# re-exported from lit_mtl.checkpoints before each name had one path
__getattr__ = moved_names(__name__, "lit_mtl.checkpoints", ["UnsafeCheckpointError"])
