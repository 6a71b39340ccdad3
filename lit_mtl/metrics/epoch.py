"""Every task's epoch loss and metrics, accumulated as one vector per step.

:class:`EpochTaskMetrics` keeps, for one stage, the batch-size-weighted sum of the T task losses
and the sum of the tasks' statistics vectors (:mod:`lit_mtl.functional.task_metrics`). A step
costs three in-place additions for all tasks together, with no host read; the metrics are
computed once, at the end of the epoch, after one all-reduce (sum) of the packed state across
DDP ranks, so the epoch values are those of the whole distributed epoch, identical on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lit_mtl.engines.distributed import all_gather_columns, all_reduce_sum
from lit_mtl.functional.ranking_metrics import average_precision, roc_auc
from lit_mtl.tasks import TaskSpec


class EpochTaskMetrics(nn.Module):
    """Epoch aggregates of T tasks: ``{"task/loss": ..., "task/metric": ...}`` from
    :meth:`compute`.

    Args:
        specs: the tasks, in the order of the losses and statistics given to :meth:`update`.
        statistics_sizes: length of each task's statistics vector.
        reduction: the dense tasks' reduction, ``"pooled"`` or ``"per_batch"``
            (:mod:`lit_mtl.functional.dense_metrics`).

    ``task/loss`` is the batch-size-weighted mean of the task's batch losses (as Lightning's
    ``self.log(..., batch_size=n)`` epoch mean, synchronised; with one batch per task, as in
    multi-input training, each task's own batch sizes); a task's metrics are absent when
    none of its entries was labelled in the epoch. The state is not saved in checkpoints (as
    torchmetrics' states): a run resumed mid-epoch reports that epoch from the resumed batches.
    """

    def __init__(
        self,
        specs: Sequence[TaskSpec],
        statistics_sizes: Sequence[int],
        reduction: str = "pooled",
    ) -> None:
        super().__init__()
        self.specs = list(specs)
        self.reduction = reduction
        self.sizes = [int(s) for s in statistics_sizes]
        if len(self.sizes) != len(self.specs):
            raise ValueError("EpochTaskMetrics: one statistics size per task")
        self._allocate(torch.device("cpu"))

    def _allocate(self, device: torch.device) -> None:
        """Fresh zero states on ``device``. Plain tensors, not buffers: they follow the data's
        device at the first update (float64 where the device has it; MPS has not), and
        module.to() never has to convert them. Always new memory, never zeroed in place: a
        module sent to ``ddp_spawn`` processes arrives with its CPU tensors in memory shared by
        all of them, and each rank must sum into its own."""
        dtype = torch.float32 if device.type == "mps" else torch.float64
        num_tasks, total = len(self.specs), sum(self.sizes)
        self.loss_sums = torch.zeros(num_tasks, dtype=dtype, device=device)
        self.samples = torch.zeros(num_tasks, dtype=dtype, device=device)
        self.totals = torch.zeros(total, dtype=dtype, device=device)
        self.updates = 0  # on this rank, since the last reset

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._allocate(torch.device("cpu"))  # this process's own state (see _allocate)

    def _follow(self, device: torch.device) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.loss_sums = self.loss_sums.to(device, dtype)
        self.samples = self.samples.to(device, dtype)
        self.totals = self.totals.to(device, dtype)

    def update(self, losses: Tensor, statistics: Tensor, batch_size: int | Sequence[int]) -> None:
        """Add one batch: its (T,) task losses, its concatenated statistics, its size (or each
        task's batch size, 0 for a task absent from the step)."""
        if self.totals.device != statistics.device:
            self._follow(statistics.device)
        if isinstance(batch_size, int):
            self.loss_sums.add_(losses.detach(), alpha=batch_size)  # promoted to float64
            self.samples.add_(batch_size)
        else:
            sizes = torch.tensor(batch_size, dtype=self.samples.dtype).to(self.samples.device)
            self.loss_sums.add_(losses.detach() * sizes)
            self.samples.add_(sizes)
        self.totals.add_(statistics.detach())
        self.updates += 1

    def reset(self) -> None:
        self._allocate(self.totals.device)

    def compute(self) -> dict[str, Tensor]:
        """The epoch's values over all ranks (every rank must call it: one all-reduce)."""
        packed = torch.cat([self.loss_sums, self.samples, self.totals])
        packed = all_reduce_sum(packed)
        num_tasks = len(self.specs)
        loss_sums, samples = packed[:num_tasks], packed[num_tasks : 2 * num_tasks]
        totals = packed[2 * num_tasks :]
        values: dict[str, Tensor] = {}
        offset = 0
        for i, (spec, size) in enumerate(zip(self.specs, self.sizes, strict=True)):
            if samples[i] > 0:
                values[f"{spec.name}/loss"] = loss_sums[i] / samples[i]
            stats = totals[offset : offset + size]
            offset += size
            for name, value in spec.task_kind.metrics(
                spec.num_outputs, stats, self.reduction
            ).items():
                values[f"{spec.name}/{name}"] = value
        return values


class EpochRankingMetrics:
    """Exact ROC-AUC (``auroc``) and average precision (``auprc``) of binary tasks over an
    epoch's labelled entries (:mod:`lit_mtl.functional.ranking_metrics`).

    Unlike the summed statistics of :class:`EpochTaskMetrics`, a ranking metric needs every
    score: :meth:`update` keeps each batch's labelled (logit, label) pairs on their device, and
    :meth:`compute` gathers all tasks' pairs from every DDP rank in one packed all-gather, so the
    values are those of the whole distributed epoch, identical on every rank (as any epoch
    metric under Lightning's distributed sampler, a sample the sampler repeats to even out the
    ranks counts twice). Memory: 24 bytes per labelled entry (task, logit, label in float64)
    until the epoch ends.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.reset()

    def reset(self) -> None:
        self._pairs: list[Tensor] = []

    def update(self, task: int, logits: Tensor, labels: Tensor) -> None:
        """Task number ``task``'s labelled entries of a batch: logits and 0/1 labels, (n,)."""
        logits, labels = logits.detach().reshape(-1), labels.detach().reshape(-1)
        index = torch.full_like(logits, float(task), dtype=torch.float64)
        self._pairs.append(torch.stack([index, logits.double(), labels.double()]))

    def compute(self) -> tuple[dict[str, float], list[str]]:
        """``({"task/auroc": ..., "task/auprc": ...}, tasks without a value)``: a task whose
        entries have no positive or no negative (or none at all) gets no value."""
        device = self._pairs[0].device if self._pairs else torch.device("cpu")
        local = (
            torch.cat(self._pairs, dim=1)
            if self._pairs
            else torch.zeros((3, 0), dtype=torch.float64, device=device)
        )
        pairs = all_gather_columns(local).cpu()
        values: dict[str, float] = {}
        undefined: list[str] = []
        for t, name in enumerate(self.names):
            chosen = pairs[0] == t
            scores, labels = pairs[1, chosen], pairs[2, chosen]
            auroc = roc_auc(scores, labels)
            if auroc is None:
                undefined.append(name)
                continue
            values[f"{name}/auroc"] = auroc
            values[f"{name}/auprc"] = average_precision(scores, labels)  # type: ignore[assignment]
        return values, undefined
