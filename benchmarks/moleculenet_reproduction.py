"""MoleculeNet's Tox21 table rerun with lit_mtl: the 2017 multitask network (MT-NN) and per-task
logistic regression on the index, random and scaffold splits, against DeepChem's published mean
ROC-AUC (README of deepchem/deepchem at 2af0ba37, "Performances"; valid: MT-NN 0.768 / 0.754 /
0.725, logistic regression 0.705 / 0.735 / 0.676).

Both models follow DeepChem's 2017 presets (``deepchem/molnet/preset_hyper_parameters.py``) and
code (``models/tensorflow_models/fcnet.py``, ``lr.py``): ECFP4 (1024 bits), the balancing weights
of the whole file, each task's weighted cross-entropy summed over the batch and divided by the
batch size, summed over tasks, plus ``penalty * ||W||^2 / 2`` over the weight matrices (here
Adam's ``weight_decay`` on the matrices only, the same update), batch 50, 10 epochs, Adam.

* MT-NN (preset ``tf``): 1024 -> 1500 ReLU, weights truncated-normal(0.02), biases 1.0, dropout
  0.5, lr 1e-3, penalty 0.1, a head per task (``configs/tox21_mtnn.yaml``);
* logistic regression (preset ``logreg``): one logit per task on the fingerprint, lr 5e-3,
  penalty 0.1; the tasks share nothing (a MultiTaskModule whose encoder is the identity: T
  independent models trained side by side).

Differences from DeepChem: one logit per task where MT-NN had a 2-class softmax; PyTorch's
initialisation of the heads (DeepChem: truncated-normal 0.01 / 0.02, bias 0 / 1.0); RDKit 2026's
parser leaves out 8 SMILES it cannot read; our random split is numpy's ``default_rng(seed)``
permutation (a different split for each seed); the scaffold and index splits are DeepChem's.
Valid and test are the mean over tasks of each task's ROC-AUC over its labelled entries.

    python benchmarks/moleculenet_reproduction.py --root ../shared/data/moleculenet
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
from torch import Tensor

from lit_mtl import MLPEncoder, MultiTaskModule
from lit_mtl.data.molecules import MoleculeNetDataModule
from lit_mtl.models import Encoder

#: DeepChem's README at 2af0ba37, Tox21, mean ROC-AUC (train, valid) by split
PUBLISHED = {
    "mt-nn": {"index": (0.854, 0.768), "random": (0.849, 0.754), "scaffold": (0.863, 0.725)},
    "logreg": {"index": (0.902, 0.705), "random": (0.900, 0.735), "scaffold": (0.901, 0.676)},
}
SPLITS = ("index", "random", "scaffold")


class Fingerprint(Encoder):
    """The identity on the fingerprint: each task's head is a logistic regression."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.out_features = int(in_features)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def build(model: str, dm: MoleculeNetDataModule) -> MultiTaskModule:
    if model == "mt-nn":
        encoder: Encoder = MLPEncoder(
            1024, [1500], dropout=0.5, weight_init_std=0.02, bias_init=1.0
        )
        lr = 1e-3
    else:
        encoder, lr = Fingerprint(1024), 5e-3
    return MultiTaskModule(
        encoder,
        dm.task_specs,
        optimizer=functools.partial(torch.optim.Adam, lr=lr, weight_decay=0.1),
        decay_matrices_only=True,
        weighted_loss_denominator="batch",
        ranking_metrics=True,
        plots=False,
    )


def mean_auc(metrics: dict, stage: str) -> tuple[float, int]:
    values = [
        float(v) for k, v in metrics.items() if k.startswith(f"{stage}/") and k.endswith("/auroc")
    ]
    return statistics.fmean(values), len(values)


def run(model: str, split: str, seed: int, args: argparse.Namespace) -> dict:
    L.seed_everything(seed, verbose=False)
    dm = MoleculeNetDataModule(
        args.dataset,
        root=args.root,
        split=split,
        split_seed=seed,
        invalid_smiles="skip",
        batch_size=50,
        seed=seed,
        cache_dir=args.cache_dir,
    )
    module = build(model, dm)
    trainer = L.Trainer(
        max_epochs=10,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(module, dm)
    seconds = time.perf_counter() - start
    valid, n_valid = mean_auc(trainer.callback_metrics, "val")
    test, n_test = mean_auc(trainer.test(module, dm, verbose=False)[0], "test")
    return {"model": model, "split": split, "seed": seed, "valid": valid, "test": test,
            "tasks_valid": n_valid, "tasks_test": n_test, "seconds": seconds}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | split | valid ROC-AUC, mean ± std | DeepChem valid | difference "
        "| test ROC-AUC |",
        "|---|---|---|---|---|---|",
    ]
    for model in PUBLISHED:
        for split in SPLITS:
            runs = [r for r in rows if r["model"] == model and r["split"] == split]
            if not runs:
                continue
            valid = [r["valid"] for r in runs]
            test = [r["test"] for r in runs]
            spread = statistics.stdev(valid) if len(valid) > 1 else 0.0
            test_spread = statistics.stdev(test) if len(test) > 1 else 0.0
            published = PUBLISHED[model][split][1]
            lines.append(
                f"| {model} | {split} | {statistics.fmean(valid):.3f} ± {spread:.3f} | "
                f"{published:.3f} | {statistics.fmean(valid) - published:+.3f} | "
                f"{statistics.fmean(test):.3f} ± {test_spread:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/moleculenet")
    parser.add_argument("--dataset", default="tox21")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--models", nargs="+", default=list(PUBLISHED), choices=list(PUBLISHED))
    parser.add_argument("--cache-dir", default=None, help="fingerprint cache (default ~/.cache)")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/moleculenet_reproduction.json")
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    torch.set_num_threads(2)
    rows = []
    for model in args.models:
        for split in args.splits:
            for seed in args.seeds:
                rows.append(run(model, split, seed, args))
                print(rows[-1], file=sys.stderr, flush=True)
    table = markdown(rows)
    print(table)
    command = (
        f"python benchmarks/moleculenet_reproduction.py --dataset {args.dataset} "
        f"--seeds {' '.join(map(str, args.seeds))} --splits {' '.join(args.splits)} "
        f"--models {' '.join(args.models)}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"command": command, "torch": torch.__version__, "rows": rows, "markdown": table},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
