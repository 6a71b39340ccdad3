"""The default task heads: a pooled linear layer for vector tasks, MTAN's head for dense ones."""

from __future__ import annotations

from torch import Tensor, nn


class PooledLinear(nn.Linear):
    """``nn.Linear`` that first averages a feature map over its trailing (spatial) dimensions:
    ``(N, C, ...) -> (N, C) -> (N, out)``; a vector ``(N, C)`` goes straight through. The
    default head of a vector task, so image-level tasks can share a dense encoder."""

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() > 2:
            z = z.flatten(2).mean(dim=2)  # (N, C)
        return super().forward(z)


class DenseHead(nn.Sequential):
    """The MTAN / Nash-MTL task head: a 3 x 3 convolution keeping the width, then a 1 x 1
    convolution to the task's channels (no activation between, as their ``conv_layer(pred=True)``).

    >>> import torch
    >>> DenseHead(8, 13)(torch.zeros(2, 8, 4, 5)).shape
    torch.Size([2, 13, 4, 5])
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1),
            nn.Conv2d(in_channels, out_channels, 1),
        )
