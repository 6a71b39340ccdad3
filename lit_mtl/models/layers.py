"""Building blocks of the encoders and architectures: activations, MLP stacks, towers, experts
and gates, convolution blocks, MTAN's attention."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

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


def gate_dropout(weights: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Drop each expert's weight with probability ``p`` and renormalise over the kept ones
    (rows whose every weight was dropped are kept whole).

    >>> w = torch.tensor([[0.5, 0.25, 0.25]])
    >>> torch.allclose(gate_dropout(w, 0.0), w)
    True
    """
    if p <= 0:
        return weights
    keep = torch.rand(weights.shape, device=weights.device, generator=generator) >= p
    kept = weights * keep
    total = kept.sum(dim=-1, keepdim=True)
    renormalised = kept / total.clamp(min=torch.finfo(weights.dtype).tiny)
    return torch.where(total > 0, renormalised, weights)


def _mlp(in_features: int, widths: Sequence[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    prev = in_features
    for width in widths:
        layers += [nn.Linear(prev, int(width)), _activation(activation)]
        prev = int(width)
    return nn.Sequential(*layers)


class Tower(nn.Sequential):
    """A task tower: an MLP with ``widths`` hidden layers, then a linear output layer (the
    per-task networks on top of MMoE / PLE; usable as any task's head).

    >>> Tower(16, [8], 1)(torch.zeros(4, 16)).shape
    torch.Size([4, 1])
    """

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int] = (),
        out_features: int = 1,
        activation: str = "relu",
    ) -> None:
        hidden = [int(w) for w in widths]
        last = hidden[-1] if hidden else int(in_features)
        super().__init__(*_mlp(in_features, hidden, activation), nn.Linear(last, out_features))


class _Experts(nn.Module):
    """E expert MLPs of one shape; ``forward`` -> (N, E, out)."""

    def __init__(self, count: int, in_features: int, widths: Sequence[int], activation: str):
        super().__init__()
        self.out_features = int(widths[-1])
        self.experts = nn.ModuleList(_mlp(in_features, widths, activation) for _ in range(count))

    def forward(self, x: Tensor) -> Tensor:
        if not len(self.experts):
            return x.new_zeros(x.shape[0], 0, self.out_features)
        return torch.stack([expert(x) for expert in self.experts], dim=1)


class _Gate(nn.Module):
    """softmax(W x + b) over E experts, with gate dropout in training."""

    def __init__(self, in_features: int, num_experts: int, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_experts)
        self.dropout = float(dropout)

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.softmax(self.linear(x), dim=-1)  # (N, E)
        return gate_dropout(weights, self.dropout) if self.training else weights


def _mix(weights: Tensor, experts: Tensor) -> Tensor:
    """sum_e w_e f_e: (N, E) x (N, E, D) -> (N, D)."""
    return torch.einsum("ne,ned->nd", weights.to(experts.dtype), experts)


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
