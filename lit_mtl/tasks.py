"""Task descriptions: what one task predicts, how its loss and metrics are computed.

A :class:`TaskSpec` is plain data (name, kind, output size) that a DataModule publishes right after
``__init__`` so the Lightning CLI can link it into the model. A :class:`Task` is the module built
from a spec inside :class:`~lit_mtl.MultiTaskModule`: its head, its masked loss, its metrics.

Missing labels
--------------
A sample may lack the label of some task. It is marked by

* ``NaN`` in a regression (or multilabel) target,
* :data:`IGNORE_INDEX` (``-100``) in a class target (binary, multiclass, multilabel),
* or an explicit boolean mask (``True`` = labelled) given next to the targets.

Such samples are excluded from the task's loss and metrics. A batch in which a task has no label at
all gives that task a loss of exactly zero that is still connected to the head's graph (so DDP sees
every parameter used), never ``NaN``.

Dense tasks
-----------
The dense kinds predict a map at the target's resolution from a feature map ``(N, C, h, w)``
(the prediction is resized bilinearly to the target's ``(H, W)`` when the head's output differs),
with the losses of the MTAN / CAGrad / Nash-MTL / FAMO code:

* ``segmentation``: target (N, H, W) class indices, pixel cross-entropy; missing pixels carry
  the spec's ``ignore_index`` (-1 in the NYUv2 / CityScapes files, -100 by default);
* ``depth``: target (N, 1, H, W) or (N, H, W), L1 over valid pixels (finite, not 0);
* ``normals``: target (N, 3, H, W) unit vectors, the prediction is L2-normalised and the loss is
  1 - cosine over valid pixels (finite, not the zero vector);
* ``dense_regression``: target (N, d, H, W), MSE over the non-NaN entries.

Their metrics and the two reductions in use (``pooled``, ``per_batch``) are in
:mod:`lit_mtl.functional.dense_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_mtl.functional.dense_metrics import (
    DENSE_REDUCTIONS,
    depth_statistics,
    depth_valid,
    normal_statistics,
    normal_valid,
    segmentation_statistics,
)
from lit_mtl.functional.task_metrics import class_statistics, statistics_size

__all__ = [
    "DENSE_KINDS",
    "IGNORE_INDEX",
    "DenseHead",
    "PooledLinear",
    "Task",
    "TaskKind",
    "TaskSpec",
    "as_task_spec",
    "product_logit",
]

TaskKind = Literal[
    "regression",
    "binary",
    "multiclass",
    "multilabel",
    "segmentation",
    "depth",
    "normals",
    "dense_regression",
]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)
DENSE_KINDS: tuple[str, ...] = ("segmentation", "depth", "normals", "dense_regression")
IGNORE_INDEX = -100
_FIXED_OUTPUTS = {"binary": 1, "depth": 1, "normals": 3}


@dataclass(frozen=True)
class TaskSpec:
    """Plain description of one task.

    Args:
        name: unique task name; the key of its targets in a batch and of its logged metrics.
        kind: ``"regression"``, ``"binary"``, ``"multiclass"``, ``"multilabel"``, or a dense
            kind: ``"segmentation"``, ``"depth"``, ``"normals"``, ``"dense_regression"``.
        num_outputs: regression output dimension, number of classes (multiclass, segmentation),
            number of labels (multilabel), channels (dense regression); 1 for binary and depth,
            3 for normals.
        ignore_index: the label value that marks a missing class label (multiclass and
            segmentation; the NYUv2 / CityScapes files store -1).
        parent: a conditional task: its loss and metrics count only the samples where the
            parent task (a binary task) has a positive label (a conversion counted on clicks).
        product_of: a derived binary task without a head of its own: its probability is the
            product of these binary tasks' probabilities (ESMM: p(click and convert) =
            p(click) p(convert | click)), trained on every sample.

    >>> TaskSpec("segmentation", "multiclass", 13).to_dict()
    {'name': 'segmentation', 'kind': 'multiclass', 'num_outputs': 13}
    >>> TaskSpec("depth/left")
    Traceback (most recent call last):
    ...
    ValueError: TaskSpec.name 'depth/left' must not contain '/' or '.' ...
    """

    name: str
    kind: TaskKind = "regression"
    num_outputs: int = 1
    ignore_index: int = IGNORE_INDEX
    parent: str | None = None
    product_of: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"TaskSpec.name must be a non-empty string, got {self.name!r}")
        if "/" in self.name or "." in self.name:
            raise ValueError(
                f"TaskSpec.name {self.name!r} must not contain '/' or '.' (used in log keys and "
                "module names)"
            )
        if self.kind not in TASK_KINDS:
            raise ValueError(
                f"TaskSpec {self.name!r}: kind must be one of {TASK_KINDS}, got {self.kind!r}"
            )
        if int(self.num_outputs) < 1:
            raise ValueError(
                f"TaskSpec {self.name!r}: num_outputs must be >= 1, got {self.num_outputs}"
            )
        fixed = _FIXED_OUTPUTS.get(self.kind)
        if fixed is not None and self.num_outputs != fixed:
            raise ValueError(
                f"TaskSpec {self.name!r}: a {self.kind} task has num_outputs={fixed}, got "
                f"{self.num_outputs}"
            )
        if self.kind in ("multiclass", "segmentation") and self.num_outputs < 2:
            raise ValueError(
                f"TaskSpec {self.name!r}: a {self.kind} task needs num_outputs (classes) >= 2"
            )
        if not isinstance(self.ignore_index, int) or 0 <= self.ignore_index < self.num_outputs:
            raise ValueError(
                f"TaskSpec {self.name!r}: ignore_index={self.ignore_index!r} must be an integer "
                f"outside the class indices 0..{self.num_outputs - 1}"
            )
        if self.parent is not None and (
            not isinstance(self.parent, str) or self.parent == self.name
        ):
            raise ValueError(
                f"TaskSpec {self.name!r}: parent must name another task, got {self.parent!r}"
            )
        if self.product_of is not None:
            factors = self.product_of
            if isinstance(factors, str) or len(factors) < 2 or self.name in factors:
                raise ValueError(
                    f"TaskSpec {self.name!r}: product_of must list at least two other tasks, got "
                    f"{factors!r}"
                )
            if self.kind != "binary":
                raise ValueError(
                    f"TaskSpec {self.name!r}: a product_of task is binary (a probability), got "
                    f"kind={self.kind!r}"
                )
            object.__setattr__(self, "product_of", tuple(str(f) for f in factors))

    @property
    def dense(self) -> bool:
        """Whether the task predicts a map (a dense kind)."""
        return self.kind in DENSE_KINDS

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict; ``ignore_index`` only where it is not the default."""
        fields = asdict(self)
        if self.ignore_index == IGNORE_INDEX:
            del fields["ignore_index"]
        for optional in ("parent", "product_of"):
            if fields[optional] is None:
                del fields[optional]
        if self.product_of is not None:
            fields["product_of"] = list(self.product_of)
        return fields


