"""Shared test helpers: small trainers and data that run in seconds on 2 CPU cores."""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lit_mtl import MLPEncoder, MultiTaskModule, SyntheticDataModule, Weighting

os.environ.setdefault("WANDB_MODE", "offline")
# on-disk caches of the suite (the molecules' fingerprints) go to a temporary folder, not ~/.cache
os.environ.setdefault("LIT_MTL_CACHE", tempfile.mkdtemp(prefix="lit_mtl_cache_"))
warnings.filterwarnings("ignore", ".*does not have many workers.*")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def fast_trainer(**overrides: Any) -> L.Trainer:
    """A CPU Trainer without logger, checkpoints or progress bar unless overridden."""
    kwargs: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def small_data(**overrides: Any) -> SyntheticDataModule:
    kwargs: dict[str, Any] = dict(
        in_features=8,
        regression_scales=[1.0, 5.0],
        regression_noise=[0.1, 0.5],
        num_classification_tasks=1,
        num_classes=3,
        num_train=256,
        num_val=64,
        num_test=64,
        batch_size=32,
        seed=0,
    )
    kwargs.update(overrides)
    return SyntheticDataModule(**kwargs)


def small_module(
    dm: SyntheticDataModule, weighting: Weighting | None = None, **overrides: Any
) -> MultiTaskModule:
    kwargs: dict[str, Any] = dict(
        encoder=MLPEncoder(dm.in_features, [16, 16]),
        tasks=dm.task_specs,
        weighting=weighting,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
    )
    kwargs.update(overrides)
    return MultiTaskModule(**kwargs)


@pytest.fixture
def seeded() -> None:
    torch.manual_seed(0)


