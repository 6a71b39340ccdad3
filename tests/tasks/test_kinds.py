"""Every registered task kind through the same contract, and a new kind added as the
contributor recipe says: one class and its registration."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from lit_mtl import MultiTaskModule, MultiTaskTensorDataset, TaskSpec, UncertaintyWeighting
from lit_mtl.compare.report import summarize
from lit_mtl.compare.runner import RunResult
from lit_mtl.functional import UNCERTAINTY_FORMS
from lit_mtl.metrics import HIGHER_IS_BETTER, metric_directions
from lit_mtl.tasks import Task, TaskKind, get_kind, register_kind, task_kinds
from lit_mtl.tasks.kinds import _REGISTRY, RANKING_METRICS

from conftest import fast_trainer

BUILT_IN = (
    "regression",
    "binary",
    "multiclass",
    "multilabel",
    "segmentation",
    "depth",
    "normals",
    "dense_regression",
)
OUTPUTS = {"binary": 1, "depth": 1, "normals": 3, "multiclass": 3, "segmentation": 3}


def example(kind: TaskKind, spec: TaskSpec, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """A (prediction, target) batch of 6 samples with every label present."""
    d, n = spec.num_outputs, 6
    if kind.dense:
        pred = torch.randn(n, d, 4, 5, generator=g)
        if kind.class_indices:
            return pred, torch.randint(0, d, (n, 4, 5), generator=g)
        target = torch.randn(n, d, 4, 5, generator=g)
        if spec.kind == "normals":
            return F.normalize(pred, dim=1), F.normalize(target, dim=1)
        return pred, target.abs() + 0.5 if spec.kind == "depth" else target
    if kind.class_indices:
        return torch.randn(n, d, generator=g), torch.randint(0, d, (n,), generator=g)
    shape = (n,) if d == 1 else (n, d)
    if kind.class_labels:
        return torch.randn(shape, generator=g), torch.randint(0, 2, shape, generator=g).float()
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_the_built_in_kinds_are_registered_in_order() -> None:
    assert task_kinds()[: len(BUILT_IN)] == BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_kind_keeps_the_contract(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    kind = get_kind(name)
    spec = TaskSpec("t", name, OUTPUTS.get(name, 2))
    task = Task(spec, in_features=4)
    pred, target = example(kind, spec, g)
    pred.requires_grad_(True)
    task.check_target(target, 6)
    loss, stats = task.evaluate(pred, target)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert stats.shape == (task.statistics_size,) and stats[0] > 0
    ranking = set(RANKING_METRICS) if kind.ranked else set()
    assert set(task.metrics(stats.double())) == set(kind.metric_directions) - ranking
    assert kind.uncertainty_form in UNCERTAINTY_FORMS
    assert set(kind.metric_directions) <= set(HIGHER_IS_BETTER)
    assert kind.percent_metrics <= set(kind.metric_directions)
    if kind.has_fast_path:  # the fused op equals the masked path on a fully labelled batch
        fast_loss, fast_stats = task.evaluate(pred, target, fast=True)
        torch.testing.assert_close(fast_loss, loss)
        torch.testing.assert_close(fast_stats, stats)
    # no labelled entry: exactly zero, in the graph
    nothing = torch.zeros(target.shape[0], dtype=torch.bool)
    empty, empty_stats = task.evaluate(pred, target, mask=nothing)
    assert empty.item() == 0.0 and empty.requires_grad and empty_stats[0] == 0
    assert task.metrics(empty_stats.double()) == {}
    with pytest.raises((TypeError, ValueError), match="task 't'"):
        task.check_target(target[:3], 6)


def test_an_unknown_kind_lists_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"kind must be one of .*'regression'"):
        TaskSpec("t", "ordinal")
    with pytest.raises(ValueError, match="unknown task kind 'ordinal'"):
        get_kind("ordinal")


def test_a_name_registered_twice_is_an_error() -> None:
    class Other(TaskKind):
        name = "regression"

    with pytest.raises(ValueError, match="already registered"):
        register_kind(Other)


# ---------------------------------------------------------------------- the recipe's kind
RECIPE = Path(__file__).resolve().parents[2] / "docs" / "contributing" / "add-a-task-kind.md"


@pytest.fixture
def count_kind():  # type: ignore[no-untyped-def]
    """The contributor recipe's Poisson count kind, registered from the page's first block."""
    block = re.findall(r"```python\n(.*?)```", RECIPE.read_text(), flags=re.S)[0]
    exec(compile(block, str(RECIPE), "exec"), {"__name__": "recipe"})
    yield get_kind("count")
    del _REGISTRY["count"]


def test_a_new_kind_is_one_class_and_its_registration(count_kind: TaskKind) -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    counts = torch.poisson(torch.exp(x[:, 0]))
    counts[:5] = float("nan")  # missing labels
    data = MultiTaskTensorDataset(x, {"events": counts, "size": x[:, 1]})
    specs = [TaskSpec("events", "count"), TaskSpec("size")]
    module = MultiTaskModule(
        encoder=torch.nn.Linear(4, 8),
        tasks=specs,
        weighting=UncertaintyWeighting(),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
    )
    assert module.weighting.forms == ["classification", "gaussian"]
    trainer = fast_trainer(max_epochs=2)
    trainer.fit(module, DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))
    logged = trainer.logged_metrics
    assert {"val/events/nll", "val/events/mae", "train/events/loss"} <= set(logged)
    assert all(torch.isfinite(logged[k]) for k in ("val/events/nll", "val/events/mae"))
    assert metric_directions(specs)["events/nll"] is False
    assert HIGHER_IS_BETTER["nll"] is False
    directions = metric_directions(specs)
    run = RunResult("equal", 0, {"events/nll": 1.0, "events/mae": 2.0}, directions, 1.0, 1, "h")
    rows = summarize([run], ["events"], ["equal"])
    assert rows[0]["metric_keys"] == ["events/nll", "events/mae"]
