"""A task inside the module: its head, its masked loss and its metrics' statistics.

Missing labels
--------------
A sample may lack the label of some task. It is marked by

* ``NaN`` in a regression (or multilabel) target,
* :data:`IGNORE_INDEX` (``-100``) in a class target (binary, multiclass, multilabel),
* or an explicit boolean mask (``True`` = labelled) given next to the targets.

Such samples are excluded from the task's loss and metrics. A batch in which a task has no label at
all gives that task a loss of exactly zero that is still connected to the head's graph (so DDP sees
every parameter used), never ``NaN``.

What depends on the kind of task (its loss, its target checks, its statistics) is asked of the
spec's :class:`~lit_mtl.tasks.TaskKind`; the dense kinds are described in
:mod:`lit_mtl.tasks.dense_kinds`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_mtl.functional.dense_metrics import DENSE_REDUCTIONS
from lit_mtl.tasks.kinds import IGNORE_INDEX
from lit_mtl.tasks.spec import TaskSpec

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
            head = spec.task_kind.default_head(in_features, spec.num_outputs)
        self.head = head
        #: the kind's rules (:mod:`lit_mtl.tasks.kinds`)
        self.task_kind = spec.task_kind

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
        dense = self.task_kind.dense
        if dense and z.dim() != 4:
            raise ValueError(
                f"task {self.name!r} ({self.kind}): got a representation of shape "
                f"{tuple(z.shape)}; a dense task needs an encoder that keeps a feature map "
                "(N, C, h, w), e.g. DenseCNNEncoder, SegNetEncoder or DilatedResNetEncoder"
            )
        out = self.head(z)
        if dense:
            if out.dim() != 4:
                raise ValueError(
                    f"task {self.name!r} ({self.kind}): the head must return a map (N, "
                    f"{self.spec.num_outputs}, h, w), got shape {tuple(out.shape)}; a dense task "
                    "needs an encoder that keeps a feature map"
                )
            if size is not None and tuple(out.shape[-2:]) != tuple(size):
                out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
        return self.task_kind.shape_prediction(self.spec, out)

    # ------------------------------------------------------------------ validation
    def check_target(self, target: Tensor, n: int) -> None:
        """Raise a clear error when ``target`` has the wrong shape or dtype for this task (a
        batch of ``n`` samples)."""
        spec = self.spec
        where = f"task {spec.name!r} ({spec.kind}, num_outputs={spec.num_outputs})"
        if not isinstance(target, Tensor):
            raise TypeError(f"{where}: target must be a Tensor, got {type(target).__name__}")
        self.task_kind.check_target(spec, target, n, where)

    # ------------------------------------------------------------------ label probe
    @property
    def probe_size(self) -> int:
        """Length of :meth:`probe`'s vector (0 for kinds without class labels: a missing label
        shows as a non-finite fast-path loss, or is masked anyway)."""
        return 3 if self.task_kind.class_labels else 0

    def probe(self, target: Tensor) -> Tensor:
        """Reductions of a class target, read on the host with the step's losses (one read for
        all tasks) by :meth:`fast_path_exact`: ``[min, max, sum |t - round(t)|]`` (NaN where a
        float target has a NaN, or the batch is empty). Empty for the other kinds."""
        if not self.task_kind.class_labels:
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
        (kinds without class labels: always; class indices: always, ``cross_entropy`` ignores
        missing labels; 0/1 labels: when no label is missing). Raises a ``ValueError`` naming
        the task and the value for a label the task cannot take; a target with NaN is checked
        on the masked path instead."""
        if not self.task_kind.class_labels:
            return True
        low, high, fraction = probe
        if math.isnan(low) or math.isnan(high) or math.isnan(fraction):
            return False
        self._check_label_range(low, high)
        if fraction > 0:
            self._check_labels(target, self.labelled(target))
        return self.task_kind.fast_path_exact(low)

    def _check_label_range(self, low: float, high: float) -> None:
        spec = self.spec
        indices = self.task_kind.class_indices
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
        if not self.task_kind.class_labels or not bool(present.any()):
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
        present = self.task_kind.labelled(self.spec, target)
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
        return self.task_kind.statistics_size(self.spec.num_outputs, self.reduction)

    def metrics(self, stats: Tensor) -> dict[str, Tensor]:
        """The task's metrics from its summed statistics; ``{}`` when nothing was labelled."""
        return self.task_kind.metrics(self.spec.num_outputs, stats, self.reduction)

    def evaluate(
        self,
        pred: Tensor,
        target: Tensor,
        mask: Tensor | None = None,
        fast: bool = False,
        weight: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(loss, statistics) of a batch: the mean loss over labelled entries and the detached
        sufficient statistics of the task's metrics (the first entry is the labelled count).

        The loss is the kind's (regression and dense regression: MSE; binary and multilabel: BCE
        with logits; multiclass and segmentation: cross-entropy; depth: L1; normals:
        1 - cosine). The masked path (the default) checks the labels and gives exactly
        ``0 * pred.sum()`` when no entry is labelled. ``fast`` (no mask) takes the kind's one
        fused loss op instead where it has one: equal to the masked path up to float round-off
        when :meth:`fast_path_exact` holds and the loss is finite (a missing regression label
        makes it NaN), otherwise to be redone.

        ``weight``: per-sample weights (N,), finite and >= 0: the loss is the weighted mean
        ``sum_i w_i l_i / sum_i w_i`` over the labelled entries (a sample's pixels or outputs
        share its weight), or ``sum_i w_i l_i / N`` with ``weighted_denominator="batch"``; the
        metrics stay unweighted.
        """
        kind, spec = self.task_kind, self.spec
        if weight is not None:
            weight = self._check_weight(weight, target.shape[0])
        target = kind.align_target(spec, pred, target)
        if fast and mask is None and weight is None and kind.has_fast_path:
            return kind.fast_evaluate(spec, pred, target)
        present = self.labelled(target, mask)
        count = present.sum()
        self._check_labels(target, present)
        # missing entries hold a harmless value so no NaN enters the graph, then are masked
        per_element, safe_target = kind.per_element_loss(spec, pred, target, present)
        per_element = per_element * present
        if weight is None:
            loss = per_element.sum() / count.clamp(min=1)
        else:
            loss = _weighted_mean(per_element, present, weight, self.weighted_denominator)
        stats = kind.statistics(
            spec, pred.detach(), safe_target, present, count, per_element, self.reduction
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

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean loss over labelled entries; exactly ``0 * pred.sum()`` when none is labelled
        (:meth:`evaluate` without the statistics)."""
        return self.evaluate(pred, target, mask)[0]

    def baseline_loss(self) -> float | None:
        """Loss of an uninformed predictor where known: log C for C-class cross-entropy, log 2
        for 0/1 labels."""
        return self.task_kind.baseline_loss(self.spec.num_outputs)
