"""SegNet, and the encoders that keep a feature map, for dense tasks (segmentation, depth, normals).

Each returns ``(N, out_features, h, w)`` and builds the decoder head of a task with
``make_head(spec)`` (used by :class:`~lit_mtl.MultiTaskModule` where no head is given); image-level
tasks on the same encoder get a pooled linear head. Predictions are resized to the target's size
by the task, so an encoder may keep a lower resolution than its input.

* :class:`SegNetEncoder`: the SegNet encoder-decoder of the MTAN / CAGrad / Nash-MTL / FAMO
  NYUv2 and CityScapes experiments (VGG-style, 5 levels, max-unpooling), full resolution, with the
  MTAN task head (3 x 3 then 1 x 1 convolution).
* :class:`DilatedResNetEncoder`: a torchvision ResNet with its last strides replaced by dilation
  (output stride 8), with DeepLab-v3 ASPP heads (LibMTL's NYUv2 / CityScapes set-up).
* :class:`DenseCNNEncoder`: a small CNN for CPU runs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from lit_mtl._modules import TypedModuleList
from lit_mtl.models.base import _DenseEncoder
from lit_mtl.models.layers import _check_images, _conv_bn_relu


class SegNetEncoder(_DenseEncoder):
    """SegNet as the MTAN code builds it for NYUv2 / CityScapes (Liu et al., CVPR 2019; reused by
    CAGrad, Nash-MTL and FAMO): 5 encoder levels of 3 x 3 conv-BN-ReLU layers (2, 2, 3, 3, 3 per
    level) each followed by a 2 x 2 max-pool whose indices drive the matching max-unpooling of a
    mirrored decoder; the shared representation is the decoder's last map, ``filters[0]``
    channels at the input's resolution.

    Args:
        in_channels: image channels.
        filters: widths of the 5 levels (the papers: 64, 128, 256, 512, 512; smaller for tests).

    Inputs must have sides divisible by 32. Layer groups: ``encoder`` then ``decoder``.

    >>> import torch
    >>> SegNetEncoder(3, (4, 4, 8, 8, 8))(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 4, 32, 32])
    """

    def __init__(
        self, in_channels: int = 3, filters: Sequence[int] = (64, 128, 256, 512, 512)
    ) -> None:
        super().__init__()
        f = [int(c) for c in filters]
        if len(f) != 5:
            raise ValueError(f"SegNetEncoder: filters must have 5 widths, got {list(filters)}")
        self.in_channels = int(in_channels)
        self.out_features = f[0]
        depth = (2, 2, 3, 3, 3)  # conv layers per level (the first one changes the width)
        ins = [self.in_channels, *f[:-1]]
        self.down: TypedModuleList[nn.Sequential] = TypedModuleList(
            nn.Sequential(
                _conv_bn_relu(ins[i], f[i]),
                *[_conv_bn_relu(f[i], f[i]) for _ in range(depth[i] - 1)],
            )
            for i in range(5)
        )
        # decoder level i (deepest first) maps f[i] -> f[i - 1] (f[0] -> f[0] at the top)
        outs = [f[0], *f[:-1]]
        self.up: TypedModuleList[nn.Sequential] = TypedModuleList(
            nn.Sequential(
                _conv_bn_relu(f[i], outs[i]),
                *[_conv_bn_relu(outs[i], outs[i]) for _ in range(depth[i] - 1)],
            )
            for i in range(5)
        )
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        _check_images("SegNetEncoder", x, self.in_channels, 32)
        indices = []
        for level in self.down:
            x, where = self.pool(level(x))
            indices.append(where)
        for level, where in zip(reversed(self.up), reversed(indices), strict=True):
            x = level(self.unpool(x, where))
        return x  # (N, filters[0], H, W)

    def layer_groups(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict([("encoder", [self.down]), ("decoder", [self.up])])
