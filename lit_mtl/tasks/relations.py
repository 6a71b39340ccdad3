"""How tasks relate: conditional tasks (counted where a binary parent is positive) and derived
tasks (a product of binary tasks' probabilities, ESMM), and the checks of those relations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lit_mtl.tasks.batch import TaskBatch
from lit_mtl.tasks.spec import TaskSpec
from lit_mtl.tasks.task import product_logit


def check_task_relations(specs: Sequence[TaskSpec], selected: Sequence[str]) -> None:
    """Parents and product factors name binary tasks (factors with heads); a selected product
    task needs its factors selected (their heads), a conditional task only its parent's labels."""
    by_name = {s.name: s for s in specs}
    for spec in specs:
        related = ([spec.parent] if spec.parent else []) + list(spec.product_of or ())
        for other in related:
            if other not in by_name:
                raise ValueError(
                    f"task {spec.name!r} refers to task {other!r}, which is not one of the "
                    f"module's tasks {list(by_name)}"
                )
            if by_name[other].kind != "binary":
                raise ValueError(
                    f"task {spec.name!r} refers to task {other!r} of kind "
                    f"{by_name[other].kind!r}; parents and product factors are binary tasks"
                )
            if other in (spec.product_of or ()) and by_name[other].product_of is not None:
                raise ValueError(
                    f"task {spec.name!r}: its factor {other!r} is itself a product; list the "
                    "factors with heads"
                )
        missing = [f for f in spec.product_of or () if f not in selected]
        if spec.name in selected and missing:
            raise ValueError(
                f"select_tasks keeps the product task {spec.name!r} without its factor(s) "
                f"{missing}, whose heads it multiplies"
            )


def conditional_mask(spec: TaskSpec, part: TaskBatch) -> Tensor | None:
    """The task's mask, restricted to the samples whose parent label is positive for a
    conditional task (a missing parent label counts as not positive)."""
    mask = part.masks.get(spec.name)
    parent = spec.parent
    if parent is None:
        return mask
    parent_target = part.targets[parent]
    positive = parent_target.reshape(parent_target.shape[0]) == 1
    parent_mask = part.masks.get(parent)
    if parent_mask is not None:
        positive = positive & parent_mask.to(device=positive.device, dtype=torch.bool)
    if mask is None:
        return positive
    return mask.to(device=positive.device, dtype=torch.bool) & positive.reshape(
        -1, *([1] * (mask.dim() - 1))
    )


def with_derived(preds: Mapping[str, Tensor], specs: Sequence[TaskSpec]) -> dict[str, Tensor]:
    """All tasks' predictions, in the specs' order: a derived task's from its factors'."""
    out = {}
    for spec in specs:
        factors = spec.product_of
        out[spec.name] = (
            preds[spec.name] if factors is None else product_logit([preds[f] for f in factors])
        )
    return out
