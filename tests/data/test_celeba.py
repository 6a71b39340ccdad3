"""CelebA on tiny files in torchvision's layout: 40 attribute tasks (and landmarks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_mtl import CelebADataModule
from lit_mtl.cli import build_cli
from lit_mtl.data.celeba import CELEBA_ATTRIBUTES

from conftest import write_celeba

ROOT = Path(__file__).resolve().parents[2]


def test_every_attribute_is_a_task_and_samples_match_the_files(tmp_path: Path) -> None:
    write_celeba(tmp_path, num_images=9, width=20, height=24)
    dm = CelebADataModule(tmp_path, landmarks=True, image_size=16, batch_size=4)
    assert dm.task_names == [*CELEBA_ATTRIBUTES, "landmarks"]
    assert [s.kind for s in dm.task_specs].count("binary") == 40
    dm.setup()
    assert {split: len(ds) for split, ds in dm.datasets.items()} == {
        "train": 3,
        "val": 3,
        "test": 3,
    }
    base = tmp_path / "celeba"
    rows = [line.split() for line in (base / "list_attr_celeba.txt").read_text().splitlines()[2:]]
    marks = [
        line.split() for line in (base / "list_landmarks_align_celeba.txt").read_text().splitlines()
    ][2:]
    x, targets = dm.datasets["val"][1]  # partition 1: images 2, 5, 8 -> the second is 000005
    assert x.shape == (3, 16, 16) and -1.0 <= x.min() and x.max() <= 1.0
    assert rows[4][0] == "000005.jpg"
    for k, name in enumerate(CELEBA_ATTRIBUTES):
        assert targets[name].item() == (1.0 if rows[4][k + 1] == "1" else 0.0), name
    expected = torch.tensor([float(v) for v in marks[4][1:]]) / torch.tensor([20.0, 24.0] * 5)
    assert torch.allclose(targets["landmarks"], expected)
    x_batch, y_batch = next(iter(dm.train_dataloader()))
    assert x_batch.shape == (3, 3, 16, 16) and y_batch["Young"].shape == (3,)


def test_missing_files_and_foreign_annotations_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing under .*celeba: \['img_align_celeba/'"):
        CelebADataModule(tmp_path).setup()
    write_celeba(tmp_path)
    (tmp_path / "celeba" / "list_bbox_celeba.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"\['list_bbox_celeba.txt'\]"):
        CelebADataModule(tmp_path).setup()
    write_celeba(tmp_path)
    attr = tmp_path / "celeba" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    lines[1] = lines[1].replace("Young", "Old")
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"list_attr_celeba\.txt names the attributes"):
        CelebADataModule(tmp_path).setup()
    with pytest.raises(ValueError, match=r"unknown: \['Tall'\]"):
        CelebADataModule(tmp_path, attributes=["Smiling", "Tall"])


def test_celeba_config_fits_then_tests_from_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CelebA config through the CLI on tiny files: 40 tasks weighted by FAMO, a checkpoint,
    ``test --ckpt_path last`` logs every attribute's accuracy, and the task-weight plot of 40
    tasks is drawn grouped."""
    monkeypatch.chdir(tmp_path)
    write_celeba(tmp_path / "data")
    config = str(ROOT / "configs" / "celeba.yaml")
    small = [
        "--model.encoder.init_args.channels=[4, 8]",
        "--data.image_size=16",
        "--data.batch_size=2",
        "--trainer.enable_progress_bar=false",
    ]
    fit = build_cli(["fit", "--config", config, *small, "--trainer.max_epochs=2"])
    assert fit.trainer.global_step == 4
    log_dir = Path(fit.trainer.log_dir)
    assert (log_dir / "task_weights.png").exists()
    cli = build_cli(["test", "--config", config, *small, "--ckpt_path", "last"])
    logged = cli.trainer.callback_metrics
    for name in CELEBA_ATTRIBUTES:
        assert 0.0 <= logged[f"test/{name}/acc"].item() <= 1.0, name
