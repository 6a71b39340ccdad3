"""Offline data: scikit-learn digits, the digits overlay and MNIST-1D (generated locally)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lit_mtl.data import DigitsDataModule, DigitsOverlayDataModule, MNIST1DDataModule, make_mnist1d


def test_digits_tasks_and_shapes() -> None:
    dm = DigitsDataModule(tasks=["digit", "parity", "ge5"], batch_size=16)
    assert [s.kind for s in dm.task_specs] == ["multiclass", "binary", "binary"]
    dm.setup()
    x, t = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 8, 8) and 0 <= x.min() and x.max() <= 1
    assert torch.equal(t["parity"], (t["digit"] % 2).float())
    total = sum(len(dm.datasets[s]) for s in ("train", "val", "test"))
    assert total == 1797


def test_digits_transfer_split_is_reproducible() -> None:
    a = DigitsDataModule(classes=[5, 6, 7, 8, 9], labels_per_class=5, seed=1)
    b = DigitsDataModule(classes=[5, 6, 7, 8, 9], labels_per_class=5, seed=1)
    a.setup()
    b.setup()
    assert a.datasets["train"].indices == b.datasets["train"].indices
    assert len(a.datasets["train"]) == 25
    labels = [int(a.datasets["train"][i][1]["digit"]) for i in range(25)]
    assert sorted(labels) == sorted(list(range(5)) * 5)


def test_digits_overlay_tasks() -> None:
    dm = DigitsOverlayDataModule(batch_size=8)
    dm.setup()
    x, t = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 8, 8) and set(t) == {"left", "right"}
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 2 * 1348


def test_mnist1d_generated_offline_without_global_side_effects() -> None:
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    data = make_mnist1d(num_samples=500, seed=42)
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)
    assert data["x"].shape == (400, 40) and data["x_test"].shape == (100, 40)
    again = make_mnist1d(num_samples=500, seed=42)
    assert np.array_equal(data["x"], again["x"])


def test_mnist1d_datamodule_transfer_split() -> None:
    dm = MNIST1DDataModule(
        num_samples=1000, classes=[0, 1, 2, 3, 4], tasks=["digit", "parity"], batch_size=32
    )
    assert dm.task_specs[0].num_outputs == 5
    dm.setup()
    x, t = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 40)
    assert int(t["digit"].max()) <= 4


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="classes must be"):
        DigitsDataModule(classes=[3])
    with pytest.raises(ValueError, match="labels_per_class"):
        DigitsDataModule(labels_per_class=0)
    with pytest.raises(ValueError, match="unknown task"):
        MNIST1DDataModule(tasks=["left"])
