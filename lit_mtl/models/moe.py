"""Mixture-of-experts encoders in which each task reads its own representation.

Each builds its per-task parts in ``bind_tasks(names)`` and returns one representation per task
(OMoE: one shared z); ``shared_parameters()`` are the parameters every task's loss reaches (the
shared experts, and the gates several tasks read); ``gate_weights()`` the last forward's gates
(the encoder contract: :mod:`lit_mtl.models.base`).

Gradient methods with ``target="representation"`` differentiate each task's loss w.r.t. its own
z_i (one backward for all T); with ``target="shared"`` w.r.t. ``shared_parameters()``.

* :class:`MMoE` (Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
  Mixture-of-Experts", KDD 2018): shared experts f_e, one softmax gate per task,
  z_k = sum_e g_k(x)_e f_e(x).
* :class:`OMoE`: the same experts with one gate for all tasks (one shared z).
* :class:`PLE` (Tang et al., "Progressive Layered Extraction", RecSys 2020): per level, task
  experts and shared experts; task k's gate mixes its own and the shared experts, a shared gate
  mixes all of them into the next level's shared input; ``levels=1`` is CGC (:class:`CGC`).
* :class:`CrossStitch` (Misra et al., "Cross-stitch Networks for Multi-task Learning", CVPR
  2016): one network per task, their activations linearly mixed after every layer by learned
  T x T cross-stitch units (:mod:`lit_mtl.models.cross_stitch`).

Gate dropout (Zhao et al., "Recommending What Video to Watch Next", RecSys 2019, against gate
polarisation): in training each expert's gate weight is dropped with probability
``gate_dropout`` and the rest renormalised; a sample whose every expert was dropped keeps its
undropped weights.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lit_mtl._modules import TypedModuleList
from lit_mtl.models.base import _PerTaskEncoder
from lit_mtl.models.layers import _Experts, _Gate, _mix


class _GatedEncoder(_PerTaskEncoder):
    """A mixture of experts: per task, the gate weights of the last forward and the experts'
    names, which the expert-use diagnostics read."""

    gated = True

    def __init__(
        self,
        in_features: int,
        expert_widths: Sequence[int],
        activation: str,
        tower_widths: Sequence[int] = (),
    ) -> None:
        super().__init__(in_features, expert_widths, activation, tower_widths)
        self.last_gate_weights: list[Tensor] = []

    def gate_weights(self) -> list[Tensor]:
        return self.last_gate_weights

    def expert_labels(self, task: int) -> list[str]:
        """Names of the experts task ``task``'s gate weighs, in the gate's order."""
        return [f"expert{e}" for e in range(self.last_gate_weights[task].shape[1])]


class MMoE(_GatedEncoder):
    """Multi-gate mixture-of-experts (Ma et al., KDD 2018): shared experts, one softmax gate per
    task, z_k = sum_e g_k(x)_e f_e(x).

    Args:
        in_features: input width.
        num_experts: E.
        expert_widths: each expert's MLP widths; the last is the representation width.
        tower_widths: hidden widths of each task's tower (its default head, :class:`Tower`);
            empty: a linear head.
        gate_dropout: probability of dropping an expert's gate weight in training.
        activation: the experts' and towers' nonlinearity.

    Shared parameters: the experts. Layer groups: ``experts``, ``gates``.

    Examples:
        >>> mmoe = MMoE(4, num_experts=3, expert_widths=[8])
        >>> mmoe.bind_tasks(["a", "b"])
        >>> [tuple(z.shape) for z in mmoe(torch.zeros(5, 4))]
        [(5, 8), (5, 8)]
    """

    def __init__(
        self,
        in_features: int,
        num_experts: int = 8,
        expert_widths: Sequence[int] = (16,),
        tower_widths: Sequence[int] = (),
        gate_dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(in_features, expert_widths, activation, tower_widths)
        if num_experts < 1:
            raise ValueError(f"MMoE: num_experts must be >= 1, got {num_experts}")
        self.num_experts = int(num_experts)
        self.gate_dropout = float(gate_dropout)
        self.experts = _Experts(self.num_experts, self.in_features, self.expert_widths, activation)
        self.gates = nn.ModuleList()

    def _build_tasks(self, num_tasks: int) -> None:
        self.gates.extend(
            _Gate(self.in_features, self.num_experts, self.gate_dropout) for _ in range(num_tasks)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        self._require_bound()
        self._check_input(x)
        experts = self.experts(x)  # (N, E, D)
        weights = [gate(x) for gate in self.gates]  # T x (N, E)
        self.last_gate_weights = [w.detach() for w in weights]
        return [_mix(w, experts) for w in weights]  # T x (N, D)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.experts.parameters() if p.requires_grad]

    def layer_groups(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict([("experts", [self.experts]), ("gates", [self.gates])])


class OMoE(MMoE):
    """One-gate mixture-of-experts: MMoE's experts with a single gate for all tasks, so every
    task reads the same z (the baseline of Ma et al.). Every parameter is shared."""

    def _build_tasks(self, num_tasks: int) -> None:
        self.gates.append(_Gate(self.in_features, self.num_experts, self.gate_dropout))

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        self._require_bound()
        self._check_input(x)
        weights = self.gates[0](x)
        self.last_gate_weights = [weights.detach()] * len(self.task_names)
        return _mix(weights, self.experts(x))  # (N, D), one z for all tasks

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


class PLE(_GatedEncoder):
    """Progressive Layered Extraction (Tang et al., RecSys 2020): ``levels`` extraction layers,
    each with ``num_task_experts`` experts per task and ``num_shared_experts`` shared experts;
    task k's gate mixes its own and the shared experts into its stream, and on every level but
    the last a shared gate mixes all experts into the shared stream read by the next level.
    ``levels=1`` is CGC.

    Args:
        in_features: input width.
        levels: extraction levels.
        num_shared_experts: experts per level.
        num_task_experts: experts per level.
        expert_widths: each expert's MLP widths (all levels); the last is the representation
            width.
        tower_widths: as :class:`MMoE`.
        gate_dropout: as :class:`MMoE`.
        activation: as :class:`MMoE`.

    Shared parameters: the shared experts and the shared gates. Expert-use diagnostics report
    the last level's task gates (own experts first, then the shared ones).

    Examples:
        >>> ple = PLE(4, levels=2, num_shared_experts=2, num_task_experts=1, expert_widths=[6])
        >>> ple.bind_tasks(["a", "b", "c"])
        >>> [tuple(z.shape) for z in ple(torch.zeros(5, 4))]
        [(5, 6), (5, 6), (5, 6)]
    """

    def __init__(
        self,
        in_features: int,
        levels: int = 2,
        num_shared_experts: int = 2,
        num_task_experts: int = 2,
        expert_widths: Sequence[int] = (16,),
        tower_widths: Sequence[int] = (),
        gate_dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(in_features, expert_widths, activation, tower_widths)
        if levels < 1 or num_shared_experts < 0 or num_task_experts < 0:
            raise ValueError(
                f"{type(self).__name__}: levels >= 1 and expert counts >= 0 required, got "
                f"levels={levels}, num_shared_experts={num_shared_experts}, "
                f"num_task_experts={num_task_experts}"
            )
        if num_shared_experts + num_task_experts < 1:
            raise ValueError(f"{type(self).__name__}: every gate needs at least one expert")
        self.levels = int(levels)
        self.num_shared_experts = int(num_shared_experts)
        self.num_task_experts = int(num_task_experts)
        self.gate_dropout = float(gate_dropout)
        self.shared_experts = nn.ModuleList()
        self.shared_gates = nn.ModuleList()
        # level -> task -> experts, level -> task -> gate
        self.task_experts: TypedModuleList[nn.ModuleList] = TypedModuleList()
        self.task_gates: TypedModuleList[nn.ModuleList] = TypedModuleList()

    def _build_tasks(self, num_tasks: int) -> None:
        width = self.out_features
        own, shared = self.num_task_experts, self.num_shared_experts
        for level in range(self.levels):
            in_features = self.in_features if level == 0 else width
            self.shared_experts.append(
                _Experts(shared, in_features, self.expert_widths, self.activation)
            )
            self.task_experts.append(
                nn.ModuleList(
                    _Experts(own, in_features, self.expert_widths, self.activation)
                    for _ in range(num_tasks)
                )
            )
            self.task_gates.append(
                nn.ModuleList(
                    _Gate(in_features, own + shared, self.gate_dropout) for _ in range(num_tasks)
                )
            )
            if level < self.levels - 1:
                experts = own * num_tasks + shared
                self.shared_gates.append(_Gate(in_features, experts, self.gate_dropout))

    def forward(self, x: Tensor) -> list[Tensor]:
        self._require_bound()
        self._check_input(x)
        num_tasks = len(self.task_names)
        task_inputs, shared_input = [x] * num_tasks, x
        for level in range(self.levels):
            shared = self.shared_experts[level](shared_input)  # (N, S, D)
            own = [self.task_experts[level][k](task_inputs[k]) for k in range(num_tasks)]
            weights = [
                self.task_gates[level][k](task_inputs[k]) for k in range(num_tasks)
            ]  # T x (N, own + S)
            outputs = [
                _mix(weights[k], torch.cat([own[k], shared], dim=1)) for k in range(num_tasks)
            ]
            if level < self.levels - 1:
                everything = torch.cat([*own, shared], dim=1)  # (N, T own + S, D)
                shared_input = _mix(self.shared_gates[level](shared_input), everything)
            task_inputs = outputs
        self.last_gate_weights = [w.detach() for w in weights]
        return task_inputs

    def expert_labels(self, task: int) -> list[str]:
        own = [f"own{e}" for e in range(self.num_task_experts)]
        return own + [f"shared{e}" for e in range(self.num_shared_experts)]

    def shared_parameters(self) -> list[nn.Parameter]:
        modules = [self.shared_experts, self.shared_gates]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    def layer_groups(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict(
            (
                f"level{i}",
                [self.shared_experts[i], self.task_experts[i], self.task_gates[i]]
                + ([self.shared_gates[i]] if i < len(self.shared_gates) else []),
            )
            for i in range(len(self.shared_experts))
        )


class CGC(PLE):
    """Customized Gate Control (Tang et al., RecSys 2020): one PLE extraction level, task experts
    and shared experts with one gate per task over (own + shared)."""

    def __init__(
        self,
        in_features: int,
        num_shared_experts: int = 2,
        num_task_experts: int = 2,
        expert_widths: Sequence[int] = (16,),
        tower_widths: Sequence[int] = (),
        gate_dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(
            in_features,
            1,
            num_shared_experts,
            num_task_experts,
            expert_widths,
            tower_widths,
            gate_dropout,
            activation,
        )
