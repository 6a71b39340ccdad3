"""A comparison's report: the summary rows, the Markdown table, the CSV and the plots."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lit_mtl.compare.runner import RunResult
from lit_mtl.metrics import delta_m, higher_is_better
from lit_mtl.tasks import get_kind, task_kinds


def _dense_reduction_metrics() -> set[str]:
    """The metric names whose value depends on the dense reduction."""
    kinds = (get_kind(name) for name in task_kinds())
    return {metric for k in kinds if k.uses_dense_reduction for metric in k.metric_directions}


def _percent_metrics() -> set[str]:
    """The metric names shown in percent (shares in [0, 1])."""
    return {metric for name in task_kinds() for metric in get_kind(name).percent_metrics}


_REDUCTIONS = {
    "pooled": "dense metrics pooled over all valid pixels of the test split",
    "per_batch": "dense metrics averaged over test batches (the MTAN / Nash-MTL code)",
}


def convention_note(
    convention: str = "metrics",
    external_baseline: bool = False,
    dense_reduction: str | None = None,
) -> str:
    """The sentence under a comparison table: delta-m's convention, its baseline, and the dense
    metrics' reduction where there are dense tasks."""
    mean = (
        "mean over all metrics of all tasks"
        if convention == "metrics"
        else "mean over tasks of each task's mean over its metrics (LibMTL)"
    )
    against = (
        "against the given single-task numbers"
        if external_baseline
        else "per seed against the single-task models of that seed"
    )
    note = (
        "delta-m %: lower is better, negative = better than single-task (Maninis et al. 2019 "
        f"convention); {mean}, {against}, then mean ± std over seeds"
    )
    if dense_reduction is not None:
        note += f"; {_REDUCTIONS[dense_reduction]}"
    return note


#: the default note (metrics convention, single-task runs, no dense tasks)
CONVENTION = convention_note()

SECONDS_NOTE = (
    "s / epoch: training wall time per epoch (validation included, data set-up excluded); "
    "single-task: the sum over its per-task models."
)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def has_dense_metrics(keys: Sequence[str]) -> bool:
    """Whether any ``task/metric`` key is a dense task's metric."""
    names = _dense_reduction_metrics()
    return any(k.rsplit("/", 1)[-1] in names for k in keys)


def summarize(
    results: Sequence[RunResult],
    task_names: Sequence[str],
    method_labels: Sequence[str],
    metrics: Sequence[str] | None = None,
    baseline: Mapping[str, float] | None = None,
    convention: str = "metrics",
) -> list[dict[str, Any]]:
    """One row per method (single-task first): per-metric mean/std over seeds, delta-m % per seed
    against the single-task runs of the same seed, or against ``baseline`` numbers where given
    (mean/std; ``convention`` as :func:`~lit_mtl.metrics.delta_m`), seconds per epoch
    (single-task: the sum over its per-task models)."""
    stl: dict[int, dict[str, float]] = {}
    stl_seconds: dict[int, float] = {}
    directions: dict[str, bool] = {}
    for r in results:
        directions.update(r.directions)
        if r.task is not None:
            stl.setdefault(r.seed, {}).update(r.metrics)
            stl_seconds[r.seed] = stl_seconds.get(r.seed, 0.0) + r.seconds_per_epoch
    # a task's metrics in its kind's order (the primary metric, acc or mse, first), as the runs
    # list them (metric_directions)
    keys = [
        k
        for t in task_names
        for k in directions
        if k.startswith(t + "/") and (metrics is None or k.split("/", 1)[1] in metrics)
    ]
    if not keys:
        raise ValueError(f"comparison: no metric selected by metrics={metrics}")
    rows: list[dict[str, Any]] = []
    by_method: dict[str, list[RunResult]] = {}
    for r in results:
        if r.task is None:
            by_method.setdefault(r.label, []).append(r)
    groups: list[tuple[str, dict[int, dict[str, float]], dict[int, float]]] = []
    if stl:
        groups.append(("single-task", stl, stl_seconds))
    for label in method_labels:
        runs = by_method.get(label, [])
        groups.append(
            (label, {r.seed: r.metrics for r in runs}, {r.seed: r.seconds_per_epoch for r in runs})
        )
    for label, per_seed, seconds in groups:
        if not per_seed:
            continue
        row: dict[str, Any] = {"method": label, "seeds": sorted(per_seed)}
        for k in keys:
            row[k] = _mean_std([per_seed[s][k] for s in sorted(per_seed)])
        if baseline is not None:
            missing = sorted(set(baseline) - set(keys))
            if missing:
                raise KeyError(
                    f"comparison: baseline key(s) {missing} are not among the runs' metrics {keys}"
                )
            deltas = [
                delta_m({k: per_seed[s][k] for k in baseline}, baseline, directions, convention)
                for s in sorted(per_seed)
            ]
        else:
            deltas = [
                delta_m(
                    {k: per_seed[s][k] for k in keys},
                    {k: stl[s][k] for k in keys},
                    directions,
                    convention,
                )
                for s in sorted(per_seed)
                if s in stl
            ]
        row["delta_m"] = _mean_std(deltas) if deltas else (math.nan, math.nan)
        row["seconds_per_epoch"] = statistics.fmean(seconds.values())
        rows.append(row)
    for row in rows:
        row["metric_keys"] = keys
        row["higher_is_better"] = {k: higher_is_better(k, directions) for k in keys}
    return rows


