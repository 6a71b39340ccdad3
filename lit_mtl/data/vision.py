"""torchvision datasets as multi-task DataModules, through torchvision's own dataset classes.

MNIST, FashionMNIST, CIFAR-10 and SVHN, with several tasks derived from one label and chosen by
name; and MultiMNIST (two overlapping digits) built deterministically from MNIST or FashionMNIST
and cached to disk. ``root`` and ``download`` are passed through to torchvision. Absent data with
``download=False`` is a :class:`FileNotFoundError` naming the dataset, the root and the flag; a
corrupt or partial file is an error naming the file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from lit_mtl._optional import require
from lit_mtl.data.labelled import DIGIT_TASKS, DerivedTask, LabelledDataModule, TaskDerivedDataset
from lit_mtl.data.offline import OVERLAY_TASKS
from lit_mtl.data.overlay import overlay_pairs

DatasetName = Literal["mnist", "fashion_mnist", "cifar10", "svhn"]

_CIFAR_ANIMALS = {2, 3, 4, 5, 6, 7}  # bird, cat, deer, dog, frog, horse
_FASHION_TOPS = {0, 2, 3, 4, 6}  # t-shirt, pullover, dress, coat, shirt

#: tasks per dataset, chosen by name in the config
VISION_TASKS: dict[str, dict[str, DerivedTask]] = {
    "mnist": DIGIT_TASKS,
    "svhn": DIGIT_TASKS,
    "fashion_mnist": {
        "class": DerivedTask("multiclass", 10, lambda y: y.long()),
        "top": DerivedTask(
            "binary", 1, lambda y: torch.isin(y, torch.tensor(sorted(_FASHION_TOPS))).float()
        ),
    },
    "cifar10": {
        "class": DerivedTask("multiclass", 10, lambda y: y.long()),
        "animal": DerivedTask(
            "binary", 1, lambda y: torch.isin(y, torch.tensor(sorted(_CIFAR_ANIMALS))).float()
        ),
    },
}
_CLASS_TASK = {"mnist": "digit", "svhn": "digit", "fashion_mnist": "class", "cifar10": "class"}
#: per-dataset normalisation (channel means and standard deviations of the training set)
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


def default_transform(dataset: str) -> Callable[[Any], torch.Tensor]:
    """ToTensor + the dataset's normalisation."""
    transforms = require("torchvision.transforms", "vision", "TorchvisionDataModule")
    mean, std = NORMALIZATION[dataset]
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])


def _torchvision_dataset(
    name: str,
    root: str,
    train: bool,
    download: bool,
    transform: Callable | None,
    verify_checksums: bool,
) -> Dataset:
    datasets = require("torchvision.datasets", "vision", "TorchvisionDataModule")
    cls: Any = {
        "mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
        "svhn": datasets.SVHN,
    }[name]
    if not verify_checksums and name in ("cifar10", "svhn"):
        # torchvision compares every file's md5 with the official release; a locally written or
        # re-packed copy in the same format (as in tests) is accepted by skipping that comparison
        cls = _without_checksums(cls)
    split_kwargs = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
    flag = "--data.init_args.download=true"
    try:
        return cls(root=root, download=download, transform=transform, **split_kwargs)
    except Exception as err:
        if download:
            raise download_error(name, root, err) from err
        if not isinstance(err, RuntimeError | ValueError | EOFError | OSError | KeyError):
            raise
        raise _read_error(name, root, train, cls, flag, err) from err


