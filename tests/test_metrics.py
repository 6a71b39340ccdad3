"""delta-m: hand-computed values, signs, averaging over every metric, the torchmetrics class."""

from __future__ import annotations

import pytest
import torch

from lit_mtl.metrics import DeltaM, delta_m, higher_is_better, metric_directions
from lit_mtl.tasks import TaskSpec


def test_hand_computed_mixed_directions() -> None:
    # acc 0.80 -> 0.84: +5% relative, higher is better -> -5
    # mse 2.0 -> 1.5: -25% relative, lower is better   -> -25
    assert delta_m({"a/acc": 0.84, "b/mse": 1.5}, {"a/acc": 0.80, "b/mse": 2.0}) == pytest.approx(
        -15.0
    )


def test_signs_worse_is_positive() -> None:
    assert delta_m({"a/acc": 0.72}, {"a/acc": 0.80}) == pytest.approx(10.0)  # 10% less accurate
    assert delta_m({"a/mae": 3.0}, {"a/mae": 2.0}) == pytest.approx(50.0)  # 50% larger error
    assert delta_m({"a/acc": 0.8}, {"a/acc": 0.8}) == 0.0


def test_averages_over_all_metrics_not_per_task() -> None:
    # task a has two metrics (both +10% better), task b one metric (+40% worse):
    # per metric: (-10 - 10 + 40) / 3 = 6.667 (per task first would give (-10 + 40) / 2 = 15)
    values = {"a/acc": 0.88, "a/f1": 0.66, "b/mse": 1.4}
    base = {"a/acc": 0.80, "a/f1": 0.60, "b/mse": 1.0}
    assert delta_m(values, base) == pytest.approx(20.0 / 3)


def test_only_baseline_keys_count_and_explicit_directions() -> None:
    values = {"a/acc": 0.9, "extra/acc": 0.1}
    assert delta_m(values, {"a/acc": 0.9}) == 0.0
    # a custom metric needs its direction
    with pytest.raises(KeyError, match="no direction known for metric 'a/iou'"):
        delta_m({"a/iou": 0.6}, {"a/iou": 0.5})
    assert delta_m({"a/iou": 0.6}, {"a/iou": 0.5}, {"a/iou": True}) == pytest.approx(-20.0)


def test_errors_name_the_problem() -> None:
    with pytest.raises(KeyError, match="lack baseline metric"):
        delta_m({"a/acc": 0.5}, {"a/acc": 0.5, "b/acc": 0.5})
    with pytest.raises(ValueError, match="non-zero"):
        delta_m({"a/mse": 0.5}, {"a/mse": 0.0})
    with pytest.raises(ValueError, match="no metrics"):
        delta_m({}, {})


def test_directions_from_the_task_metrics() -> None:
    specs = [TaskSpec("depth", "regression"), TaskSpec("seg", "multiclass", 3)]
    directions = metric_directions(specs)
    assert directions == {"depth/mae": False, "depth/mse": False, "seg/acc": True, "seg/f1": True}
    assert higher_is_better("seg/acc") and not higher_is_better("mse")


def test_deltam_metric_averages_updates_then_compares() -> None:
    metric = DeltaM({"a/acc": 0.8, "b/mse": 2.0})
    metric.update({"a/acc": 0.80, "b/mse": 1.0})
    metric.update({"a/acc": torch.tensor(0.88), "b/mse": 2.0})
    assert metric.compute().item() == pytest.approx(-15.0)  # means 0.84 and 1.5
    metric.reset()
    with pytest.raises(RuntimeError, match="before update"):
        metric.compute()
    with pytest.raises(KeyError, match="b/mse"):
        metric.update({"a/acc": 0.8})
    with pytest.raises(ValueError, match="non-zero"):
        DeltaM({"a/acc": 0.0})