def _fmt(mean: float, std: float, digits: int = 2) -> str:
    return "-" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _metric_digits(key: str) -> tuple[float, int]:
    """Percent for accuracy-like metrics in [0, 1], else 3 significant decimals."""
    if key.rsplit("/", 1)[-1] in _percent_metrics():
        return 100.0, 1
    return 1.0, 3


def to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    keys = rows[0]["metric_keys"]
    arrows = {k: "↑" if rows[0]["higher_is_better"][k] else "↓" for k in keys}
    header = ["method", *(f"{k} {arrows[k]}" for k in keys), "Δm % ↓", "s / epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"]]
        for k in keys:
            scale, digits = _metric_digits(k)
            mean, std = row[k]
            cells.append(_fmt(mean * scale, std * scale, digits))
        cells.append(_fmt(*row["delta_m"]))
        cells.append(f"{row['seconds_per_epoch']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    keys = rows[0]["metric_keys"]
    header = ["method", "n_seeds"]
    for k in keys:
        header += [f"{k}_mean", f"{k}_std"]
    header += ["delta_m_mean", "delta_m_std", "seconds_per_epoch"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            values: list[Any] = [row["method"], len(row["seeds"])]
            for k in keys:
                values += list(row[k])
            values += [*row["delta_m"], row["seconds_per_epoch"]]
            writer.writerow(values)


def write_plots(rows: Sequence[Mapping[str, Any]], task_names: Sequence[str], out: Path) -> dict:
    from lit_mtl.diagnostics.plots import plot_delta_m, plot_tradeoff

    paths: dict[str, str] = {}
    methods = [r for r in rows if r["method"] != "single-task" and not math.isnan(r["delta_m"][0])]
    if methods:
        fig = plot_delta_m(
            [r["method"] for r in methods],
            [r["delta_m"][0] for r in methods],
            [r["delta_m"][1] for r in methods],
        )
        fig.savefig(out / "delta_m.png", dpi=110)
        paths["delta_m"] = str(out / "delta_m.png")
    if len(task_names) == 2:
        keys = rows[0]["metric_keys"]
        first = [next(k for k in keys if k.startswith(t + "/")) for t in task_names]
        points = {r["method"]: (*r[first[0]], *r[first[1]]) for r in rows}
        fig = plot_tradeoff(points, first[0], first[1])
        fig.savefig(out / "tradeoff.png", dpi=110)
        paths["tradeoff"] = str(out / "tradeoff.png")
    return paths
