"""Running a comparison: one ``lit-mtl`` CLI run per (method or single-task model, seed), each
finished run kept as ``result.json`` and reused (see :mod:`lit_mtl.compare`)."""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.callbacks import Callback

from lit_mtl._lightning import trainer_callbacks
from lit_mtl.compare.config import ComparisonConfig

_LOGGER_FREE = ("logger", "default_root_dir", "enable_progress_bar", "enable_model_summary")


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
    trainer_callbacks(cli.trainer).append(timer)
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
    known = metric_directions(cli.model.hparams["tasks"])
    metrics = {
        key[len("test/") :]: float(value)
        for key, value in tested.items()
        if key.startswith("test/") and key[len("test/") :] in known
    }
    # the metrics this run logged (the binary tasks' auroc / auprc only with ranking_metrics)
    directions = {key: higher for key, higher in known.items() if key in metrics}
    return metrics, directions, seconds, epochs


def run_once(
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


def task_names_of(config: ComparisonConfig) -> list[str]:
    import lightning as L
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    parsed = parser.parse_object({"data": config.fit["data"]})
    data = parser.instantiate_classes(parsed).data
    return [spec.name for spec in data.task_specs]
