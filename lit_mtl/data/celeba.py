"""CelebA as a many-task DataModule: its 40 binary attributes as 40 tasks (and landmarks).

The many-task benchmark of Nash-MTL and FAMO (aligned-and-cropped CelebA, 40 attributes, images
resized to 64 x 64). Read through ``torchvision.datasets.CelebA`` from its own layout::

    <root>/celeba/img_align_celeba/000001.jpg ...
    <root>/celeba/list_attr_celeba.txt            (count; the 40 names; "<file> -1 1 ...")
    <root>/celeba/list_eval_partition.txt         ("<file> 0|1|2": train, valid, test)
    <root>/celeba/identity_CelebA.txt
    <root>/celeba/list_bbox_celeba.txt
    <root>/celeba/list_landmarks_align_celeba.txt

torchvision compares the annotation files with the MD5 sums of the full release; here only their
presence is checked (each missing file is named), so a copy that holds part of the images with
matching annotation files also loads. The attribute names in ``list_attr_celeba.txt`` must be
the 40 of :data:`CELEBA_ATTRIBUTES`, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_mtl._optional import require
from lit_mtl.data.loaders import SplitDataModule
from lit_mtl.data.vision import download_error
from lit_mtl.tasks import TaskSpec

#: the 40 attributes, in the order of ``list_attr_celeba.txt``
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes",
    "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
#: the annotation files torchvision reads (besides the image folder)
CELEBA_FILES = (
    "list_attr_celeba.txt",
    "identity_CelebA.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
    "list_eval_partition.txt",
)
_SPLITS = {"train": "train", "val": "valid", "test": "test"}
_MEAN = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)
_STD = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)


def _celeba_class() -> type:
    """torchvision's CelebA, checking the files' presence instead of the full release's MD5."""
    datasets = require("torchvision.datasets", "vision", "CelebADataModule")

    class _PresentFilesCelebA(datasets.CelebA):  # type: ignore[name-defined]  # an optional import
        def _check_integrity(self) -> bool:
            base = Path(self.root) / self.base_folder
            files = all((base / name).is_file() for name in CELEBA_FILES)
            return files and (base / "img_align_celeba").is_dir()

    return _PresentFilesCelebA


class _CelebASamples(Dataset):
    """(image (3, S, S) in [-1, 1], {attribute: 0./1., "landmarks": (10,) in [0, 1]})."""

    def __init__(
        self, dataset: Any, attributes: Sequence[str], landmarks: bool, image_size: int
    ) -> None:
        self.dataset = dataset
        self.columns = [CELEBA_ATTRIBUTES.index(a) for a in attributes]
        self.attributes = list(attributes)
        self.landmarks = landmarks
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        from PIL import Image

        image, (attr, points) = self.dataset[index]
        width, height = image.size
        image = image.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        columns = zip(self.attributes, self.columns, strict=True)
        targets = {name: attr[c].float() for name, c in columns}
        if self.landmarks:  # (x, y) of 5 points in the aligned image, as fractions of its size
            scale = torch.tensor([width, height] * 5, dtype=torch.float32)
            targets["landmarks"] = points.float() / scale
        return (pixels - _MEAN) / _STD, targets


class CelebADataModule(SplitDataModule):
    """CelebA (aligned and cropped): one binary task per attribute, named as in the files;
    ``landmarks=True`` adds ``landmarks`` (regression, 10 outputs: the 5 aligned landmark
    points' x, y as fractions of the image's width and height).

    Args:
        root: the folder holding ``celeba/`` (module docstring).
        attributes: the attribute tasks (default: all 40, :data:`CELEBA_ATTRIBUTES`).
        landmarks: add the landmark regression task.
        image_size: side of the square the images are resized to (bilinear; 64 in Nash-MTL and
            FAMO).
        download: let torchvision download CelebA (never in tests; Google Drive quotas often
            refuse it).
        batch_size: samples per batch of every loader.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers``.
        seed: seed of the shuffling.

    The splits are CelebA's own (``list_eval_partition.txt``: train 162 770, valid 19 867,
    test 19 962 images).
    """

    def __init__(
        self,
        root: str | Path = "data",
        attributes: Sequence[str] | None = None,
        landmarks: bool = False,
        image_size: int = 64,
        download: bool = False,
        batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            seed=seed,
        )
        chosen = list(CELEBA_ATTRIBUTES if attributes is None else attributes)
        unknown = [a for a in chosen if a not in CELEBA_ATTRIBUTES]
        if unknown or not chosen or len(set(chosen)) != len(chosen):
            raise ValueError(
                f"CelebADataModule: attributes must be distinct CelebA attribute names, got "
                f"{chosen}" + (f"; unknown: {unknown}" if unknown else "")
            )
        if image_size < 8:
            raise ValueError(f"CelebADataModule: image_size must be >= 8, got {image_size}")
        self.save_hyperparameters()
        self.root = str(root)
        self.attributes = chosen
        self.landmarks = bool(landmarks)
        self.image_size = int(image_size)
        self.download = bool(download)
        self.task_specs = [TaskSpec(a, "binary") for a in chosen]
        if self.landmarks:
            self.task_specs.append(TaskSpec("landmarks", "regression", 10))

    def _check_files(self) -> None:
        base = Path(self.root) / "celeba"
        missing = [name for name in CELEBA_FILES if not (base / name).is_file()]
        if not (base / "img_align_celeba").is_dir():
            missing.insert(0, "img_align_celeba/")
        if missing:
            raise FileNotFoundError(
                f"CelebADataModule: missing under {base}: {missing}. Expected torchvision's "
                f"layout: {base}/img_align_celeba/<000001.jpg ...> and the files "
                f"{list(CELEBA_FILES)}. Pass download=True to fetch it."
            )
        with open(base / "list_attr_celeba.txt") as f:
            f.readline()
            names = tuple(f.readline().split())
        if names != CELEBA_ATTRIBUTES:
            raise ValueError(
                f"CelebADataModule: {base / 'list_attr_celeba.txt'} names the attributes "
                f"{list(names)[:5]}... ({len(names)}); expected CelebA's 40 in order, "
                f"{list(CELEBA_ATTRIBUTES)[:5]}..."
            )

    def _split(self, split: str) -> Dataset:
        celeba = _celeba_class()
        if self.download:
            try:
                dataset = celeba(self.root, _SPLITS[split], ["attr", "landmarks"], download=True)
            except Exception as err:
                raise download_error("CelebA", self.root, err) from err
        else:
            self._check_files()
            dataset = celeba(self.root, _SPLITS[split], ["attr", "landmarks"])
        return _CelebASamples(dataset, self.attributes, self.landmarks, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.datasets = {split: self._split(split) for split in _SPLITS}
