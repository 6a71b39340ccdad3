"""DataModules: every one knows its task specs right after ``__init__``."""

from lit_mtl.data.synthetic import (
    EpochSeededSampler,
    MultiTaskTensorDataset,
    SyntheticDataModule,
    make_synthetic_tasks,
)

__all__ = [
    "EpochSeededSampler",
    "MultiTaskTensorDataset",
    "SyntheticDataModule",
    "make_synthetic_tasks",
]
