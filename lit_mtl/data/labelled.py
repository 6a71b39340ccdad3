"""Multi-task DataModules over class-labelled datasets: tasks derived from the labels by name.

A dataset yields ``(x, label)``; each task is a named function of the label (e.g. MNIST ``digit``,
``parity``, ``ge5``). :class:`LabelledDataModule` adds what every such DataModule needs:

* task specs known right after ``__init__`` (for CLI linking);
* transfer splits: ``classes`` keeps a subset of the original classes (relabelled 0..k-1 for the
  class task, e.g. MNIST-1D 0-4 -> 5-9) and ``labels_per_class`` caps the labelled training
  samples per class (few-shot);
* a seeded train/val split, seeded loaders (order a pure function of seed and epoch), and the
  loader options batch_size, num_workers, pin_memory, persistent_workers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_mtl.data.loaders import SplitDataModule
from lit_mtl.tasks import TaskSpec


@dataclass(frozen=True)
class DerivedTask:
    """A task computed from the class label: its kind, output size and label -> target map."""

    kind: str
    num_outputs: int
    target: Callable[[Tensor], Tensor]  # (N,) or (N, k) labels -> (N,) targets


def _class_task(num_classes: int) -> DerivedTask:
    return DerivedTask("multiclass", num_classes, lambda y: y.long())


#: tasks of a 10-class digit dataset (MNIST, SVHN, digits, MNIST-1D)
DIGIT_TASKS: dict[str, DerivedTask] = {
    "digit": _class_task(10),
    "parity": DerivedTask("binary", 1, lambda y: (y % 2).float()),  # 1 = odd
    "ge5": DerivedTask("binary", 1, lambda y: (y >= 5).float()),
}


class TaskDerivedDataset(Dataset):
    """Wraps a ``(x, label)`` dataset: yields ``(x, {task: target})`` for the chosen indices.

    ``relabel`` maps original class ids to the ids the class task uses (transfer subsets).
    """

    def __init__(
        self,
        base: Dataset,
        indices: Sequence[int],
        tasks: Mapping[str, DerivedTask],
        relabel: Mapping[int, int] | None = None,
        class_tasks: Sequence[str] = (),
    ) -> None:
        self.base = base
        self.indices = list(indices)
        self.tasks = dict(tasks)
        self.relabel = dict(relabel or {})
        self.class_tasks = set(class_tasks)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        x, label = self.base[self.indices[i]]
        y = torch.as_tensor(label)
        targets = {}
        for name, task in self.tasks.items():
            source = y
            if name in self.class_tasks and self.relabel:
                source = torch.as_tensor(self.relabel[int(y)])
            targets[name] = task.target(source.unsqueeze(0))[0]
        return x, targets


class LabelledDataModule(SplitDataModule):
    """Base of the label-derived multi-task DataModules (see the module docstring).

    Subclasses define :attr:`available_tasks`, :attr:`class_task` (the task whose targets are the
    class ids, relabelled under ``classes``), :attr:`num_classes` and implement
    :meth:`_load_split` returning a ``(x, label)`` dataset and its labels for "train" or "test".

    Args:
        tasks: task names, chosen from :attr:`available_tasks`.
        classes: keep only these original classes (transfer splits); the class task is relabelled
            to 0..len(classes)-1 in the given order.
        labels_per_class: keep at most this many training samples per class (seeded).
        val_fraction: fraction of the (capped) training set held out for validation.
        batch_size: samples per batch of every loader.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers``.
        seed: seed of the split, the cap and the shuffling (local generators only).
    """

    available_tasks: dict[str, DerivedTask] = DIGIT_TASKS
    class_task: str = "digit"
    num_classes: int = 10
    dataset_name: str = "dataset"

    def __init__(
        self,
        tasks: Sequence[str] = ("digit",),
        classes: Sequence[int] | None = None,
        labels_per_class: int | None = None,
        val_fraction: float = 0.1,
        batch_size: int = 64,
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
        names = list(tasks)
        if not names:
            raise ValueError(f"{type(self).__name__}: tasks must not be empty")
        unknown = [t for t in names if t not in self.available_tasks]
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown task(s) {unknown}; available: "
                f"{sorted(self.available_tasks)}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self).__name__}: duplicate tasks in {names}")
        self.classes = None if classes is None else [int(c) for c in classes]
        if self.classes is not None:
            bad = [c for c in self.classes if not 0 <= c < self.num_classes]
            if bad or len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
                raise ValueError(
                    f"classes must be >= 2 distinct ids in [0, {self.num_classes}), got {classes}"
                )
        if labels_per_class is not None and labels_per_class < 1:
            raise ValueError(f"labels_per_class must be >= 1, got {labels_per_class}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.labels_per_class = labels_per_class
        self.val_fraction = float(val_fraction)
        self.task_specs: list[TaskSpec] = []
        for name in names:
            task = self.available_tasks[name]
            outputs = task.num_outputs
            if name == self.class_task and self.classes is not None:
                outputs = len(self.classes)
            self.task_specs.append(TaskSpec(name, task.kind, outputs))

    # ------------------------------------------------------------------ subclass API
    def _load_split(self, split: str) -> tuple[Dataset, np.ndarray]:
        """(dataset yielding (x, label), labels as an int array) for "train" or "test"."""
        raise NotImplementedError

    # ------------------------------------------------------------------ splits
    def _select(self, labels: np.ndarray) -> np.ndarray:
        """Indices of the samples whose class is kept (all of them without ``classes``)."""
        idx = np.arange(len(labels))
        if self.classes is not None:
            idx = idx[np.isin(labels, self.classes)]
        return idx

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        rng = np.random.default_rng(self.seed)
        tasks = {n: self.available_tasks[n] for n in self.task_names}
        relabel = {c: i for i, c in enumerate(self.classes)} if self.classes is not None else None
        class_tasks = [self.class_task] if self.class_task in tasks else []

        train_base, train_labels = self._load_split("train")
        idx = rng.permutation(self._select(np.asarray(train_labels)))
        n_val = round(len(idx) * self.val_fraction)
        val_idx, train_idx = idx[:n_val], idx[n_val:]
        if self.labels_per_class is not None:
            labels = np.asarray(train_labels)
            kept = []
            for c in np.unique(labels[train_idx]):
                members = train_idx[labels[train_idx] == c]
                kept.append(members[: self.labels_per_class])
            train_idx = np.sort(np.concatenate(kept))
        if len(train_idx) == 0:
            raise ValueError(f"{type(self).__name__}: the training split is empty")
        test_base, test_labels = self._load_split("test")
        test_idx = self._select(np.asarray(test_labels))

        def make(base: Dataset, indices: np.ndarray) -> TaskDerivedDataset:
            return TaskDerivedDataset(base, indices.tolist(), tasks, relabel, class_tasks)

        self.datasets = {
            "train": make(train_base, train_idx),
            "val": make(train_base, np.sort(val_idx)),
            "test": make(test_base, test_idx),
        }
