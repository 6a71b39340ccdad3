"""Tracking: W&B offline runs from the CLI (config, metric names, plots), the config sent to every
logger, and the default TensorBoard/CSV loggers receiving the same names and the plots."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import Logger

from lit_mtl.cli import build_cli
from lit_mtl.tracking import WandbLogger, wandb_credentials_available

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "configs" / "quickstart.yaml")
WANDB = str(ROOT / "configs" / "logger" / "wandb.yaml")
SHORT = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=6",
    "--trainer.limit_val_batches=2",
    "--trainer.log_every_n_steps=2",
    "--trainer.enable_progress_bar=false",
]
STABLE_NAMES = {
    "train/loss",
    "train/reg0/loss",
    "train/reg0/weight",
    "train/cls0/weight",
    "train/cls0/acc",
    "val/loss",
    "val/reg1/mse",
    "val/cls0/f1",
}


@pytest.fixture
def no_wandb_account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("WANDB_API_KEY", "WANDB_MODE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def _spy(logger: Logger, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    seen: list[dict] = []
    original = logger.log_metrics

    def log_metrics(metrics, step=None):  # type: ignore[no-untyped-def]
        seen.append(dict(metrics))
        return original(metrics, step)

    monkeypatch.setattr(logger, "log_metrics", log_metrics)
    return seen


def test_credentials_detection(no_wandb_account: None, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert not wandb_credentials_available()
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (home / ".netrc").chmod(0o600)
    assert wandb_credentials_available()
    (home / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_credentials_available()


def test_logger_offline_without_account_and_mode_wins(no_wandb_account: None, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert WandbLogger().offline is True
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert WandbLogger().offline is False  # an account: online (nothing is sent until used)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert WandbLogger().offline is True
    assert WandbLogger(offline=False).offline is False


def test_wandb_offline_run_from_the_cli(no_wandb_account: None, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import wandb

    cli = build_cli(["--config", QUICK, "--config", WANDB, *SHORT], run=False)
    logger = cli.trainer.logger
    assert isinstance(logger, WandbLogger) and logger.offline
    seen = _spy(logger, monkeypatch)
    cli.trainer.fit(cli.model, cli.datamodule)
    run = logger.experiment
    try:
        # the full CLI config is the run's config (LightningCLI alone does not send it)
        assert run.config["model"]["class_path"] == "lit_mtl.MultiTaskModule"
        assert run.config["trainer"]["max_epochs"] == 2
        assert run.config["data"]["init_args"]["regression_noise"] == [0.1, 1.0]
        logged = {k for m in seen for k in m}
        assert STABLE_NAMES <= logged, STABLE_NAMES - logged
        # values checked in-process: the run's summary holds what was logged last
        last_weight = [m["train/reg1/weight"] for m in seen if "train/reg1/weight" in m][-1]
        assert run.summary["train/reg1/weight"] == pytest.approx(last_weight)
        files = Path(run.dir)
        assert (files / "task_weights.png").stat().st_size > 5000
        assert list((files / "media" / "images" / "plots").glob("task_weights_*.png"))
        saved = yaml.safe_load((files / "lit_mtl_config.yaml").read_text())
        assert saved["trainer"]["logger"]["class_path"] == "lit_mtl.tracking.WandbLogger"
    finally:
        wandb.finish()
    offline_runs = list((tmp_path / "lightning_logs" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    logs = list(offline_runs[0].glob("run-*.wandb"))
    assert logs and logs[0].stat().st_size > 0


def test_default_tensorboard_logger_gets_names_config_and_plot(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    cli = build_cli(["fit", "--config", QUICK, *SHORT, f"--trainer.default_root_dir={tmp_path}"])
    log_dir = Path(cli.trainer.logger.log_dir)
    assert (log_dir / "task_weights.png").exists()
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert "plots/task_weights" in tags["images"]
    assert STABLE_NAMES <= set(tags["scalars"]), STABLE_NAMES - set(tags["scalars"])
    assert yaml.safe_load((log_dir / "config.yaml").read_text())["trainer"]["max_epochs"] == 2
    hparams = yaml.safe_load((log_dir / "hparams.yaml").read_text())
    assert hparams["config"]["model"]["class_path"] == "lit_mtl.MultiTaskModule"


def test_csv_logger_gets_the_config_and_the_plot(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    cli = build_cli(
        [
            "fit",
            "--config",
            QUICK,
            *SHORT,
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={tmp_path}",
        ]
    )
    log_dir = Path(cli.trainer.logger.log_dir)
    assert (log_dir / "task_weights.png").exists()
    header = (log_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert STABLE_NAMES <= set(header), STABLE_NAMES - set(header)
    hparams = yaml.safe_load((log_dir / "hparams.yaml").read_text())
    assert hparams["config"]["data"]["class_path"] == "lit_mtl.SyntheticDataModule"
