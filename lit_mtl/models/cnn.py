"""Small convolutional trunks for CPU runs: images, 1-d signals, and a feature-map CNN for dense
tasks."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from lit_mtl.models.base import Encoder, _DenseEncoder
from lit_mtl.models.layers import _check_images, _conv_bn_relu


class CNNEncoder(Encoder):
    """Small 2-D CNN: [Conv3x3 -> BatchNorm -> ReLU -> MaxPool2] per stage, then global avg pool.

    Args:
        in_channels: image channels (1 for MNIST, 3 for CIFAR).
        channels: output channels per stage; the last is the representation width.

    Layer groups: ``stage0`` ... ``stage{k-1}``.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        widths = [int(c) for c in channels]
        if not widths:
            raise ValueError("CNNEncoder: channels must not be empty")
        self.in_channels = int(in_channels)
        self.out_features = widths[-1]
        stages = []
        prev = self.in_channels
        for width in widths:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(prev, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                    nn.MaxPool2d(2, ceil_mode=True),
                )
            )
            prev = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"CNNEncoder expects images (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        for stage in self.stages:
            x = stage(x)
        return x.mean(dim=(2, 3))  # (N, out_features)

    def layer_groups(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict((f"stage{i}", [s]) for i, s in enumerate(self.stages))


class Conv1dEncoder(Encoder):
    """Small 1-D CNN for sequences such as MNIST-1D: [Conv1d(k=5) -> BN -> ReLU] per stage,
    stride 2 after the first, then global average pooling.

    Args:
        in_channels: input channels; a (N, L) input is treated as one channel.
        channels: output channels per stage.

    Layer groups: ``stage0`` ... ``stage{k-1}``.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64, 64)) -> None:
        super().__init__()
        widths = [int(c) for c in channels]
        if not widths:
            raise ValueError("Conv1dEncoder: channels must not be empty")
        self.in_channels = int(in_channels)
        self.out_features = widths[-1]
        stages = []
        prev = self.in_channels
        for i, width in enumerate(widths):
            stages.append(
                nn.Sequential(
                    nn.Conv1d(prev, width, 5, stride=1 if i == 0 else 2, padding=2, bias=False),
                    nn.BatchNorm1d(width),
                    nn.ReLU(),
                )
            )
            prev = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)  # (N, 1, L)
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Conv1dEncoder expects (N, {self.in_channels}, L) or (N, L), got {tuple(x.shape)}"
            )
        for stage in self.stages:
            x = stage(x)
        return x.mean(dim=2)  # (N, out_features)

    def layer_groups(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict((f"stage{i}", [s]) for i, s in enumerate(self.stages))


class DenseCNNEncoder(_DenseEncoder):
    """Small CNN keeping a feature map: per stage, [3 x 3 conv -> BatchNorm -> ReLU] twice, with
    a 2 x 2 max-pool between stages; the last stage uses dilation 2 to widen its view.

    Args:
        in_channels: image channels.
        channels: widths of the stages; the map has ``channels[-1]`` channels at 1 / 2^(k-1)
            of the input's resolution (k stages).

    Layer groups: ``stage0`` ... ``stage{k-1}``.

    >>> import torch
    >>> DenseCNNEncoder(3, (8, 16))(torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 16, 8, 8])
    """

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (16, 32, 32)) -> None:
        super().__init__()
        widths = [int(c) for c in channels]
        if not widths:
            raise ValueError("DenseCNNEncoder: channels must not be empty")
        self.in_channels = int(in_channels)
        self.out_features = widths[-1]
        stages = []
        prev = self.in_channels
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            layers: list[nn.Module] = [] if i == 0 else [nn.MaxPool2d(2)]
            layers += [_conv_bn_relu(prev, width), _conv_bn_relu(width, width, 2 if last else 1)]
            stages.append(nn.Sequential(*layers))
            prev = width
        self.stages = nn.ModuleList(stages)
        self.downsampling = 2 ** (len(widths) - 1)

    def forward(self, x: Tensor) -> Tensor:
        _check_images("DenseCNNEncoder", x, self.in_channels, self.downsampling)
        for stage in self.stages:
            x = stage(x)
        return x  # (N, C, H / 2^(k-1), W / 2^(k-1))

    def layer_groups(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict((f"stage{i}", [s]) for i, s in enumerate(self.stages))
