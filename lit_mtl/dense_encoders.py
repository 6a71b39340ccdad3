"""Encoders that keep a feature map, for dense tasks (segmentation, depth, normals).

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
from pathlib import Path

import torch
from torch import Tensor, nn

from lit_mtl._optional import require
from lit_mtl.architectures import TaskBinding
from lit_mtl.encoders import Encoder
from lit_mtl.tasks import DenseHead, PooledLinear, TaskSpec

__all__ = ["DenseCNNEncoder", "DilatedResNetEncoder", "SegNetEncoder", "SegNetMTAN"]


def _conv_bn_relu(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _check_images(name: str, x: Tensor, in_channels: int, multiple: int = 1) -> None:
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"{name} expects images (N, {in_channels}, H, W), got {tuple(x.shape)}")
    if x.shape[-2] % multiple or x.shape[-1] % multiple:
        raise ValueError(
            f"{name}: image size {tuple(x.shape[-2:])} must be divisible by {multiple}"
        )


class _DenseEncoder(Encoder):
    """Shared part: the default heads (decoder for dense tasks, pooled linear otherwise)."""

    def make_head(self, spec: TaskSpec) -> nn.Module:
        if spec.dense:
            return DenseHead(self.out_features, spec.num_outputs)
        return PooledLinear(self.out_features, spec.num_outputs)


class DenseCNNEncoder(_DenseEncoder):
    """Small CNN keeping a feature map: per stage, [3 x 3 conv -> BatchNorm -> ReLU] twice, with
    a 2 x 2 max-pool between stages; the last stage uses dilation 2 to widen its view.

    Args:
        in_channels: image channels.
        channels: widths of the stages; the map has ``channels[-1]`` channels at 1 / 2^(k-1)
            of the input's resolution (k stages).

    Layer groups: ``stage0`` ... ``stage{k-1}``.

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
        self.down = nn.ModuleList(
            nn.Sequential(
                _conv_bn_relu(ins[i], f[i]),
                *[_conv_bn_relu(f[i], f[i]) for _ in range(depth[i] - 1)],
            )
            for i in range(5)
        )
        # decoder level i (deepest first) maps f[i] -> f[i - 1] (f[0] -> f[0] at the top)
        outs = [f[0], *f[:-1]]
        self.up = nn.ModuleList(
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


class DilatedResNetEncoder(_DenseEncoder):
    """A torchvision ResNet whose last two stages use dilation instead of stride
    (``replace_stride_with_dilation=[False, True, True]``: output stride 8), as the DeepLab-v3
    encoder LibMTL uses for NYUv2 and CityScapes; tasks get torchvision's DeepLab-v3 head (ASPP
    at rates 12, 24, 36, then 3 x 3 conv-BN-ReLU and a 1 x 1 classifier).

    Args:
        arch: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` or ``resnet152``.
        in_channels: image channels (3 unless the stem is replaced).
        weights_path: optional local file with a torchvision ResNet ``state_dict`` (e.g. the
            ImageNet weights, saved beforehand); nothing is downloaded. The ``fc`` entries are
            ignored; any other missing or unexpected key is an error naming the file.

    Layer groups: ``stem``, ``layer1`` ... ``layer4``.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        in_channels: int = 3,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        torchvision = require("torchvision", "vision", "DilatedResNetEncoder")
        archs = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
        if arch not in archs:
            raise ValueError(f"DilatedResNetEncoder: arch must be one of {archs}, got {arch!r}")
        basic = arch in ("resnet18", "resnet34")
        # torchvision's BasicBlock refuses dilation; its stages are dilated by hand below
        model = torchvision.models.get_model(
            arch, weights=None, replace_stride_with_dilation=None if basic else [False, True, True]
        )
        if basic:
            for name, rate in (("layer3", 2), ("layer4", 4)):
                for module in getattr(model, name).modules():
                    if isinstance(module, nn.Conv2d):
                        if module.stride == (2, 2):
                            module.stride = (1, 1)
                        if module.kernel_size == (3, 3):
                            module.dilation, module.padding = (rate, rate), (rate, rate)
        if weights_path is not None:
            self._load_weights(model, Path(weights_path))
        if in_channels != 3:
            old = model.conv1
            model.conv1 = nn.Conv2d(in_channels, old.out_channels, 7, 2, 3, bias=False)
        self.in_channels = int(in_channels)
        self.out_features = model.fc.in_features
        model.fc = nn.Identity()
        model.avgpool = nn.Identity()
        self.model = model

    @staticmethod
    def _load_weights(model: nn.Module, path: Path) -> None:
        from lit_mtl.checkpoints import read_checkpoint

        state = read_checkpoint(path, "ResNet weights")
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("fc.")]
        if missing or result.unexpected_keys:
            raise KeyError(
                f"ResNet weights {path}: missing keys {missing[:5]}, unexpected keys "
                f"{result.unexpected_keys[:5]} (expected a torchvision ResNet state_dict)"
            )

    def forward(self, x: Tensor) -> Tensor:
        _check_images("DilatedResNetEncoder", x, self.in_channels, 8)
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return x  # (N, C, H / 8, W / 8)

    def make_head(self, spec: TaskSpec) -> nn.Module:
        if not spec.dense:
            return PooledLinear(self.out_features, spec.num_outputs)
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead

        return DeepLabHead(self.out_features, spec.num_outputs)

    def layer_groups(self) -> OrderedDict[str, list[nn.Module]]:
        m = self.model
        return OrderedDict(
            [("stem", [m.conv1, m.bn1])]
            + [(f"layer{i}", [getattr(m, f"layer{i}")]) for i in range(1, 5)]
        )


def _attention(in_channels: int, mid: int, out: int) -> nn.Sequential:
    """MTAN's attention module: 1 x 1 conv-BN-ReLU, 1 x 1 conv-BN, sigmoid (a soft mask)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 1),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, out, 1),
        nn.BatchNorm2d(out),
        nn.Sigmoid(),
    )


