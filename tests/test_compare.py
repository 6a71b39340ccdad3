"""The comparison runner: single-task baselines + methods over seeds, table/CSV/plots written,
finished runs reused, clear config errors; every shipped comparison config runs at a tiny size."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from lit_mtl.__main__ import main as cli_main
from lit_mtl.compare import ComparisonConfig, load_comparison, run_comparison

from conftest import NYUV2_FOLDERS, write_scene_folders

ROOT = Path(__file__).resolve().parents[1]
COMPARE_CONFIGS = sorted((ROOT / "configs" / "compare").glob("*.yaml"))
TINY_TRAINER = {
    "max_epochs": 1,
    "accelerator": "cpu",
    "devices": 1,
    "limit_train_batches": 3,
    "limit_val_batches": 1,
    "enable_model_summary": False,
}


def tiny(tmp_path: Path, **overrides) -> dict:  # type: ignore[no-untyped-def]
    raw = {
        "name": "tiny",
        "output_dir": str(tmp_path / "out"),
        "seeds": [0, 1],
        "methods": {
            "equal": {"class_path": "lit_mtl.EqualWeighting"},
            "mgda-ub": {"class_path": "lit_mtl.MGDAUB"},
        },
        "fit": {
            "trainer": dict(TINY_TRAINER),
            "model": {
                "class_path": "lit_mtl.MultiTaskModule",
                "init_args": {
                    "encoder": {
                        "class_path": "lit_mtl.MLPEncoder",
                        "init_args": {"in_features": 8, "hidden": [16]},
                    }
                },
            },
            "data": {
                "class_path": "lit_mtl.SyntheticDataModule",
                "init_args": {
                    "in_features": 8,
                    "regression_scales": [1.0, 5.0],
                    "num_classification_tasks": 1,
                    "num_train": 96,
                    "num_val": 32,
                    "num_test": 64,
                    "batch_size": 32,
                },
            },
        },
    }
    raw.update(overrides)
    return raw


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "comparison.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_tiny_comparison_writes_table_csv_plots_and_reuses_runs(tmp_path: Path) -> None:
    path = write(tmp_path, tiny(tmp_path))
    log: list[str] = []
    summary = run_comparison(load_comparison(path), log=log.append)
    out = tmp_path / "out"
    # 2 seeds x (3 single-task models + 2 methods) trained
    assert sum(line.startswith("[train]") for line in log) == 10
    assert summary["tasks"] == ["reg0", "reg1", "cls0"]
    for name in ("results.md", "results.csv", "results.json", "delta_m.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "tradeoff.png").exists()  # three tasks: no two-task trade-off plot
    rows = {r["method"]: r for r in summary["rows"]}
    assert list(rows) == ["single-task", "equal", "mgda-ub"]
    keys = rows["equal"]["metric_keys"]
    assert keys[:2] == ["reg0/mse", "reg0/mae"] and "cls0/acc" in keys
    for row in rows.values():
        assert all(math.isfinite(v) for k in keys for v in row[k])
        assert all(math.isfinite(v) for v in row["delta_m"])
        assert row["seconds_per_epoch"] > 0
    assert rows["single-task"]["delta_m"] == (0.0, 0.0)  # paired by seed: the reference
    table = (out / "results.md").read_text()
    assert "| mgda-ub |" in table and "lower is better" in table
    with (out / "results.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["method"] for r in csv_rows] == ["single-task", "equal", "mgda-ub"]
    assert float(csv_rows[1]["delta_m_mean"]) == pytest.approx(rows["equal"]["delta_m"][0])
    # each run: its own config and tracked logs (default logger) with the config in them
    run_dir = out / "runs" / "equal" / "seed1"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["seed_everything"] == 1 and saved["data"]["init_args"]["seed"] == 1
    assert list(run_dir.glob("lightning_logs/version_0/config.yaml"))
    stl = yaml.safe_load((out / "runs" / "stl-cls0" / "seed0" / "config.yaml").read_text())
    assert stl["model"]["init_args"]["select_tasks"] == ["cls0"]

    # second invocation: nothing trained again, the same table
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/result.json")}
    log.clear()
    again = run_comparison(load_comparison(path), log=log.append)
    assert not any(line.startswith("[train]") for line in log)
    assert sum(line.startswith("[reuse]") for line in log) == 10
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/result.json")} == before
    assert again["markdown"] == summary["markdown"]

    # a changed config does not silently reuse the stale runs
    changed = tiny(tmp_path)
    changed["fit"]["trainer"]["max_epochs"] = 2
    with pytest.raises(RuntimeError, match="different config"):
        run_comparison(load_comparison(write(tmp_path, changed)), log=log.append)


def test_two_tasks_get_a_tradeoff_plot_via_the_cli(tmp_path: Path) -> None:
    raw = tiny(tmp_path, seeds=[0], methods={"equal": {"class_path": "lit_mtl.EqualWeighting"}})
    raw["fit"]["data"]["init_args"]["num_classification_tasks"] = 0
    cli_main(["compare", "--config", str(write(tmp_path, raw))])
    out = tmp_path / "out"
    assert (out / "tradeoff.png").stat().st_size > 0
    assert json.loads((out / "results.json").read_text())["tasks"] == ["reg0", "reg1"]


def test_wandb_tracking_groups_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    raw = tiny(tmp_path, seeds=[0], tracking="wandb", single_task=False)
    run_comparison(load_comparison(write(tmp_path, raw)), log=lambda _: None)
    runs = list((tmp_path / "out" / "runs").glob("*/seed0/wandb/offline-run-*"))
    assert len(runs) == 2
    for run in runs:
        assert list(run.glob("run-*.wandb"))
        assert (run / "files" / "lit_mtl_config.yaml").exists()
        meta = (run / "files" / "lit_mtl_config.yaml").read_text()
        assert "group: tiny" in meta


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": ""}, "'name'"),
        ({"methods": {}}, "'methods'"),
        ({"methods": {"x": {"init_args": {}}}}, "methods.x needs a 'class_path'"),
        ({"methods": {"stl-x": {"class_path": "lit_mtl.EqualWeighting"}}}, "reserved"),
        ({"seeds": []}, "'seeds'"),
        ({"tracking": "mlflow"}, "tracking"),
        ({"colour": "blue"}, "unknown key"),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path: Path, change: dict, message: str) -> None:
    path = write(tmp_path, tiny(tmp_path, **change))
    with pytest.raises(ValueError, match=message) as info:
        load_comparison(path)
    assert str(path) in str(info.value)


def test_missing_file_and_missing_fit_keys(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_comparison(tmp_path / "nope.yaml")
    raw = tiny(tmp_path)
    del raw["fit"]["data"]
    with pytest.raises(ValueError, match=r"'fit\.data' is required"):
        ComparisonConfig(**raw)


@pytest.mark.parametrize("path", COMPARE_CONFIGS, ids=[p.name for p in COMPARE_CONFIGS])
def test_shipped_comparison_configs_run_at_tiny_size(path: Path, tmp_path: Path) -> None:
    config = load_comparison(path)
    config.output_dir = str(tmp_path / "out")
    config.seeds = config.seeds[:1]
    first_two = list(config.methods)[:2]
    config.methods = {k: config.methods[k] for k in first_two}
    config.fit["trainer"].update(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    data = config.fit["data"]
    for key, size in (("num_train", 64), ("num_val", 32), ("num_test", 64)):
        if key in data["init_args"]:  # generated scenes: generate few
            data["init_args"][key] = size
    if data["class_path"].endswith("ScenesDataModule"):  # 2 batches: no pixel within 11.25 deg yet
        config.metrics = ["miou", "pix_acc", "abs_err", "rel_err", "angle_mean", "angle_median"]
    if data["class_path"].endswith("NYUv2DataModule"):  # tiny files in the preprocessed layout
        write_scene_folders(tmp_path / "nyuv2", NYUV2_FOLDERS, num_train=2, num_val=2)
        data["init_args"]["root"] = str(tmp_path / "nyuv2")
        config.fit["model"]["init_args"]["encoder"]["init_args"]["filters"] = [8, 8, 8, 8, 8]
    summary = run_comparison(config, log=lambda _: None)
    expected = ["single-task"] if config.single_task else []
    assert [r["method"] for r in summary["rows"]] == [*expected, *first_two]
    assert all(math.isfinite(r["delta_m"][0]) for r in summary["rows"][len(expected) :])
    reduction = config.fit["model"]["init_args"].get("dense_reduction")
    if reduction is not None:  # dense tasks: the table says how their metrics reduce
        said = {"pooled": "dense metrics pooled", "per_batch": "averaged over test batches"}
        assert said[reduction] in summary["convention"]


def test_external_baseline_and_per_task_convention(tmp_path: Path) -> None:
    """delta-m against given numbers (no single-task runs), LibMTL's per-task mean, and the
    note under the table says so."""
    baseline = {"reg0/mse": 1.0, "reg1/mse": 2.0, "cls0/acc": 0.5}
    raw = tiny(
        tmp_path, single_task=False, seeds=[0], baseline=baseline, delta_m_convention="tasks"
    )
    summary = run_comparison(ComparisonConfig(**raw), log=lambda _: None)
    from lit_mtl.metrics import delta_m

    for row in summary["rows"]:
        values = {k: row[k][0] for k in baseline}  # one seed: the mean is the value
        assert row["delta_m"][0] == pytest.approx(delta_m(values, baseline, convention="tasks"))
    assert "mean over tasks of each task's mean" in summary["convention"]
    assert "against the given single-task numbers" in summary["convention"]
    with pytest.raises(ValueError, match="delta_m_convention must be"):
        ComparisonConfig(**tiny(tmp_path, delta_m_convention="per_metric"))
    with pytest.raises(KeyError, match=r"baseline key\(s\) \['reg9/mse'\]"):
        run_comparison(
            ComparisonConfig(
                **tiny(tmp_path, single_task=False, seeds=[0], baseline={"reg9/mse": 1.0})
            ),
            log=lambda _: None,
        )


def test_cli_overrides_seeds_methods_and_output_dir(tmp_path: Path) -> None:
    path = write(tmp_path, tiny(tmp_path, single_task=False))
    other = str(tmp_path / "other")
    args = ["--seeds", "3", "--methods", "equal", "--output-dir", other]
    summary = cli_main(["compare", "--config", str(path), *args])
    assert summary is None  # the console entry point prints; the table is on disk
    results = json.loads((tmp_path / "other" / "results.json").read_text())
    assert results["seeds"] == [3]
    assert [r["method"] for r in results["rows"]] == ["equal"]
    assert (tmp_path / "other" / "runs" / "equal" / "seed3" / "result.json").exists()
    with pytest.raises(SystemExit):
        cli_main(["compare", "--config", str(path), "--methods", "nope"])


@pytest.mark.parametrize("name", ["cityscapes", "oxford_pet"])
def test_compare_runs_on_the_dense_fit_configs(name: str, tmp_path: Path) -> None:
    """Any fit config is a comparison's ``fit``: the CityScapes and Oxford Pet configs on tiny
    files in their real layouts, single-task models included."""
    from conftest import CITYSCAPES_FOLDERS, write_oxford_pet

    fit = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    fit.pop("seed_everything")
    fit["trainer"].update(TINY_TRAINER, limit_train_batches=2)
    fit["trainer"].pop("default_root_dir")
    if name == "cityscapes":
        write_scene_folders(tmp_path / "cs", CITYSCAPES_FOLDERS, num_train=2, num_val=2)
        fit["data"]["init_args"].update(root=str(tmp_path / "cs"), batch_size=2)
        fit["model"]["init_args"]["encoder"]["init_args"]["filters"] = [8, 8, 8, 8, 8]
    else:
        write_oxford_pet(tmp_path, trainval=4, test=2, size=24)
        fit["data"]["init_args"].update(
            root=str(tmp_path), image_size=16, batch_size=2, val_fraction=0.5
        )
    config = ComparisonConfig(
        name=name,
        output_dir=str(tmp_path / "out"),
        seeds=[0],
        fit=fit,
        methods={"equal": {"class_path": "lit_mtl.EqualWeighting"}},
        metrics=["miou", "pix_acc", "abs_err"],  # 2 test images: accuracies may be exactly 0
    )
    summary = run_comparison(config, log=lambda _: None)
    assert [r["method"] for r in summary["rows"]] == ["single-task", "equal"]
    assert math.isfinite(summary["rows"][1]["delta_m"][0])
