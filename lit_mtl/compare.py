"""Compare weighting methods the way MTL papers do: single-task baselines, several seeds, delta-m.

::

    lit-mtl compare --config configs/compare_mnist1d.yaml

The YAML names the comparison, a ``fit`` config (exactly what ``lit-mtl fit --config`` takes:
``trainer``, ``model``, ``data``) shared by every run, the ``methods`` (weighting
``class_path``/``init_args`` by label) and the ``seeds``::

    name: mnist1d_tasks
    output_dir: comparisons/mnist1d_tasks
    seeds: [0, 1, 2]
    single_task: true        # train one model per task (same encoder, same budget) as baseline
    tracking: default        # or "wandb" (group = name; offline without an account)
    metrics: null            # metric names used by delta-m (default: every logged metric)
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
single-task; averaged over all K selected metrics of all tasks; computed per seed against the
single-task models of the same seed, then mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import inspect
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.callbacks import Callback

from lit_mtl.metrics import HIGHER_IS_BETTER, delta_m, higher_is_better

__all__ = [
    "ComparisonConfig",
    "RunResult",
    "load_comparison",
    "main",
    "run_comparison",
    "summarize",
]

CONVENTION = (
    "delta-m %: lower is better, negative = better than single-task (Maninis et al. 2019 "
    "convention); mean over all metrics of all tasks, per seed against the single-task models of "
    "that seed, then mean ± std over seeds"
)
SECONDS_NOTE = (
    "s / epoch: training wall time per epoch (validation included, data set-up excluded); "
    "single-task: the sum over its per-task models."
)
_KEYS = {"name", "output_dir", "seeds", "single_task", "tracking", "metrics", "methods", "fit"}
_LOGGER_FREE = ("logger", "default_root_dir", "enable_progress_bar", "enable_model_summary")


@dataclass
class ComparisonConfig:
    """A comparison: see the module docstring for the YAML form."""

    name: str
    fit: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    output_dir: str = ""
    single_task: bool = True
    tracking: str = "default"
    metrics: list[str] | None = None
    source: str = "<dict>"

    def __post_init__(self) -> None:
        where = f"comparison {self.source}"
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"{where}: 'name' must be a non-empty string")
        if not isinstance(self.methods, Mapping) or not self.methods:
            raise ValueError(f"{where}: 'methods' must map labels to weighting configs")
        for label, spec in self.methods.items():
            if not isinstance(spec, Mapping) or "class_path" not in spec:
                raise ValueError(f"{where}: methods.{label} needs a 'class_path'")
            if label.startswith("stl"):
                raise ValueError(f"{where}: method labels starting with 'stl' are reserved")
        if not self.seeds or not all(isinstance(s, int) for s in self.seeds):
            raise ValueError(f"{where}: 'seeds' must be a non-empty list of integers")
        for key in ("model", "data"):
            if not isinstance(self.fit.get(key), Mapping):
                raise ValueError(f"{where}: 'fit.{key}' is required (a class_path/init_args)")
        if self.tracking not in ("default", "wandb"):
            raise ValueError(f"{where}: tracking must be 'default' or 'wandb', got {self.tracking}")
        self.output_dir = self.output_dir or f"comparisons/{self.name}"


def load_comparison(path: str | Path) -> ComparisonConfig:
    """Read and validate a comparison YAML (errors name the file and the key)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"comparison config {path} does not exist")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"comparison {path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ValueError(f"comparison {path}: unknown key(s) {unknown}; known: {sorted(_KEYS)}")
    for key in ("name", "fit", "methods"):
        if key not in raw:
            raise ValueError(f"comparison {path}: missing key '{key}'")
    return ComparisonConfig(**raw, source=str(path))


@dataclass
class RunResult:
    """One finished run: its test metrics ``{"task/metric": value}`` and timing."""

    label: str
    seed: int
    metrics: dict[str, float]
    directions: dict[str, bool]
    seconds: float
    epochs: int
    config_hash: str
    task: str | None = None

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(1, self.epochs)