def download_error(name: str, root: str, err: BaseException) -> OSError:
    """What a failed ``download=True`` says: no network, a checksum mismatch, or a partial file;
    and what to do about it."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " | ".join(f"{type(e).__name__}: {e}" for e in chain)
    if any(
        isinstance(e, ConnectionError | TimeoutError)
        or "urlopen" in str(e)
        or type(e).__name__ in ("URLError", "HTTPError", "gaierror")
        for e in chain
    ):
        what = (
            "the download failed: no network connection (or the server refused it). Retry "
            "where the network is reachable, or fetch the files elsewhere and place them under "
            "root with download=False"
        )
    elif any(w in text.lower() for w in ("md5", "checksum", "integrity")):
        what = (
            "the downloaded files do not match their published checksums (a changed mirror or a "
            "corrupted transfer). Delete them under root and retry"
        )
    else:
        what = (
            "the files under root could not be read after the download (a partial download?). "
            "Delete them and retry"
        )
    return OSError(f"{name}: download=True, root={root!r}: {what}. Cause: {text[:400]}")


def _read_error(name: str, root: str, train: bool, cls: Any, flag: str, err: Exception) -> OSError:
    """What a failed read with ``download=False`` says: absent files, or unreadable ones."""
    text = str(err)
    if isinstance(err, RuntimeError) and (
        "not found" in text.lower() or "corrupted" in text.lower()
    ):
        return FileNotFoundError(
            f"{name} ({'train' if train else 'test'} split) not found or corrupted under "
            f"root={root!r}. Pass download=True ({flag}) to fetch it, or place torchvision's "
            f"{cls.__name__} files there. torchvision said: {text}"
        )
    return OSError(
        f"{name}: cannot read the files under root={root!r} (partial or corrupt download?): "
        f"{err}. Delete them and pass download=True ({flag})."
    )


def _without_checksums(cls: Any) -> Any:
    """A subclass of torchvision's class that skips only the md5 comparison."""
    import torchvision.datasets.cifar as cifar_module

    def load_meta(self: Any) -> None:
        original = cifar_module.check_integrity
        cifar_module.check_integrity = lambda *args, **kwargs: True
        try:
            cls._load_meta(self)
        finally:
            cifar_module.check_integrity = original

    attrs: dict[str, Any] = {"_check_integrity": lambda self: True}
    if hasattr(cls, "_load_meta"):
        attrs["_load_meta"] = load_meta
    return type(cls.__name__, (cls,), attrs)


def _dataset_labels(dataset: Any) -> np.ndarray:
    for attr in ("targets", "labels"):
        if hasattr(dataset, attr):
            return np.asarray(getattr(dataset, attr), dtype=np.int64)
    raise AttributeError(f"{type(dataset).__name__} exposes neither targets nor labels")


class TorchvisionDataModule(LabelledDataModule):
    """MNIST / FashionMNIST / CIFAR-10 / SVHN with tasks derived from the label.

    Tasks: mnist and svhn: ``digit``, ``parity``, ``ge5``; fashion_mnist: ``class``, ``top``
    (upper-body garment); cifar10: ``class``, ``animal`` (animal vs vehicle).

    Args:
        dataset: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` or ``"svhn"``.
        root: torchvision's root folder.
        download: passed to torchvision (default False: never touches the network).
        tasks: task names (see above); default: the class task.
        train_transform: default ToTensor + the dataset's normalisation.
        eval_transform: default ToTensor + the dataset's normalisation.
        verify_checksums: compare CIFAR-10/SVHN files with torchvision's md5 list (default).
        **kwargs: ``classes``, ``labels_per_class``, ``val_fraction``, loader options, ``seed``
            (see :class:`~lit_mtl.data.labelled.LabelledDataModule`).

    Transfer between datasets (e.g. MNIST -> FashionMNIST) is two DataModules: train on one,
    transfer with the other.
    """

    def __init__(
        self,
        dataset: DatasetName = "mnist",
        root: str = "data",
        download: bool = False,
        tasks: Sequence[str] | None = None,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        verify_checksums: bool = True,
        **kwargs: Any,
    ) -> None:
        if dataset not in VISION_TASKS:
            raise ValueError(f"dataset must be one of {sorted(VISION_TASKS)}, got {dataset!r}")
        self.available_tasks = VISION_TASKS[dataset]
        self.class_task = _CLASS_TASK[dataset]
        self.dataset_name = dataset
        super().__init__(tasks=tasks or (self.class_task,), **kwargs)
        self.root = str(root)
        self.download = bool(download)
        self.train_transform = train_transform or default_transform(dataset)
        self.eval_transform = eval_transform or default_transform(dataset)
        self.verify_checksums = bool(verify_checksums)

    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                _torchvision_dataset(
                    self.dataset_name, self.root, train, True, None, self.verify_checksums
                )

    def _load_split(self, split: str) -> tuple[Dataset, np.ndarray]:
        train = split == "train"
        ds = _torchvision_dataset(
            self.dataset_name,
            self.root,
            train,
            False,
            self.train_transform if train else self.eval_transform,
            self.verify_checksums,
        )
        return ds, _dataset_labels(ds)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        # the validation split is carved from the training files: evaluate it without augmentation
        val = cast(TaskDerivedDataset, self.datasets["val"])
        if self.train_transform is not self.eval_transform:
            base = _torchvision_dataset(
                self.dataset_name,
                self.root,
                True,
                False,
                self.eval_transform,
                self.verify_checksums,
            )
            val.base = base


