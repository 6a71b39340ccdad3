"""DataModules in which each task brings its own data (multi-input training).

* :class:`PerTaskDataModule`: any datasets, one per task and split (Python use, drop-in);
* :class:`DigitsDomainsDataModule`: scikit-learn's bundled digits as a multi-domain problem
  (Office-31 style: the same 10 classes in several visual domains, each domain a task with its
  own images), offline, for checking multi-input learning on a CPU.

How the per-task loaders are combined (``combine``, ``temperature``) is in
:mod:`lit_mtl.data.task_loaders`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_mtl.data.loaders import EmptySplit, SplitDataModule
from lit_mtl.data.offline import _load_digits
from lit_mtl.data.synthetic import MultiTaskTensorDataset
from lit_mtl.data.task_loaders import CombineMode, check_combine
from lit_mtl.tasks import TaskSpec, as_task_spec

SPLITS = ("train", "val", "test")


class PerTaskDataModule(SplitDataModule):
    """One dataset per task and split: each yields ``(x, {task: target})`` (more targets may
    be present; a conditional task's parent target must be).

    Args:
        tasks: the task specs.
        train: ``{task: dataset}`` for every task.
        val: the same for evaluation (each task on its own split), or None.
        test: as ``val``.
        combine: how the training loaders are combined
            (:mod:`lit_mtl.data.task_loaders`).
        temperature: as ``combine``.
        batch_size: each task's loader draws ``batch_size`` samples of its own dataset.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers``.
        seed: seed of the shuffling.
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        train: Mapping[str, Dataset],
        val: Mapping[str, Dataset] | None = None,
        test: Mapping[str, Dataset] | None = None,
        combine: CombineMode = "max_size_cycle",
        temperature: float = 1.0,
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
            combine=combine,
            temperature=temperature,
        )
        check_combine(combine, temperature, "PerTaskDataModule")
        self.task_specs = [as_task_spec(t) for t in tasks]
        names = self.task_names
        for split, given in (("train", train), ("val", val), ("test", test)):
            if given is None:
                continue
            missing = [n for n in names if n not in given]
            unknown = sorted(set(given) - set(names))
            if missing or unknown:
                raise ValueError(
                    f"PerTaskDataModule: {split} needs one dataset per task {names}"
                    + (f"; missing: {missing}" if missing else "")
                    + (f"; unknown: {unknown}" if unknown else "")
                )
        self._given = {"train": train, "val": val, "test": test}

    def optional_splits(self) -> tuple[str, ...]:
        return tuple(split for split in ("val", "test") if self._given[split] is None)

    def setup(self, stage: str | None = None) -> None:
        for split, given in self._given.items():
            self.datasets[split] = dict(given) if given is not None else EmptySplit()


