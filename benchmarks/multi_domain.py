"""Multi-input multi-task learning on the multi-domain digits: one shared model for all domains
vs one model per domain, several seeds, with delta-m.

Data: :class:`lit_mtl.DigitsDomainsDataModule`: scikit-learn's 1797 digits split into four
disjoint parts, one per domain (original, inverted, rotated 90 degrees, Gaussian noise 0.3), each
domain a 10-class task with its own images; ``--train-per-class`` training images per class and
domain (the rest of each part: 20 % validation, 20 % test). Model: a 2-block CNN (16, 32
channels) and a linear head per domain; Adam (lr 3e-3), batch 32, ``--epochs`` epochs; the test
accuracy of the last epoch.

* single-task: one model per domain (``single_domain``), its own CNN;
* multi-input MTL: one CNN shared by the four domains, every step a batch of each domain
  (``combine="max_size_cycle"``), with equal weighting and with UPGrad on the shared parameters
  (``target="shared"``: per-task gradients w.r.t. z do not exist with distinct inputs); the
  encoder runs once on the four batches stacked (the default ``encoder_pass``), and, for equal
  weighting, also once per domain (``encoder_pass="per_task"``: the CNN's BatchNorm then
  normalises each domain by its own batch statistics in training but by their running mixture
  at test time).

delta-m (%) is the mean over domains of the relative accuracy change against the single-task
models of the same seed (:func:`lit_mtl.metrics.delta_m`; negative = better).

    python benchmarks/multi_domain.py   # writes benchmarks/results/multi_domain.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from lit_mtl import CNNEncoder, DigitsDomainsDataModule, MultiTaskModule, UPGrad
from lit_mtl.metrics import delta_m

DOMAINS = ("original", "inverted", "rotated", "noisy")
METHODS = (
    "single-task",
    "MTL equal",
    "MTL UPGrad (shared)",
    "MTL equal, one encoder pass per domain",
)


def fit_once(method: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """Test accuracy per domain of one method and seed."""
    if method == "single-task":
        accuracies: dict[str, float] = {}
        for domain in DOMAINS:
            accuracies.update(_fit(seed, args, single_domain=domain, weighting=None))
        return accuracies
    weighting = UPGrad(target="shared") if "UPGrad" in method else None
    encoder_pass = "per_task" if "per domain" in method else "concatenated"
    return _fit(seed, args, single_domain=None, weighting=weighting, encoder_pass=encoder_pass)


def _fit(
    seed: int,
    args: argparse.Namespace,
    single_domain: str | None,
    weighting: object,
    encoder_pass: str = "concatenated",
) -> dict[str, float]:
    L.seed_everything(seed, verbose=False)
    dm = DigitsDomainsDataModule(
        domains=DOMAINS,
        train_per_class=args.train_per_class,
        single_domain=single_domain,
        batch_size=32,
        seed=seed,
    )
    module = MultiTaskModule(
        CNNEncoder(1, [16, 32]),
        dm.task_specs,
        weighting,  # type: ignore[arg-type]
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
        plots=False,
        encoder_pass=encoder_pass,  # type: ignore[arg-type]
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, dm)
    result = trainer.test(module, dm, verbose=False)[0]
    return {name: result[f"test/{name}/acc"] for name in dm.task_names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--train-per-class", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/multi_domain.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    budgets = list(args.train_per_class)
    for budget in budgets:
        args.train_per_class = budget
        cell = runs.setdefault(str(budget), {})
        for seed in range(args.seeds):
            for method in METHODS:
                cell.setdefault(method, []).append(fit_once(method, seed, args))
            print(
                f"{budget}/class seed {seed}: {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
            )
    args.train_per_class = budgets
    write(runs, args, time.perf_counter() - started)


def write(runs: dict, args: argparse.Namespace, seconds: float) -> None:
    header = "| train images per class and domain | method | " + " | ".join(DOMAINS)
    lines = [
        header + " | mean acc | delta-m % (mean ± std) |",
        "|---|---|" + "---|" * len(DOMAINS) + "---|---|",
    ]
    rows = []
    for budget, cell in runs.items():
        singles = cell["single-task"]
        for method in METHODS:
            results = cell[method]
            per_domain = {d: statistics.fmean(r[d] for r in results) for d in DOMAINS}
            deltas = [
                delta_m(
                    {f"{d}/acc": r[d] for d in DOMAINS},
                    {f"{d}/acc": s[d] for d in DOMAINS},
                )
                for r, s in zip(results, singles, strict=True)
            ]
            mean_acc = statistics.fmean(per_domain.values())
            delta = (
                "0 (reference)"
                if method == "single-task"
                else f"{statistics.fmean(deltas):+.2f} ± {statistics.stdev(deltas):.2f}"
            )
            cells = " | ".join(f"{100 * per_domain[d]:.1f}" for d in DOMAINS)
            lines.append(f"| {budget} | {method} | {cells} | {100 * mean_acc:.1f} | {delta} |")
            rows.append(
                {
                    "train_per_class": int(budget),
                    "method": method,
                    "accuracy": per_domain,
                    "mean_accuracy": mean_acc,
                    "delta_m": deltas,
                    "runs": results,
                }
            )
    command = (
        f"python benchmarks/multi_domain.py --seeds {args.seeds} --epochs {args.epochs} "
        f"--train-per-class {' '.join(map(str, args.train_per_class))}"
    )
    markdown = "\n".join(lines) + (
        f"\n\nTest accuracy (%) per domain, mean over {args.seeds} seeds; delta-m against the "
        "single-task models of the same seed (negative = better than one model per domain)."
    )
    payload = {
        "command": command,
        "seconds": round(seconds, 1),
        "rows": rows,
        "markdown": markdown,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