class MultiMNISTDataModule(LabelledDataModule):
    """MultiMNIST (Sener & Koltun 2018): two overlapping digits, tasks ``left`` and ``right``.

    The left digit at [0:28, 0:28] and a random partner at [6:34, 6:34] of a 36x36 canvas,
    overlap = elementwise max, resized to 28x28. Built deterministically from MNIST (or
    FashionMNIST) with ``seed``, and cached to ``<root>/MultiMNIST/<source>_<split>_<seed>.pt``.

    Args:
        source: ``"mnist"`` or ``"fashion_mnist"`` (read through torchvision from ``root``).
        root: as for :class:`TorchvisionDataModule`.
        download: as for :class:`TorchvisionDataModule`.
        copies: overlays per source image.
    """

    available_tasks = OVERLAY_TASKS
    class_task = "left"

    def __init__(
        self,
        source: Literal["mnist", "fashion_mnist"] = "mnist",
        root: str = "data",
        download: bool = False,
        tasks: Sequence[str] = ("left", "right"),
        copies: int = 1,
        **kwargs: Any,
    ) -> None:
        if source not in ("mnist", "fashion_mnist"):
            raise ValueError(f"source must be 'mnist' or 'fashion_mnist', got {source!r}")
        if kwargs.get("classes") is not None:
            raise ValueError("MultiMNISTDataModule does not support class subsets")
        super().__init__(tasks=tasks, **kwargs)
        self.source = source
        self.dataset_name = f"multi_{source}"
        self.root = str(root)
        self.download = bool(download)
        self.copies = int(copies)

    def cache_path(self, split: str) -> Path:
        return (
            Path(self.root) / "MultiMNIST" / f"{self.source}_{split}_{self.seed}_{self.copies}.pt"
        )

    def prepare_data(self) -> None:
        for split in ("train", "test"):
            self._build(split)

    def _build(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.cache_path(split)
        if path.exists():
            try:
                cached = torch.load(path, weights_only=True)
                return cached["x"], cached["y"]
            except Exception as err:
                raise OSError(f"corrupt MultiMNIST cache {path}: {err}; delete it") from err
        ds: Any = _torchvision_dataset(
            self.source, self.root, split == "train", self.download, None, True
        )
        images = ds.data.float() / 255.0  # (N, 28, 28)
        labels = torch.as_tensor(ds.targets, dtype=torch.long)
        gen = torch.Generator().manual_seed(self.seed * 2 + (split == "test"))
        x, y = overlay_pairs(images, labels, gen, offset=6, copies=self.copies)
        x = (x * 255).round().to(torch.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"x": x, "y": y}, path)
        return x, y

    def _load_split(self, split: str) -> tuple[Dataset, np.ndarray]:
        x, y = self._build(split)
        mean, std = NORMALIZATION[self.source]
        inputs = ((x.float() / 255.0 - mean[0]) / std[0]).unsqueeze(1)  # (N, 1, 28, 28)
        return TensorDataset(inputs, y), y[:, 0].numpy()
