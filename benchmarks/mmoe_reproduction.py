"""The MMoE paper's synthetic experiment (Ma et al., KDD 2018, Sec. 3.2 and 5.2): shared-bottom vs
OMoE vs MMoE (and CGC) at task correlations p = 1.0, 0.9, 0.5, many repeats per cell.

Data: :class:`lit_mtl.MMoESyntheticDataModule` (d = 100, c = 0.3, m = 5 sinusoids, noise std 0.01;
constants from a public re-implementation, see its docstring), 10 000 training and 2 000 test
samples. Models, with matched parameter counts (about 14 k; printed in the table):

* shared-bottom: one ReLU layer of ``--bottom-width`` units shared by both tasks;
* OMoE / MMoE: 8 experts of one ReLU layer of 16 units, one gate (OMoE) or a gate per task;
* CGC: per task 3 own experts plus 2 shared experts of 16 units, a gate per task;

each task with a tower of one ReLU layer of 8 units and a linear output (the paper's towers).
Training: Adam (lr 1e-3), batch 128, ``--epochs`` epochs, equal weighting of the two MSE losses,
inside Lightning; every repeat draws new data functions, a new sample and a new initialisation
(seed = repeat). The paper's claims: MMoE has the lowest loss at every p; the gap to
shared-bottom grows as p falls; MMoE's final loss varies less across repeats (trainability).

    python benchmarks/mmoe_reproduction.py   # writes benchmarks/results/mmoe_reproduction.json/.png
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
from torch import nn

from lit_mtl import CGC, MLPEncoder, MMoE, MMoESyntheticDataModule, MultiTaskModule, OMoE
from lit_mtl.architectures import Tower

ARCHITECTURES = ("shared-bottom", "omoe", "mmoe", "cgc")


def build(name: str, in_features: int, bottom_width: int) -> tuple[nn.Module, dict | None]:
    if name == "shared-bottom":
        encoder = MLPEncoder(in_features, [bottom_width])
        heads = {t: Tower(bottom_width, [8], 1) for t in ("task1", "task2")}
        return encoder, heads
    if name == "omoe":
        return OMoE(in_features, num_experts=8, expert_widths=[16], tower_widths=[8]), None
    if name == "mmoe":
        return MMoE(in_features, num_experts=8, expert_widths=[16], tower_widths=[8]), None
    return (
        CGC(
            in_features,
            num_shared_experts=2,
            num_task_experts=3,
            expert_widths=[16],
            tower_widths=[8],
        ),
        None,
    )


def fit_once(name: str, p: float, seed: int, args: argparse.Namespace) -> tuple[float, int]:
    """Final test loss (mean of the two tasks' MSE) and the parameter count."""
    L.seed_everything(seed, verbose=False)
    dm = MMoESyntheticDataModule(
        p=p,
        num_train=args.num_train,
        num_val=1,
        num_test=args.num_test,
        batch_size=128,
        seed=seed,
        function_seed=seed,
    )
    encoder, heads = build(name, dm.in_features, args.bottom_width)
    module = MultiTaskModule(
        encoder,
        dm.task_specs,
        heads=heads,
        plots=False,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
    )
    parameters = sum(q.numel() for q in module.parameters())
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
    return (result["test/task1/mse"] + result["test/task2/mse"]) / 2, parameters


def plot(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    ps = sorted({float(k.split("@")[1]) for k in results}, reverse=True)
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for arch in ARCHITECTURES:
        means = [statistics.fmean(results[f"{arch}@{p}"]) for p in ps]
        stds = [statistics.stdev(results[f"{arch}@{p}"]) for p in ps]
        left.errorbar([str(p) for p in ps], means, yerr=stds, capsize=3, marker="o", label=arch)
    left.set_xlabel("task correlation p")
    left.set_ylabel("final test loss (mean of the two MSEs)")
    left.set_title("mean ± std over repeats")
    left.legend()
    left.grid(alpha=0.3)
    positions, data, labels = [], [], []
    for i, p in enumerate(ps):
        for j, arch in enumerate(ARCHITECTURES):
            positions.append(i * (len(ARCHITECTURES) + 1) + j)
            data.append(results[f"{arch}@{p}"])
            labels.append(f"{arch}\np={p}")
    right.boxplot(data, positions=positions)
    right.set_xticks(positions, labels, rotation=90, fontsize="x-small")
    right.set_ylabel("final test loss")
    right.set_title("trainability: final losses over repeats")
    right.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-train", type=int, default=10000)
    parser.add_argument("--num-test", type=int, default=2000)
    parser.add_argument("--bottom-width", type=int, default=113)
    parser.add_argument("--p", type=float, nargs="+", default=[1.0, 0.9, 0.5])
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/mmoe_reproduction.json")
    )
    parser.add_argument(
        "--from-json", action="store_true", help="re-render the stored run's table and plot"
    )
    args = parser.parse_args()
    if args.from_json:
        rewrite_from_json(args)
        return
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    results: dict[str, list[float]] = {}
    parameters: dict[str, int] = {}
    started = time.perf_counter()
    for repeat in range(args.repeats):  # repeats outermost: a cut-short run is still balanced
        for p in args.p:
            for arch in ARCHITECTURES:
                loss, count = fit_once(arch, p, repeat, args)
                results.setdefault(f"{arch}@{p}", []).append(loss)
                parameters[arch] = count
        print(f"repeat {repeat} done, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    write(results, parameters, args, time.perf_counter() - started, command_of(args))


def command_of(args: argparse.Namespace) -> str:
    return (
        f"python benchmarks/mmoe_reproduction.py --repeats {args.repeats} --epochs {args.epochs} "
        f"--num-train {args.num_train} --num-test {args.num_test} "
        f"--bottom-width {args.bottom_width} --p {' '.join(map(str, args.p))}"
    )


def write(
    results: dict[str, list[float]],
    parameters: dict[str, int],
    args: argparse.Namespace,
    seconds: float,
    command: str,
) -> None:
    """The table (mean ± std, median, range, and on how many repeats a model's loss is below
    shared-bottom's on the same data), the plot and the JSON."""
    ps = sorted({float(k.split("@")[1]) for k in results}, reverse=True)
    lines = [
        "| p | model | parameters | final test loss, mean ± std | median | min | max | "
        "below shared-bottom (same data) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for p in ps:
        base = results[f"shared-bottom@{p}"]
        for arch in ARCHITECTURES:
            values = results[f"{arch}@{p}"]
            wins = sum(v < b for v, b in zip(values, base, strict=True))
            row = {
                "p": p,
                "model": arch,
                "parameters": parameters[arch],
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values),
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "below_shared_bottom": wins,
                "losses": values,
            }
            rows.append(row)
            versus = "-" if arch == "shared-bottom" else f"{wins} of {len(values)}"
            lines.append(
                f"| {p} | {arch} | {row['parameters']} | {row['mean']:.4f} ± {row['std']:.4f} | "
                f"{row['median']:.4f} | {row['min']:.4f} | {row['max']:.4f} | {versus} |"
            )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, args.out.with_suffix(".png"))
    args.out.write_text(
        json.dumps(
            {
                "command": command,
                "torch": torch.__version__,
                "seconds": seconds,
                "rows": rows,
                "markdown": table,
            },
            indent=1,
        )
    )


def rewrite_from_json(args: argparse.Namespace) -> None:
    """Re-render the table and the plot from the losses a run stored (no training)."""
    stored = json.loads(args.out.read_text())
    results = {f"{r['model']}@{r['p']}": list(r["losses"]) for r in stored["rows"]}
    parameters = {r["model"]: r["parameters"] for r in stored["rows"]}
    write(results, parameters, args, stored["seconds"], stored["command"])


if __name__ == "__main__":
    main()
