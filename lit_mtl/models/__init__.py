"""What produces the representation z: the :class:`Encoder` contract (:mod:`lit_mtl.models.base`),
the trunks (MLP, CNNs, torchvision and timm backbones, SegNet) and the multi-task architectures
(MMoE / OMoE / PLE / CGC, Cross-stitch, MTAN), with their building blocks in
:mod:`lit_mtl.models.layers`."""

from lit_mtl.models.base import Encoder, TaskBinding, encoder_hooks
from lit_mtl.models.cnn import CNNEncoder, Conv1dEncoder, DenseCNNEncoder
from lit_mtl.models.cross_stitch import CrossStitch
from lit_mtl.models.layers import Tower, gate_dropout
from lit_mtl.models.mlp import MLPEncoder
from lit_mtl.models.moe import CGC, PLE, MMoE, OMoE
from lit_mtl.models.mtan import SegNetMTAN
from lit_mtl.models.segnet import SegNetEncoder
from lit_mtl.models.timm import LooseParameters, TimmEncoder, timm_layer_ids
from lit_mtl.models.torchvision import DilatedResNetEncoder, TorchvisionEncoder

__all__ = [
    "CGC",
    "PLE",
    "CNNEncoder",
    "Conv1dEncoder",
    "CrossStitch",
    "DenseCNNEncoder",
    "DilatedResNetEncoder",
    "Encoder",
    "LooseParameters",
    "MLPEncoder",
    "MMoE",
    "OMoE",
    "SegNetEncoder",
    "SegNetMTAN",
    "TaskBinding",
    "TimmEncoder",
    "TorchvisionEncoder",
    "Tower",
    "encoder_hooks",
    "gate_dropout",
    "timm_layer_ids",
]
