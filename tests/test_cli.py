"""The lit-mtl CLI: every config in configs/ trains, print_config round-trips, --help works."""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lit_mtl import MultiTaskModule
from lit_mtl.cli import build_cli

from conftest import (
    CITYSCAPES_FOLDERS,
    NYUV2_FOLDERS,
    CliRun,
    write_celeba,
    write_oxford_pet,
    write_scene_folders,
    write_smiles_table,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
FAST = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.logger=false",
]


def test_configs_exist() -> None:
    assert CONFIGS, "configs/ has no YAML file"


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_fits(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths (checkpoints/, lightning_logs/) land here
    folders = {"nyuv2.yaml": NYUV2_FOLDERS, "cityscapes.yaml": CITYSCAPES_FOLDERS}
    if config.name in folders:  # tiny files in the preprocessed layout, where the config looks
        write_scene_folders(tmp_path / "data" / config.stem, folders[config.name])
    if config.name == "oxford_pet.yaml":
        write_oxford_pet(tmp_path / "data", size=40)
    if config.name == "celeba.yaml":
        write_celeba(tmp_path / "data")
    if config.name == "tox21_mtnn.yaml":  # a tiny SMILES table where the config looks
        pytest.importorskip("rdkit")
        write_smiles_table(tmp_path / "data" / "moleculenet" / "tox21.csv")
    if "_transfer" in config.name:  # needs its source checkpoint first
        source = config.with_name(config.name.split("_transfer")[0] + "_source.yaml")
        build_cli(["fit", "--config", str(source), *FAST])
        assert (tmp_path / "checkpoints" / source.stem / "source.ckpt").exists()
    # the SegNet configs are GPU jobs (about 25 M parameters): their wiring runs at width 8
    narrow = ["--model.init_args.encoder.init_args.filters=[8, 8, 8, 8, 8]"]
    cli = build_cli(
        ["fit", "--config", str(config), *FAST, *(narrow if config.name in folders else [])]
    )
    assert cli.trainer.global_step > 0
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
    report = getattr(cli.model, "load_report", None)
    if "_transfer" in config.name and hasattr(cli.model, "load_report"):  # TransferModule
        assert report is not None and report.loaded and not report.missing
    if "cached_probe" in config.name:  # the features were computed from the loaded source
        assert set(cli.datamodule.cache_status.values()) == {"computed"}


def console_script(name: str) -> str:
    """The installed console script next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def test_print_config_runs_again_as_is(lit_mtl_cli: Callable[..., CliRun], tmp_path: Path) -> None:
    quick = ROOT / "configs" / "quickstart.yaml"
    printed = lit_mtl_cli("fit", "--config", str(quick), "--print_config", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed.stdout)
    assert "class_path: lit_mtl.MultiTaskModule" in printed.stdout
    again = lit_mtl_cli(
        "fit", "--config", str(saved), *FAST, f"--trainer.default_root_dir={tmp_path}",
        cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]


def test_help_from_console_script_and_module(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The installed ``lit-mtl`` script (a fresh interpreter, as a shell runs it) and
    ``python -m lit_mtl`` (the package's ``__main__``, run as the interpreter runs it)."""
    script = subprocess.run(
        [console_script("lit-mtl"), "--help"], cwd=tmp_path, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert script.returncode == 0 and "fit" in script.stdout, script.stderr
    monkeypatch.setattr(sys, "argv", ["lit_mtl", "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("lit_mtl", run_name="__main__", alter_sys=True)
    printed = capfd.readouterr().out
    assert exited.value.code == 0 and "fit" in printed and "usage" in printed


def test_cli_checkpoint_restores_without_arguments(tmp_path: Path) -> None:
    quick = ROOT / "configs" / "quickstart.yaml"
    cli = build_cli(
        [
            "fit",
            "--config",
            str(quick),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    ckpt = tmp_path / "checkpoints" / "last.ckpt"  # every CLI run saves a last checkpoint there
    restored = MultiTaskModule.load_from_checkpoint(ckpt)
    assert torch.equal(restored.weighting.log_vars, cli.model.weighting.log_vars)
    assert restored.task_names == cli.datamodule.task_names


def test_bad_config_value_names_the_key(lit_mtl_cli: Callable[..., CliRun], tmp_path: Path) -> None:
    quick = ROOT / "configs" / "quickstart.yaml"
    out = lit_mtl_cli(
        "fit", "--config", str(quick), "--data.init_args.num_classes=1", *FAST, cwd=tmp_path
    )
    assert out.returncode != 0 and "num_classes must be >= 2" in out.stderr


WEIGHTINGS = [
    "EqualWeighting",
    "UncertaintyWeighting",
    "DWA",
    "RLW",
    "FAMO",
    "GradNorm",
    "MGDA",
    "MGDAUB",
    "PCGrad",
    "CAGrad",
    "IMTLG",
    "NashMTL",
    "AlignedMTL",
    "UPGrad",
    "DBMTL",
]


@pytest.mark.parametrize("name", WEIGHTINGS)
def test_every_weighting_by_cli_override(name: str, tmp_path: Path) -> None:
    """The README's one-line method switch works for every method."""
    config = ROOT / "configs" / "gradnorm.yaml"
    cli = build_cli(
        [
            "fit",
            "--config",
            str(config),
            f"--model.init_args.weighting=lit_mtl.{name}",
            *FAST,
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert type(cli.model.weighting).__name__ == name
    assert cli.trainer.global_step > 0


def test_cli_override_of_a_method_argument(tmp_path: Path) -> None:
    config = ROOT / "configs" / "gradnorm.yaml"
    cli = build_cli(
        [
            "fit",
            "--config",
            str(config),
            "--model.init_args.weighting=lit_mtl.CAGrad",
            "--model.init_args.weighting.c=0.5",
            *FAST,
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert cli.model.weighting.c == 0.5


def test_nyuv2_config_fits_then_tests_from_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The NYUv2 config round-trips through the CLI on tiny files in the preprocessed layout:
    fit writes a checkpoint, ``test --ckpt_path last`` reads it back and logs the 9 metrics."""
    monkeypatch.chdir(tmp_path)
    write_scene_folders(tmp_path / "data" / "nyuv2", NYUV2_FOLDERS, num_train=2, num_val=2)
    small = ["--model.encoder.init_args.filters=[8, 8, 8, 8, 8]", "--trainer.limit_val_batches=1"]
    config = str(ROOT / "configs" / "nyuv2.yaml")
    build_cli(
        [
            "fit",
            "--config",
            config,
            *small,
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert (tmp_path / "lightning_logs" / "nyuv2" / "checkpoints" / "last.ckpt").exists()
    cli = build_cli(
        [
            "test",
            "--config",
            config,
            *small,
            "--ckpt_path",
            "last",
            "--trainer.enable_progress_bar=false",
        ]
    )
    logged = cli.trainer.callback_metrics
    for key in ("segmentation/miou", "depth/rel_err", "normal/within_30", "normal/angle_median"):
        assert torch.isfinite(logged[f"test/{key}"]), key
