"""Loader plumbing shared by every DataModule: seeded shuffling and the four dataloaders."""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import Any, Literal, cast

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader
from lightning.pytorch.utilities.parsing import AttributeDict
from torch.utils.data import DataLoader, Dataset, Sampler

from lit_mtl.data.task_loaders import (
    SAMPLING_MODES,
    TaskBatchCollate,
    TaskSamplingLoader,
    resume_skips,
    task_sampling_probabilities,
)
from lit_mtl.tasks import TaskSpec

#: the modes of Lightning's CombinedLoader
LightningCombineMode = Literal["min_size", "max_size_cycle", "max_size", "sequential"]


class EpochSeededSampler(Sampler[int]):
    """Random permutation that is a pure function of (seed, epoch).

    Lightning calls :meth:`set_epoch` at the start of every epoch, so a run resumed from a
    checkpoint sees exactly the sample order of the uninterrupted run. With ``world_size > 1``
    it yields this rank's share of the permutation (``order[rank::world_size]``, padded from its
    start to a multiple of ``world_size``, as ``DistributedSampler``): for loaders Lightning does
    not distribute itself (:class:`~lit_mtl.data.task_loaders.TaskSamplingLoader`'s).
    """

    def __init__(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"EpochSeededSampler: rank {rank} outside world_size {world_size}")
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, samples already seen in it)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, epoch: int, samples: int) -> None:
        """The next iteration, if it is of ``epoch``, starts after its first ``samples``
        indices (a run resumed mid-epoch continues where the checkpoint left off)."""
        self._skip = (int(epoch), int(samples))

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=gen).tolist()
        if self.world_size > 1:
            order = (order + order[: len(self) * self.world_size - len(order)])[
                self.rank :: self.world_size
            ]
        skip, self._skip = self._skip, None
        if skip is not None and skip[0] == self.epoch:
            order = order[skip[1] :]
        return iter(order)

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)


class EmptySplit(Dataset):
    """A split the user left out (no validation data, say): no samples, so no loader."""

    def __len__(self) -> int:
        return 0

    def __getitem__(self, index: int) -> Any:
        raise IndexError(f"an empty split has no sample {index}")


class ResumableDataLoader(DataLoader):
    """A DataLoader whose mid-epoch position is restored by its DataModule
    (:meth:`SplitDataModule.load_state_dict` makes the sampler skip the batches already trained
    on). Its own ``state_dict`` is empty; having one tells Lightning the loader resumes."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore here: the DataModule's state holds the position."""


