"""Compare weighting methods the way MTL papers do: single-task baselines, several seeds, delta-m.

::

    lit-mtl compare --config configs/compare/mnist1d.yaml

The YAML names the comparison, a ``fit`` config (exactly what ``lit-mtl fit --config`` takes:
``trainer``, ``model``, ``data``) shared by every run, the ``methods`` (weighting
``class_path``/``init_args`` by label) and the ``seeds``::

    name: mnist1d_tasks
    output_dir: comparisons/mnist1d_tasks
    seeds: [0, 1, 2]
    single_task: true        # train one model per task (same encoder, same budget) as baseline
    tracking: default        # or "wandb" (group = name; offline without an account)
    metrics: null            # metric names used by delta-m (default: every logged metric)
    delta_m_convention: metrics  # or "tasks": mean over tasks of per-task means (LibMTL)
    baseline: null           # or single-task numbers {"task/metric": value} from elsewhere
    methods:
      equal: {class_path: lit_mtl.EqualWeighting}
      uncertainty: {class_path: lit_mtl.UncertaintyWeighting}
    fit:
      trainer: {max_epochs: 10, accelerator: cpu}
      model: {class_path: lit_mtl.MultiTaskModule, init_args: {encoder: ...}}
      data: {class_path: lit_mtl.MNIST1DDataModule, init_args: {...}}

Every (method, seed) and (single-task model, seed) is a run of the ``lit-mtl`` CLI with its own
``config.yaml`` in ``output_dir/runs/<label>/seed<seed>/`` and its own tracked run (the default
logger there, or W&B). ``seed_everything`` and the DataModule's ``seed`` are set to the seed, so
the single-task and multi-task runs of one seed see the same data. A finished run writes
``result.json`` (test metrics, wall time, the hash of its config) and is not trained again; a run
whose config changed since is an error naming its directory.

Outputs in ``output_dir``: ``results.md`` and ``results.csv`` (per-task test metrics and
delta-m %, mean and standard deviation over seeds, wall time per epoch), ``results.json``,
``delta_m.png`` and, for two tasks, ``tradeoff.png``.

**delta-m** (:func:`lit_mtl.metrics.delta_m`): lower is better, negative = better than
single-task; averaged over all K selected metrics of all tasks (``delta_m_convention: tasks``:
over tasks of their per-task means); computed per seed against the single-task models of the
same seed, or against ``baseline`` numbers (e.g. :data:`lit_mtl.metrics.NYUV2_SINGLE_TASK_BASELINE`
as the papers reuse CAGrad's), then mean +- std over seeds. Tables with dense tasks say which
reduction their metrics use (the model's ``dense_reduction``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lit_mtl.compare.config import ComparisonConfig, load_comparison
from lit_mtl.compare.report import (
    CONVENTION,
    SECONDS_NOTE,
    convention_note,
    has_dense_metrics,
    summarize,
    to_markdown,
    write_csv,
    write_plots,
)
from lit_mtl.compare.runner import RunResult, run_once, task_names_of

__all__ = [
    "CONVENTION",
    "SECONDS_NOTE",
    "ComparisonConfig",
    "RunResult",
    "convention_note",
    "load_comparison",
    "main",
    "run_comparison",
    "run_once",
    "summarize",
    "task_names_of",
    "to_markdown",
    "write_csv",
    "write_plots",
]


def run_comparison(
    config: ComparisonConfig,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train what is not finished yet, then write the table, CSV, JSON and plots. Returns the
    summary (``rows``, ``markdown``, ``paths``)."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    task_names = task_names_of(config)
    results: list[RunResult] = []
    for seed in config.seeds:
        if config.single_task:
            for task in task_names:
                stl = {"class_path": "lit_mtl.EqualWeighting"}
                results.append(run_once(config, f"stl-{task}", stl, seed, task, log))
        for label, weighting in config.methods.items():
            results.append(run_once(config, label, weighting, seed, None, log))
    rows = summarize(
        results,
        task_names,
        list(config.methods),
        config.metrics,
        config.baseline,
        config.delta_m_convention,
    )
    markdown = to_markdown(rows)
    model_args = (config.fit.get("model") or {}).get("init_args") or {}
    reduction = model_args.get("dense_reduction", "pooled")
    note = convention_note(
        config.delta_m_convention,
        config.baseline is not None,
        reduction if has_dense_metrics(rows[0]["metric_keys"]) else None,
    )
    (out / "results.md").write_text(
        f"# {config.name}\n\n{markdown}\n\n{note}; seeds {config.seeds}. {SECONDS_NOTE}\n"
    )
    write_csv(rows, out / "results.csv")
    paths = {"markdown": str(out / "results.md"), "csv": str(out / "results.csv")}
    paths.update(write_plots(rows, task_names, out))
    summary = {
        "name": config.name,
        "tasks": task_names,
        "seeds": list(config.seeds),
        "convention": note,
        "seconds_note": SECONDS_NOTE,
        "command": f"lit-mtl compare --config {config.source}",
        "rows": rows,
        "markdown": markdown,
        "paths": paths,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    log(markdown)
    log(note)
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``lit-mtl compare --config FILE [--output-dir DIR] [--seeds ...] [--methods ...]``."""
    parser = argparse.ArgumentParser(
        prog="lit-mtl compare",
        description="Compare weighting methods against single-task baselines over seeds (delta-m).",
    )
    parser.add_argument("--config", required=True, help="comparison YAML")
    parser.add_argument("--output-dir", help="override output_dir")
    parser.add_argument("--seeds", type=int, nargs="+", help="override seeds")
    parser.add_argument("--methods", nargs="+", help="only these method labels")
    args = parser.parse_args(argv)
    config = load_comparison(args.config)
    if args.output_dir:
        config.output_dir = args.output_dir
    if args.seeds:
        config.seeds = args.seeds
    if args.methods:
        unknown = sorted(set(args.methods) - set(config.methods))
        if unknown:
            parser.error(f"--methods: unknown label(s) {unknown}; known: {list(config.methods)}")
        config.methods = {k: v for k, v in config.methods.items() if k in args.methods}
    return run_comparison(config)
