"""The MMoE paper's synthetic experiment (Ma et al., KDD 2018, Sec. 3.2 and 5.2): shared-bottom vs
OMoE vs MMoE (and CGC) at task correlations p = 1.0, 0.9, 0.5, trained to convergence, compared
paired on the same data.

Data: :class:`lit_mtl.MMoESyntheticDataModule` with the constants of the google-research
re-implementation (:data:`~lit_mtl.data.mmoe_synthetic.GOOGLE_RESEARCH_CONSTANTS`: d = 100,
c = 1, m = 10, alpha_i = i, beta_i = (i - 1)^2, noise std 0.01), 50 000 training and 2 000 test
samples. The library's default constants (c = 0.3, m = 5, alpha, beta ~ N(0, 1)) make the labels
nearly linear in x; the script prints and stores the R^2 of a least-squares linear fit (fitted on
the training split, scored on the test split) for both, so the choice can be checked.

Design: the data functions (u1, u2) stay fixed (``--function-seed``); repeat r draws the sample
and the noise with seed r and initialises every model with seed r. Every model of repeat r is
trained on the same data at every p (the inputs and the noise do not depend on p; only w2 does),
so differences between models and between p are paired by repeat. Reported: the final test loss
(mean of the two tasks' MSE) per model, the paired differences to shared-bottom with 95%
t-intervals, the difference of those gaps between p = 0.5 and p = 1.0 (the paper's "the gap grows
as p falls"), and the ratio of MMoE's to shared-bottom's standard deviation over repeats with a
paired bootstrap interval (the paper's trainability claim).

Models, with matched parameter counts (about 14 k; printed in the table):

* shared-bottom: one ReLU layer of ``--bottom-width`` units shared by both tasks;
* OMoE / MMoE: 8 experts of one ReLU layer of 16 units, one gate (OMoE) or a gate per task;
* CGC: per task 3 own experts plus 2 shared experts of 16 units, a gate per task;

each task with a tower of one ReLU layer of 8 units and a linear output (the paper's towers),
built from the library's :class:`~lit_mtl.MMoE`, :class:`~lit_mtl.OMoE`, :class:`~lit_mtl.CGC`,
:class:`~lit_mtl.MLPEncoder` and :class:`~lit_mtl.models.Tower`. Training: Adam, peak
learning rate 3e-3 decayed to 0 by a per-step cosine schedule, batch 128, 40 epochs (15 640 steps),
the sum of the two MSE losses (what ``MultiTaskModule`` with ``EqualWeighting`` minimises). The
repeats of one model train side by side as one stacked model (``torch.func.stack_module_state`` +
``vmap``): each repeat's parameters see only its own loss and Adam is elementwise, so this is R
independent trainings, run at the cost of a few; Lightning's per-step overhead would otherwise
dominate models of 14 k parameters. The budget: with 10 000 samples every model overfits within 5
epochs (the test loss rises while the training loss falls); with 50 000 at a constant 3e-3 the test
loss still falls 7-17% over the last 5 of 25 epochs, so the rate is annealed (the table's last
column: the change of the test loss over the last 20% of the epochs; the plot: the curves). The
final loss of a repeat is its test loss averaged over the last ``--last`` epochs.

    python benchmarks/mmoe_reproduction.py   # writes benchmarks/results/mmoe_reproduction.json/.png
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from lit_mtl import CGC, MLPEncoder, MMoE, MMoESyntheticDataModule, OMoE
from lit_mtl.data.mmoe_synthetic import GOOGLE_RESEARCH_CONSTANTS
from lit_mtl.models import Tower

ARCHITECTURES = ("shared-bottom", "omoe", "mmoe", "cgc")
TASKS = ("task1", "task2")


class TwoTaskModel(nn.Module):
    """An encoder (one output for both tasks, or one per task) and a tower per task; forward ->
    (N, 2) predictions."""

    def __init__(self, encoder: nn.Module, towers: list[nn.Module]) -> None:
        super().__init__()
        self.encoder = encoder
        self.towers = nn.ModuleList(towers)

    def forward(self, x: Tensor) -> Tensor:
        z = self.encoder(x)
        zs = z if isinstance(z, list) else [z] * len(self.towers)
        return torch.cat([tower(zk) for tower, zk in zip(self.towers, zs, strict=True)], dim=-1)


def build(name: str, in_features: int, bottom_width: int) -> TwoTaskModel:
    if name == "shared-bottom":
        encoder: nn.Module = MLPEncoder(in_features, [bottom_width])
        return TwoTaskModel(encoder, [Tower(bottom_width, [8], 1) for _ in TASKS])
    if name == "omoe":
        encoder = OMoE(in_features, num_experts=8, expert_widths=[16], tower_widths=[8])
    elif name == "mmoe":
        encoder = MMoE(in_features, num_experts=8, expert_widths=[16], tower_widths=[8])
    elif name == "cgc":
        encoder = CGC(
            in_features,
            num_shared_experts=2,
            num_task_experts=3,
            expert_widths=[16],
            tower_widths=[8],
        )
    else:
        raise ValueError(f"unknown architecture {name!r}; choose from {ARCHITECTURES}")
    encoder.bind_tasks(list(TASKS))
    return TwoTaskModel(encoder, [Tower(16, [8], 1) for _ in TASKS])


def data_module(p: float, repeat: int, args: argparse.Namespace, constants: dict):
    dm = MMoESyntheticDataModule(
        p=p,
        num_train=args.num_train,
        num_val=1,
        num_test=args.num_test,
        seed=repeat,
        function_seed=args.function_seed,
        **constants,
    )
    dm.setup()
    return dm


def split_tensors(dm: MMoESyntheticDataModule, split: str) -> tuple[Tensor, Tensor]:
    dataset = dm.datasets[split]
    return dataset.inputs, torch.stack([dataset.targets[t] for t in TASKS], dim=-1)


def linear_fit_r2(dm: MMoESyntheticDataModule) -> float:
    """R^2 on the test split of a least-squares linear fit (with intercept) on the training
    split, averaged over the two tasks."""
    (x, y), (x_test, y_test) = split_tensors(dm, "train"), split_tensors(dm, "test")

    def design(inputs: Tensor) -> Tensor:
        return torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1).double()

    weights = torch.linalg.lstsq(design(x), y.double()).solution
    residual = y_test.double() - design(x_test) @ weights
    return float((1 - residual.var(dim=0) / y_test.double().var(dim=0)).mean())


def train_repeats(
    name: str, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], args: argparse.Namespace
) -> dict:
    """Train R repeats of one model side by side; ``train``/``test`` are (R, N, d), (R, N, 2).
    Returns the per-epoch test loss of each repeat (R, epochs; mean task MSE), the training loss
    averaged over repeats (epochs; mean over the epoch's batches) and one model's parameter
    count."""
    x, y = train
    repeats, n = x.shape[:2]
    models = []
    for r in range(repeats):
        torch.manual_seed(r)
        models.append(build(name, x.shape[-1], args.bottom_width))
    count = sum(q.numel() for q in models[0].parameters())
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def task_mse(params: dict, buffers: dict, inputs: Tensor, targets: Tensor) -> Tensor:
        prediction = functional_call(base, (params, buffers), (inputs,))
        return ((prediction - targets) ** 2).mean(dim=0)  # (2,)

    batched = vmap(task_mse)
    optimizer = torch.optim.Adam(params.values(), lr=args.lr)
    steps_per_epoch = math.ceil(n / args.batch_size)
    # cosine decay of the learning rate to 0 over the whole run, stepped per batch: the run ends
    # where the optimiser has settled, whatever the peak rate
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * steps_per_epoch)
        if args.schedule == "cosine"
        else None
    )
    shufflers = [torch.Generator().manual_seed(10_000 + r) for r in range(repeats)]
    rows = torch.arange(repeats)[:, None]
    train_curve, test_curve = [], []
    for _ in range(args.epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in shufflers])
        total, batches = torch.zeros(repeats), 0
        for start in range(0, n, args.batch_size):
            index = order[:, start : start + args.batch_size]
            losses = batched(params, buffers, x[rows, index], y[rows, index])  # (R, 2)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += losses.detach().mean(dim=1)
            batches += 1
        train_curve.append(total / batches)
        with torch.no_grad():
            test_curve.append(batched(params, buffers, *test).mean(dim=1))
    return {
        "parameters": count,
        "train": [round(v, 6) for v in torch.stack(train_curve, dim=1).mean(dim=0).tolist()],
        "test": [[round(v, 6) for v in row] for row in torch.stack(test_curve, dim=1).tolist()],
    }


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two-sided t-interval of the mean."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    half = (
        t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    )
    return mean, mean - half, mean + half


def bootstrap_std_ratio(
    numerator: list[float], denominator: list[float], resamples: int = 4000
) -> tuple[float, float, float]:
    """std(numerator) / std(denominator) over repeats, with a paired percentile bootstrap 95%
    interval (repeats resampled together)."""
    a, b = torch.tensor(numerator, dtype=torch.float64), torch.tensor(denominator).double()
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(len(a), (resamples, len(a)), generator=generator)
    ratios = a[index].std(dim=1) / b[index].std(dim=1)
    # a resample of one repeat drawn n times has 0 / 0: left out
    low, high = torch.nanquantile(ratios, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return float(a.std() / b.std()), float(low), float(high)


def final(curves: dict, arch: str, p: float, last: int) -> list[float]:
    """Per repeat: the test loss averaged over the last ``last`` epochs (smooths the
    epoch-to-epoch jitter of a converged run)."""
    return [statistics.fmean(row[-last:]) for row in curves[f"{arch}@{p}"]["test"]]


def summarise(curves: dict, ps: list[float], last: int) -> dict:
    rows, gaps = [], {}
    for p in ps:
        base = final(curves, "shared-bottom", p, last)
        for arch in [a for a in ARCHITECTURES if f"{a}@{p}" in curves]:
            values = final(curves, arch, p, last)
            test = curves[f"{arch}@{p}"]["test"]
            # convergence: relative change of the repeat-mean test loss over the last 20% epochs
            mean_curve = [statistics.fmean(col) for col in zip(*test, strict=True)]
            cut = max(1, len(mean_curve) // 5)
            row = {
                "p": p,
                "model": arch,
                "parameters": curves[f"{arch}@{p}"]["parameters"],
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values),
                "losses": values,
                "change_last_20pct": mean_curve[-1] / mean_curve[-cut - 1] - 1,
            }
            if arch != "shared-bottom":
                diffs = [v - b for v, b in zip(values, base, strict=True)]
                row["minus_shared_bottom"] = t_interval(diffs)
                row["below_shared_bottom"] = sum(d < 0 for d in diffs)
                gaps[(arch, p)] = diffs
            rows.append(row)
    claims = {}
    mmoe_vs = {}
    for p in ps:
        for other in [a for a in ARCHITECTURES if a != "mmoe" and f"{a}@{p}" in curves]:
            diffs = [
                m - o
                for m, o in zip(
                    final(curves, "mmoe", p, last), final(curves, other, p, last), strict=True
                )
            ]
            mmoe_vs[f"{other}@{p}"] = t_interval(diffs)
    claims["mmoe_minus_other"] = mmoe_vs
    low_p, high_p = min(ps), max(ps)
    if ("mmoe", low_p) in gaps and ("mmoe", high_p) in gaps and low_p != high_p:
        growth = [
            lo - hi for lo, hi in zip(gaps[("mmoe", low_p)], gaps[("mmoe", high_p)], strict=True)
        ]
        claims["gap_growth"] = {"p_low": low_p, "p_high": high_p, "interval": t_interval(growth)}
    claims["std_ratio_mmoe_over_shared_bottom"] = {
        str(p): bootstrap_std_ratio(
            final(curves, "mmoe", p, last), final(curves, "shared-bottom", p, last)
        )
        for p in ps
    }
    return {"rows": rows, "claims": claims}


def markdown(summary: dict, r2: dict) -> str:
    def ci(interval: list[float] | tuple[float, ...]) -> str:
        mean, low, high = interval
        return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"

    lines = [
        "| p | model | parameters | final test loss, mean ± std | minus shared-bottom, "
        "mean [95% CI] | below shared-bottom | change over last 20% of epochs |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        repeats = len(row["losses"])
        versus = ci(row["minus_shared_bottom"]) if "minus_shared_bottom" in row else "-"
        wins = f"{row['below_shared_bottom']} of {repeats}" if "minus_shared_bottom" in row else "-"
        lines.append(
            f"| {row['p']} | {row['model']} | {row['parameters']} | {row['mean']:.4f} ± "
            f"{row['std']:.4f} | {versus} | {wins} | {100 * row['change_last_20pct']:+.1f}% |"
        )
    claims = summary["claims"]
    lines += ["", "| claim | measured |", "|---|---|"]
    for key, interval in claims["mmoe_minus_other"].items():
        other, p = key.split("@")
        lines.append(f"| MMoE minus {other}, p = {p} | {ci(interval)} |")
    if "gap_growth" in claims:
        g = claims["gap_growth"]
        lines.append(
            f"| (MMoE - shared-bottom) at p = {g['p_low']} minus at p = {g['p_high']} "
            f"(negative: the gap grows as p falls) | {ci(g['interval'])} |"
        )
    for p, (ratio, low, high) in claims["std_ratio_mmoe_over_shared_bottom"].items():
        lines.append(
            f"| std over repeats, MMoE / shared-bottom, p = {p} | {ratio:.2f} "
            f"[{low:.2f}, {high:.2f}] |"
        )
    lines += [
        "",
        "Linear-fit R^2 of the labels (test split, mean of the two tasks): "
        + ", ".join(f"{name} {value:.2f}" for name, value in r2.items())
        + ".",
    ]
    return "\n".join(lines)


def plot(curves: dict, ps: list[float], last: int, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(ps) + 4, 4), layout="constrained")
    axes = fig.subplots(1, len(ps) + 1)
    colours = dict(zip(ARCHITECTURES, ("C0", "C1", "C2", "C3"), strict=True))
    for ax, p in zip(axes[:-1], ps, strict=False):
        for arch in [a for a in ARCHITECTURES if f"{a}@{p}" in curves]:
            test = torch.tensor(curves[f"{arch}@{p}"]["test"])
            train = torch.tensor(curves[f"{arch}@{p}"]["train"])
            epochs = torch.arange(1, test.shape[1] + 1)
            ax.plot(epochs, test.mean(0), color=colours[arch], label=f"{arch} test")
            ax.plot(epochs, train, color=colours[arch], ls=":", alpha=0.7)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (mean of the two MSEs; dotted: training)")
        ax.set_title(f"p = {p}, mean over repeats")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    positions, data, labels = [], [], []
    for i, p in enumerate(ps):
        for j, arch in enumerate([a for a in ARCHITECTURES if f"{a}@{p}" in curves]):
            positions.append(i * (len(ARCHITECTURES) + 1) + j)
            data.append(final(curves, arch, p, last))
            labels.append(f"{arch}\np={p}")
    axes[-1].boxplot(data, positions=positions)
    axes[-1].set_xticks(positions, labels, rotation=90, fontsize="x-small")
    axes[-1].set_ylabel("final test loss")
    axes[-1].set_title("final losses over repeats")
    axes[-1].grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def command_of(args: argparse.Namespace) -> str:
    return (
        f"python benchmarks/mmoe_reproduction.py --repeats {args.repeats} --epochs {args.epochs} "
        f"--num-train {args.num_train} --num-test {args.num_test} "
        f"--bottom-width {args.bottom_width} --lr {args.lr} --schedule {args.schedule} "
        f"--batch-size {args.batch_size} "
        f"--function-seed {args.function_seed} --last {args.last} "
        f"--models {' '.join(args.models)} --p {' '.join(map(str, args.p))}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--num-train", type=int, default=50000)
    parser.add_argument("--num-test", type=int, default=2000)
    parser.add_argument("--bottom-width", type=int, default=113)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's (peak) learning rate")
    parser.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="learning rate: cosine decay to 0 over the run, or constant",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--function-seed", type=int, default=0)
    parser.add_argument("--last", type=int, default=5, help="final loss: mean of the last epochs")
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--p", type=float, nargs="+", default=[1.0, 0.9, 0.5])
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/mmoe_reproduction.json")
    )
    parser.add_argument(
        "--from-json", action="store_true", help="re-render the stored run's table and plot"
    )
    args = parser.parse_args()
    if "shared-bottom" not in args.models:
        parser.error("--models must include shared-bottom (the paired baseline)")
    if args.from_json:
        stored = json.loads(args.out.read_text())
        write(stored["curves"], stored["r2"], stored["command"], stored["seconds"], args)
        return
    torch.set_num_threads(1)
    started = time.perf_counter()
    r2 = {
        "google-research constants": linear_fit_r2(
            data_module(0.5, 0, args, GOOGLE_RESEARCH_CONSTANTS)
        ),
        "library defaults (c = 0.3, m = 5)": linear_fit_r2(data_module(0.5, 0, args, {})),
    }
    print(f"linear-fit R^2 at p = 0.5: {r2}", file=sys.stderr)
    curves: dict[str, dict] = {}
    for p in args.p:
        modules = [data_module(p, r, args, GOOGLE_RESEARCH_CONSTANTS) for r in range(args.repeats)]
        train = [split_tensors(dm, "train") for dm in modules]
        test = [split_tensors(dm, "test") for dm in modules]
        stacked_train = tuple(torch.stack(parts) for parts in zip(*train, strict=True))
        stacked_test = tuple(torch.stack(parts) for parts in zip(*test, strict=True))
        for arch in [a for a in ARCHITECTURES if a in args.models]:
            curves[f"{arch}@{p}"] = train_repeats(arch, stacked_train, stacked_test, args)
            print(
                f"p={p} {arch}: {time.perf_counter() - started:.0f} s, final test "
                f"{statistics.fmean(final(curves, arch, p, args.last)):.4f}",
                file=sys.stderr,
            )
    write(curves, r2, command_of(args), time.perf_counter() - started, args)


def write(curves: dict, r2: dict, command: str, seconds: float, args: argparse.Namespace) -> None:
    ps = sorted({float(k.split("@")[1]) for k in curves}, reverse=True)
    summary = summarise(curves, ps, args.last)
    table = markdown(summary, r2)
    print(table + f"\n\nCommand: `{command}`")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(curves, ps, args.last, args.out.with_suffix(".png"))
    args.out.write_text(
        json.dumps(
            {
                "command": command,
                "torch": torch.__version__,
                "seconds": seconds,
                "r2": r2,
                "rows": summary["rows"],
                "claims": summary["claims"],
                "markdown": table,
                "curves": curves,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
