"""GradNorm's toy example (paper Sec. 4) at a small size: the weights behave as the paper says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gradnorm_toy", ROOT / "benchmarks/gradnorm_toy.py")
assert _spec is not None and _spec.loader is not None
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)


@pytest.mark.slow
def test_two_tasks_small_scale_task_weight_rises() -> None:
    out = toy.run("gradnorm", num_tasks=2, seed=0, epochs=10, num_train=2560, lr=1e-3)
    trace = out["weights_trace"]
    assert out["w0_over_w1"] > 20  # sigma = (1, 100): the small-scale task gets the weight
    assert trace[len(trace) // 2][0] > 1.0  # and it rises early
    assert out["max_abs_sum_deviation"] < 1e-4  # sum w = T at every step


@pytest.mark.slow
def test_ten_tasks_weights_ordered_inversely_to_sigma() -> None:
    out = toy.run("gradnorm", num_tasks=10, seed=0, epochs=10, num_train=2560, lr=1e-3)
    assert max(out["sigmas"]) / min(out["sigmas"]) > 20
    assert out["spearman_weights_vs_sigma"] <= -0.9
    assert out["max_abs_sum_deviation"] < 1e-4