# ---------------------------------------------------------------------------- one run
def _run_config(
    config: ComparisonConfig, weighting: Mapping, seed: int, run_dir: Path, task: str | None
) -> dict[str, Any]:
    cfg = copy.deepcopy(config.fit)
    cfg["seed_everything"] = seed
    data = cfg["data"]
    data_init = data.setdefault("init_args", {}) or {}
    data["init_args"] = data_init
    if "seed" in _init_parameters(data["class_path"]):
        data_init["seed"] = seed
    model_init = cfg["model"].setdefault("init_args", {}) or {}
    cfg["model"]["init_args"] = model_init
    model_init["weighting"] = copy.deepcopy(dict(weighting))
    if task is not None:
        model_init["select_tasks"] = [task]
    trainer = cfg.setdefault("trainer", {}) or {}
    cfg["trainer"] = trainer
    trainer["default_root_dir"] = str(run_dir)
    trainer.setdefault("enable_progress_bar", False)
    trainer.setdefault("enable_checkpointing", False)
    if config.tracking == "wandb":
        trainer["logger"] = {
            "class_path": "lit_mtl.tracking.WandbLogger",
            "init_args": {
                "group": config.name,
                "name": run_dir.parent.name + f"-{run_dir.name}",
                "save_dir": str(run_dir),
                "job_type": "single-task" if task else "multi-task",
            },
        }
    return cfg


def _init_parameters(class_path: str) -> set[str]:
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"comparison: cannot import {class_path!r}: {err}") from err
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names |= set(inspect.signature(klass.__init__).parameters)
    return names


def _config_hash(cfg: Mapping[str, Any]) -> str:
    """Hash of what determines the result (logging and output locations left out)."""
    stable = copy.deepcopy(dict(cfg))
    for key in _LOGGER_FREE:
        stable.get("trainer", {}).pop(key, None)
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()


