"""What a batch holds and how it is read: inputs with targets, masks and sample weights by task
name, single-input or multi-input (``{task: batch}``), and the checks that name what is wrong."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

Batch = Any


class TaskBatch(NamedTuple):
    """One batch of inputs with its targets, masks and sample weights by task name."""

    inputs: Any
    targets: Mapping[str, Tensor]
    masks: Mapping[str, Tensor]
    weights: Mapping[str, Tensor]


def unpack_task_batch(batch: Batch) -> TaskBatch:
    """Split a batch into its inputs and its targets, masks and sample weights by task.

    Accepted forms: ``(x, targets)``, ``(x, targets, masks)``, ``(x, targets, masks, weights)``
    or a mapping with keys ``inputs``, ``targets`` and optionally ``masks`` and ``weights``.
    ``targets``/``masks``/``weights`` map task names to tensors (weights: (N,) per sample).
    """
    if isinstance(batch, Mapping):
        if "inputs" not in batch or "targets" not in batch:
            raise ValueError(
                f"a dict batch needs the keys 'inputs' and 'targets', got {sorted(batch)}"
            )
        return TaskBatch(
            batch["inputs"], batch["targets"], batch.get("masks") or {}, batch.get("weights") or {}
        )
    if isinstance(batch, list | tuple) and len(batch) in (2, 3, 4):
        x, targets = batch[0], batch[1]
        masks = batch[2] if len(batch) >= 3 else {}
        weights = batch[3] if len(batch) == 4 else {}
        return TaskBatch(x, targets, masks or {}, weights or {})
    raise ValueError(
        "a batch must be (inputs, targets), (inputs, targets, masks), (inputs, targets, masks, "
        "weights), a dict with 'inputs' and 'targets', or (multi-input) a dict {task: batch}; "
        f"got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, list | tuple) else "")
    )


def unpack_batch(batch: Batch) -> tuple[Tensor, Mapping[str, Tensor], Mapping[str, Tensor]]:
    """Deprecated: (inputs, targets, masks) of :func:`unpack_task_batch`, which also returns the
    weights; kept for scripts written before it."""
    warnings.warn(
        "unpack_batch is deprecated: unpack_task_batch(batch) returns a TaskBatch "
        "(inputs, targets, masks, weights)",
        DeprecationWarning,
        stacklevel=2,
    )
    parsed = unpack_task_batch(batch)
    return parsed.inputs, parsed.targets, parsed.masks


def is_multi_input(batch: Batch) -> bool:
    """A mapping ``{task: batch}`` (each task its own inputs), not ``{"inputs": ..., ...}``."""
    return isinstance(batch, Mapping) and "inputs" not in batch and "targets" not in batch


def shared_inputs(parts: Mapping[str, TaskBatch], names: Sequence[str]) -> TaskBatch | None:
    """The one batch of a multi-input step whose tasks all read the same input tensor (equal
    values), with every task's own target, mask and weight; None otherwise. Costs one
    comparison per task (a host read on an accelerator)."""
    if any(name not in parts for name in names):
        return None
    first = parts[names[0]].inputs
    for name in names[1:]:
        x = parts[name].inputs
        if not (
            isinstance(x, Tensor)
            and isinstance(first, Tensor)
            and x.shape == first.shape
            and (x is first or torch.equal(x, first))
        ):
            return None
    pick = {
        field: {
            name: getattr(parts[name], field)[name]
            for name in names
            if name in getattr(parts[name], field)
        }
        for field in ("targets", "masks", "weights")
    }
    for name in names:  # a conditional task's parent target comes from its own batch
        for parent, value in parts[name].targets.items():
            pick["targets"].setdefault(parent, value)
    return TaskBatch(first, pick["targets"], pick["masks"], pick["weights"])


def total_batch_size(batch_size: int | Sequence[int]) -> int:
    """The samples of a step: its batch size, or the sum over the tasks' own batches."""
    return batch_size if isinstance(batch_size, int) else sum(batch_size)


def check_targets(
    targets: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    tasks: Sequence[str],
    ignored: frozenset[str] = frozenset(),
    required: Sequence[str] | None = None,
    where: str = "batch",
) -> None:
    """Targets (and masks) name known ``tasks`` (or ``ignored`` ones: deselected tasks), and
    every ``required`` task (default: all) has a target; errors name the tasks."""
    if isinstance(targets, Tensor):
        raise TypeError(
            f"targets must be a dict {{task name: tensor}}; the model's tasks are {list(tasks)}"
        )
    unknown = sorted(set(targets) - set(tasks) - ignored)
    if unknown:
        raise KeyError(
            f"{where} has targets for unknown task(s) {unknown}; the model's tasks are "
            f"{list(tasks)}"
        )
    needed = list(tasks) if required is None else list(required)
    missing = [name for name in needed if name not in targets]
    if missing:
        raise KeyError(
            f"{where} has no targets for task(s) {missing}; mark missing labels with NaN, "
            "-100 or a mask instead of leaving a task out"
        )
    unknown_masks = sorted(set(masks) - set(tasks) - ignored)
    if unknown_masks:
        raise KeyError(f"{where} has masks for unknown task(s) {unknown_masks}")
