"""Is data loading the bottleneck? Loader samples/s vs training-step samples/s, per DataModule.

For each DataModule at its default settings (batch 64, num_workers 0) the script times

* the train loader alone (iterate batches, nothing else), and
* a training step of a typical model for that data (MultiTaskModule's losses, backward, Adam step)
  on a batch already in memory,

and reports both in samples/s. Loading is not the bottleneck when the loader is faster than the
step. torchvision datasets are timed on files written locally in their real format (MNIST idx
files with 10,000 images, CIFAR-10 pickled batches with 10,000 images), read through
torchvision's classes with the default transforms: the per-sample cost is the same as for the
real files.

    python benchmarks/data_throughput.py    # writes benchmarks/results/data_throughput.json
"""

from __future__ import annotations

import argparse
import json
import pickle
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lit_mtl import (
    CNNEncoder,
    Conv1dEncoder,
    DigitsDataModule,
    DigitsOverlayDataModule,
    MLPEncoder,
    MNIST1DDataModule,
    MultiTaskModule,
    SyntheticDataModule,
    TorchvisionDataModule,
)
from lit_mtl.tasks.batch import unpack_batch


def write_mnist(root: Path, n: int) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n), ("t10k", n // 5)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, count) + labels.tobytes()
        )


def write_cifar(root: Path, n: int) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        count = n // 5
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                    "labels": rng.integers(0, 10, count).tolist(),
                },
                f,
            )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def loader_rate(dm, batches: int) -> float:  # type: ignore[no-untyped-def]
    dm.setup()
    loader = dm.train_dataloader()
    seen, start = 0, time.perf_counter()
    for i, (x, _) in enumerate(loader):
        seen += x.shape[0]
        if i + 1 >= batches:
            break
    return seen / (time.perf_counter() - start)


def step_rate(dm, encoder, steps: int) -> float:  # type: ignore[no-untyped-def]
    module = MultiTaskModule(encoder, dm.task_specs)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    x, targets, masks = unpack_batch(next(iter(dm.train_dataloader())))
    for _ in range(3):
        losses = module._task_losses(x, targets, masks, train=True).losses
        opt.zero_grad()
        torch.stack(losses).sum().backward()
        opt.step()
    start = time.perf_counter()
    for _ in range(steps):
        losses = module._task_losses(x, targets, masks, train=True).losses
        opt.zero_grad()
        torch.stack(losses).sum().backward()
        opt.step()
    return steps * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_mnist(Path(tmp) / "mnist", 10_000)
        write_cifar(Path(tmp) / "cifar", 10_000)
        cases = [
            ("SyntheticDataModule", SyntheticDataModule(num_train=8192), MLPEncoder(16, [64, 64])),
            (
                "DigitsDataModule",
                DigitsDataModule(tasks=["digit", "parity", "ge5"]),
                CNNEncoder(1, [32, 64]),
            ),
            ("DigitsOverlayDataModule", DigitsOverlayDataModule(), CNNEncoder(1, [32, 64])),
            (
                "MNIST1DDataModule",
                MNIST1DDataModule(tasks=["digit", "parity", "ge5"]),
                Conv1dEncoder(1, [32, 64, 64]),
            ),
            (
                "TorchvisionDataModule(mnist)",
                TorchvisionDataModule(
                    "mnist", root=f"{tmp}/mnist", tasks=["digit", "parity", "ge5"]
                ),
                CNNEncoder(1, [32, 64]),
            ),
            (
                "TorchvisionDataModule(cifar10)",
                TorchvisionDataModule(
                    "cifar10",
                    root=f"{tmp}/cifar",
                    tasks=["class", "animal"],
                    verify_checksums=False,
                ),
                CNNEncoder(3, [32, 64]),
            ),
        ]
        for name, dm, encoder in cases:
            load = loader_rate(dm, args.batches)
            step = step_rate(dm, encoder, 20)
            rows.append(
                {
                    "datamodule": name,
                    "loader_samples_per_s": load,
                    "step_samples_per_s": step,
                    "loader_over_step": load / step,
                }
            )
            print(rows[-1], file=sys.stderr)
    lines = [
        "| DataModule | loader samples/s | training step samples/s | loader / step |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['datamodule']} | {r['loader_samples_per_s']:,.0f} | "
            f"{r['step_samples_per_s']:,.0f} | {r['loader_over_step']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": f"python benchmarks/data_throughput.py --batches {args.batches}",
                "rows": rows,
                "markdown": table,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
