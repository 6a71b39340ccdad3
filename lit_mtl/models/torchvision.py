"""torchvision backbones as encoders: pooled (TorchvisionEncoder) or dilated to output stride 8
with ASPP heads for dense tasks (DilatedResNetEncoder)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from lit_mtl._optional import require
from lit_mtl.models.base import Encoder, _DenseEncoder
from lit_mtl.models.layers import _check_images
from lit_mtl.tasks import PooledLinear, TaskSpec

_CLASSIFIER_ATTRS = ("fc", "classifier", "head", "heads")


class TorchvisionEncoder(Encoder):
    """A torchvision backbone by name, built with ``weights=None``, its classifier removed.

    Args:
        name: a torchvision model name (``torchvision.models.list_models()``), e.g. ``resnet18``.
        in_channels: if not 3, the first convolution is replaced to read this many channels
            (ResNet family only).
        **kwargs: passed to ``torchvision.models.get_model``.

    Pretrained weights are never downloaded here: load a saved ``state_dict`` with the transfer
    loader instead. Layer groups for ResNets: ``stem`` (conv1, bn1), ``layer1`` ... ``layer4``;
    other models: one group per top-level child.
    """

    def __init__(self, name: str = "resnet18", in_channels: int = 3, **kwargs: object) -> None:
        super().__init__()
        torchvision = require("torchvision", "vision", "TorchvisionEncoder")
        available = set(torchvision.models.list_models())
        if name not in available:
            raise ValueError(
                f"TorchvisionEncoder: unknown model {name!r}; see torchvision.models.list_models()"
            )
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        self.name = name
        self.out_features, self._classifier = self._strip_classifier(model)
        if in_channels != 3:
            if not hasattr(model, "conv1"):
                raise ValueError(f"in_channels={in_channels} is supported for ResNets only")
            old = model.conv1
            model.conv1 = nn.Conv2d(
                in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
            )
        self.in_channels = int(in_channels)
        self.model = model

    @staticmethod
    def _strip_classifier(model: nn.Module) -> tuple[int, str]:
        """Replace the classifier by an identity: (its input width, its attribute name)."""
        for attr in _CLASSIFIER_ATTRS:
            head = getattr(model, attr, None)
            if head is None:
                continue
            if isinstance(head, nn.Linear):
                setattr(model, attr, nn.Identity())
                return head.in_features, attr
            if isinstance(head, nn.Sequential):
                linears = [m for m in head if isinstance(m, nn.Linear)]
                if linears:
                    width = linears[0].in_features
                    setattr(model, attr, nn.Identity())
                    return width, attr
        raise ValueError(f"cannot find the classifier of {type(model).__name__} to remove")

    def replaced_source_keys(self) -> list[str]:
        """The removed classifier, in this encoder's key names (``model.fc.`` for a ResNet): a
        source state_dict of the full torchvision model loads without listing it in ``skip``
        (:func:`~lit_mtl.transfer.load_source_into`)."""
        return [f"model.{self._classifier}."]

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.model(x), 1)  # (N, out_features)

    def layer_groups(self) -> OrderedDict[str, list[nn.Module]]:
        m = self.model
        if all(hasattr(m, a) for a in ("conv1", "bn1", "layer1", "layer4")):
            return OrderedDict(
                [("stem", [m.conv1, m.bn1])]
                + [(f"layer{i}", [getattr(m, f"layer{i}")]) for i in range(1, 5)]
            )
        return OrderedDict(
            (name, [child])
            for name, child in m.named_children()
            if any(True for _ in child.parameters())
        )


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
