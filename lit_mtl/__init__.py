"""lit_mtl: PyTorch Lightning building blocks for multi-task and transfer learning."""

from lit_mtl.data import MultiTaskTensorDataset, SyntheticDataModule
from lit_mtl.encoders import CNNEncoder, Conv1dEncoder, Encoder, MLPEncoder, TorchvisionEncoder
from lit_mtl.multitask import MultiTaskModule, unpack_batch
from lit_mtl.tasks import IGNORE_INDEX, Task, TaskSpec
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
    "Encoder",
    "EqualWeighting",
    "GradNorm",
    "GradientWeighting",
    "MLPEncoder",
    "MultiTaskModule",
    "MultiTaskTensorDataset",
    "NashMTL",
    "PCGrad",
    "StaticWeighting",
    "SyntheticDataModule",
    "Task",
    "TaskSpec",
    "TorchvisionEncoder",
    "UncertaintyWeighting",
    "Weighting",
    "__version__",
    "unpack_batch",
]
