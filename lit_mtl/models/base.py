"""The encoder contract: what :class:`~lit_mtl.MultiTaskModule`, the gradient engines and
:class:`~lit_mtl.TransferModule` ask of the module that produces the representation z.

Every hook is declared on :class:`Encoder` with its default; an encoder overrides what it has:

* ``out_features``: the width (channels) of z, which the heads read;
* ``layer_groups()``: ordered groups of submodules, input side first (freezing, gradual
  unfreezing, discriminative learning rates);
* ``last_shared_layer()``: the last module holding weights (GradNorm's default W);
* ``shared_parameters()``: the parameters every task's loss reaches, the target of
  ``target="shared"`` gradient methods (default: every trainable parameter; an architecture
  with per-task parts names a subset and sets ``declares_shared_parameters``);
* ``bind_tasks(names)``: called with the module's task names before the optimizer exists (the
  per-task parts of an architecture are built there, so a config needs no task count);
* ``make_head(spec)``: the head of a task where none is given (None: the kind's default head);
* ``gate_weights()`` and ``expert_labels(task)``: mixture-of-experts encoders' gate weights of
  the last forward per task and the names of the experts they weigh (the expert-use diagnostics);
* ``replaced_source_keys()`` and ``architecture``: what a transfer load of a source checkpoint
  should expect to be missing, and the architecture name a source folder must match.

A plain ``nn.Module`` with an integer ``out_features`` works as an encoder too;
:func:`encoder_hooks` gives it the defaults (and the errors where a default would guess).
``forward`` returns z, (N, out_features) or a feature map (N, out_features, h, w), or one such
tensor per task for the architectures that ``bind_tasks``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn

from lit_mtl.models.layers import Tower
from lit_mtl.tasks import DenseHead, PooledLinear, TaskSpec

#: the hooks of the contract, which a module outside the Encoder hierarchy must not define
HOOKS = (
    "layer_groups",
    "last_shared_layer",
    "shared_parameters",
    "bind_tasks",
    "make_head",
    "gate_weights",
    "expert_labels",
    "replaced_source_keys",
)


class Encoder(nn.Module):
    """Base class of every encoder: the module mapping inputs to the representation z, with
    every hook of the contract (module docstring) and its default."""

    #: the width (channels) of the representation the heads read
    out_features: int
    #: ``shared_parameters()`` names a subset of the parameters (an architecture with per-task
    #: parts); ``target="shared"`` then never means "the whole encoder"
    declares_shared_parameters: ClassVar[bool] = False
    #: a mixture of experts whose :meth:`gate_weights` the expert-use diagnostics read
    gated: ClassVar[bool] = False
    #: the architecture a source folder's ``config.json`` must name (timm models), or None
    architecture: str | None = None

    def layer_groups(self) -> OrderedDict[str, list[nn.Module]]:
        """Ordered layer groups, input side first. Default: one group per top-level child."""
        return OrderedDict((name, [child]) for name, child in self.named_children())

    def last_shared_layer(self) -> nn.Module:
        """The last submodule with a weight parameter that is not a normalisation layer
        (GradNorm's default W)."""
        last: nn.Module | None = None
        for module in self.modules():
            if isinstance(getattr(module, "weight", None), nn.Parameter) and not isinstance(
                module, nn.modules.batchnorm._NormBase | nn.LayerNorm
            ):
                last = module
        if last is None:
            raise ValueError(f"{type(self).__name__} has no layer with a weight")
        return last

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters every task's loss reaches. Default: every trainable parameter."""
        return [p for p in self.parameters() if p.requires_grad]

    def bind_tasks(self, names: Sequence[str]) -> None:
        """Called with the module's task names, in order, before the optimizer exists. Default:
        nothing to build (every task reads the same z)."""

    def make_head(self, spec: TaskSpec) -> nn.Module | None:
        """The head of ``spec``'s task where none is given. Default: None (the kind's default
        head: a pooled linear layer, or a DenseHead for a dense kind)."""
        return None

    def gate_weights(self) -> list[Tensor]:
        """Per task, the (N, E) gate weights of the last forward (detached). Default: [] (no
        gates)."""
        return []

    def expert_labels(self, task: int) -> list[str]:
        """Names of the experts task ``task``'s gate weighs, in the gate's order. Default: []
        (the diagnostics then name them expert0, expert1, ...)."""
        return []

    def replaced_source_keys(self) -> list[str]:
        """Key prefixes of parts this encoder replaced on purpose (a torchvision classifier it
        drops), skipped when a source checkpoint is loaded. Default: []."""
        return []


class _PlainEncoderHooks:
    """The contract's defaults for an ``nn.Module`` that is not an :class:`Encoder`."""

    declares_shared_parameters = False
    gated = False
    architecture = None

    def __init__(self, module: nn.Module) -> None:
        defined = [hook for hook in HOOKS if hasattr(module, hook)]
        if defined:
            raise TypeError(
                f"{type(module).__name__} defines {defined} but is not a lit_mtl.Encoder: "
                "subclass lit_mtl.Encoder so that its hooks are the ones used"
            )
        self.module = module

    def layer_groups(self) -> OrderedDict[str, list[nn.Module]]:
        raise ValueError(
            f"{type(self.module).__name__} has no layer_groups(); pass layer_groups="
            "{group: [module-name regex, ...]}"
        )

    def last_shared_layer(self) -> nn.Module:
        return Encoder.last_shared_layer(self.module)  # type: ignore[arg-type]

    def shared_parameters(self) -> list[nn.Parameter]:
        return Encoder.shared_parameters(self.module)  # type: ignore[arg-type]

    def bind_tasks(self, names: Sequence[str]) -> None:
        return None

    def make_head(self, spec: TaskSpec) -> nn.Module | None:
        return None

    def gate_weights(self) -> list[Tensor]:
        return []

    def expert_labels(self, task: int) -> list[str]:
        return []

    def replaced_source_keys(self) -> list[str]:
        return []


def encoder_hooks(encoder: nn.Module) -> Encoder:
    """The contract of ``encoder``: the encoder itself when it is an :class:`Encoder`, else its
    defaults (a plain ``nn.Module`` defining one of the hooks is a ``TypeError``: its hook would
    not be the one used)."""
    if isinstance(encoder, Encoder):
        return encoder
    return _PlainEncoderHooks(encoder)  # type: ignore[return-value]


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


class _DenseEncoder(Encoder):
    """Shared part: the default heads (decoder for dense tasks, pooled linear otherwise)."""

    def make_head(self, spec: TaskSpec) -> nn.Module:
        if spec.dense:
            return DenseHead(self.out_features, spec.num_outputs)
        return PooledLinear(self.out_features, spec.num_outputs)


class _PerTaskEncoder(TaskBinding, Encoder):
    """An MLP architecture in which each task reads its own z (MMoE, PLE, Cross-stitch): the
    input check, the towers as heads, its own shared parameters and no last shared layer."""

    declares_shared_parameters = True

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

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects (N, {self.in_features}) inputs, got "
                f"{tuple(x.shape)}"
            )

    def make_head(self, spec: TaskSpec) -> nn.Module:
        """The task's tower (``tower_widths`` hidden layers, then its outputs)."""
        return Tower(self.out_features, self.tower_widths, spec.num_outputs, self.activation)

    def last_shared_layer(self) -> nn.Module:
        raise ValueError(
            f"{type(self).__name__} has no single last shared layer (its output mixes several "
            "experts through gates): use GradNorm(target='representation') (the norms of "
            "each task's gradient w.r.t. what it reads) or target='shared'"
        )