def as_task_spec(spec: TaskSpec | Mapping[str, Any]) -> TaskSpec:
    """Accept a :class:`TaskSpec` or a mapping with its fields (as found in YAML and hparams)."""
    if isinstance(spec, TaskSpec):
        return spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - {
            "name",
            "kind",
            "num_outputs",
            "ignore_index",
            "parent",
            "product_of",
        }
        if unknown:
            raise ValueError(f"task spec {dict(spec)!r} has unknown keys {sorted(unknown)}")
        return TaskSpec(**spec)
    raise TypeError(f"expected a TaskSpec or a mapping, got {type(spec).__name__}: {spec!r}")


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

    >>> DenseHead(8, 13)(torch.zeros(2, 8, 4, 5)).shape
    torch.Size([2, 13, 4, 5])
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1),
            nn.Conv2d(in_channels, out_channels, 1),
        )


#: what a weighted task loss ``sum_i w_i l_i`` is divided by
WEIGHTED_DENOMINATORS = ("weights", "batch")


def _weighted_mean(
    per_elem: Tensor, present: Tensor, weight: Tensor, denominator: str = "weights"
) -> Tensor:
    """``sum w l`` over the labelled entries, ``w`` (N,) broadcast over each sample's entries,
    divided by ``sum w`` over them (``"weights"``: 0, in the graph, when no labelled entry has
    weight) or by the number of entries in the batch, labelled or not (``"batch"``: DeepChem's
    2017 networks, whose balancing weights then also scale the loss)."""
    w = weight.reshape(-1, *([1] * (per_elem.dim() - 1))) * present
    total = (per_elem * w).sum()
    if denominator == "batch":
        return total / max(per_elem.numel(), 1)
    return total / w.sum().clamp(min=torch.finfo(torch.float32).tiny)


