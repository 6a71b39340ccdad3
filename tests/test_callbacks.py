"""TrainingPlots: task-weight and lr trajectories recorded, plotted, and kept across a resume."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lit_mtl import GradNorm, MLPEncoder, TransferModule, UnfreezeSchedule
from lit_mtl.callbacks.training_plots import TrainingPlots, weights_tensor

from conftest import fast_trainer, small_data, small_module


def _plots(trainer: L.Trainer) -> TrainingPlots:
    return next(c for c in trainer.callbacks if isinstance(c, TrainingPlots))


def test_weights_recorded_every_n_steps_and_plotted(tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = small_data()
    module = small_module(dm, GradNorm(alpha=1.5))
    trainer = fast_trainer(max_epochs=2, logger=CSVLogger(tmp_path), log_every_n_steps=3)
    trainer.fit(module, dm)
    plots = _plots(trainer)
    steps_per_epoch = 256 // 32
    assert plots.steps == list(range(1, 2 * steps_per_epoch + 1, 3))
    w = weights_tensor(plots)
    assert w.shape == (len(plots.steps), 3)
    assert torch.allclose(w.sum(1), torch.full_like(w[:, 0], 3.0), atol=1e-5)
    # the last recorded row is the weighting's weights at that step
    assert plots.task_names == module.task_names
    png = Path(plots.paths["task_weights"])
    assert png.parent == Path(trainer.logger.log_dir) and png.stat().st_size > 5000
    assert "lr_schedule" not in plots.paths  # no transfer schedule in this run


def test_plots_false_adds_no_callback() -> None:
    dm = small_data()
    trainer = fast_trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(small_module(dm, plots=False), dm)
    assert not any(isinstance(c, TrainingPlots) for c in trainer.callbacks)


def test_history_survives_resume(tmp_path: Path) -> None:
    def run(epochs: int, ckpt: str | None = None) -> TrainingPlots:
        L.seed_everything(0)
        dm = small_data()
        trainer = fast_trainer(
            max_epochs=epochs,
            log_every_n_steps=2,
            enable_checkpointing=True,
            callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)],
        )
        trainer.fit(small_module(dm, GradNorm()), dm, ckpt_path=ckpt)
        return _plots(trainer)

    whole = run(3)
    run(1)
    resumed = run(3, ckpt=str(tmp_path / "last.ckpt"))
    assert resumed.steps == whole.steps
    assert resumed.weights == whole.weights  # resume is bit-identical


def test_transfer_lr_schedule_recorded_and_plotted(tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = small_data()
    module = TransferModule(
        MLPEncoder(dm.in_features, [16, 16, 16]),
        dm.task_specs,
        schedule=UnfreezeSchedule("gradual"),
        lr_decay=0.5,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
    )
    trainer = fast_trainer(max_epochs=3, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    trainer.fit(module, dm)
    plots = _plots(trainer)
    per_epoch = 256 // 32
    # block0 (input side) is frozen for the first two epochs, then at 1e-2 * 0.5**2
    assert plots.lrs["block0"][: 2 * per_epoch] == [0.0] * (2 * per_epoch)
    assert plots.lrs["block0"][-1] == pytest.approx(1e-2 * 0.25)
    assert plots.lrs["block2"][0] == pytest.approx(1e-2)
    unfrozen_at = {"block2": 1, "block1": per_epoch + 1, "block0": 2 * per_epoch + 1}
    assert plots.unfreeze_steps == unfrozen_at
    assert Path(plots.paths["lr_schedule"]).stat().st_size > 5000
    assert Path(plots.paths["task_weights"]).exists()


def test_every_n_steps_validated() -> None:
    with pytest.raises(ValueError, match="every_n_steps"):
        TrainingPlots(every_n_steps=0)


def test_nothing_written_without_a_logger(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    dm = small_data()
    trainer = fast_trainer(max_epochs=1, limit_train_batches=2, default_root_dir=tmp_path)
    trainer.fit(small_module(dm), dm)
    plots = _plots(trainer)
    assert plots.steps and plots.paths == {}
    assert not list(tmp_path.rglob("*.png"))


def test_history_kept_after_test(tmp_path: Path) -> None:
    dm = small_data()
    module = small_module(dm)
    trainer = fast_trainer(max_epochs=1, logger=CSVLogger(tmp_path))
    trainer.fit(module, dm)
    steps = list(_plots(trainer).steps)
    trainer.test(module, dm, verbose=False)
    assert _plots(trainer).steps == steps and "task_weights" in _plots(trainer).paths