# ---------------------------------------------------------------------------- digit domains
def _rotated(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.rot90(images, k=1, axes=(1, 2)).copy()


def _inverted(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 1.0 - images


def _noisy(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, 0.3, size=images.shape).astype(np.float32)
    return np.clip(images + noise, 0.0, 1.0)


def _shifted(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros_like(images)
    out[:, 2:, 2:] = images[:, :-2, :-2]  # two pixels down and right, cropped
    return out


#: the documented domain transformations (images in [0, 1], (N, 8, 8))
DIGIT_DOMAINS = {
    "original": "the image as it is",
    "inverted": "1 - x (white digit strokes become dark on a light ground)",
    "rotated": "rotated 90 degrees counter-clockwise",
    "noisy": "plus Gaussian noise of standard deviation 0.3 (fixed per image), clipped to [0, 1]",
    "shifted": "moved two pixels down and right, the overflow cropped",
}
_TRANSFORMS = {
    "original": lambda images, rng: images,
    "inverted": _inverted,
    "rotated": _rotated,
    "noisy": _noisy,
    "shifted": _shifted,
}


def digit_domain(images: np.ndarray, domain: str, rng: np.random.Generator) -> np.ndarray:
    """The images (N, 8, 8) in ``domain`` (:data:`DIGIT_DOMAINS`)."""
    if domain not in _TRANSFORMS:
        raise ValueError(f"unknown digit domain {domain!r}; domains: {sorted(DIGIT_DOMAINS)}")
    return np.asarray(_TRANSFORMS[domain](images, rng), dtype=np.float32)


class DigitsDomainsDataModule(SplitDataModule):
    """scikit-learn's 1797 digits split into disjoint, equal parts, one per domain; each
    domain's images are transformed (:data:`DIGIT_DOMAINS`) and form the task named after it
    (10 classes, inputs (1, 8, 8)). Every task brings its own images (multi-input training);
    ``single_domain`` keeps one domain only (the one-model-per-domain baseline).

    Args:
        domains: the domains (tasks), from :data:`DIGIT_DOMAINS`.
        train_per_class: training images per class and domain (None: all of the domain's
            training part); the rest of the split sizes follow ``val_fraction`` /
            ``test_fraction`` of each domain's part.
        val_fraction: of each domain's images.
        test_fraction: of each domain's images.
        single_domain: only this domain's task (its data unchanged).
        combine: how the domains' training loaders are combined.
        temperature: how the domains' training loaders are combined.
        batch_size: samples per batch of every loader.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers``.
        seed: the assignment of images to domains and splits, the noise, the shuffling.

    Examples:
        >>> dm = DigitsDomainsDataModule(domains=["original", "rotated"])
        >>> dm.setup(); sorted(dm.datasets["train"]), len(dm.datasets["test"]["rotated"])
        (['original', 'rotated'], 180)
    """

    def __init__(
        self,
        domains: Sequence[str] = ("original", "inverted", "rotated", "noisy"),
        train_per_class: int | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        single_domain: str | None = None,
        combine: CombineMode = "max_size_cycle",
        temperature: float = 1.0,
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
            combine=combine,
            temperature=temperature,
        )
        domains = list(domains)
        unknown = [d for d in domains if d not in DIGIT_DOMAINS]
        if unknown or not domains or len(set(domains)) != len(domains):
            raise ValueError(
                f"DigitsDomainsDataModule: domains must be distinct names from "
                f"{sorted(DIGIT_DOMAINS)}, got {domains}"
            )
        if single_domain is not None and single_domain not in domains:
            raise ValueError(
                f"DigitsDomainsDataModule: single_domain={single_domain!r} is not one of the "
                f"domains {domains}"
            )
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(
                "DigitsDomainsDataModule: val_fraction and test_fraction must be > 0 with a sum "
                f"< 1, got {val_fraction}, {test_fraction}"
            )
        if train_per_class is not None and train_per_class < 1:
            raise ValueError(f"train_per_class must be >= 1 or None, got {train_per_class}")
        check_combine(combine, temperature, "DigitsDomainsDataModule")
        self.save_hyperparameters()
        self.domains = domains
        self.single_domain = single_domain
        kept = [single_domain] if single_domain is not None else domains
        self.task_specs = [TaskSpec(d, "multiclass", 10) for d in kept]

    def domain_splits(self) -> dict[str, dict[str, tuple[Tensor, Tensor]]]:
        """{domain: {split: (images (N, 1, 8, 8), labels (N,))}} for every domain."""
        images, labels = _load_digits()
        rng = np.random.default_rng(int(self.seed))
        order = rng.permutation(len(labels))
        hp = self.arguments
        out: dict[str, dict[str, tuple[Tensor, Tensor]]] = {}
        for k, domain in enumerate(self.domains):
            part = order[k :: len(self.domains)]  # disjoint, equal parts
            n_val = round(len(part) * float(hp.val_fraction))
            n_test = round(len(part) * float(hp.test_fraction))
            chosen = {
                "test": part[:n_test],
                "val": part[n_test : n_test + n_val],
                "train": part[n_test + n_val :],
            }
            if hp.train_per_class is not None:
                train = chosen["train"]
                keep = [
                    i for c in range(10) for i in train[labels[train] == c][: hp.train_per_class]
                ]
                chosen["train"] = np.sort(np.asarray(keep, dtype=np.int64))
            domain_rng = np.random.default_rng([int(self.seed), k])
            out[domain] = {}
            for split in SPLITS:
                idx = chosen[split]
                x = digit_domain(images[idx], domain, domain_rng)
                out[domain][split] = (
                    torch.from_numpy(x).unsqueeze(1),
                    torch.from_numpy(labels[idx]),
                )
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        splits = self.domain_splits()
        for split in SPLITS:
            self.datasets[split] = {
                name: MultiTaskTensorDataset(splits[name][split][0], {name: splits[name][split][1]})
                for name in self.task_names
            }
