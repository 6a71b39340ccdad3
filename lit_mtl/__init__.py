"""lit_mtl: PyTorch Lightning building blocks for multi-task and transfer learning."""

from lit_mtl.data import (
    DigitsDataModule,
    DigitsOverlayDataModule,
    MNIST1DDataModule,
    MultiMNISTDataModule,
    MultiTaskTensorDataset,
    SyntheticDataModule,
    TorchvisionDataModule,
)
from lit_mtl.encoders import CNNEncoder, Conv1dEncoder, Encoder, MLPEncoder, TorchvisionEncoder
from lit_mtl.multitask import MultiTaskModule, unpack_batch
from lit_mtl.tasks import IGNORE_INDEX, Task, TaskSpec
from lit_mtl.transfer import (
    TransferModule,
    UnfreezeSchedule,
    UnfreezeScheduleCallback,
    load_source_into,
)
from lit_mtl.weighting import (
    DWA,
    FAMO,
    IMTLG,
    MGDA,
    MGDAUB,
    RLW,
    AlignedMTL,
    CAGrad,
    EqualWeighting,
    GradientWeighting,
    GradNorm,
    NashMTL,
    PCGrad,
    StaticWeighting,
    UncertaintyWeighting,
    Weighting,
    task_views,
)

__version__ = "0.1.0"

__all__ = [
    "DWA",
    "FAMO",
    "IGNORE_INDEX",
    "IMTLG",
    "MGDA",
    "MGDAUB",
    "RLW",
    "AlignedMTL",
    "CAGrad",
    "CNNEncoder",
    "Conv1dEncoder",
    "DigitsDataModule",
    "DigitsOverlayDataModule",
    "Encoder",
    "EqualWeighting",
    "GradNorm",
    "GradientWeighting",
    "MLPEncoder",
    "MNIST1DDataModule",
    "MultiMNISTDataModule",
    "MultiTaskModule",
    "MultiTaskTensorDataset",
    "NashMTL",
    "PCGrad",
    "StaticWeighting",
    "SyntheticDataModule",
    "Task",
    "TaskSpec",
    "TorchvisionDataModule",
    "TorchvisionEncoder",
    "TransferModule",
    "UncertaintyWeighting",
    "UnfreezeSchedule",
    "UnfreezeScheduleCallback",
    "Weighting",
    "__version__",
    "load_source_into",
    "task_views",
    "unpack_batch",
]
