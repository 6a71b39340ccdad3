"""DataModules: every one knows its task specs right after ``__init__``."""

from lit_mtl.data.celeba import CELEBA_ATTRIBUTES, CelebADataModule
from lit_mtl.data.click_conversion import ClickConversionDataModule
from lit_mtl.data.dense import CityScapesDataModule, DenseDataModule, NYUv2DataModule
from lit_mtl.data.dense_augment import augment_batch, scale_crop_flip
from lit_mtl.data.labelled import DIGIT_TASKS, DerivedTask, LabelledDataModule, TaskDerivedDataset
from lit_mtl.data.mmoe_synthetic import MMoESyntheticDataModule, make_mmoe_synthetic
from lit_mtl.data.molecules import MOLECULENET_FILES, MoleculeNetDataModule
from lit_mtl.data.offline import (
    DigitsDataModule,
    DigitsOverlayDataModule,
    MNIST1DDataModule,
    make_mnist1d,
)
from lit_mtl.data.overlay import overlay, overlay_pairs
from lit_mtl.data.per_task import DIGIT_DOMAINS, DigitsDomainsDataModule, PerTaskDataModule
from lit_mtl.data.pet import OxfordPetDataModule
from lit_mtl.data.scenes import SCENE_CLASSES, ProceduralScenesDataModule, render_scenes
from lit_mtl.data.synthetic import (
    EpochSeededSampler,
    MultiTaskTensorDataset,
    SyntheticDataModule,
    make_synthetic_tasks,
)
from lit_mtl.data.task_loaders import TaskSamplingLoader, task_sampling_probabilities
from lit_mtl.data.vision import VISION_TASKS, MultiMNISTDataModule, TorchvisionDataModule

__all__ = [
    "CELEBA_ATTRIBUTES",
    "DIGIT_DOMAINS",
    "DIGIT_TASKS",
    "MOLECULENET_FILES",
    "SCENE_CLASSES",
    "VISION_TASKS",
    "CelebADataModule",
    "CityScapesDataModule",
    "ClickConversionDataModule",
    "DenseDataModule",
    "DerivedTask",
    "DigitsDataModule",
    "DigitsDomainsDataModule",
    "DigitsOverlayDataModule",
    "EpochSeededSampler",
    "LabelledDataModule",
    "MMoESyntheticDataModule",
    "MNIST1DDataModule",
    "MoleculeNetDataModule",
    "MultiMNISTDataModule",
    "MultiTaskTensorDataset",
    "NYUv2DataModule",
    "OxfordPetDataModule",
    "PerTaskDataModule",
    "ProceduralScenesDataModule",
    "SyntheticDataModule",
    "TaskDerivedDataset",
    "TaskSamplingLoader",
    "TorchvisionDataModule",
    "augment_batch",
    "make_mmoe_synthetic",
    "make_mnist1d",
    "make_synthetic_tasks",
    "overlay",
    "overlay_pairs",
    "render_scenes",
    "scale_crop_flip",
    "task_sampling_probabilities",
]