class SegNetMTAN(TaskBinding, SegNetEncoder):
    """SegNet-MTAN (Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR
    2019), the architecture of the MTAN / CAGrad / Nash-MTL / FAMO NYUv2 and CityScapes tables:
    the shared SegNet (:class:`SegNetEncoder`) plus, for each task, its own soft-attention
    modules at every encoder and decoder level. At level j task t's mask
    a = sigmoid(att_t,j([shared features after the level's first layer, task t's attended
    features from the previous level])) selects from the level's shared output; a shared 3 x 3
    conv block carries the attended features to the next level (max-pool down, bilinear x2 up).
    Each task reads its own attended map, ``filters[0]`` channels at full resolution.

    Shared parameters (``target="shared"``): the SegNet and the shared conv blocks of the
    attention path; each task's attention modules are its own.

    >>> mtan = SegNetMTAN(3, (4, 4, 8, 8, 8))
    >>> mtan.bind_tasks(["seg", "depth"])
    >>> [tuple(z.shape) for z in mtan(torch.zeros(1, 3, 32, 32))]
    [(1, 4, 32, 32), (1, 4, 32, 32)]
    """

    per_task_outputs = True

    def __init__(
        self, in_channels: int = 3, filters: Sequence[int] = (64, 128, 256, 512, 512)
    ) -> None:
        super().__init__(in_channels, filters)
        f = [int(c) for c in filters]
        self.filters = f
        # shared conv blocks of the attention path (one instance for all tasks, as in MTAN)
        self.encoder_block_att = nn.ModuleList(
            _conv_bn_relu(f[i], f[min(i + 1, 4)]) for i in range(5)
        )
        self.decoder_block_att = nn.ModuleList(
            [_conv_bn_relu(f[0], f[0])] + [_conv_bn_relu(f[k], f[k - 1]) for k in range(1, 5)]
        )
        self.encoder_att = nn.ModuleList()  # task -> level -> attention
        self.decoder_att = nn.ModuleList()
        self.task_names: list[str] = []

    def _build_tasks(self, num_tasks: int) -> None:
        """Each task's own attention modules."""
        f = self.filters
        for _ in range(num_tasks):
            self.encoder_att.append(
                nn.ModuleList(
                    [_attention(f[0], f[0], f[0])]
                    + [_attention(2 * f[j], f[j], f[j]) for j in range(1, 5)]
                )
            )
            self.decoder_att.append(
                nn.ModuleList(
                    [_attention(2 * f[0], f[0], f[0])]
                    + [_attention(f[k] + f[k - 1], f[k - 1], f[k - 1]) for k in range(1, 5)]
                )
            )

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        self._require_bound()
        _check_images("SegNetMTAN", x, self.in_channels, 32)
        # the shared SegNet, keeping each level's first-layer output and its full output
        first, last, indices = [], [], []
        for level in self.down:
            head = level[0](x)
            out = level[1:](head) if len(level) > 1 else head
            first.append(head)
            last.append(out)
            x, where = self.pool(out)
            indices.append(where)
        upsampled, decoded = [], []
        for level, where in zip(reversed(self.up), reversed(indices), strict=True):
            up = self.unpool(x, where)
            x = level(up)
            upsampled.append(up)
            decoded.append(x)
        outputs = []
        for enc_att, dec_att in zip(self.encoder_att, self.decoder_att, strict=True):
            a = None
            for j in range(5):
                context = first[j] if a is None else torch.cat([first[j], a], dim=1)
                attended = enc_att[j](context) * last[j]
                a = nn.functional.max_pool2d(self.encoder_block_att[j](attended), 2, 2)
            for j in range(5):  # decoder levels, deepest first
                k = 4 - j
                a = nn.functional.interpolate(
                    a, scale_factor=2, mode="bilinear", align_corners=True
                )
                a = self.decoder_block_att[k](a)
                a = dec_att[k](torch.cat([upsampled[j], a], dim=1)) * decoded[j]
            outputs.append(a)  # (N, filters[0], H, W)
        return outputs

    def last_shared_layer(self) -> nn.Module:
        """The SegNet decoder's last convolution: every task's attended output is a mask times
        its output (GradNorm's W; the last module with a weight is a task's attention)."""
        return self.up[0][-1][0]

    def shared_parameters(self) -> list[nn.Parameter]:
        modules = [self.down, self.up, self.encoder_block_att, self.decoder_block_att]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    def layer_groups(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict(
            [
                ("encoder", [self.down]),
                ("decoder", [self.up]),
                (
                    "attention",
                    [
                        self.encoder_block_att,
                        self.decoder_block_att,
                        self.encoder_att,
                        self.decoder_att,
                    ],
                ),
            ]
        )
