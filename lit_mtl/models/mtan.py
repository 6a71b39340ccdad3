"""MTAN: SegNet with per-task attention modules (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from lit_mtl._modules import TypedModuleList
from lit_mtl.models.base import TaskBinding
from lit_mtl.models.layers import _attention, _check_images, _conv_bn_relu
from lit_mtl.models.segnet import SegNetEncoder


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

    Examples:
        >>> mtan = SegNetMTAN(3, (4, 4, 8, 8, 8))
        >>> mtan.bind_tasks(["seg", "depth"])
        >>> [tuple(z.shape) for z in mtan(torch.zeros(1, 3, 32, 32))]
        [(1, 4, 32, 32), (1, 4, 32, 32)]
    """

    declares_shared_parameters = True

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
        # task -> level -> attention
        self.encoder_att: TypedModuleList[nn.ModuleList] = TypedModuleList()
        self.decoder_att: TypedModuleList[nn.ModuleList] = TypedModuleList()
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
        outputs: list[Tensor] = []
        for enc_att, dec_att in zip(self.encoder_att, self.decoder_att, strict=True):
            a = enc_att[0](first[0]) * last[0]
            a = nn.functional.max_pool2d(self.encoder_block_att[0](a), 2, 2)
            for j in range(1, 5):
                attended = enc_att[j](torch.cat([first[j], a], dim=1)) * last[j]
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
        last_block = cast(nn.Sequential, self.up[0][-1])  # _conv_bn_relu: (conv, norm, relu)
        return last_block[0]

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
