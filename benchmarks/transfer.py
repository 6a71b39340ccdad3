"""Does transfer beat training from scratch? MNIST-1D and scikit-learn digits, classes 0-4 -> 5-9.

A source model (MNIST-1D: the 1-D CNN ``Conv1dEncoder``; digits: ``CNNEncoder``) is trained on
all training samples of classes 0-4. Its encoder is then transferred to classes 5-9 with 5 and 20
labelled samples per class, 5 seeds each, and compared with the same network trained from scratch:

* scratch: random init, everything trains;
* linear probe: source encoder frozen (``freeze``), only the head trains;
* full fine-tune: source init, everything trains (``no_freeze``);
* gradual + discriminative LR: ULMFiT-style ``gradual`` unfreezing (one more group from the top
  every ``--gradual-every`` epochs) with lr decay 1/2.6 per group;
* L2-SP: full fine-tune with alpha = 0.1, beta = 0.01 (the authors' values), no weight decay;
* cached probe: the linear probe on features computed once (``CachedFeatureDataModule``); its
  wall time (fit + test) is reported as a ratio to the linear probe's, same seeds;
* LoRA r = 4 / 8: adapters (alpha = 2 r) on every convolution of the source encoder, which stays
  frozen; the trainable parameter count (adapters + head) is reported;

each without and with an exponential moving average of the weights (``EMA``, decay
``--ema-decay`` per step; the EMA is what is tested).

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
    EMA,
    CNNEncoder,
    Conv1dEncoder,
    DigitsDataModule,
    MNIST1DDataModule,
    MultiTaskModule,
    TransferModule,
    UnfreezeSchedule,
)
from lit_mtl.transfer import CachedFeatureDataModule, FeatureInput, load_source_into

SOURCE_CLASSES = [0, 1, 2, 3, 4]
TARGET_CLASSES = [5, 6, 7, 8, 9]


def trainer(epochs: int, ema_decay: float | None = None) -> L.Trainer:
    return L.Trainer(
        callbacks=[EMA(decay=ema_decay)] if ema_decay else [],
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


METHODS = (
    "scratch",
    "linear probe",
    "cached probe",
    "full fine-tune",
    "gradual + discr. LR",
    "L2-SP",
    "LoRA r=4",
    "LoRA r=8",
)


def run_target(
    dataset: str,
    method: str,
    source: Path,
    labels: int,
    seed: int,
    epochs: int,
    gradual_every: int,
    ema_decay: float | None,
) -> tuple[float, float, int]:
    """(test accuracy, wall seconds of fit + test, trainable parameters)."""
    started = time.perf_counter()
    L.seed_everything(seed, verbose=False)
    dm = data(dataset, TARGET_CLASSES, labels, seed=seed)
    if method == "cached probe":
        frozen = encoder(dataset)
        load_source_into(frozen, source)
        cached = CachedFeatureDataModule(dm, frozen)
        module = MultiTaskModule(
            FeatureInput(frozen.out_features),
            dm.task_specs,
            optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
            plots=False,
        )
        t = trainer(epochs, ema_decay)
        t.fit(module, cached)
        acc = float(t.test(module, cached, verbose=False)[0]["test/digit/acc"])
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        return acc, time.perf_counter() - started, trainable
    kwargs: dict = dict(source=str(source), schedule=UnfreezeSchedule("no_freeze"))
    if method == "scratch":
        kwargs = dict(source=None, schedule=UnfreezeSchedule("no_freeze"))
    elif method == "linear probe":
        kwargs["schedule"] = UnfreezeSchedule("freeze")
    elif method == "gradual + discr. LR":
        kwargs.update(schedule=UnfreezeSchedule("gradual", every=gradual_every), lr_decay=1 / 2.6)
    elif method == "L2-SP":
        kwargs.update(l2sp_alpha=0.1, l2sp_beta=0.01)
    elif method.startswith("LoRA"):
        rank = int(method.split("=")[1])
        kwargs.update(lora={"target_modules": [r"stages\.\d\.0"], "r": rank, "alpha": 2 * rank})
    module = TransferModule(
        encoder(dataset),
        dm.task_specs,
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
        plots=False,
        **kwargs,
    )
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    if method == "linear probe":
        trainable = sum(p.numel() for p in module.tasks.parameters())
    t = trainer(epochs, ema_decay)
    t.fit(module, dm)
    acc = float(t.test(module, dm, verbose=False)[0]["test/digit/acc"])
    return acc, time.perf_counter() - started, trainable


def _row(results: dict, dataset: str, labels: int, ema: bool, method: str) -> dict:
    (row,) = [
        r
        for r in results["runs"]
        if r["dataset"] == dataset
        and r["labels_per_class"] == labels
        and r.get("ema", False) == ema
        and r["method"] == method
    ]
    return row


def render(results: dict, args: argparse.Namespace) -> str:
    """Accuracy table (mean ± std over seeds), then the cached probe's time ratio and the
    trainable parameter counts."""
    lines = [
        "| data | labels / class | EMA | " + " | ".join(METHODS) + " |",
        "|---|---|---|" + "---|" * len(METHODS),
    ]
    for dataset in args.datasets:
        for labels in args.labels:
            for ema in (False, True):
                cells = []
                for method in METHODS:
                    a = [100 * v for v in _row(results, dataset, labels, ema, method)["accuracies"]]
                    spread = statistics.stdev(a) if len(a) > 1 else 0.0
                    cells.append(f"{statistics.mean(a):.1f} ± {spread:.1f}")
                flag = f"{args.ema_decay}" if ema else "off"
                lines.append(f"| {dataset} | {labels} | {flag} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| data | labels / class | cached probe wall time / linear probe's (median over seeds) "
        "| same accuracy as the linear probe, seed by seed |",
        "|---|---|---|---|",
    ]
    for dataset in args.datasets:
        for labels in args.labels:
            probe = _row(results, dataset, labels, False, "linear probe")
            cached = _row(results, dataset, labels, False, "cached probe")
            ratio = statistics.median(
                c / p for c, p in zip(cached["seconds"], probe["seconds"], strict=True)
            )
            same = sum(
                abs(c - p) < 1e-9
                for c, p in zip(cached["accuracies"], probe["accuracies"], strict=True)
            )
            lines.append(
                f"| {dataset} | {labels} | {ratio:.2f} | {same} of {len(probe['accuracies'])} |"
            )
    lines += ["", "| data | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for dataset in args.datasets:
        counts = [
            f"{_row(results, dataset, args.labels[0], False, m)['trainable_parameters']:,}"
            for m in METHODS
        ]
        lines.append(f"| {dataset} (trainable parameters) | " + " | ".join(counts) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist1d", "digits"])
    parser.add_argument("--labels", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--source-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--gradual-every", type=int, default=10)
    parser.add_argument("--ema-decay", type=float, default=0.95)
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
                for ema in (None, args.ema_decay):
                    for method in METHODS:
                        outcomes = [
                            run_target(
                                dataset,
                                method,
                                source,
                                labels,
                                s,
                                args.epochs,
                                args.gradual_every,
                                ema,
                            )
                            for s in args.seeds
                        ]
                        results["runs"].append(
                            {
                                "dataset": dataset,
                                "labels_per_class": labels,
                                "ema": ema is not None,
                                "method": method,
                                "accuracies": [o[0] for o in outcomes],
                                "seconds": [o[1] for o in outcomes],
                                "trainable_parameters": outcomes[0][2],
                            }
                        )
                    print(f"{dataset} {labels} ema={ema}: {time.perf_counter() - start:.0f} s")
    table = render(results, args)
    print(table)
    print("source test accuracy on classes 0-4:", results["sources"])
    results["markdown"] = table
    results["seconds"] = time.perf_counter() - start
    results["command"] = (
        f"python benchmarks/transfer.py --datasets {' '.join(args.datasets)} --labels "
        f"{' '.join(map(str, args.labels))} --seeds {' '.join(map(str, args.seeds))} "
        f"--source-epochs {args.source_epochs} --epochs {args.epochs} "
        f"--gradual-every {args.gradual_every} --ema-decay {args.ema_decay}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
