"""Offline data: scikit-learn's bundled digits and MNIST-1D, generated locally (no download).

* :class:`DigitsDataModule`: ``sklearn.datasets.load_digits`` (1797 real 8x8 images, 10 classes),
  shipped inside the scikit-learn wheel. Nearly linearly separable from raw pixels.
* :class:`DigitsOverlayDataModule`: a two-digit overlay analogue of MultiMNIST on the digits.
* :class:`MNIST1DDataModule`: MNIST-1D (Greydanus & Kobak, ICML 2024), built procedurally by
  ``mnist1d.data.make_dataset`` (never its downloading ``get_dataset``). Length-40 sequences,
  10 classes; hard enough that methods differ (authors: logistic regression 32%, MLP 68%, CNN 94%).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from lit_mtl._optional import require
from lit_mtl.data.labelled import DerivedTask, LabelledDataModule
from lit_mtl.data.overlay import overlay_pairs


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    datasets = require("sklearn.datasets", "data", "DigitsDataModule (scikit-learn's digits)")
    bunch = datasets.load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    return images, bunch.target.astype(np.int64)


def _split_digits(test_fraction: float, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    images, labels = _load_digits()
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = round(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


class DigitsDataModule(LabelledDataModule):
    """scikit-learn's digits: tasks ``digit`` (10 classes), ``parity``, ``ge5``.

    Inputs are (1, 8, 8) float images in [0, 1]. ``test_fraction`` of the 1797 images (seeded) form
    the test split. Transfer splits by ``classes`` (e.g. [0..4] -> [5..9]) and
    ``labels_per_class``. See :class:`~lit_mtl.data.labelled.LabelledDataModule` for the rest.
    """

    dataset_name = "digits"

    def __init__(
        self, tasks: Sequence[str] = ("digit",), test_fraction: float = 0.25, **kwargs: object
    ) -> None:
        super().__init__(tasks=tasks, **kwargs)  # type: ignore[arg-type]
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction = float(test_fraction)
        self.save_hyperparameters()

    def _load_split(self, split: str) -> tuple[Dataset, np.ndarray]:
        images, labels = _split_digits(self.test_fraction, self.seed)[split]
        x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
        return TensorDataset(x, torch.from_numpy(labels)), labels


OVERLAY_TASKS: dict[str, DerivedTask] = {
    "left": DerivedTask("multiclass", 10, lambda y: y[..., 0].long()),
    "right": DerivedTask("multiclass", 10, lambda y: y[..., 1].long()),
}


class DigitsOverlayDataModule(LabelledDataModule):
    """Two overlapping scikit-learn digits (a MultiMNIST analogue): tasks ``left`` and ``right``.

    Each image overlays a digit at [0:8, 0:8] and another at [2:10, 2:10] of a 10x10 canvas
    (elementwise max), resized to 8x8, as MultiMNIST does with 28x28 digits on 36x36. Pairs are
    drawn with a seed; ``copies`` overlays are made per source image.
    """

    available_tasks = OVERLAY_TASKS
    class_task = "left"
    dataset_name = "digits-overlay"

    def __init__(
        self,
        tasks: Sequence[str] = ("left", "right"),
        test_fraction: float = 0.25,
        copies: int = 2,
        **kwargs: object,
    ) -> None:
        super().__init__(tasks=tasks, **kwargs)  # type: ignore[arg-type]
        if kwargs.get("classes") is not None:
            raise ValueError("DigitsOverlayDataModule does not support class subsets")
        self.test_fraction = float(test_fraction)
        self.copies = int(copies)
        self.save_hyperparameters()

    def _load_split(self, split: str) -> tuple[Dataset, np.ndarray]:
        images, labels = _split_digits(self.test_fraction, self.seed)[split]
        gen = torch.Generator().manual_seed(self.seed + (0 if split == "train" else 1))
        x, y = overlay_pairs(
            torch.from_numpy(images), torch.from_numpy(labels), gen, offset=2, copies=self.copies
        )
        return TensorDataset(x.unsqueeze(1), y), y[:, 0].numpy()


def make_mnist1d(num_samples: int = 5000, seed: int = 42) -> dict[str, np.ndarray]:
    """MNIST-1D by ``mnist1d.data.make_dataset`` with the authors' defaults (80/20 train/test).

    ``make_dataset`` seeds numpy's and Python's global generators; their states are restored
    afterwards so this call has no side effect on the caller's randomness.
    """
    mnist1d = require("mnist1d.data", "data", "MNIST1DDataModule")
    get_dataset_args, make_dataset = mnist1d.get_dataset_args, mnist1d.make_dataset
    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: data[k] for k in ("x", "y", "x_test", "y_test")}


class MNIST1DDataModule(LabelledDataModule):
    """MNIST-1D, generated offline: tasks ``digit`` (10 classes), ``parity``, ``ge5``.

    Inputs are (40,) float sequences (standardised by the generator). ``num_samples`` sequences
    are made (80% train, 20% test); ``data_seed`` is the generator's seed (the authors use 42).
    Transfer splits by ``classes`` and ``labels_per_class``.
    """

    dataset_name = "mnist1d"

    def __init__(
        self,
        tasks: Sequence[str] = ("digit",),
        num_samples: int = 5000,
        data_seed: int = 42,
        **kwargs: object,
    ) -> None:
        super().__init__(tasks=tasks, **kwargs)  # type: ignore[arg-type]
        if num_samples < 20:
            raise ValueError(f"num_samples must be >= 20, got {num_samples}")
        self.num_samples = int(num_samples)
        self.data_seed = int(data_seed)
        self.save_hyperparameters()
        self._cache: dict[str, np.ndarray] | None = None

    def _load_split(self, split: str) -> tuple[Dataset, np.ndarray]:
        if self._cache is None:
            self._cache = make_mnist1d(self.num_samples, self.data_seed)
        key = "x" if split == "train" else "x_test"
        labels = self._cache["y" if split == "train" else "y_test"].astype(np.int64)
        x: Tensor = torch.from_numpy(self._cache[key].astype(np.float32))
        return TensorDataset(x, torch.from_numpy(labels)), labels
