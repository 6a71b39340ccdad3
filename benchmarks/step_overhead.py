"""What MultiTaskModule adds to a training step, next to a bare LightningModule and a plain loop.

Model (the GradNorm toy, as ``weighting_cost.py``): trunk 250 -> 4 x 100 ReLU, one
Linear(100, 100) regression head per task, batch 256, Adam, one CPU thread, T = 2, 10 and 40.
Variants, all on the same batch (a DataLoader that yields one pre-built batch, no collation):

* ``plain loop``: forward, sum of the T MSE losses, backward, Adam step, zero_grad;
* ``bare LightningModule``: the same step in ``training_step`` with one ``self.log`` (the loss);
* ``MultiTaskModule (equal)``: our module with equal weighting, its defaults (per-task loss,
  weight and metric logging, the task-weight plot callback);
* ``MultiTaskModule (upgrad)`` and ``plain loop (upgrad)``: one gradient method
  (UPGrad on the representation) in our module and in a plain loop (``weighting_cost.py``'s step),
  so that the module's overhead on a gradient method can be read the same way.

The Lightning variants run ``Trainer.fit`` with a CSV logger, ``log_every_n_steps=50``, no
progress bar, no checkpointing. A step's time is the interval between consecutive
``on_train_batch_start`` calls: everything a step costs, including the module's own hooks, the
logger connector and the data fetch (median over the timed steps; the mean, which includes the
logging steps, is stored too). Variants are interleaved round by round; each round's times are
divided by the bare module's in the same round and the table gives the median ratio over rounds.

    python benchmarks/step_overhead.py        # writes benchmarks/results/step_overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lit_mtl import EqualWeighting, MLPEncoder, MultiTaskModule, TaskSpec, UPGrad, task_views
from lit_mtl.engines import step_context

BATCH, IN_FEATURES, WIDTH = 256, 250, 100


def make_batch(num_tasks: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, IN_FEATURES, generator=g)
    return x, {f"t{i}": torch.randn(BATCH, WIDTH, generator=g) for i in range(num_tasks)}


def make_trunk() -> MLPEncoder:
    return MLPEncoder(IN_FEATURES, hidden=(WIDTH,) * 4)


class OneBatch(torch.utils.data.Dataset):
    """``length`` times the same pre-built batch (DataLoader(batch_size=None): no collation)."""

    def __init__(self, batch: Any, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Any:
        return self.batch


class BareModule(L.LightningModule):
    """The same model written directly: sum of the T MSE losses, one logged scalar."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.trunk = make_trunk()
        self.heads = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(num_tasks))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, targets = batch
        z = self.trunk(x)
        loss = sum(
            F.mse_loss(head(z), y) for head, y in zip(self.heads, targets.values(), strict=True)
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class StepTimer(L.Callback):
    """Intervals between consecutive ``on_train_batch_start`` calls (seconds)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    def intervals(self, warmup: int) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)][warmup:]


def lightning_steps(module: L.LightningModule, batch: Any, steps: int, warmup: int) -> list[float]:
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_steps=warmup + steps + 1,
            logger=CSVLogger(tmp),
            log_every_n_steps=50,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            accelerator="cpu",
            devices=1,
        )
        loader = torch.utils.data.DataLoader(OneBatch(batch, warmup + steps + 1), batch_size=None)
        trainer.fit(module, loader)
    return timer.intervals(warmup)


def plain_steps(num_tasks: int, batch: Any, steps: int, warmup: int, method: str) -> list[float]:
    trunk = make_trunk()
    heads = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(num_tasks))
    optimizer = torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=1e-3)
    weighting = UPGrad(target="representation", num_tasks=num_tasks) if method == "upgrad" else None
    x, targets = batch
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        z = trunk(x)
        if weighting is None:
            losses = [F.mse_loss(h(z), y) for h, y in zip(heads, targets.values(), strict=True)]
            loss = sum(losses)
        else:
            views = task_views(z, num_tasks)
            losses = [
                F.mse_loss(h(v), y) for h, v, y in zip(heads, views, targets.values(), strict=True)
            ]
            ctx = step_context(
                losses,
                representation=z,
                task_representations=views,
                heads=list(heads),
            )
            loss = weighting(ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def variants(num_tasks: int) -> dict[str, Callable[[Any, int, int], list[float]]]:
    specs = [TaskSpec(f"t{i}", "regression", WIDTH) for i in range(num_tasks)]
    return {
        "plain loop": lambda b, s, w: plain_steps(num_tasks, b, s, w, "equal"),
        "bare LightningModule": lambda b, s, w: lightning_steps(BareModule(num_tasks), b, s, w),
        "MultiTaskModule (equal)": lambda b, s, w: lightning_steps(
            MultiTaskModule(make_trunk(), specs, weighting=EqualWeighting()), b, s, w
        ),
        "plain loop (upgrad)": lambda b, s, w: plain_steps(num_tasks, b, s, w, "upgrad"),
        "MultiTaskModule (upgrad)": lambda b, s, w: lightning_steps(
            MultiTaskModule(make_trunk(), specs, weighting=UPGrad(target="representation")),
            b,
            s,
            w,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # Lightning's tips (no val loader, few workers)
    for name in ("lightning.pytorch", "lightning.fabric", "lit_mtl"):
        import logging

        logging.getLogger(name).setLevel(logging.ERROR)

    rows = []
    for num_tasks in args.tasks:
        batch = make_batch(num_tasks)
        runs = variants(num_tasks)
        medians: dict[str, list[float]] = {name: [] for name in runs}
        means: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                times = run(batch, args.steps, args.warmup)
                medians[name].append(statistics.median(times))
                means[name].append(statistics.fmean(times))
        bare = medians["bare LightningModule"]
        for name in runs:
            ratios = [m / b for m, b in zip(medians[name], bare, strict=True)]
            mean_ratios = [
                m / b for m, b in zip(means[name], means["bare LightningModule"], strict=True)
            ]
            rows.append(
                {
                    "tasks": num_tasks,
                    "variant": name,
                    "median_ms": 1e3 * statistics.median(medians[name]),
                    "mean_ms": 1e3 * statistics.median(means[name]),
                    "ratio_to_bare": statistics.median(ratios),
                    "ratio_to_bare_range": [min(ratios), max(ratios)],
                    "mean_ratio_to_bare": statistics.median(mean_ratios),
                }
            )
            print(
                f"T={num_tasks:>2} {name:<26} {rows[-1]['median_ms']:7.2f} ms "
                f"x{rows[-1]['ratio_to_bare']:.2f} (mean x{rows[-1]['mean_ratio_to_bare']:.2f})",
                flush=True,
            )

    header = "| variant | " + " | ".join(f"T = {t}" for t in args.tasks) + " |"
    lines = [header, "|---" * (len(args.tasks) + 1) + "|"]
    for name in variants(1):
        cells = []
        for t in args.tasks:
            row = next(r for r in rows if r["tasks"] == t and r["variant"] == name)
            cells.append(f"{row['median_ms']:.1f} ms ({row['ratio_to_bare']:.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    command = "python benchmarks/step_overhead.py" + (
        f" --rounds {args.rounds}" if args.rounds != 7 else ""
    )
    result = {
        "command": command,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": L.__version__,
            "machine": platform.machine(),
            "threads": 1,
        },
        "settings": vars(args) | {"out": str(args.out)},
        "rows": rows,
        "markdown": "\n".join(lines),
        "convention": (
            "Median step time (interval between consecutive on_train_batch_start calls), one CPU "
            "thread; in brackets the median over rounds of the ratio to the bare LightningModule "
            "in the same round"
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
