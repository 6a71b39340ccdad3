"""Does transfer beat training from scratch? MNIST-1D and scikit-learn digits, classes 0-4 -> 5-9.

A source model (MNIST-1D: the 1-D CNN ``Conv1dEncoder``; digits: ``CNNEncoder``) is trained on
all training samples of classes 0-4. Its encoder is then transferred to classes 5-9 with 5 and 20
labelled samples per class, 5 seeds each, and compared with the same network trained from scratch:

* scratch: random init, everything trains;
* linear probe: source encoder frozen (``freeze``), only the head trains;
* full fine-tune: source init, everything trains (``no_freeze``);
* gradual + discriminative LR: ULMFiT-style ``gradual`` unfreezing (one more group from the top
  every ``--gradual-every`` epochs) with lr decay 1/2.6 per group;
* L2-SP: full fine-tune with alpha = 0.1, beta = 0.01 (the authors' values), no weight decay.

All runs share the budget (epochs, optimizer, lr, batch size); accuracy is measured on the whole
test split of classes 5-9. Nothing was tuned per method.

    python benchmarks/transfer.py              # writes benchmarks/results/transfer.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from lit_mtl import (
    CNNEncoder,
    Conv1dEncoder,
    DigitsDataModule,
    MNIST1DDataModule,
    MultiTaskModule,
    TransferModule,
    UnfreezeSchedule,
)

SOURCE_CLASSES = [0, 1, 2, 3, 4]
TARGET_CLASSES = [5, 6, 7, 8, 9]


def trainer(epochs: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )


def data(dataset: str, classes: list[int], labels_per_class: int | None, seed: int):  # type: ignore[no-untyped-def]
    common = dict(
        classes=classes,
        labels_per_class=labels_per_class,
        val_fraction=0.0,
        batch_size=32,
        seed=seed,
    )
    if dataset == "mnist1d":
        return MNIST1DDataModule(tasks=["digit"], num_samples=5000, **common)
    return DigitsDataModule(tasks=["digit"], **common)


def encoder(dataset: str) -> torch.nn.Module:
    return Conv1dEncoder(1, [32, 64, 64]) if dataset == "mnist1d" else CNNEncoder(1, [32, 64])


def train_source(dataset: str, epochs: int, path: Path) -> float:
    L.seed_everything(1234, verbose=False)
    dm = data(dataset, SOURCE_CLASSES, None, seed=1234)
    module = MultiTaskModule(
        encoder(dataset), dm.task_specs, optimizer=functools.partial(torch.optim.Adam, lr=3e-3)
    )
    t = trainer(epochs)
    t.fit(module, dm)
    acc = t.test(module, dm, verbose=False)[0]["test/digit/acc"]
    torch.save(module.encoder.state_dict(), path)
    return float(acc)


METHODS = ("scratch", "linear probe", "full fine-tune", "gradual + discr. LR", "L2-SP")


def run_target(
    dataset: str, method: str, source: Path, labels: int, seed: int, epochs: int, gradual_every: int
) -> float:
    L.seed_everything(seed, verbose=False)
    dm = data(dataset, TARGET_CLASSES, labels, seed=seed)
    kwargs: dict = dict(source=str(source), schedule=UnfreezeSchedule("no_freeze"))
    if method == "scratch":
        kwargs = dict(source=None, schedule=UnfreezeSchedule("no_freeze"))
    elif method == "linear probe":
        kwargs["schedule"] = UnfreezeSchedule("freeze")
    elif method == "gradual + discr. LR":
        kwargs.update(schedule=UnfreezeSchedule("gradual", every=gradual_every), lr_decay=1 / 2.6)
    elif method == "L2-SP":
        kwargs.update(l2sp_alpha=0.1, l2sp_beta=0.01)
    module = TransferModule(
        encoder(dataset),
        dm.task_specs,
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
        **kwargs,
    )
    t = trainer(epochs)
    t.fit(module, dm)
    return float(t.test(module, dm, verbose=False)[0]["test/digit/acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist1d", "digits"])
    parser.add_argument("--labels", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--source-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--gradual-every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/transfer.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    results: dict = {"sources": {}, "runs": []}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            source = Path(tmp) / f"{dataset}_source.pt"
            results["sources"][dataset] = train_source(dataset, args.source_epochs, source)
            for labels in args.labels:
                for method in METHODS:
                    accs = [
                        run_target(
                            dataset, method, source, labels, s, args.epochs, args.gradual_every
                        )
                        for s in args.seeds
                    ]
                    results["runs"].append(
                        {
                            "dataset": dataset,
                            "labels_per_class": labels,
                            "method": method,
                            "accuracies": accs,
                        }
                    )
    lines = [
        "| data | labels / class | " + " | ".join(METHODS) + " |",
        "|---|---|" + "---|" * len(METHODS),
    ]
    for dataset in args.datasets:
        for labels in args.labels:
            cells = []
            for method in METHODS:
                (row,) = [
                    r
                    for r in results["runs"]
                    if r["dataset"] == dataset
                    and r["labels_per_class"] == labels
                    and r["method"] == method
                ]
                a = [100 * v for v in row["accuracies"]]
                spread = statistics.stdev(a) if len(a) > 1 else 0.0
                cells.append(f"{statistics.mean(a):.1f} ± {spread:.1f}")
            lines.append(f"| {dataset} | {labels} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    print("source test accuracy on classes 0-4:", results["sources"])
    results["markdown"] = table
    results["seconds"] = time.perf_counter() - start
    results["command"] = (
        f"python benchmarks/transfer.py --datasets {' '.join(args.datasets)} --labels "
        f"{' '.join(map(str, args.labels))} --seeds {' '.join(map(str, args.seeds))} "
        f"--source-epochs {args.source_epochs} --epochs {args.epochs} "
        f"--gradual-every {args.gradual_every}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
