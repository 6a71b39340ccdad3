"""Every task's loss and metric statistics for one step, with one host read.

Each loss takes its task's fast path (one fused op) unless a mask, a sample weight or a parent
condition applies; the losses and the class tasks' label probes are read on the host together,
once per step (:meth:`Task.fast_path_exact`: an invalid label is an error naming the task and
the value), and a task whose fast path was not exact (a missing label) is redone masked from the
same prediction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from lit_mtl._modules import TypedModuleDict
from lit_mtl.tasks.batch import TaskBatch
from lit_mtl.tasks.relations import conditional_mask
from lit_mtl.tasks.task import Task


class TaskEvaluation(NamedTuple):
    """What :func:`evaluate_tasks` returns, in task order."""

    losses: list[Tensor]  # T scalar losses with their graphs (0 for a task absent from the step)
    stacked: Tensor  # the same (T,), float32, with the graph
    values: list[float]  # the same losses on the host
    present: Tensor  # (T,) bool: the task had a labelled entry in the step
    statistics: Tensor  # the tasks' metric statistics, concatenated


def evaluate_tasks(
    tasks: Mapping[str, Task] | TypedModuleDict[Task],
    preds: Sequence[Tensor | None],
    parts: Sequence[TaskBatch | None],
    count_positions: Tensor,
) -> TaskEvaluation:
    """Losses and metric statistics of every task's prediction against its batch's target.

    ``preds[i]`` / ``parts[i]``: task i's prediction and the batch it is scored against (None for
    a task absent from a multi-input step); ``count_positions``: where each task's labelled
    count sits in the concatenated statistics.
    """
    device = next(p for p in preds if p is not None).device
    losses: list[Tensor] = []
    statistics: list[Tensor] = []
    probes: list[Tensor] = []
    fast_tasks: list[int] = []
    named = list(tasks.items())
    for i, (name, task) in enumerate(named):
        pred, part = preds[i], parts[i]
        if pred is None or part is None:  # absent from this multi-input step
            losses.append(torch.zeros((), device=device))
            statistics.append(torch.zeros(task.statistics_size, device=device))
            continue
        mask = conditional_mask(task.spec, part)
        weight = part.weights.get(name)
        fast = mask is None and weight is None
        loss, stats = task.evaluate(pred, part.targets[name], mask, fast=fast, weight=weight)
        if fast:
            fast_tasks.append(i)
            if task.probe_size:
                probes.append(task.probe(part.targets[name]))
        losses.append(loss)  # scalar, 0 when unlabelled
        statistics.append(stats)
    stacked = _stacked(losses)
    values = torch.cat([stacked.detach(), *probes]).tolist()  # one host read
    probe_at = len(losses)
    redo = []
    for i in fast_tasks:
        name, task = named[i]
        size = task.probe_size
        probe = values[probe_at : probe_at + size]
        probe_at += size
        part = parts[i]
        assert part is not None  # a fast-path task is in the step
        exact = task.fast_path_exact(probe, part.targets[name])
        if not exact or not math.isfinite(values[i]):
            redo.append(i)
    for i in redo:  # missing labels: the masked path, from the same prediction
        name, task = named[i]
        part, pred = parts[i], preds[i]
        assert part is not None and pred is not None  # as above
        losses[i], statistics[i] = task.evaluate(pred, part.targets[name])
    loss_values = values[: len(losses)]
    if redo:
        stacked = _stacked(losses)
        loss_values = stacked.detach().tolist()
    stats_all = torch.cat(statistics)
    present = stats_all[count_positions] > 0
    return TaskEvaluation(losses, stacked, loss_values, present, stats_all)


def _stacked(losses: list[Tensor]) -> Tensor:
    """The (T,) float32 stack of the scalar losses, keeping their graphs (``.float()`` is the
    identity on the kinds' float32 losses)."""
    return torch.stack([loss.float() for loss in losses])
