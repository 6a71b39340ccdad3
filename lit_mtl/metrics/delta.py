"""Multi-task metrics: delta-m, the relative change against single-task baselines.

**Convention** (Maninis et al., CVPR 2019, arXiv:1904.08492; as in Nash-MTL and FAMO): over all
K metrics of all tasks,

    Delta_m % = (100 / K) * sum_k (-1)^{h_k} (M_mtl,k - M_base,k) / M_base,k

with h_k = 1 where higher is better (accuracy, F1) and 0 where lower is better (MSE, MAE).
**Lower is better; negative means better than the single-task baseline.** Two conventions,
by name:

* ``"metrics"`` (default; Nash-MTL's ``delta_fn``, FAMO): the mean over all K metrics, so a task
  with five metrics (NYUv2 normals) counts five times;
* ``"tasks"`` (LibMTL's ``count_improvement``): the mean over tasks of each task's mean over its
  own metrics (a key ``"task/metric"`` belongs to the task before the last ``/``).

The single-task baseline may be numbers from elsewhere: :data:`NYUV2_SINGLE_TASK_BASELINE` is the
one CAGrad published and Nash-MTL / FAMO reuse.

>>> round(delta_m({"digit/acc": 0.84, "depth/mse": 1.5}, {"digit/acc": 0.80, "depth/mse": 2.0}), 6)
-15.0
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from lit_mtl.tasks import TaskSpec, as_task_spec, metric_name_directions


class _MetricNameDirections(Mapping[str, bool]):
    """``{metric name: higher is better}`` of every registered task kind, read when used."""

    def __getitem__(self, name: str) -> bool:
        return metric_name_directions()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(metric_name_directions())

    def __len__(self) -> int:
        return len(metric_name_directions())


#: Direction of the metrics ``MultiTaskModule`` logs, by metric name (from the task kinds'
#: :attr:`~lit_mtl.tasks.TaskKind.metric_directions`, each kind's primary metric first)
HIGHER_IS_BETTER: Mapping[str, bool] = _MetricNameDirections()

DELTA_M_CONVENTIONS = ("metrics", "tasks")

#: NYUv2 single-task (SegNet) values published by CAGrad (Liu et al., NeurIPS 2021) and used as
#: the delta-m baseline by Nash-MTL and FAMO (``BASE`` in their ``experiments/nyuv2/utils.py``),
#: keyed as :class:`~lit_mtl.data.NYUv2DataModule`'s tasks log them (shares as fractions).
#: Their reduction is ``per_batch`` (:mod:`lit_mtl.functional.dense_metrics`).
NYUV2_SINGLE_TASK_BASELINE: dict[str, float] = {
    "segmentation/miou": 0.3830,
    "segmentation/pix_acc": 0.6376,
    "depth/abs_err": 0.6754,
    "depth/rel_err": 0.2780,
    "normal/angle_mean": 25.01,
    "normal/angle_median": 19.21,
    "normal/within_11_25": 0.3014,
    "normal/within_22_5": 0.5720,
    "normal/within_30": 0.6915,
}


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
        for name, higher in spec.task_kind.metric_directions.items():
            directions[f"{spec.name}/{name}"] = higher
    return directions


def delta_m(
    values: Mapping[str, float],
    baseline: Mapping[str, float],
    directions: Mapping[str, bool] | None = None,
    convention: str = "metrics",
) -> float:
    """Delta-m % of ``values`` against ``baseline`` over every key of ``baseline`` (see the module
    docstring; lower is better, negative = better than the baseline).

    Args:
        values: metric values of the multi-task model, ``{"task/metric": value}``.
        baseline: the single-task values for the same keys; none may be zero.
        directions: ``{key: higher is better}``; keys not given fall back to the metric name
            (``acc``/``f1``/``miou``/... higher, ``mse``/``mae``/``abs_err``/... lower).
        convention: ``"metrics"`` (mean over all metrics) or ``"tasks"`` (mean over tasks of
            their per-task means).

    >>> round(delta_m({"a/acc": 0.9}, {"a/acc": 1.0}), 6)  # 10% lower accuracy: +10
    10.0
    >>> values, base = {"a/acc": 0.9, "b/mse": 1.0, "b/mae": 1.0}, {"a/acc": 1.0, "b/mse": 2.0,
    ...     "b/mae": 2.0}
    >>> round(delta_m(values, base), 6), round(delta_m(values, base, convention="tasks"), 6)
    (-30.0, -20.0)
    """
    if convention not in DELTA_M_CONVENTIONS:
        raise ValueError(
            f"delta-m: convention must be one of {DELTA_M_CONVENTIONS}, got {convention!r}"
        )
    if not baseline:
        raise ValueError("delta-m: the baseline has no metrics")
    missing = sorted(set(baseline) - set(values))
    if missing:
        raise KeyError(f"delta-m: values lack baseline metric(s) {missing}")
    by_task: dict[str, list[float]] = {}
    for key, base in baseline.items():
        base, value = float(base), float(values[key])
        if base == 0 or not math.isfinite(base):
            raise ValueError(f"delta-m: baseline {key!r} is {base}; it must be finite and non-zero")
        sign = -1.0 if higher_is_better(key, directions) else 1.0
        task = key.rsplit("/", 1)[0] if convention == "tasks" else key
        by_task.setdefault(task, []).append(sign * (value - base) / abs(base))
    means = [sum(changes) / len(changes) for changes in by_task.values()]
    return 100.0 * sum(means) / len(means)


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

    # declared state (add_state), typed for the type checker
    sums: Tensor
    count: Tensor

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(
        self,
        baseline: Mapping[str, float],
        directions: Mapping[str, bool] | None = None,
        convention: str = "metrics",
    ) -> None:
        super().__init__()
        if not baseline:
            raise ValueError("DeltaM: the baseline has no metrics")
        self.keys = list(baseline)
        self.baseline = {k: float(v) for k, v in baseline.items()}
        self.directions = {k: higher_is_better(k, directions) for k in self.keys}
        self.convention = convention
        delta_m(self.baseline, self.baseline, self.directions, convention)  # validates both
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
        value = delta_m(
            dict(zip(self.keys, means, strict=True)),
            self.baseline,
            self.directions,
            self.convention,
        )
        return torch.tensor(value, dtype=torch.float64)
