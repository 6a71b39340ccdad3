"""The fully connected trunk."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from lit_mtl.models.base import Encoder
from lit_mtl.models.layers import _activation


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