class _TrainTimer(Callback):
    """Wall time from the first training epoch's start to the end of training (validation
    included; data generation, setup and the sanity check excluded)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds = 0.0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def _train_and_test(cfg: dict[str, Any], run_dir: Path) -> tuple[dict, dict, float, int]:
    from lit_mtl.cli import build_cli
    from lit_mtl.metrics import metric_directions

    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with warnings.catch_warnings():  # "args and sys.argv both given": intended here
        warnings.filterwarnings("ignore", ".*args parameter is intended.*")
        cli = build_cli(["--config", str(config_path)], run=False)
    timer = _TrainTimer()
    cli.trainer.callbacks.append(timer)
    try:
        cli.trainer.fit(cli.model, cli.datamodule)
        seconds = timer.seconds
        epochs = int(cli.trainer.current_epoch)
        tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    finally:
        from lit_mtl.tracking import _LightningWandbLogger

        if any(isinstance(lg, _LightningWandbLogger) for lg in cli.trainer.loggers):
            import wandb

            wandb.finish()
    directions = metric_directions(cli.model.hparams["tasks"])
    metrics = {
        key[len("test/") :]: float(value)
        for key, value in tested.items()
        if key.startswith("test/") and key[len("test/") :] in directions
    }
    return metrics, directions, seconds, epochs


def _run_once(
    config: ComparisonConfig,
    label: str,
    weighting: Mapping,
    seed: int,
    task: str | None,
    log: Callable[[str], None],
) -> RunResult:
    run_dir = Path(config.output_dir) / "runs" / label / f"seed{seed}"
    cfg = _run_config(config, weighting, seed, run_dir, task)
    digest = _config_hash(cfg)
    result_path = run_dir / "result.json"
    if result_path.is_file():
        saved = json.loads(result_path.read_text())
        if saved["config_hash"] != digest:
            raise RuntimeError(
                f"comparison {config.name}: {run_dir} holds a finished run of a different "
                "config; delete that directory (or choose another output_dir) to train it again"
            )
        log(f"[reuse] {label} seed {seed}: finished run in {run_dir}")
        return RunResult(**saved)
    log(f"[train] {label} seed {seed} -> {run_dir}")
    metrics, directions, seconds, epochs = _train_and_test(cfg, run_dir)
    if task is not None:
        metrics = {k: v for k, v in metrics.items() if k.startswith(task + "/")}
        directions = {k: v for k, v in directions.items() if k.startswith(task + "/")}
    result = RunResult(label, seed, metrics, directions, seconds, epochs, digest, task)
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.__dict__, indent=2))
    tmp.replace(result_path)  # atomic: a run is finished only once result.json exists
    return result


# ---------------------------------------------------------------------------- summary
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def summarize(
    results: Sequence[RunResult],
    task_names: Sequence[str],
    method_labels: Sequence[str],
    metrics: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per method (single-task first): per-metric mean/std over seeds, delta-m % per seed
    against the single-task runs of the same seed (mean/std), seconds per epoch (single-task:
    the sum over its per-task models)."""
    stl: dict[int, dict[str, float]] = {}
    stl_seconds: dict[int, float] = {}
    directions: dict[str, bool] = {}
    for r in results:
        directions.update(r.directions)
        if r.task is not None:
            stl.setdefault(r.seed, {}).update(r.metrics)
            stl_seconds[r.seed] = stl_seconds.get(r.seed, 0.0) + r.seconds_per_epoch
    order = list(HIGHER_IS_BETTER)  # the primary metric (acc, mse) first within a task

    def rank(key: str) -> int:
        name = key.split("/", 1)[1]
        return order.index(name) if name in order else len(order)

    keys = [
        k
        for t in task_names
        for k in sorted((k for k in directions if k.startswith(t + "/")), key=rank)
        if metrics is None or k.split("/", 1)[1] in metrics
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
        deltas = [
            delta_m({k: per_seed[s][k] for k in keys}, {k: stl[s][k] for k in keys}, directions)
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
    if key.rsplit("/", 1)[-1] in ("acc", "f1"):
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


def _write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
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


def _write_plots(rows: Sequence[Mapping[str, Any]], task_names: Sequence[str], out: Path) -> dict:
    from lit_mtl.plots import plot_delta_m, plot_tradeoff

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


# ---------------------------------------------------------------------------- driver
def _task_names(config: ComparisonConfig) -> list[str]:
    import lightning as L
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    parsed = parser.parse_object({"data": config.fit["data"]})
    data = parser.instantiate_classes(parsed).data
    return [spec.name for spec in data.task_specs]


def run_comparison(
    config: ComparisonConfig,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train what is not finished yet, then write the table, CSV, JSON and plots. Returns the
    summary (``rows``, ``markdown``, ``paths``)."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    task_names = _task_names(config)
    results: list[RunResult] = []
    for seed in config.seeds:
        if config.single_task:
            for task in task_names:
                stl = {"class_path": "lit_mtl.EqualWeighting"}
                results.append(_run_once(config, f"stl-{task}", stl, seed, task, log))
        for label, weighting in config.methods.items():
            results.append(_run_once(config, label, weighting, seed, None, log))
    rows = summarize(results, task_names, list(config.methods), config.metrics)
    markdown = to_markdown(rows)
    (out / "results.md").write_text(
        f"# {config.name}\n\n{markdown}\n\n{CONVENTION}; seeds {config.seeds}. {SECONDS_NOTE}\n"
    )
    _write_csv(rows, out / "results.csv")
    paths = {"markdown": str(out / "results.md"), "csv": str(out / "results.csv")}
    paths.update(_write_plots(rows, task_names, out))
    summary = {
        "name": config.name,
        "tasks": task_names,
        "seeds": list(config.seeds),
        "convention": CONVENTION,
        "seconds_note": SECONDS_NOTE,
        "command": f"lit-mtl compare --config {config.source}",
        "rows": rows,
        "markdown": markdown,
        "paths": paths,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    log(markdown)
    log(CONVENTION)
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
