"""Task metrics from summed statistics equal torchmetrics' on the same batches."""

from __future__ import annotations

import pytest
import torch

from lit_mtl import IGNORE_INDEX, Task, TaskSpec

from conftest import torchmetrics_reference


def batch(kind: str, c: int, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits well outside [0, 1] (torchmetrics reads [0, 1] predictions as probabilities) and
    targets with about a quarter missing."""
    missing = torch.rand(n, generator=g) < 0.25
    if kind == "regression":
        target = torch.randn(n, generator=g)
        return torch.randn(n, generator=g) * 3, torch.where(missing, float("nan"), target)
    if kind == "binary":
        target = torch.randint(0, 2, (n,), generator=g)
        return torch.randn(n, generator=g) * 3 + 2, torch.where(missing, IGNORE_INDEX, target)
    if kind == "multiclass":
        target = torch.randint(0, c - 1, (n,), generator=g)
        logits = torch.randn(n, c, generator=g) * 3
        logits[:, -1] -= 100  # class c - 1 neither a target nor predicted: not in the macro F1
        return logits, torch.where(missing, IGNORE_INDEX, target)
    target = torch.randint(0, 2, (n, c), generator=g)
    entry_missing = torch.rand(n, c, generator=g) < 0.25
    return torch.randn(n, c, generator=g) * 3, torch.where(entry_missing, IGNORE_INDEX, target)


@pytest.mark.parametrize(
    ("kind", "c"), [("regression", 1), ("binary", 1), ("multiclass", 5), ("multilabel", 4)]
)
def test_metrics_from_summed_statistics_equal_torchmetrics(kind: str, c: int) -> None:
    g = torch.Generator().manual_seed(0)
    task = Task(TaskSpec("t", kind, c), in_features=2)
    metrics = torchmetrics_reference(kind, c)
    total = torch.zeros(task.statistics_size, dtype=torch.float64)
    for n in (17, 5, 32):
        pred, target = batch(kind, c, n, g)
        _, stats = task.evaluate(pred, target)
        total += stats.double()
        present = task.labelled(target)
        for metric in metrics.values():
            if kind == "regression":
                metric.update(pred[present], target[present])
            else:
                metric.update(pred, target.long())
    ours = task.metrics(total)
    assert set(ours) == set(metrics)
    for name, metric in metrics.items():
        assert ours[name].item() == pytest.approx(metric.compute().item(), rel=1e-6, abs=1e-7), name


def test_no_labelled_entry_gives_no_metric() -> None:
    assert Task(TaskSpec("t"), in_features=2).metrics(torch.zeros(3)) == {}