class SplitDataModule(L.LightningDataModule):
    """Base of the DataModules here: ``self.datasets`` holds the train/val/test splits (built by
    ``setup``); loaders use ``batch_size``, ``num_workers``, ``pin_memory``,
    ``persistent_workers`` and shuffle the train split with :class:`EpochSeededSampler`.

    A split is one dataset (each sample carries every task's target) or a mapping
    ``{task: dataset}`` (each task brings its own data: multi-input training, combined by
    ``combine`` and ``temperature``, see :mod:`lit_mtl.data.task_loaders`).
    """

    #: split -> one dataset, or {task: dataset}; :class:`EmptySplit`: a split with no loader
    datasets: dict[str, Dataset | Mapping[str, Dataset]]
    combine: str = "max_size_cycle"
    temperature: float = 1.0
    task_specs: list[TaskSpec]  # set by every DataModule's __init__
    batch_size: int = 64
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    seed: int = 0
    #: (epoch, training batches consumed in it), saved in checkpoints
    _consumed: tuple[int, int] = (-1, 0)
    _resume_at: tuple[int, int] | None = None

    def __init__(
        self,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        combine: str = "max_size_cycle",
        temperature: float = 1.0,
    ) -> None:
        """The loader options every DataModule here takes, checked once (a DataModule's own
        ``__init__`` lists them for the CLI and passes them on)."""
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        if int(num_workers) < 0:
            raise ValueError(f"{type(self).__name__}: num_workers must be >= 0, got {num_workers}")
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.pin_memory, self.persistent_workers = bool(pin_memory), bool(persistent_workers)
        self.seed = int(seed)
        self.combine, self.temperature = combine, float(temperature)
        self.datasets = {}

    # ------------------------------------------------------------------ mid-epoch resume
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the training batches the model consumed in the current epoch (here, not in
        the sampler: loaders and Lightning fetch ahead of what is consumed)."""
        trainer = self.trainer  # None outside a Trainer
        if trainer is not None and trainer.training:
            epoch, count = self._consumed
            epoch_now = trainer.current_epoch
            self._consumed = (epoch_now, count + 1 if epoch == epoch_now else 1)
        return batch

    def state_dict(self) -> dict[str, Any]:
        epoch, batches = self._consumed
        return {"train_epoch": epoch, "train_batches": batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A checkpoint written mid-epoch: the resumed run's training loader skips the batches
        of that epoch the checkpointed run already trained on (same order: the sampler is a
        function of (seed, epoch)), so the resumed run is the uninterrupted one."""
        epoch, batches = int(state_dict["train_epoch"]), int(state_dict["train_batches"])
        self._consumed = (epoch, batches)
        self._resume_at = (epoch, batches) if epoch >= 0 else None

    def setup(self, stage: str | None = None) -> None:
        """Fill :attr:`datasets` (every DataModule here builds its own splits)."""
        raise NotImplementedError(f"{type(self).__name__} does not build its splits (setup)")

    @property
    def arguments(self) -> AttributeDict:
        """The ``__init__`` arguments ``save_hyperparameters()`` stored, read by attribute."""
        return cast(AttributeDict, self.hparams)

    @property
    def num_tasks(self) -> int:
        return len(self.task_specs)

    @property
    def task_names(self) -> list[str]:
        return [s.name for s in self.task_specs]

    def optional_splits(self) -> tuple[str, ...]:
        """Splits that may be empty by the user's choice (e.g. ``val_fraction=0``); any other
        empty split is an error naming the DataModule and the split."""
        return ("val",) if getattr(self, "val_fraction", None) == 0 else ()

    def _loader(self, split: str, shuffle: bool) -> Any:
        if not self.datasets:
            self.setup()
        dataset = self.datasets[split]
        if isinstance(dataset, Mapping):
            return self._task_loaders(split, dataset, shuffle)
        size = len(cast(Sized, dataset))  # every dataset here is map-style, with a length
        if size == 0:
            if split in self.optional_splits():
                return []  # no loader: Lightning skips the stage
            raise ValueError(
                f"{type(self).__name__}: the {split} split is empty (0 samples); check the "
                "DataModule's split sizes, class subset and labels_per_class"
            )
        sampler = EpochSeededSampler(size, int(self.seed)) if shuffle else None
        if sampler is not None and self._resume_at is not None:
            epoch, batches = self._resume_at
            sampler.skip(epoch, batches * int(self.batch_size))
            self._resume_at = None
        return self._data_loader(dataset, sampler)

    def _data_loader(
        self, dataset: Dataset, sampler: Sampler | None, collate_fn: Any = None
    ) -> ResumableDataLoader:
        return ResumableDataLoader(
            dataset,
            batch_size=int(self.batch_size),
            sampler=sampler,
            num_workers=int(self.num_workers),
            pin_memory=bool(self.pin_memory),
            persistent_workers=bool(self.persistent_workers) and int(self.num_workers) > 0,
            collate_fn=collate_fn,
        )

    def _task_loaders(self, split: str, datasets: Mapping[str, Dataset], train: bool) -> Any:
        """The loaders of a split with one dataset per task: combined by ``combine`` for
        training, one after the other (``{task: batch}`` each) for evaluation."""
        unknown = sorted(set(datasets) - set(self.task_names))
        if unknown:
            raise KeyError(
                f"{type(self).__name__}: the {split} split has datasets for unknown task(s) "
                f"{unknown}; tasks: {self.task_names}"
            )
        empty = [name for name, ds in datasets.items() if len(ds) == 0]  # type: ignore[arg-type]
        if empty:
            raise ValueError(
                f"{type(self).__name__}: the {split} split of task(s) {empty} is empty (0 samples)"
            )
        if not train:
            loaders = {
                name: self._data_loader(ds, None, TaskBatchCollate(name))
                for name, ds in datasets.items()
            }
            return CombinedLoader(loaders, mode="sequential")
        resume, self._resume_at = self._resume_at, None
        if self.combine in SAMPLING_MODES:
            trainer = self.trainer
            rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
            samplers = {
                name: EpochSeededSampler(len(ds), int(self.seed), rank, world)  # type: ignore[arg-type]
                for name, ds in datasets.items()
            }
            loader = TaskSamplingLoader(
                {name: self._data_loader(ds, samplers[name]) for name, ds in datasets.items()},
                task_sampling_probabilities(
                    [len(ds) for ds in datasets.values()],  # type: ignore[arg-type]
                    self.combine,
                    float(self.temperature),
                ),
                int(self.seed),
            )
            if resume is not None:
                loader.skip(*resume)
            return loader
        samplers = {
            name: EpochSeededSampler(len(ds), int(self.seed))  # type: ignore[arg-type]
            for name, ds in datasets.items()
        }
        loaders = {name: self._data_loader(ds, samplers[name]) for name, ds in datasets.items()}
        if resume is not None:
            epoch, consumed = resume
            lengths = [len(loader) for loader in loaders.values()]
            for sampler, skip in zip(
                samplers.values(), resume_skips(self.combine, lengths, consumed), strict=True
            ):
                sampler.skip(epoch, skip * int(self.batch_size))
        # here combine is one of Lightning's own modes (the sampling modes returned above)
        return CombinedLoader(loaders, mode=cast(LightningCombineMode, self.combine))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