@dataclass
class CliRun:
    """What a ``lit-mtl`` run left: its exit code and what it wrote."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def lit_mtl_cli(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., CliRun]:
    """``lit_mtl_cli(*args, cwd=path)`` runs ``lit-mtl *args`` in this process (the console
    script's ``main``, its exit code from ``SystemExit``), in ``cwd``, with the environment and
    the working directory restored afterwards. A fresh interpreter costs 5-8 s of imports per
    run; the tests that are about the interpreter (the console script, import time, quiet
    output, a killed process) start one."""
    from lit_mtl.__main__ import main

    def run(*args: str, cwd: Path) -> CliRun:
        capfd.readouterr()
        logged = io.StringIO()
        handler = logging.StreamHandler(logged)  # Lightning's handlers hold the import-time stderr
        names = ("lightning", "lightning.pytorch", "lightning.fabric", "lit_mtl")
        loggers = [logging.getLogger(name) for name in names]  # the ones that stop propagation
        environ = dict(os.environ)
        with monkeypatch.context() as patch:
            patch.chdir(cwd)
            patch.setattr(sys, "argv", ["lit-mtl", *args])
            patch.delenv("LIT_MTL_TRACEBACK", raising=False)
            for logger in loggers:
                logger.addHandler(handler)
            code = 0
            try:
                main(list(args))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            finally:
                for logger in loggers:
                    logger.removeHandler(handler)
                os.environ.clear()
                os.environ.update(environ)
        out, err = capfd.readouterr()
        return CliRun(code, out, err + logged.getvalue())

    return run


# ---------------------------------------------------------------------- the repository stays clean
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: folders the suite may write (caches, the CI's environment) and that git ignores anyway
_SKIPPED_DIRS = {".git", ".ci-venv", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}


def repository_files(root: str = REPO_ROOT) -> set[str]:
    """Every file under the repository, less caches and virtual environments."""
    found: set[str] = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS and not d.endswith(".egg-info")]
        found.update(os.path.relpath(os.path.join(folder, f), root) for f in files)
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._repository_files_before = repository_files()  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a test left a file in the repository (tests write under tmp_path)."""
    before = getattr(session.config, "_repository_files_before", None)
    if before is None:
        return
    new = sorted(repository_files() - before)
    if new:
        session.config.get_terminal_writer().line(
            f"FAILED: the test suite wrote into the repository: {new[:20]}", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def torchmetrics_reference(kind: str, num_outputs: int) -> dict[str, Any]:
    """torchmetrics objects computing what lit_mtl logs for a task of this kind (the reference
    the epoch metrics are tested against; -100 ignored)."""
    from torchmetrics.classification import (
        BinaryAccuracy,
        BinaryF1Score,
        MulticlassAccuracy,
        MulticlassF1Score,
        MultilabelAccuracy,
        MultilabelF1Score,
    )
    from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError

    ignore = {"ignore_index": -100}
    if kind == "regression":
        return {"mse": MeanSquaredError(), "mae": MeanAbsoluteError()}
    if kind == "binary":
        return {"acc": BinaryAccuracy(**ignore), "f1": BinaryF1Score(**ignore)}
    if kind == "multiclass":
        return {
            "acc": MulticlassAccuracy(num_classes=num_outputs, average="micro", **ignore),
            "f1": MulticlassF1Score(num_classes=num_outputs, average="macro", **ignore),
        }
    return {
        "acc": MultilabelAccuracy(num_labels=num_outputs, **ignore),
        "f1": MultilabelF1Score(num_labels=num_outputs, average="macro", **ignore),
    }


def write_scene_folders(
    root: Any,
    folders: dict[str, tuple[int, ...]],
    num_train: int = 4,
    num_val: int = 3,
    height: int = 32,
    width: int = 64,
    seed: int = 0,
) -> None:
    """Tiny files in the preprocessed layout of the MTAN / Nash-MTL code:
    ``root/{train,val}/{folder}/{i}.npy``, with ``folders`` mapping a target folder to its
    trailing shape (``()`` for labels (H, W), ``(1,)`` depth, ``(3,)`` normals); labels are float
    class indices with -1 holes, depth has 0 holes, normals unit vectors with zero holes."""
    from pathlib import Path

    import numpy as np

    rng = np.random.default_rng(seed)
    for split, n in (("train", num_train), ("val", num_val)):
        for folder in ("image", *folders):
            (Path(root) / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = Path(root) / split
            np.save(base / "image" / f"{i}.npy", rng.random((height, width, 3), dtype=np.float32))
            for folder, trailing in folders.items():
                if folder.startswith("label"):
                    classes = 7 if folder == "label_7" else 19 if folder == "label_19" else 13
                    array = rng.integers(-1, classes, (height, width)).astype(np.float32)
                elif trailing == (1,):
                    array = rng.random((height, width, 1), dtype=np.float32) * 5
                    array[rng.random((height, width)) < 0.2] = 0.0
                else:
                    array = rng.normal(size=(height, width, 3)).astype(np.float32)
                    array /= np.linalg.norm(array, axis=-1, keepdims=True)
                    array[rng.random((height, width)) < 0.2] = 0.0
                np.save(base / folder / f"{i}.npy", array)


NYUV2_FOLDERS = {"label": (), "depth": (1,), "normal": (3,)}
CITYSCAPES_FOLDERS = {"label_7": (), "depth": (1,)}


def write_oxford_pet(root: Any, trainval: int = 6, test: int = 3, size: int = 20) -> None:
    """Tiny files in Oxford-IIIT Pet's real layout under ``root/oxford-iiit-pet``: JPEG images,
    ``annotations/{trainval,test}.txt`` ("<name> <class 1..37> <species 1..2> <breed id>") and
    PNG trimaps with values 1 (pet), 2 (background), 3 (border)."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    base = Path(root) / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    breeds = [("Abyssinian", 1, 1), ("basset_hound", 4, 2), ("Bengal", 6, 1)]
    for split, n in (("trainval", trainval), ("test", test)):
        lines = []
        for i in range(n):
            breed, label, species = breeds[i % len(breeds)]
            name = f"{breed}_{split}{i}"
            pixels = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(base / "images" / f"{name}.jpg")
            trimap = rng.integers(1, 4, (size, size + 4), dtype=np.uint8)
            Image.fromarray(trimap, mode="L").save(base / "annotations" / "trimaps" / f"{name}.png")
            lines.append(f"{name} {label} {species} {i + 1}")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def assert_resumes_identically(
    tmp_path: Any, make_data: Any, make_module: Any, make_callbacks: Any = list
) -> None:
    """A 4-epoch fit ends with the same state as a 2-epoch fit saved to ``last.ckpt`` and
    resumed to 4 epochs (every entry of the module's state_dict, exactly).

    ``make_data()`` returns a fresh DataModule, ``make_module(dm)`` a fresh module for it,
    ``make_callbacks()`` fresh trainer callbacks (e.g. weight averaging)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(max_epochs: int, ckpt_path: Any = None, save: bool = False) -> L.LightningModule:
        L.seed_everything(0)
        dm = make_data()
        module = make_module(dm)
        callbacks = list(make_callbacks())
        if save:
            callbacks.append(ModelCheckpoint(dirpath=tmp_path, save_last=True))
        trainer = fast_trainer(
            max_epochs=max_epochs,
            callbacks=callbacks,
            enable_checkpointing=save,
            default_root_dir=tmp_path,
        )
        trainer.fit(module, dm, ckpt_path=ckpt_path)
        return module

    full = run(4)
    run(2, save=True)
    resumed = run(4, ckpt_path=tmp_path / "last.ckpt")
    for (key, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def write_celeba(root: Any, num_images: int = 9, width: int = 20, height: int = 24) -> None:
    """Tiny files in torchvision's CelebA layout under ``root/celeba``: JPEG images and the
    five annotation files (attributes in -1/1, partitions 0/1/2 cycling, landmarks inside the
    image); the images are smaller than the real 178 x 218."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from lit_mtl.data.celeba import CELEBA_ATTRIBUTES

    base = Path(root) / "celeba"
    (base / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"{i + 1:06d}.jpg" for i in range(num_images)]
    for name in names:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(base / "img_align_celeba" / name)
    attrs = rng.choice([-1, 1], size=(num_images, len(CELEBA_ATTRIBUTES)))
    marks = rng.integers(0, min(width, height), size=(num_images, 10))
    n = str(num_images)
    files = {
        "list_attr_celeba.txt": [n, " ".join(CELEBA_ATTRIBUTES)]
        + [f"{f} " + " ".join(f"{v:2d}" for v in row) for f, row in zip(names, attrs, strict=True)],
        "list_eval_partition.txt": [f"{f} {i % 3}" for i, f in enumerate(names)],
        "identity_CelebA.txt": [f"{f} {i + 1}" for i, f in enumerate(names)],
        "list_bbox_celeba.txt": [n, "image_id x_1 y_1 width height"]
        + [f"{f} 1 2 {width - 2} {height - 2}" for f in names],
        "list_landmarks_align_celeba.txt": [
            n,
            "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
            "rightmouth_x rightmouth_y",
        ]
        + [f"{f} " + " ".join(str(v) for v in row) for f, row in zip(names, marks, strict=True)],
    }
    for filename, lines in files.items():
        (base / filename).write_text("\n".join(lines) + "\n")


def write_smiles_table(path: Any, rows: int = 40) -> None:
    """A tiny MoleculeNet-format CSV: a ``smiles`` column and two binary task columns (``a``,
    ``b``), some cells empty (missing labels), both classes in every task."""
    smiles = ["CCO", "c1ccccc1", "c1ccncc1", "Cc1ccccc1", "C1CCCCC1", "Oc1ccccc1", "CCN", "CCCl"]
    lines = ["smiles,a,b"]
    for i in range(rows):
        a = "" if i % 7 == 3 else str(i % 2)
        b = "" if i % 5 == 1 else str((i // 2) % 2)
        lines.append(f"{smiles[i % len(smiles)]},{a},{b}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
