"""torchvision DataModules on tiny files written in each dataset's real on-disk format."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_mtl.data import MultiMNISTDataModule, TorchvisionDataModule, overlay

N_TRAIN, N_TEST = 40, 20


def _labels(n: int, seed: int) -> np.ndarray:
    return np.arange(n) % 10 if seed == 0 else np.random.default_rng(seed).integers(0, 10, n)


def write_idx(folder: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> None:
    """MNIST/FashionMNIST raw idx files (big-endian magic, sizes, uint8 data)."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = _labels(n, 0).astype(np.uint8)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):
            images[i, y : y + 5, 2:8] = 255  # a bar whose height encodes the label
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes()
        )
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.tobytes()
        )


def write_cifar10(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]
    for k, name in enumerate([*names, "test_batch"]):
        labels = [(i + k) % 10 for i in range(10)]
        data = np.full((10, 3072), 17 * k, dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def write_svhn(root: Path) -> None:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = np.zeros((32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10).reshape(n, 1)
        y[y == 0] = 10  # SVHN stores digit 0 as label 10
        savemat(str(root / f"{split}_32x32.mat"), {"X": x, "y": y})


def batch_of(dm: TorchvisionDataModule):  # type: ignore[no-untyped-def]
    dm.setup()
    return next(iter(dm.train_dataloader()))


def test_mnist_idx_files_three_tasks(tmp_path: Path) -> None:
    write_idx(tmp_path / "MNIST" / "raw")
    dm = TorchvisionDataModule(
        "mnist",
        root=str(tmp_path),
        tasks=["digit", "parity", "ge5"],
        batch_size=8,
        val_fraction=0.25,
    )
    assert [s.name for s in dm.task_specs] == ["digit", "parity", "ge5"]  # before setup
    x, t = batch_of(dm)
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(t["parity"], (t["digit"] % 2).float())
    assert torch.equal(t["ge5"], (t["digit"] >= 5).float())
    assert len(dm.datasets["train"]) == 30 and len(dm.datasets["val"]) == 10
    assert len(dm.datasets["test"]) == N_TEST
    # the label really comes from the file: the bar's top row is the digit
    raw = dm.datasets["train"].base.data[dm.datasets["train"].indices[0]]
    assert int(raw.nonzero()[0, 0]) == int(dm.datasets["train"][0][1]["digit"])


def test_fashion_mnist_tasks(tmp_path: Path) -> None:
    write_idx(tmp_path / "FashionMNIST" / "raw")
    dm = TorchvisionDataModule(
        "fashion_mnist", root=str(tmp_path), tasks=["class", "top"], batch_size=40, val_fraction=0.0
    )
    _x, t = batch_of(dm)
    tops = torch.tensor([0, 2, 3, 4, 6])
    assert torch.equal(t["top"], torch.isin(t["class"], tops).float())


def test_cifar10_pickled_batches(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    dm = TorchvisionDataModule(
        "cifar10",
        root=str(tmp_path),
        tasks=["class", "animal"],
        batch_size=16,
        verify_checksums=False,
    )
    x, t = batch_of(dm)
    assert x.shape == (16, 3, 32, 32)
    animals = torch.tensor([2, 3, 4, 5, 6, 7])
    assert torch.equal(t["animal"], torch.isin(t["class"], animals).float())
    assert len(dm.datasets["test"]) == 10


def test_cifar10_checksums_are_verified_by_default(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    dm = TorchvisionDataModule("cifar10", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found or corrupted"):
        dm.setup()


def test_svhn_mat_files(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    dm = TorchvisionDataModule(
        "svhn",
        root=str(tmp_path),
        tasks=["digit", "parity"],
        batch_size=8,
        verify_checksums=False,
        val_fraction=0.0,
    )
    x, _t = batch_of(dm)
    assert x.shape == (8, 3, 32, 32)
    assert set(dm.datasets["train"].base.labels.tolist()) == set(range(10))  # 10 -> 0


def test_transfer_split_and_few_shot(tmp_path: Path) -> None:
    write_idx(tmp_path / "MNIST" / "raw", n_train=200)
    dm = TorchvisionDataModule(
        "mnist",
        root=str(tmp_path),
        classes=[5, 6, 7, 8, 9],
        labels_per_class=3,
        val_fraction=0.2,
        batch_size=64,
    )
    assert dm.task_specs[0].num_outputs == 5
    dm.setup()
    digits = [int(dm.datasets["train"][i][1]["digit"]) for i in range(len(dm.datasets["train"]))]
    assert sorted(set(digits)) == [0, 1, 2, 3, 4] and len(digits) == 15  # relabelled 5..9 -> 0..4
    originals = {int(dm.datasets["test"].base.targets[i]) for i in dm.datasets["test"].indices}
    assert originals == {5, 6, 7, 8, 9}


def test_missing_data_names_dataset_root_and_flag(tmp_path: Path) -> None:
    dm = TorchvisionDataModule("mnist", root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        dm.setup()
    text = str(info.value)
    assert "mnist" in text and "nowhere" in text and "download=True" in text


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(OSError, match="partial or corrupt"):
        TorchvisionDataModule("mnist", root=str(tmp_path)).setup()


def test_unknown_task_and_dataset() -> None:
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['animal'\]"):
        TorchvisionDataModule("mnist", tasks=["animal"])
    with pytest.raises(ValueError, match="dataset must be one of"):
        TorchvisionDataModule("imagenet")  # type: ignore[arg-type]


def test_overlay_places_digits_like_multimnist() -> None:
    left = torch.zeros(1, 28, 28)
    left[0, 0, 0] = 1.0  # top-left corner of the left digit
    right = torch.zeros(1, 28, 28)
    right[0, 27, 27] = 1.0  # bottom-right corner of the right digit (canvas pixel 33, 33)
    out = overlay(left, right, offset=6)
    assert out.shape == (1, 28, 28)
    assert out[0, :3, :3].sum() > 0 and out[0, -3:, -3:].sum() > 0
    assert out[0, 10:18, 10:18].sum() == 0


def test_multimnist_deterministic_and_cached(tmp_path: Path) -> None:
    write_idx(tmp_path / "MNIST" / "raw")
    a = MultiMNISTDataModule(root=str(tmp_path), seed=3, val_fraction=0.0, batch_size=4)
    a.setup()
    assert a.cache_path("train").exists()
    b = MultiMNISTDataModule(root=str(tmp_path / "copy"), seed=3, val_fraction=0.0)
    write_idx(tmp_path / "copy" / "MNIST" / "raw")
    b.setup()
    xa, ya = a.datasets["train"].base.tensors
    xb, yb = b.datasets["train"].base.tensors
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # both tasks are right on a constructed example: rebuild sample 0 from its two digits
    from torchvision.datasets import MNIST

    mnist = MNIST(str(tmp_path), train=True)
    left, right = ya[0].tolist()
    assert left == int(mnist.targets[0])
    partners = [i for i in range(len(mnist.targets)) if int(mnist.targets[i]) == right]
    images = mnist.data.float() / 255
    rebuilt = [overlay(images[0:1], images[j : j + 1], 6) for j in partners]
    raw = xa[0, 0] * 0.3081 + 0.1307
    assert any(torch.allclose(raw, r[0], atol=0.01) for r in rebuilt)
    x, t = next(iter(a.train_dataloader()))
    assert set(t) == {"left", "right"} and x.shape == (4, 1, 28, 28)


def test_dataset_to_dataset_transfer_mnist_to_fashion(tmp_path: Path) -> None:
    """Source on MNIST, few-shot target on FashionMNIST: two DataModules and a TransferModule."""
    import lightning as L

    from lit_mtl import CNNEncoder, MultiTaskModule, TransferModule, UnfreezeSchedule

    from conftest import fast_trainer

    write_idx(tmp_path / "MNIST" / "raw", n_train=60)
    write_idx(tmp_path / "FashionMNIST" / "raw", n_train=60)
    L.seed_everything(0)
    source_dm = TorchvisionDataModule("mnist", root=str(tmp_path), batch_size=16)
    source = MultiTaskModule(CNNEncoder(1, [8, 8]), source_dm.task_specs)
    fast_trainer(max_epochs=1).fit(source, source_dm)
    torch.save(source.state_dict(), tmp_path / "mnist.pt")
    target_dm = TorchvisionDataModule(
        "fashion_mnist",
        root=str(tmp_path),
        tasks=["class", "top"],
        labels_per_class=2,
        val_fraction=0.0,
        batch_size=16,
    )
    target = TransferModule(
        CNNEncoder(1, [8, 8]),
        target_dm.task_specs,
        source=str(tmp_path / "mnist.pt"),
        source_prefix="encoder.",
        schedule=UnfreezeSchedule("freeze_unfreeze", epoch=1),
    )
    assert torch.equal(target.encoder.stages[0][0].weight, source.encoder.stages[0][0].weight)
    target_dm.setup()
    assert len(target_dm.datasets["train"]) == 20  # 2 labelled samples per class
    fast_trainer(max_epochs=2).fit(target, target_dm)
    assert not torch.equal(target.encoder.stages[0][0].weight, source.encoder.stages[0][0].weight)
