"""DataModules: every one knows its task specs right after ``__init__``."""

from lit_mtl.data.labelled import DIGIT_TASKS, DerivedTask, LabelledDataModule, TaskDerivedDataset
from lit_mtl.data.offline import (
    DigitsDataModule,
    DigitsOverlayDataModule,
    MNIST1DDataModule,
    make_mnist1d,
)
from lit_mtl.data.overlay import overlay, overlay_pairs
from lit_mtl.data.synthetic import (
    EpochSeededSampler,
    MultiTaskTensorDataset,
    SyntheticDataModule,
    make_synthetic_tasks,
)
from lit_mtl.data.vision import VISION_TASKS, MultiMNISTDataModule, TorchvisionDataModule

__all__ = [
    "DIGIT_TASKS",
    "VISION_TASKS",
    "DerivedTask",
    "DigitsDataModule",
    "DigitsOverlayDataModule",
    "EpochSeededSampler",
    "LabelledDataModule",
    "MNIST1DDataModule",
    "MultiMNISTDataModule",
    "MultiTaskTensorDataset",
    "SyntheticDataModule",
    "TaskDerivedDataset",
    "TorchvisionDataModule",
    "make_mnist1d",
    "make_synthetic_tasks",
    "overlay",
    "overlay_pairs",
]
