"""Loader plumbing shared by every DataModule: seeded shuffling and the four dataloaders."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EpochSeededSampler", "SplitDataModule"]


class EpochSeededSampler(Sampler[int]):
    """Random permutation that is a pure function of (seed, epoch).

    Lightning calls :meth:`set_epoch` at the start of every epoch, so a run resumed from a
    checkpoint sees exactly the sample order of the uninterrupted run.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):  # type: ignore[no-untyped-def]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=gen).tolist())

    def __len__(self) -> int:
        return self.num_samples


class SplitDataModule(L.LightningDataModule):
    """Base of the DataModules here: ``self.datasets`` holds the train/val/test splits (built by
    ``setup``); loaders use ``batch_size``, ``num_workers``, ``pin_memory``,
    ``persistent_workers`` and shuffle the train split with :class:`EpochSeededSampler`."""

    datasets: dict[str, Dataset]
    batch_size: int = 64
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    seed: int = 0

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        dataset = self.datasets[split]
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError(
                f"{type(self).__name__}: the {split} split is empty (0 samples); check the "
                "DataModule's split sizes, class subset and labels_per_class"
            )
        return DataLoader(
            dataset,
            batch_size=int(self.batch_size),
            sampler=EpochSeededSampler(len(dataset), int(self.seed)) if shuffle else None,
            num_workers=int(self.num_workers),
            pin_memory=bool(self.pin_memory),
            persistent_workers=bool(self.persistent_workers) and int(self.num_workers) > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
