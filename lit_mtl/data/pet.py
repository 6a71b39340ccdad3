"""Oxford-IIIT Pet as a multi-task DataModule: breed, species and trimap segmentation.

Read through ``torchvision.datasets.OxfordIIITPet`` (``<root>/oxford-iiit-pet/images/*.jpg``,
``annotations/{trainval,test}.txt``, ``annotations/trimaps/*.png``), one dense and two
image-level tasks from one image:

* ``breed``: 37 classes (multiclass);
* ``species``: cat or dog (binary);
* ``trimap``: per pixel pet / background / border (segmentation, 3 classes; the files store 1, 2,
  3, served as 0, 1, 2).

Images are resized to ``image_size`` (bilinear) and trimaps alike (nearest). The validation split
is a seeded ``val_fraction`` of ``trainval``; the test split is ``test``.
"""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from lit_mtl._optional import require
from lit_mtl.data.dense import DenseDataModule
from lit_mtl.data.vision import download_error
from lit_mtl.tasks import TaskSpec

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class _PetSamples(Dataset):
    """(image (3, S, S) normalised, {"breed", "species", "trimap"}) from torchvision's dataset."""

    def __init__(self, dataset: Any, image_size: int) -> None:
        self.dataset = dataset
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image, (breed, species, trimap) = self.dataset[index]
        size = (self.image_size, self.image_size)
        from PIL import Image

        image = image.resize(size[::-1], Image.BILINEAR)
        trimap = trimap.resize(size[::-1], Image.NEAREST)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        classes = torch.from_numpy(np.asarray(trimap, dtype=np.int64)) - 1  # 1..3 -> 0..2
        return (pixels - _MEAN) / _STD, {
            "breed": torch.tensor(int(breed)),
            "species": torch.tensor(float(species)),
            "trimap": classes,
        }


class OxfordPetDataModule(DenseDataModule):
    """Oxford-IIIT Pet: ``breed`` (37 classes), ``species`` (binary), ``trimap`` (3-class
    segmentation).

    Args:
        root: the folder holding ``oxford-iiit-pet/``.
        image_size: side of the square images the samples are resized to.
        val_fraction: share of ``trainval`` held out for validation (seeded).
        download: let torchvision download the dataset (never in tests).
        augment: random scale-crop and flip of training batches (the trimap with the image).
        batch_size: samples per batch of every loader.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers``.
        seed: seed of the validation split, the shuffling and the augmentation.
    """

    def __init__(
        self,
        root: str | Path = "data",
        image_size: int = 128,
        val_fraction: float = 0.1,
        download: bool = False,
        augment: bool = False,
        batch_size: int = 32,
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
        if not 0 <= val_fraction < 1:
            raise ValueError(
                f"OxfordPetDataModule: val_fraction must be in [0, 1), got {val_fraction}"
            )
        self.save_hyperparameters()
        self.root = str(root)
        self.image_size = int(image_size)
        self.val_fraction = float(val_fraction)
        self.download = bool(download)
        self.augment = bool(augment)
        self.task_specs = [
            TaskSpec("breed", "multiclass", 37),
            TaskSpec("species", "binary", 1),
            TaskSpec("trimap", "segmentation", 3),
        ]

    def _split(self, split: str) -> Dataset:
        datasets = require("torchvision.datasets", "vision", "OxfordPetDataModule")
        try:
            dataset = datasets.OxfordIIITPet(
                self.root,
                split=split,
                target_types=["category", "binary-category", "segmentation"],
                download=self.download,
            )
        except Exception as err:
            if self.download:
                raise download_error("Oxford-IIIT Pet", self.root, err) from err
            layout = Path(self.root) / "oxford-iiit-pet"
            raise FileNotFoundError(
                f"OxfordPetDataModule ({split} split): not found or unreadable under "
                f"root={self.root!r}: expected {layout}/images/<name>.jpg, "
                f"{layout}/annotations/{split}.txt and {layout}/annotations/trimaps/<name>.png. "
                f"Pass download=True to fetch it. torchvision said: {err}"
            ) from err
        return _PetSamples(dataset, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        trainval, test = self._split("trainval"), self._split("test")
        size = len(cast(Sized, trainval))
        order = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed))
        num_val = round(self.val_fraction * size)
        self.datasets = {
            "train": Subset(trainval, order[num_val:].tolist()),
            "val": Subset(trainval, order[:num_val].tolist()),
            "test": test,
        }

    def optional_splits(self) -> tuple[str, ...]:
        return ("val",) if self.val_fraction == 0 else ()
