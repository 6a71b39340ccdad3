"""Cross-stitch networks (Misra et al., CVPR 2016)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lit_mtl._modules import TypedModuleList
from lit_mtl.models.base import _PerTaskEncoder
from lit_mtl.models.layers import _activation


class CrossStitch(_PerTaskEncoder):
    """Cross-stitch networks (Misra et al., CVPR 2016): one MLP per task (``widths``), and after
    each layer l a cross-stitch unit mixing the T tasks' activations,
    x~_i = sum_j alpha^l_ij x_j, with alpha^l a learned T x T matrix initialised to
    ``alpha_same`` on the diagonal and (1 - alpha_same) / (T - 1) elsewhere (the paper's
    (alpha_S, alpha_D) = (0.9, 0.1) for two tasks).

    Args:
        in_features: input width.
        widths: the layers of each task's network; the last is the representation width.
        alpha_same: the initial weight of a task's own activations.
        tower_widths: as :class:`MMoE`.
        activation: as :class:`MMoE`.

    Nothing is hard-shared: through the stitches every task's loss reaches every network, so
    ``shared_parameters()`` (``target="shared"``) is every parameter, and there is no last
    shared layer (GradNorm's default W): an error that says so.

    Examples:
        >>> net = CrossStitch(4, widths=[8, 8])
        >>> net.bind_tasks(["a", "b"])
        >>> [tuple(z.shape) for z in net(torch.zeros(3, 4))]
        [(3, 8), (3, 8)]
        >>> torch.allclose(net.stitches[0], torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
        True
    """

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int] = (32, 16),
        alpha_same: float = 0.9,
        tower_widths: Sequence[int] = (),
        activation: str = "relu",
    ) -> None:
        super().__init__(in_features, widths, activation, tower_widths)
        if not 0.0 <= alpha_same <= 1.0:
            raise ValueError(f"CrossStitch: alpha_same must be in [0, 1], got {alpha_same}")
        self.alpha_same = float(alpha_same)
        self.networks: TypedModuleList[nn.ModuleList] = TypedModuleList()  # task -> layers
        self.stitches = nn.ParameterList()  # layer -> (T, T)

    def _build_tasks(self, num_tasks: int) -> None:
        for _ in range(num_tasks):
            layers, prev = [], self.in_features
            for width in self.expert_widths:
                layers.append(nn.Sequential(nn.Linear(prev, width), _activation(self.activation)))
                prev = width
            self.networks.append(nn.ModuleList(layers))
        other = (1.0 - self.alpha_same) / max(1, num_tasks - 1)
        for _ in self.expert_widths:
            alpha = torch.full((num_tasks, num_tasks), other)
            alpha.fill_diagonal_(self.alpha_same if num_tasks > 1 else 1.0)
            self.stitches.append(nn.Parameter(alpha))

    def forward(self, x: Tensor) -> list[Tensor]:
        self._require_bound()
        self._check_input(x)
        activations = [x] * len(self.networks)
        for layer, alpha in enumerate(self.stitches):
            outs = torch.stack(
                [net[layer](a) for net, a in zip(self.networks, activations, strict=True)]
            )  # (T, N, D)
            mixed = torch.einsum("ij,jnd->ind", alpha.to(outs.dtype), outs)
            activations = list(mixed.unbind(0))
        return activations

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def last_shared_layer(self) -> nn.Module:
        raise ValueError(
            "CrossStitch has no shared layer (one network per task, mixed by cross-stitch "
            "units): use GradNorm(target='representation') or target='shared'"
        )

    def layer_groups(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict([("networks", [self.networks]), ("stitches", [self.stitches])])
