"""DataModules: every one knows its task specs right after ``__init__``."""

from lit_mtl.data.celeba import CELEBA_ATTRIBUTES, CELEBA_FILES, CelebADataModule
from lit_mtl.data.click_conversion import ClickConversionDataModule
from lit_mtl.data.dense import (
    CityScapesDataModule,
    DenseDataModule,
    NpySceneFolder,
    NYUv2DataModule,
)
from lit_mtl.data.dense_augment import augment_batch, scale_crop_flip
from lit_mtl.data.labelled import DIGIT_TASKS, DerivedTask, LabelledDataModule, TaskDerivedDataset
from lit_mtl.data.loaders import EpochSeededSampler, ResumableDataLoader, SplitDataModule
from lit_mtl.data.mmoe_synthetic import (
    GOOGLE_RESEARCH_CONSTANTS,
    MMoESyntheticDataModule,
    make_mmoe_synthetic,
    mmoe_functions,
)
from lit_mtl.data.molecules import (
    MOLECULENET_FILES,
    SPLITS,
    MoleculeNetDataModule,
    MoleculeTable,
    balancing_weights,
    column_task_names,
    morgan_fingerprints,
    read_smiles_table,
    scaffold_sets,
    split_indices,
)
from lit_mtl.data.offline import (
    DigitsDataModule,
    DigitsOverlayDataModule,
    MNIST1DDataModule,
    make_mnist1d,
)
from lit_mtl.data.overlay import overlay, overlay_pairs
from lit_mtl.data.per_task import (
    DIGIT_DOMAINS,
    DigitsDomainsDataModule,
    PerTaskDataModule,
    digit_domain,
)
from lit_mtl.data.pet import OxfordPetDataModule
from lit_mtl.data.scenes import SCENE_CLASSES, ProceduralScenesDataModule, render_scenes
from lit_mtl.data.synthetic import (
    MultiTaskTensorDataset,
    SyntheticDataModule,
    make_synthetic_tasks,
)
from lit_mtl.data.task_loaders import (
    COMBINE_MODES,
    SAMPLING_MODES,
    CombineMode,
    TaskBatchCollate,
    TaskSamplingLoader,
    task_sampling_probabilities,
)
from lit_mtl.data.vision import VISION_TASKS, MultiMNISTDataModule, TorchvisionDataModule

__all__ = [
    "CELEBA_ATTRIBUTES",
    "CELEBA_FILES",
    "COMBINE_MODES",
    "DIGIT_DOMAINS",
    "DIGIT_TASKS",
    "GOOGLE_RESEARCH_CONSTANTS",
    "MOLECULENET_FILES",
    "SAMPLING_MODES",
    "SCENE_CLASSES",
    "SPLITS",
    "VISION_TASKS",
    "CelebADataModule",
    "CityScapesDataModule",
    "ClickConversionDataModule",
    "CombineMode",
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
    "MoleculeTable",
    "MultiMNISTDataModule",
    "MultiTaskTensorDataset",
    "NYUv2DataModule",
    "NpySceneFolder",
    "OxfordPetDataModule",
    "PerTaskDataModule",
    "ProceduralScenesDataModule",
    "ResumableDataLoader",
    "SplitDataModule",
    "SyntheticDataModule",
    "TaskBatchCollate",
    "TaskDerivedDataset",
    "TaskSamplingLoader",
    "TorchvisionDataModule",
    "augment_batch",
    "balancing_weights",
    "column_task_names",
    "digit_domain",
    "make_mmoe_synthetic",
    "make_mnist1d",
    "make_synthetic_tasks",
    "mmoe_functions",
    "morgan_fingerprints",
    "overlay",
    "overlay_pairs",
    "read_smiles_table",
    "render_scenes",
    "scaffold_sets",
    "scale_crop_flip",
    "split_indices",
    "task_sampling_probabilities",
]