def product_logit(logits: Sequence[Tensor]) -> Tensor:
    """The logit of the product of the probabilities ``sigmoid(a_k)`` (ESMM's
    p(click and convert) = p(click) p(convert | click)), in log space:
    ``s = sum_k log sigmoid(a_k)``, ``logit = s - log(1 - e^s)``.

    >>> a, b = torch.tensor([0.3]), torch.tensor([-1.2])
    >>> p = torch.sigmoid(product_logit([a, b]))
    >>> bool(torch.allclose(p, torch.sigmoid(a) * torch.sigmoid(b)))
    True
    """
    s = torch.stack([F.logsigmoid(a.float()) for a in logits]).sum(dim=0)
    s = s.clamp(max=-1e-12)  # p = 1 exactly has no finite logit
    return s - torch.log(-torch.expm1(s))


class Task(nn.Module):
    """One task inside a :class:`~lit_mtl.MultiTaskModule`: a head, a masked loss and metrics.

    Args:
        spec: the task's description.
        in_features: width (channels) of the shared representation the head reads.
        head: optional custom head; default :class:`PooledLinear` for vector kinds and
            :class:`DenseHead` for dense kinds.
        reduction: how the dense metrics reduce over a set, ``"pooled"`` or ``"per_batch"``
            (:mod:`lit_mtl.functional.dense_metrics`).

    Vector kinds: the head maps z (N, in_features) (or a map, pooled) to (N, d) with d =
    ``num_outputs``; binary and 1-d regression predictions are squeezed to (N,). Dense kinds:
    the head maps a map (N, in_features, h, w) to (N, d, h', w'), resized to the target's size;
    a normal prediction is L2-normalised over its 3 channels.
    """

    def __init__(
        self,
        spec: TaskSpec,
        in_features: int,
        head: nn.Module | None = None,
        reduction: str = "pooled",
        weighted_denominator: str = "weights",
    ) -> None:
        super().__init__()
        if weighted_denominator not in WEIGHTED_DENOMINATORS:
            raise ValueError(
                f"task {spec.name!r}: weighted_loss_denominator must be one of "
                f"{WEIGHTED_DENOMINATORS}, got {weighted_denominator!r}"
            )
        self.weighted_denominator = weighted_denominator
        if reduction not in DENSE_REDUCTIONS:
            raise ValueError(
                f"task {spec.name!r}: dense reduction must be one of {DENSE_REDUCTIONS}, got "
                f"{reduction!r}"
            )
        self.spec = spec
        self.reduction = reduction
        if spec.product_of is not None:  # derived: no head (see product_logit)
            if head is not None:
                raise ValueError(
                    f"task {spec.name!r} is a product_of {list(spec.product_of)} and has no head"
                )
        elif head is None:
            if spec.dense:
                head = DenseHead(in_features, spec.num_outputs)
            else:
                head = PooledLinear(in_features, spec.num_outputs)
        self.head = head

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    def forward(self, z: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """The task's prediction from z; a dense prediction is resized (bilinear) to ``size``
        (H, W) when given and different."""
        if self.head is None:
            raise RuntimeError(
                f"task {self.name!r} has no head: its prediction is product_logit of the tasks "
                f"{list(self.spec.product_of or ())}"
            )
        if self.spec.dense and z.dim() != 4:
            raise ValueError(
                f"task {self.name!r} ({self.kind}): got a representation of shape "
                f"{tuple(z.shape)}; a dense task needs an encoder that keeps a feature map "
                "(N, C, h, w), e.g. DenseCNNEncoder, SegNetEncoder or DilatedResNetEncoder"
            )
        out = self.head(z)
        if self.spec.dense:
            if out.dim() != 4:
                raise ValueError(
                    f"task {self.name!r} ({self.kind}): the head must return a map (N, "
                    f"{self.spec.num_outputs}, h, w), got shape {tuple(out.shape)}; a dense task "
                    "needs an encoder that keeps a feature map"
                )
            if size is not None and tuple(out.shape[-2:]) != tuple(size):
                out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
            if self.spec.kind == "normals":
                out = F.normalize(out, dim=1)  # unit normals, as the papers' models
            return out  # (N, d, H, W)
        if self.spec.kind == "binary" or (
            self.spec.kind == "regression" and self.spec.num_outputs == 1
        ):
            out = out.reshape(out.shape[0])  # (N,)
        return out

    # ------------------------------------------------------------------ validation
    def check_target(self, target: Tensor, n: int) -> None:
        """Raise a clear error when ``target`` has the wrong shape or dtype for this task (a
        batch of ``n`` samples)."""
        spec = self.spec
        where = f"task {spec.name!r} ({spec.kind}, num_outputs={spec.num_outputs})"
        if not isinstance(target, Tensor):
            raise TypeError(f"{where}: target must be a Tensor, got {type(target).__name__}")
        if spec.dense:
            self._check_dense_target(target, n, where)
            return
        if spec.kind == "multiclass":
            expected: tuple[int, ...] = (n,)
            if target.is_floating_point() or target.dtype == torch.bool:
                raise TypeError(
                    f"{where}: class targets must be an integer tensor of class indices "
                    f"(use {spec.ignore_index} for a missing label), got dtype {target.dtype}"
                )
        elif spec.kind == "binary":
            expected = (n,)
        elif spec.kind == "multilabel":
            expected = (n, spec.num_outputs)
        else:
            expected = (n,) if spec.num_outputs == 1 else (n, spec.num_outputs)
            if spec.num_outputs == 1 and tuple(target.shape) == (n, 1):
                expected = (n, 1)
            if not target.is_floating_point():
                raise TypeError(
                    f"{where}: regression targets must be floating point (NaN marks a missing "
                    f"label), got dtype {target.dtype}"
                )
        if tuple(target.shape) != expected:
            raise ValueError(
                f"{where}: target shape {tuple(target.shape)} does not match the expected "
                f"{expected} for a batch of {n} samples"
            )

    def _check_dense_target(self, target: Tensor, n: int, where: str) -> None:
        spec = self.spec
        if spec.kind == "segmentation":
            layout = "(N, H, W)"
            ok = target.dim() == 3
            if target.is_floating_point() or target.dtype == torch.bool:
                raise TypeError(
                    f"{where}: segmentation targets must be an integer tensor of class indices "
                    f"(use {spec.ignore_index} for a missing pixel), got dtype {target.dtype}"
                )
        else:
            d = spec.num_outputs
            layout = f"(N, {d}, H, W)" + (" or (N, H, W)" if spec.kind == "depth" else "")
            ok = (target.dim() == 4 and target.shape[1] == d) or (
                spec.kind == "depth" and target.dim() == 3
            )
            if not target.is_floating_point():
                raise TypeError(
                    f"{where}: {spec.kind} targets must be floating point, got dtype {target.dtype}"
                )
        if not ok or target.shape[0] != n:
            raise ValueError(
                f"{where}: target shape {tuple(target.shape)} does not match the expected "
                f"{layout} for a batch of {n} samples"
            )

    def _dense_pair(self, pred: Tensor, target: Tensor) -> Tensor:
        """The target in the prediction's layout (depth (N, H, W) -> (N, 1, H, W)); an error
        naming the task when the spatial sizes differ."""
        if self.spec.kind == "depth" and target.dim() == 3:
            target = target.unsqueeze(1)
        spatial = tuple(target.shape[-2:])
        if tuple(pred.shape[-2:]) != spatial:
            raise ValueError(
                f"task {self.name!r} ({self.kind}): prediction of size {tuple(pred.shape[-2:])} "
                f"for a target of size {spatial}; the head must output at the target's "
                "resolution (MultiTaskModule resizes to the target's size)"
            )
        return target

    # ------------------------------------------------------------------ label probe
    @property
    def _class_kind(self) -> bool:
        return self.spec.kind in ("binary", "multiclass", "multilabel", "segmentation")

    @property
    def probe_size(self) -> int:
        """Length of :meth:`probe`'s vector (0 for regression and the geometric dense kinds: a
        missing label shows as a non-finite fast-path loss, or is masked anyway)."""
        return 3 if self._class_kind else 0

    def probe(self, target: Tensor) -> Tensor:
        """Reductions of a class target, read on the host with the step's losses (one read for
        all tasks) by :meth:`fast_path_exact`: ``[min, max, sum |t - round(t)|]`` (NaN where a
        float target has a NaN, or the batch is empty). Empty for the other kinds."""
        if not self._class_kind:
            return target.new_empty(0, dtype=torch.float32)
        if target.numel() == 0:
            return torch.full((3,), math.nan, device=target.device)
        values = target.to(torch.uint8) if target.dtype == torch.bool else target
        low, high = torch.aminmax(values)
        if values.is_floating_point():
            fraction = (values - values.round()).abs().sum()
        else:
            fraction = torch.zeros((), device=values.device)
        return torch.stack([low.float(), high.float(), fraction.float()])

    def fast_path_exact(self, probe: Sequence[float], target: Tensor) -> bool:
        """Whether :meth:`evaluate`'s fast path is exact for this batch, given its loss is finite
        (regression and geometric dense kinds: always; multiclass and segmentation: always,
        ``cross_entropy`` ignores missing labels; binary and multilabel: when no label is
        missing). Raises a ``ValueError`` naming the task and the value for a label the task
        cannot take; a target with NaN is checked on the masked path instead."""
        if not self._class_kind:
            return True
        low, high, fraction = probe
        if math.isnan(low) or math.isnan(high) or math.isnan(fraction):
            return False
        self._check_label_range(low, high)
        if fraction > 0:
            self._check_labels(target, self.labelled(target))
        return self.spec.kind in ("multiclass", "segmentation") or low >= 0

    def _check_label_range(self, low: float, high: float) -> None:
        spec = self.spec
        indices = spec.kind in ("multiclass", "segmentation")
        upper = spec.num_outputs - 1 if indices else 1
        missing = spec.ignore_index if indices else IGNORE_INDEX
        for value in (high, low):
            if value == missing or 0 <= value <= upper:
                continue
            allowed = f"class indices 0..{upper}" if indices else "0 or 1 (binary)"
            raise ValueError(
                f"task {spec.name!r} ({spec.kind}): label {value:g} in the batch; labels must be "
                f"{allowed}, with {missing}"
                + (" or NaN" if not indices else "")
                + " marking a missing label"
            )

    def _check_labels(self, target: Tensor, present: Tensor) -> None:
        """Check every labelled entry's value (a host read; only for batches that need it)."""
        if not self._class_kind or not bool(present.any()):
            return
        labelled = target[present]
        low, high = torch.aminmax(
            labelled.to(torch.uint8) if labelled.dtype == torch.bool else labelled
        )
        self._check_label_range(float(low), float(high))
        if labelled.is_floating_point():
            fractional = labelled[labelled != labelled.round()]
            if fractional.numel():
                raise ValueError(
                    f"task {self.spec.name!r} ({self.spec.kind}): label {float(fractional[0]):g} "
                    f"in the batch; labels must be 0 or 1, with {IGNORE_INDEX} or NaN marking a "
                    "missing label"
                )

    # ------------------------------------------------------------------ masking
    def labelled(self, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Boolean tensor, True where a label is present: the target's shape, except normals
        ((N, H, W): one flag per pixel)."""
        kind = self.spec.kind
        if kind == "depth":
            present = depth_valid(target)
        elif kind == "normals":
            present = normal_valid(target)
        elif kind in ("multiclass", "segmentation"):
            present = target != self.spec.ignore_index
        elif target.is_floating_point():
            present = ~torch.isnan(target)
            if kind not in ("regression", "dense_regression"):
                present &= target != IGNORE_INDEX
        else:
            present = target != IGNORE_INDEX
        if mask is not None:
            mask = mask.to(device=target.device, dtype=torch.bool)
            if mask.shape[0] != target.shape[0]:
                raise ValueError(
                    f"task {self.spec.name!r}: mask has {mask.shape[0]} rows but the target "
                    f"has {target.shape[0]}"
                )
            while mask.dim() < present.dim():
                mask = mask.unsqueeze(-1)
            present = present & mask
        return present

    # ------------------------------------------------------------------ loss and statistics
    @property
    def statistics_size(self) -> int:
        """Length of the statistics vector :meth:`evaluate` returns."""
        return statistics_size(self.spec.kind, self.spec.num_outputs, self.reduction)

    def evaluate(
        self,
        pred: Tensor,
        target: Tensor,
        mask: Tensor | None = None,
        fast: bool = False,
        weight: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(loss, statistics) of a batch: the mean loss over labelled entries and the detached
        sufficient statistics of the task's metrics
        (:mod:`lit_mtl.functional.task_metrics`; the first entry is the labelled count).

        regression and dense regression: MSE; binary and multilabel: BCE with logits;
        multiclass and segmentation: cross-entropy; depth: L1; normals: 1 - cosine.
        The masked path (the default) checks the labels and gives exactly ``0 * pred.sum()``
        when no entry is labelled. ``fast`` (no mask) takes one fused loss op instead: equal
        to the masked path up to float round-off when :meth:`fast_path_exact` holds and the
        loss is finite (a missing regression label makes it NaN), otherwise to be redone.

        ``weight``: per-sample weights (N,), finite and >= 0: the loss is the weighted mean
        ``sum_i w_i l_i / sum_i w_i`` over the labelled entries (a sample's pixels or outputs
        share its weight), or ``sum_i w_i l_i / N`` with ``weighted_denominator="batch"``; the
        metrics stay unweighted.
        """
        kind = self.spec.kind
        if weight is not None:
            weight = self._check_weight(weight, target.shape[0])
        if self.spec.dense:
            target = self._dense_pair(pred, target)
            if kind in ("depth", "normals"):
                return self._evaluate_geometry(pred, target, mask, weight)
        if kind == "regression" and target.dim() == 2 and pred.dim() == 1:
            target = target.reshape(-1)
        if fast and mask is None and weight is None:
            return self._evaluate_fast(pred, target)
        present = self.labelled(target, mask)
        count = present.sum()
        # Fill missing entries with a harmless value so no NaN enters the graph, then mask.
        if kind in ("multiclass", "segmentation"):
            safe_target = torch.where(present, target, torch.zeros_like(target))
            self._check_labels(target, present)
            per_elem = F.cross_entropy(pred.float(), safe_target.long(), reduction="none")
        elif kind in ("regression", "dense_regression"):
            safe_target = torch.where(present, target, pred.detach().to(target.dtype))
            per_elem = (pred.float() - safe_target.float()) ** 2
        else:
            safe_target = torch.where(present, target.float(), torch.zeros_like(target.float()))
            self._check_labels(target, present)
            per_elem = F.binary_cross_entropy_with_logits(
                pred.float(), safe_target, reduction="none"
            )
        per_elem = per_elem * present
        if weight is None:
            loss = per_elem.sum() / count.clamp(min=1)
        else:
            loss = _weighted_mean(per_elem, present, weight, self.weighted_denominator)
        if kind in ("regression", "dense_regression"):
            error = (pred.detach().float() - safe_target.float()) * present
            squared = per_elem.detach().sum()
            stats = torch.stack([count.float(), squared, error.abs().sum()])
        elif kind == "segmentation":
            stats = segmentation_statistics(pred.detach(), safe_target, present)
        else:
            stats = class_statistics(
                pred.detach(), safe_target, kind, self.spec.num_outputs, present
            )
        return loss, stats

    def _check_weight(self, weight: Tensor, n: int) -> Tensor:
        """Per-sample weights (N,) as float; on the CPU also checked finite and >= 0 (free
        there; on an accelerator that would cost a host read per step)."""
        if not isinstance(weight, Tensor) or weight.dim() != 1 or weight.shape[0] != n:
            shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
            raise ValueError(
                f"task {self.name!r}: sample weights must be a (N,) tensor with N = {n}, got "
                f"{shape}"
            )
        weight = weight.float()
        if weight.device.type == "cpu" and not (
            torch.isfinite(weight).all() and (weight >= 0).all()
        ):
            raise ValueError(f"task {self.name!r}: sample weights must be finite and >= 0")
        return weight

    def _evaluate_geometry(
        self, pred: Tensor, target: Tensor, mask: Tensor | None, weight: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Depth (L1) and normals (1 - cosine) over the valid pixels: one masked pass, exact
        and free of host reads (invalid pixels are the rule in these targets, not the
        exception)."""
        present = self.labelled(target, mask)  # depth (N, 1, H, W); normals (N, H, W)
        count = present.sum()
        p = pred.float()
        if self.spec.kind == "depth":
            safe_target = torch.where(present, target.float(), p.detach())
            per_pixel = (p - safe_target).abs() * present
            stats = depth_statistics(p, safe_target, present, self.reduction)
        else:
            safe_target = torch.where(present[:, None], target.float(), 0.0)
            cosine = (p * safe_target).sum(dim=1)  # (N, H, W); p is unit length
            per_pixel = (1.0 - cosine) * present
            stats = normal_statistics(p, safe_target, present, self.reduction)
        if weight is not None:
            return _weighted_mean(per_pixel, present, weight, self.weighted_denominator), stats
        return per_pixel.sum() / count.clamp(min=1), stats

    def _evaluate_fast(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        kind = self.spec.kind
        num_outputs = self.spec.num_outputs
        if kind in ("regression", "dense_regression"):
            p, t = pred.float(), target.float()
            loss = F.mse_loss(p, t)
            n = t.numel()
            absolute = torch.sub(p.detach(), t).abs_().sum()  # one temporary (l1_loss: two)
            stats = torch.stack([torch.full_like(absolute, n), loss.detach() * n, absolute])
            return loss, stats
        if kind in ("multiclass", "segmentation"):
            # labels outside 0..C-1 become "missing" here (never an index error, which on an
            # accelerator is a device assert); the probe reports them after the step's read
            target = target.long()
            valid = (target >= 0) & (target < num_outputs)
            safe_target = torch.where(valid, target, IGNORE_INDEX)
            loss = F.cross_entropy(pred.float(), safe_target, ignore_index=IGNORE_INDEX)
            if kind == "segmentation":
                return loss, segmentation_statistics(pred.detach(), safe_target, valid)
            stats = class_statistics(pred.detach(), safe_target, kind, num_outputs, valid)
            return loss, stats
        loss = F.binary_cross_entropy_with_logits(pred.float(), target.float())
        return loss, class_statistics(pred.detach(), target, kind, num_outputs, None)

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean loss over labelled entries; exactly ``0 * pred.sum()`` when none is labelled
        (:meth:`evaluate` without the statistics)."""
        return self.evaluate(pred, target, mask)[0]

    def baseline_loss(self) -> float | None:
        """Loss of an uninformed predictor where known: log C for C-class cross-entropy."""
        if self.spec.kind in ("multiclass", "segmentation"):
            return math.log(self.spec.num_outputs)
        if self.spec.kind in ("binary", "multilabel"):
            return math.log(2.0)
        return None
