"""NYUv2 and CityScapes as the MTL papers preprocess them, and the base of the dense DataModules.

The MTAN code (Liu et al., CVPR 2019) ships both datasets as one ``.npy`` file per sample and
target; CAGrad, Nash-MTL and FAMO read the same folders::

    <root>/train/image/0.npy   (H, W, 3) float, RGB in [0, 1]
    <root>/train/label/0.npy   (H, W) class index as float, -1 = unlabelled     (NYUv2)
    <root>/train/depth/0.npy   (H, W, 1) float, 0 = unknown
    <root>/train/normal/0.npy  (H, W, 3) float unit vectors, 0 = unknown       (NYUv2)
    <root>/val/...             the 654 (NYUv2) / 500 (CityScapes) evaluation images

CityScapes has ``label_7`` and ``label_19`` instead of ``label`` (7 or 19 classes, -1 =
unlabelled) and no normals. NYUv2: 795 train / 654 val images at 288 x 384, 13 classes;
CityScapes: 2975 / 500 at 128 x 256. The papers report the ``val`` folder as their test set:
here it is both the validation and the test split.

Training batches get the papers' joint augmentation (:mod:`lit_mtl.data.dense_augment`) when
``augment=True``, drawn from (seed, epoch, batch), so a resumed run sees the same crops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_mtl.data.dense_augment import augment_batch
from lit_mtl.data.loaders import SplitDataModule
from lit_mtl.tasks import TaskSpec


class DenseDataModule(SplitDataModule):
    """Base of the dense DataModules: ``task_specs``, and the papers' joint augmentation of the
    training batches (random scale-crop at ``scales``, horizontal flip) applied after the batch
    reaches the device, seeded by (seed, epoch, batch index) when ``augment`` is on."""

    task_specs: list[TaskSpec]
    augment: bool = False
    scales: Sequence[float] = (1.0, 1.2, 1.5)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_after_batch_transfer(batch, dataloader_idx)  # counts the batch
        trainer = self.trainer
        if not self.augment or trainer is None or not trainer.training:
            return batch
        epoch, index = self._consumed
        generator = torch.Generator().manual_seed(
            (int(self.seed) * 1_000_003 + epoch) * 1_000_003 + index
        )
        images, targets = batch[0], batch[1]
        kinds = {s.name: s.kind for s in self.task_specs}
        images, targets = augment_batch(images, targets, kinds, generator, self.scales)
        return (images, targets, *batch[2:])


def _layout_error(name: str, root: Path, folders: Sequence[str], problem: str) -> FileNotFoundError:
    expected = "\n".join(
        f"    {root}/{{train,val}}/{folder}/{{0,1,...}}.npy" for folder in ("image", *folders)
    )
    return FileNotFoundError(
        f"{name}: {problem}. Expected the preprocessed layout of the MTAN / CAGrad / Nash-MTL "
        f"code (one .npy file per sample):\n{expected}"
    )


class NpySceneFolder(Dataset):
    """One split of a preprocessed per-sample ``.npy`` folder: ``(image (3, H, W), {task:
    target})`` with labels as int64 (H, W), depth (1, H, W) and normals (3, H, W).

    Args:
        directory: ``<root>/<split>``.
        folders: target folder by task name, e.g. ``{"segmentation": "label"}``.
        kinds: task kind by task name.
        dataset: the name used in errors.
    """

    def __init__(
        self,
        directory: Path,
        folders: Mapping[str, str],
        kinds: Mapping[str, str],
        dataset: str,
    ) -> None:
        self.directory = Path(directory)
        self.folders = dict(folders)
        self.kinds = dict(kinds)
        self.dataset = dataset
        root = self.directory.parent
        listed = {}
        for folder in ("image", *self.folders.values()):
            path = self.directory / folder
            if not path.is_dir():
                raise _layout_error(
                    dataset, root, list(self.folders.values()), f"folder {path} is missing"
                )
            listed[folder] = sorted(int(p.stem) for p in path.glob("*.npy") if p.stem.isdigit())
        images = listed["image"]
        if not images:
            raise _layout_error(
                dataset,
                root,
                list(self.folders.values()),
                f"{self.directory / 'image'} has no <i>.npy files",
            )
        if images != list(range(len(images))):
            missing = sorted(set(range(len(images))) - set(images))[:3]
            raise _layout_error(
                dataset,
                root,
                list(self.folders.values()),
                f"{self.directory / 'image'}: files must be numbered 0..{len(images) - 1}; "
                f"missing {missing}",
            )
        for folder, indices in listed.items():
            if indices != images:
                raise _layout_error(
                    dataset,
                    root,
                    list(self.folders.values()),
                    f"{self.directory / folder} has {len(indices)} files but "
                    f"{self.directory / 'image'} has {len(images)}",
                )
        self.size = len(images)

    def __len__(self) -> int:
        return self.size

    def _load(self, folder: str, index: int, dims: int, channels: int | None) -> np.ndarray:
        path = self.directory / folder / f"{index}.npy"
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.dataset}: cannot read {path}: {err}") from err
        shape_ok = array.ndim == dims and (channels is None or array.shape[-1] == channels)
        if not shape_ok:
            layout = "(H, W)" if dims == 2 else f"(H, W, {channels})"
            raise ValueError(f"{self.dataset}: {path} has shape {array.shape}; expected {layout}")
        return array

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = torch.from_numpy(self._load("image", index, 3, 3)).float().permute(2, 0, 1)
        targets: dict[str, Tensor] = {}
        for name, folder in self.folders.items():
            kind = self.kinds[name]
            if kind == "segmentation":
                array = torch.from_numpy(self._load(folder, index, 2, None))
                targets[name] = array.round().long()  # stored as float; -1 = unlabelled
            else:
                channels = 1 if kind == "depth" else 3
                array = torch.from_numpy(self._load(folder, index, 3, channels))
                targets[name] = array.float().permute(2, 0, 1)  # (C, H, W)
            if targets[name].shape[-2:] != image.shape[-2:]:
                raise ValueError(
                    f"{self.dataset}: {self.directory / folder / f'{index}.npy'} is "
                    f"{tuple(targets[name].shape[-2:])} but its image is {tuple(image.shape[-2:])}"
                )
        return image, targets


class _NpyScenesDataModule(DenseDataModule):
    dataset_name = ""

    def __init__(
        self,
        root: str | Path,
        folders: Mapping[str, str],
        specs: Sequence[TaskSpec],
        batch_size: int,
        augment: bool,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        seed: int,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            seed=seed,
        )
        self.root = Path(root)
        self.folders = dict(folders)
        self.task_specs = list(specs)
        self.augment = bool(augment)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if not self.root.is_dir():
            raise _layout_error(
                self.dataset_name,
                self.root,
                list(self.folders.values()),
                f"root {self.root} does not exist",
            )
        kinds = {s.name: s.kind for s in self.task_specs}
        train = NpySceneFolder(self.root / "train", self.folders, kinds, self.dataset_name)
        evaluation = NpySceneFolder(self.root / "val", self.folders, kinds, self.dataset_name)
        self.datasets = {"train": train, "val": evaluation, "test": evaluation}


class NYUv2DataModule(_NpyScenesDataModule):
    """NYUv2 (13-class segmentation, depth, surface normals) from the preprocessed ``.npy``
    folders (module docstring), as the MTAN / CAGrad / Nash-MTL / FAMO experiments train it.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        tasks: which of ``segmentation``, ``depth``, ``normal`` to load (all by default).
        batch_size: 2 in the papers.
        augment: the papers' random scale-crop and flip on training batches.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers``.
        seed: seed of the shuffling and the augmentation.

    Task specs: ``segmentation`` (13 classes, ignore_index -1), ``depth``, ``normal``; their
    metrics compare with :data:`lit_mtl.metrics.NYUV2_SINGLE_TASK_BASELINE`.
    """

    dataset_name = "NYUv2DataModule"
    TASKS: ClassVar[dict[str, tuple[str, TaskSpec]]] = {
        "segmentation": ("label", TaskSpec("segmentation", "segmentation", 13, ignore_index=-1)),
        "depth": ("depth", TaskSpec("depth", "depth", 1)),
        "normal": ("normal", TaskSpec("normal", "normals", 3)),
    }

    def __init__(
        self,
        root: str | Path = "data/nyuv2",
        tasks: Sequence[str] = ("segmentation", "depth", "normal"),
        batch_size: int = 2,
        augment: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
    ) -> None:
        chosen = choose_tasks(self.dataset_name, tasks, self.TASKS)
        super().__init__(
            root,
            {name: self.TASKS[name][0] for name in chosen},
            [self.TASKS[name][1] for name in chosen],
            batch_size,
            augment,
            num_workers,
            pin_memory,
            persistent_workers,
            seed,
        )
        self.save_hyperparameters()


class CityScapesDataModule(_NpyScenesDataModule):
    """CityScapes (7- or 19-class segmentation, depth) from the preprocessed ``.npy`` folders
    (module docstring: ``label_7`` / ``label_19`` and ``depth``), at 128 x 256 as the papers.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        num_classes: 7 (the MTL papers) or 19.
        tasks: which of ``segmentation``, ``depth`` to load.
        batch_size: 8 in Nash-MTL / FAMO.
        augment: random scale-crop and flip on training batches (off in Nash-MTL's CityScapes).
        num_workers: as :class:`NYUv2DataModule`.
        pin_memory: as :class:`NYUv2DataModule`.
        persistent_workers: as :class:`NYUv2DataModule`.
        seed: as :class:`NYUv2DataModule`.
    """

    dataset_name = "CityScapesDataModule"

    def __init__(
        self,
        root: str | Path = "data/cityscapes",
        num_classes: int = 7,
        tasks: Sequence[str] = ("segmentation", "depth"),
        batch_size: int = 8,
        augment: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
    ) -> None:
        if num_classes not in (7, 19):
            raise ValueError(
                f"CityScapesDataModule: num_classes must be 7 or 19, got {num_classes}"
            )
        available = {
            "segmentation": (
                f"label_{num_classes}",
                TaskSpec("segmentation", "segmentation", num_classes, ignore_index=-1),
            ),
            "depth": ("depth", TaskSpec("depth", "depth", 1)),
        }
        chosen = choose_tasks(self.dataset_name, tasks, available)
        super().__init__(
            root,
            {name: available[name][0] for name in chosen},
            [available[name][1] for name in chosen],
            batch_size,
            augment,
            num_workers,
            pin_memory,
            persistent_workers,
            seed,
        )
        self.save_hyperparameters()


def choose_tasks(name: str, tasks: Sequence[str], available: Mapping[str, Any]) -> list[str]:
    """The requested task names, checked against ``available`` (errors name the DataModule)."""
    chosen = list(tasks)
    unknown = sorted(set(chosen) - set(available))
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"{name}: tasks={chosen} must be distinct names among {sorted(available)}"
            + (f"; unknown: {unknown}" if unknown else "")
        )
    return chosen
