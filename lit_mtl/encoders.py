"""Shared encoders. Each knows its output width and its ordered layer groups (input side first).

``layer_groups()`` returns an ordered mapping ``group name -> list of submodules`` used by transfer
learning (freezing, gradual unfreezing, discriminative learning rates). ``last_shared_layer()``
returns the last module holding weights (GradNorm's default W).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lit_mtl._optional import require

__all__ = ["CNNEncoder", "Conv1dEncoder", "Encoder", "MLPEncoder", "TorchvisionEncoder"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}"
        ) from None


class Encoder(nn.Module):
    """Base class: a shared trunk mapping inputs to a (N, out_features) representation."""

    out_features: int

    def layer_groups(self) -> OrderedDict[str, list[nn.Module]]:
        """Ordered layer groups, input side first. Default: one group per top-level child."""
        return OrderedDict((name, [child]) for name, child in self.named_children())

    def last_shared_layer(self) -> nn.Module:
        """The last submodule with a weight parameter (GradNorm's default W)."""
        last: nn.Module | None = None
        for module in self.modules():
            if isinstance(getattr(module, "weight", None), nn.Parameter) and not isinstance(
                module, nn.modules.batchnorm._NormBase | nn.LayerNorm
            ):
                last = module
        if last is None:
            raise ValueError(f"{type(self).__name__} has no layer with a weight")
        return last


class MLPEncoder(Encoder):
    """Fully connected trunk: [Linear -> (BatchNorm) -> activation -> (Dropout)] per hidden layer.

    Args:
        in_features: input width (inputs are flattened from dim 1).
        hidden: widths of the hidden layers; the last is the representation width.
        activation: one of relu, gelu, tanh, silu, leaky_relu.
        dropout: dropout probability after each block (0 = none).
        batch_norm: add BatchNorm1d after each Linear.
        weight_init_std: initialise the Linear weights from a normal distribution of this
            standard deviation truncated at two of them (TensorFlow's ``truncated_normal``, as
            DeepChem's 2017 networks); default: PyTorch's initialisation.
        bias_init: initialise the Linear biases to this constant (DeepChem: 1.0); default:
            PyTorch's initialisation.

    Layer groups: one per block, ``block0`` (input side) ... ``block{k-1}``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        weight_init_std: float | None = None,
        bias_init: float | None = None,
    ) -> None:
        super().__init__()
        if int(in_features) < 1:
            raise ValueError(f"MLPEncoder: in_features must be >= 1, got {in_features}")
        if weight_init_std is not None and not weight_init_std > 0:
            raise ValueError(f"MLPEncoder: weight_init_std must be > 0, got {weight_init_std}")
        widths = [int(h) for h in hidden]
        if not widths or any(h < 1 for h in widths):
            raise ValueError(f"MLPEncoder: hidden must be a non-empty list of widths, got {hidden}")
        self.in_features = int(in_features)
        self.out_features = widths[-1]
        blocks = []
        prev = self.in_features
        for width in widths:
            linear = nn.Linear(prev, width)
            if weight_init_std is not None:
                std = float(weight_init_std)
                nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
            if bias_init is not None:
                nn.init.constant_(linear.bias, float(bias_init))
            layers: list[nn.Module] = [linear]
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            prev = width
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        z = x.flatten(1)  # (N, in_features)
        if z.shape[1] != self.in_features:
            raise ValueError(
                f"MLPEncoder expects {self.in_features} input features, got a batch of shape "
                f"{tuple(x.shape)} ({z.shape[1]} features)"
            )
        for block in self.blocks:
            z = block(z)
        return z  # (N, out_features)

    def layer_groups(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict((f"block{i}", [b]) for i, b in enumerate(self.blocks))


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
