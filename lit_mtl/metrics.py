"""Multi-task metrics: delta-m, the relative change against single-task baselines.

**Convention** (Maninis et al., CVPR 2019, arXiv:1904.08492; as in Nash-MTL and FAMO): over all
K metrics of all tasks,

    Delta_m % = (100 / K) * sum_k (-1)^{h_k} (M_mtl,k - M_base,k) / M_base,k

with h_k = 1 where higher is better (accuracy, F1) and 0 where lower is better (MSE, MAE).
**Lower is better; negative means better than the single-task baseline.** Every metric counts
once (a task with two metrics counts twice); other papers flip the sign or average per task first.

>>> round(delta_m({"digit/acc": 0.84, "depth/mse": 1.5}, {"digit/acc": 0.80, "depth/mse": 2.0}), 6)
-15.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from lit_mtl.functional.task_metrics import METRIC_DIRECTIONS
from lit_mtl.tasks import TaskSpec, as_task_spec

__all__ = [
    "HIGHER_IS_BETTER",
    "DeltaM",
    "delta_m",
    "higher_is_better",
    "metric_directions",
]

#: Direction of the metrics ``MultiTaskModule`` logs, by metric name.
HIGHER_IS_BETTER: dict[str, bool] = {"acc": True, "f1": True, "mse": False, "mae": False}


def higher_is_better(key: str, directions: Mapping[str, bool] | None = None) -> bool:
    """Direction of ``key`` (``"task/metric"`` or ``"metric"``): from ``directions`` by full key,
    else by the metric name after the last ``/`` in :data:`HIGHER_IS_BETTER`."""
    if directions is not None and key in directions:
        return bool(directions[key])
    name = key.rsplit("/", 1)[-1]
    if name not in HIGHER_IS_BETTER:
        raise KeyError(
            f"delta-m: no direction known for metric {key!r}; pass higher_is_better="
            f"{{{key!r}: True/False}} (known metric names: {sorted(HIGHER_IS_BETTER)})"
        )
    return HIGHER_IS_BETTER[name]


def metric_directions(tasks: Sequence[TaskSpec | Mapping]) -> dict[str, bool]:
    """``{"task/metric": higher is better}`` for every metric the tasks log."""
    directions: dict[str, bool] = {}
    for spec in (as_task_spec(t) for t in tasks):
        for name, higher in METRIC_DIRECTIONS[spec.kind].items():
            directions[f"{spec.name}/{name}"] = higher
    return directions


def delta_m(
    values: Mapping[str, float],
    baseline: Mapping[str, float],
    directions: Mapping[str, bool] | None = None,
) -> float:
    """Delta-m % of ``values`` against ``baseline`` over every key of ``baseline`` (see the module
    docstring; lower is better, negative = better than the baseline).

    Args:
        values: metric values of the multi-task model, ``{"task/metric": value}``.
        baseline: the single-task values for the same keys; none may be zero.
        directions: ``{key: higher is better}``; keys not given fall back to the metric name
            (``acc``/``f1`` higher, ``mse``/``mae`` lower).

    >>> round(delta_m({"a/acc": 0.9}, {"a/acc": 1.0}), 6)  # 10% lower accuracy: +10
    10.0
    """
    if not baseline:
        raise ValueError("delta-m: the baseline has no metrics")
    missing = sorted(set(baseline) - set(values))
    if missing:
        raise KeyError(f"delta-m: values lack baseline metric(s) {missing}")
    total = 0.0
    for key, base in baseline.items():
        base, value = float(base), float(values[key])
        if base == 0 or not math.isfinite(base):
            raise ValueError(f"delta-m: baseline {key!r} is {base}; it must be finite and non-zero")
        sign = -1.0 if higher_is_better(key, directions) else 1.0
        total += sign * (value - base) / abs(base)
    return 100.0 * total / len(baseline)


class DeltaM(Metric):
    """torchmetrics-style delta-m %: ``update`` with ``{"task/metric": value}`` (e.g. once per
    seed, or once per evaluation); ``compute`` returns :func:`delta_m` of the averaged values
    against the fixed ``baseline``. Lower is better; negative = better than single-task.
    States are sums and a count, reduced by summation across DDP ranks.

    >>> metric = DeltaM({"a/acc": 0.8, "b/mse": 2.0})
    >>> metric.update({"a/acc": 0.80, "b/mse": 1.0})
    >>> metric.update({"a/acc": 0.88, "b/mse": 2.0})
    >>> round(float(metric.compute()), 6)  # means 0.84 and 1.5: (-5 - 25) / 2
    -15.0
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(
        self, baseline: Mapping[str, float], directions: Mapping[str, bool] | None = None
    ) -> None:
        super().__init__()
        if not baseline:
            raise ValueError("DeltaM: the baseline has no metrics")
        self.keys = list(baseline)
        self.baseline = {k: float(v) for k, v in baseline.items()}
        self.directions = {k: higher_is_better(k, directions) for k in self.keys}
        delta_m(self.baseline, self.baseline, self.directions)  # validates the baseline
        self.add_state("sums", torch.zeros(len(self.keys), dtype=torch.float64), "sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), "sum")

    def update(self, values: Mapping[str, float | Tensor]) -> None:
        missing = [k for k in self.keys if k not in values]
        if missing:
            raise KeyError(f"DeltaM.update: values lack metric(s) {missing}")
        row = torch.tensor([float(values[k]) for k in self.keys], dtype=torch.float64)
        self.sums += row.to(self.sums.device)
        self.count += 1

    def compute(self) -> Tensor:
        if self.count == 0:
            raise RuntimeError("DeltaM.compute called before update")
        means = (self.sums / self.count).tolist()
        value = delta_m(dict(zip(self.keys, means, strict=True)), self.baseline, self.directions)
        return torch.tensor(value, dtype=torch.float64)
