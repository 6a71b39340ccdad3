"""lit_mtl: PyTorch Lightning building blocks for multi-task and transfer learning."""

from lit_mtl.data import MultiTaskTensorDataset, SyntheticDataModule
from lit_mtl.encoders import CNNEncoder, Conv1dEncoder, Encoder, MLPEncoder, TorchvisionEncoder
from lit_mtl.multitask import MultiTaskModule, unpack_batch
from lit_mtl.tasks import IGNORE_INDEX, Task, TaskSpec
from lit_mtl.weighting import EqualWeighting, StaticWeighting, UncertaintyWeighting, Weighting

__version__ = "0.1.0"

__all__ = [
    "IGNORE_INDEX",
    "CNNEncoder",
    "Conv1dEncoder",
    "Encoder",
    "EqualWeighting",
    "MLPEncoder",
    "MultiTaskModule",
    "MultiTaskTensorDataset",
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
