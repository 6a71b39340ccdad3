"""GradNorm's toy example (Chen et al. 2018, Sec. 4), reproduced with lit_mtl.

f_i(x) = sigma_i * tanh((B + eps_i) x), x ~ U(-1, 1)^250 normalised to unit length, outputs R^100,
B ~ N(0, 10^2), eps_i ~ N(0, 3.5^2); trunk: 4 fully connected ReLU layers of 100 units, one affine
head per task, squared loss. T = 2 with sigma = (1, 100) and T = 10 with sigma spread over two
orders of magnitude (log-spaced in [1, 100], seeded order), GradNorm alpha = 0.12 as in the paper.

Reports, per configuration and method (equal weighting, uncertainty weighting, GradNorm), the
final task weights and the task-normalised test loss sum_i L_i^test(t) / L_i^test(0); for GradNorm
also w_0 / w_1 (T = 2), the Spearman correlation between final weights and sigma (T = 10) and
the largest deviation of sum_i w_i from T over all steps.

    python benchmarks/gradnorm_toy.py            # writes benchmarks/results/gradnorm_toy.json
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import lightning as L
import torch

from lit_mtl import (
    EqualWeighting,
    GradNorm,
    MLPEncoder,
    MultiTaskModule,
    SyntheticDataModule,
    UncertaintyWeighting,
    Weighting,
)

METHODS = {
    "equal": EqualWeighting,
    "uncertainty": UncertaintyWeighting,
    "gradnorm": functools.partial(GradNorm, alpha=0.12),
}


def toy_sigmas(num_tasks: int, seed: int) -> list[float]:
    if num_tasks == 2:
        return [1.0, 100.0]
    # two orders of magnitude, log-spaced, in a seeded random task order
    gen = torch.Generator().manual_seed(1000 + seed)
    order = torch.randperm(num_tasks, generator=gen)
    return torch.logspace(0, 2, num_tasks)[order].tolist()


class WeightTrace(L.Callback):
    """Task weights after every optimizer step."""

    def __init__(self) -> None:
        self.weights: list[list[float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        w = pl_module.weighting
        self.weights.append((w.w if isinstance(w, GradNorm) else w.last_weights).tolist())


def spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def test_losses(module: MultiTaskModule, dm: SyntheticDataModule) -> list[float]:
    data = dm.datasets["test"]
    module.eval()
    with torch.no_grad():
        preds = module(data.inputs)
    module.train()
    return [((preds[n] - data.targets[n]) ** 2).mean().item() for n in dm.task_names]


def run(method: str, num_tasks: int, seed: int, epochs: int, num_train: int, lr: float) -> dict:
    sigmas = toy_sigmas(num_tasks, seed)
    L.seed_everything(seed, verbose=False)
    dm = SyntheticDataModule(
        in_features=250,
        out_features=100,
        regression_scales=sigmas,
        regression_noise=[0.0] * num_tasks,
        num_classification_tasks=0,
        shared_std=10.0,
        task_std=3.5,
        num_train=num_train,
        num_val=64,
        num_test=1000,
        batch_size=256,
        seed=seed,
    )
    dm.setup()
    weighting: Weighting = METHODS[method]()
    module = MultiTaskModule(
        MLPEncoder(250, [100, 100, 100, 100]),
        dm.task_specs,
        weighting,
        optimizer=functools.partial(torch.optim.Adam, lr=lr),
    )
    initial = test_losses(module, dm)
    trace = WeightTrace()
    start = time.perf_counter()
    L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[trace],
    ).fit(module, dm)
    seconds = time.perf_counter() - start
    final = test_losses(module, dm)
    weights = trace.weights[-1]
    out = {
        "method": method,
        "num_tasks": num_tasks,
        "seed": seed,
        "sigmas": sigmas,
        "final_weights": weights,
        "normalized_test_loss": sum(f / i for f, i in zip(final, initial, strict=True)),
        "steps": len(trace.weights),
        "seconds": seconds,
        "weights_trace": trace.weights[:: max(1, len(trace.weights) // 200)],
    }
    if method == "gradnorm":
        out["max_abs_sum_deviation"] = max(abs(sum(w) - num_tasks) for w in trace.weights)
        out["spearman_weights_vs_sigma"] = spearman(weights, sigmas)
        if num_tasks == 2:
            out["w0_over_w1"] = weights[0] / weights[1]
    return out


def markdown(rows: list[dict]) -> str:
    lines = [
        "| T | method | task-normalised test loss | final weights | GradNorm check |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        w = r["final_weights"]
        shown = (
            ", ".join(f"{v:.3g}" for v in w)
            if len(w) <= 2
            else (f"min {min(w):.3g}, max {max(w):.3g}")
        )
        check = ""
        if r["method"] == "gradnorm":
            check = f"max abs(sum w - T) = {r['max_abs_sum_deviation']:.1e}"
            if r["num_tasks"] == 2:
                check = f"w0/w1 = {r['w0_over_w1']:.1f}; " + check
            else:
                check = f"Spearman(w, sigma) = {r['spearman_weights_vs_sigma']:.2f}; " + check
        lines.append(
            f"| {r['num_tasks']} | {r['method']} | {r['normalized_test_loss']:.3f} | {shown} | "
            f"{check} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--num-train", type=int, default=51200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gradnorm_toy.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [
        run(m, t, args.seed, args.epochs, args.num_train, args.lr)
        for t in args.tasks
        for m in METHODS
    ]
    table = markdown(rows)
    print(table)
    command = (
        f"python benchmarks/gradnorm_toy.py --epochs {args.epochs} --num-train {args.num_train} "
        f"--lr {args.lr} --seed {args.seed} --tasks {' '.join(map(str, args.tasks))}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command, "runs": rows, "markdown": table}, indent=1))


if __name__ == "__main__":
    main()
