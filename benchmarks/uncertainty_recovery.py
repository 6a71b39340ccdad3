"""Does uncertainty weighting recover the per-task noise? (Kendall et al. 2018)

Three synthetic regression tasks y_i = tanh((B + eps_i) x) + noise_i, noise std 0.1 / 1 / 10,
an MLP able to fit f, uncertainty weighting with s_i = log sigma_i^2. Reports the learned sigma_i
against the true noise and exp(s_i) against the task's final training MSE, for several seeds.

    python benchmarks/uncertainty_recovery.py --seeds 0 1 2
    (writes benchmarks/results/uncertainty_recovery.json)
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import lightning as L
import torch

from lit_mtl import MLPEncoder, MultiTaskModule, SyntheticDataModule, UncertaintyWeighting

NOISE = [0.1, 1.0, 10.0]


def run(seed: int, epochs: int) -> dict:
    L.seed_everything(seed, verbose=False)
    dm = SyntheticDataModule(
        in_features=4,
        regression_scales=[1.0, 1.0, 1.0],
        regression_noise=NOISE,
        num_classification_tasks=0,
        num_train=8192,
        num_val=256,
        num_test=256,
        batch_size=256,
        shared_std=1.0,
        task_std=0.5,
        seed=seed,
    )
    weighting = UncertaintyWeighting(lr=0.1)
    module = MultiTaskModule(
        MLPEncoder(4, [64, 64]),
        dm.task_specs,
        weighting,
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs),
    )
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
    ).fit(module, dm)
    seconds = time.perf_counter() - start
    train = dm.datasets["train"]
    module.eval()
    with torch.no_grad():
        preds = module(train.inputs)
    mse = [((preds[n] - train.targets[n]) ** 2).mean().item() for n in dm.task_names]
    return {
        "seed": seed,
        "true_noise_std": NOISE,
        "learned_sigma": weighting.sigma.tolist(),
        "exp_s": torch.exp(weighting.log_vars.detach()).tolist(),
        "train_mse": mse,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/uncertainty_recovery.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [run(seed, args.epochs) for seed in args.seeds]
    lines = ["| seed | true noise std | learned sigma | exp(s) / train MSE |", "|---|---|---|---|"]
    for r in rows:
        ratio = [e / m for e, m in zip(r["exp_s"], r["train_mse"], strict=True)]
        lines.append(
            f"| {r['seed']} | {', '.join(f'{v:g}' for v in r['true_noise_std'])} | "
            f"{', '.join(f'{v:.3f}' for v in r['learned_sigma'])} | "
            f"{', '.join(f'{v:.3f}' for v in ratio)} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/uncertainty_recovery.py "
                f"--seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs}",
                "runs": rows,
                "markdown": table,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
