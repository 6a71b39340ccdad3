"""Step time of MMoE and PLE, with equal weighting and with a Gramian method, as a ratio to
shared-bottom with equal weighting, measured in the same rounds.

Models as in ``mmoe_reproduction.py`` (about 14 k parameters each, MMoE's synthetic data, 100
inputs, two tasks with towers, batch 128, Adam) inside a Lightning ``Trainer`` on the CPU (one
thread). A step is timed from ``on_train_batch_start`` to ``on_train_batch_end``; each (model,
round) is a fresh fit of ``warmup + steps`` steps, the models interleaved round-robin; the table
shows each model's median step time and the median over rounds of its ratio to shared-bottom
with equal weighting in the same round.

    python benchmarks/architecture_cost.py   # writes benchmarks/results/architecture_cost.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from lit_mtl import PLE, MMoESyntheticDataModule, MultiTaskModule, UPGrad, Weighting

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dense_step import StepTimer
from mmoe_reproduction import build

CASES: dict[str, tuple[str, Callable[[], Weighting | None]]] = {
    "shared-bottom, equal": ("shared-bottom", lambda: None),
    "shared-bottom, UPGrad (z)": ("shared-bottom", lambda: UPGrad(target="representation")),
    "MMoE, equal": ("mmoe", lambda: None),
    "MMoE, UPGrad (each z_k)": ("mmoe", lambda: UPGrad(target="representation")),
    "MMoE, UPGrad (shared experts)": ("mmoe", lambda: UPGrad(target="shared")),
    "PLE, equal": ("ple", lambda: None),
    "PLE, UPGrad (each z_k)": ("ple", lambda: UPGrad(target="representation")),
}


def fit_steps(case: str, steps: int) -> StepTimer:
    L.seed_everything(0, verbose=False)
    dm = MMoESyntheticDataModule(
        p=0.5, num_train=128 * steps, num_val=1, num_test=1, batch_size=128
    )
    architecture, weighting = CASES[case]
    if architecture == "ple":
        encoder, heads = (
            PLE(
                100,
                levels=2,
                num_shared_experts=2,
                num_task_experts=1,
                expert_widths=[16],
                tower_widths=[8],
            ),
            None,
        )
    else:
        encoder, heads = build(architecture, 100, 113)
    module = MultiTaskModule(
        encoder,
        dm.task_specs,
        weighting(),
        heads=heads,
        plots=False,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
    )
    timer = StepTimer("cpu")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, dm)
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/architecture_cost.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    seconds: dict[str, list[float]] = {c: [] for c in CASES}
    ratios: dict[str, list[float]] = {c: [] for c in CASES}
    base = "shared-bottom, equal"
    for _ in range(args.rounds):
        this_round = {}
        for case in CASES:
            timer = fit_steps(case, args.warmup + args.steps)
            this_round[case] = statistics.median(timer.times[args.warmup :])
        for case, value in this_round.items():
            seconds[case].append(value)
            ratios[case].append(value / this_round[base])
    lines = ["| model, weighting | ms / step | x shared-bottom, equal |", "|---|---|---|"]
    rows = []
    for case in CASES:
        row = {
            "case": case,
            "ms_per_step": 1e3 * statistics.median(seconds[case]),
            "ratio": statistics.median(ratios[case]),
        }
        rows.append(row)
        lines.append(f"| {case} | {row['ms_per_step']:.2f} | {row['ratio']:.2f} |")
    table = "\n".join(lines)
    print(table)
    command = (
        f"python benchmarks/architecture_cost.py --rounds {args.rounds} "
        f"--steps {args.steps} --warmup {args.warmup}"
    )
    args.out.write_text(
        json.dumps(
            {
                "command": command,
                "torch": torch.__version__,
                "threads": 1,
                "rows": rows,
                "markdown": table,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
