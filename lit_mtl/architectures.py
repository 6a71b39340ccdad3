"""Mixture-of-experts encoders in which each task reads its own representation.

One contract, which :class:`~lit_mtl.MultiTaskModule` and the weightings understand:

* ``bind_tasks(names)``: called by the module with its task names (in order) before the
  optimizer exists; the per-task parts (gates, task experts) are built there, so a config needs
  no task count;
* ``forward(x)`` returns one representation per task, a list of T tensors of equal shape
  ``(N, out_features)`` (``per_task_outputs = True``), or one shared tensor (OMoE);
* ``shared_parameters()``: the parameters every task's loss reaches (the shared experts, and
  the gates that several tasks read), the target of ``target="shared"`` gradient methods;
  task-specific gates and experts are not in it;
* ``last_gate_weights``: per task, the (N, E) gate weights of the last forward (detached), for
  the expert-use diagnostics.

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
  T x T cross-stitch units.

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

from lit_mtl.encoders import Encoder, _activation
from lit_mtl.tasks import TaskSpec

__all__ = ["CGC", "PLE", "CrossStitch", "MMoE", "OMoE", "TaskBinding", "Tower", "gate_dropout"]


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


class TaskBinding:
    """``bind_tasks(names)`` once (the same names again is a no-op) and the error for a forward
    before it; subclasses build their per-task parts in ``_build_tasks(num_tasks)``."""

    task_names: list[str]

    def _require_bound(self) -> None:
        if not self.task_names:
            raise RuntimeError(
                f"{type(self).__name__} has no tasks yet: MultiTaskModule calls bind_tasks(names) "
                "(drop-in use: call it yourself before building the optimizer)"
            )

    def bind_tasks(self, names: Sequence[str]) -> None:
        """Build the per-task parts for these tasks (once; the same names again is a no-op)."""
        names = list(names)
        if self.task_names:
            if names != self.task_names:
                raise ValueError(
                    f"{type(self).__name__} is bound to tasks {self.task_names}, not {names}"
                )
            return
        if not names:
            raise ValueError(f"{type(self).__name__}.bind_tasks: no task names")
        self.task_names = names
        self._build_tasks(len(names))

    def _build_tasks(self, num_tasks: int) -> None:
        raise NotImplementedError


class _RoutedEncoder(TaskBinding, Encoder):
    """The contract's common part (module docstring)."""

    per_task_outputs = True

    def __init__(
        self,
        in_features: int,
        expert_widths: Sequence[int],
        activation: str,
        tower_widths: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.tower_widths = [int(w) for w in tower_widths]
        widths = [int(w) for w in expert_widths]
        if not widths:
            raise ValueError(f"{type(self).__name__}: expert_widths must not be empty")
        self.in_features = int(in_features)
        self.expert_widths = widths
        self.activation = activation
        self.out_features = widths[-1]
        self.task_names: list[str] = []
        self.last_gate_weights: list[Tensor] = []

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects (N, {self.in_features}) inputs, got "
                f"{tuple(x.shape)}"
            )

    def make_head(self, spec: TaskSpec) -> nn.Module:
        """The task's tower (``tower_widths`` hidden layers, then its outputs)."""
        return Tower(self.out_features, self.tower_widths, spec.num_outputs, self.activation)

    def expert_labels(self, task: int) -> list[str]:
        """Names of the experts task ``task``'s gate weighs, in the gate's order."""
        return [f"expert{e}" for e in range(self.last_gate_weights[task].shape[1])]

    def last_shared_layer(self) -> nn.Module:
        raise ValueError(
            f"{type(self).__name__} has no single last shared layer (its output mixes several "
            "experts through gates): use GradNorm(target='representation') (the norms of "
            "each task's gradient w.r.t. what it reads) or target='shared'"
        )


class MMoE(_RoutedEncoder):
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

    per_task_outputs = False

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


class PLE(_RoutedEncoder):
    """Progressive Layered Extraction (Tang et al., RecSys 2020): ``levels`` extraction layers,
    each with ``num_task_experts`` experts per task and ``num_shared_experts`` shared experts;
    task k's gate mixes its own and the shared experts into its stream, and on every level but
    the last a shared gate mixes all experts into the shared stream read by the next level.
    ``levels=1`` is CGC.

    Args:
        in_features: input width.
        levels: extraction levels.
        num_shared_experts, num_task_experts: experts per level.
        expert_widths: each expert's MLP widths (all levels); the last is the representation
            width.
        tower_widths, gate_dropout, activation: as :class:`MMoE`.

    Shared parameters: the shared experts and the shared gates. Expert-use diagnostics report
    the last level's task gates (own experts first, then the shared ones).

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
        self.task_experts = nn.ModuleList()  # level -> task -> experts
        self.task_gates = nn.ModuleList()  # level -> task -> gate

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


class CrossStitch(_RoutedEncoder):
    """Cross-stitch networks (Misra et al., CVPR 2016): one MLP per task (``widths``), and after
    each layer l a cross-stitch unit mixing the T tasks' activations,
    x~_i = sum_j alpha^l_ij x_j, with alpha^l a learned T x T matrix initialised to
    ``alpha_same`` on the diagonal and (1 - alpha_same) / (T - 1) elsewhere (the paper's
    (alpha_S, alpha_D) = (0.9, 0.1) for two tasks).

    Args:
        in_features: input width.
        widths: the layers of each task's network; the last is the representation width.
        alpha_same: the initial weight of a task's own activations.
        tower_widths, activation: as :class:`MMoE`.

    Nothing is hard-shared: through the stitches every task's loss reaches every network, so
    ``shared_parameters()`` (``target="shared"``) is every parameter, and there is no last
    shared layer (GradNorm's default W): an error that says so.

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
        self.networks = nn.ModuleList()  # task -> layers
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
