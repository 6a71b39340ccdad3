"""MoleculeNet's classification table rerun with lit_mtl (Tox21, ToxCast, SIDER, ClinTox): the 2017
multitask network (MT-NN), per-task logistic regression and, as an outside reference, per-task
random forests, on the index, random and scaffold splits, against DeepChem's published mean
ROC-AUC (README of deepchem/deepchem at 2af0ba37, "Performances": train and valid per dataset,
model and split; Tox21 valid: MT-NN 0.768 / 0.754 / 0.725, logistic regression 0.705 / 0.735 /
0.676).

Both models follow DeepChem's 2017 presets (``deepchem/molnet/preset_hyper_parameters.py``) and
code (``models/tensorflow_models/fcnet.py``, ``lr.py``): ECFP4 (1024 bits), the balancing weights
of the whole file, each task's weighted cross-entropy summed over the batch and divided by the
batch size, summed over tasks, plus ``penalty * ||W||^2 / 2`` over the weight matrices (here
Adam's ``weight_decay`` on the matrices only, the same update), batch 50, 10 epochs, Adam.

* MT-NN (preset ``tf``): 1024 -> 1500 ReLU, weights truncated-normal(0.02), biases 1.0, dropout
  0.5, lr 1e-3, penalty 0.1, a head per task (``configs/tox21_mtnn.yaml``);
* logistic regression (preset ``logreg``): one logit per task on the fingerprint, lr 5e-3,
  penalty 0.1; the tasks share nothing (a MultiTaskModule whose encoder is the identity: T
  independent models trained side by side);
* random forest (preset ``rf``, ``run_benchmark_models.py``): per task, scikit-learn's
  ``RandomForestClassifier(n_estimators=500, class_weight="balanced")`` fitted on the task's
  labelled training entries with the balancing weights as sample weights (DeepChem's
  ``SingletaskToMultitask`` + ``SklearnModel``). scikit-learn's forest of today is not 2017's,
  so its row is a reference, not a reproduction target.

Train is the mean ROC-AUC on the training split with the trained model in eval mode (DeepChem's
"Train score"), valid and test the same on those splits.

Differences from DeepChem: one logit per task where MT-NN had a 2-class softmax; PyTorch's
initialisation of the heads (DeepChem: truncated-normal 0.01 / 0.02, bias 0 / 1.0); RDKit 2026's
parser leaves out 8 SMILES it cannot read; our random split is numpy's ``default_rng(seed)``
permutation (a different split for each seed); the scaffold and index splits are DeepChem's.
Valid and test are the mean over tasks of each task's ROC-AUC over its labelled entries.

    python benchmarks/moleculenet_reproduction.py --dataset tox21 --root ../shared/data/moleculenet
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
from lit_mtl.functional import roc_auc
from lit_mtl.models import Encoder

#: DeepChem's README at 2af0ba37, "Performances", mean ROC-AUC (train, valid) by dataset, model
#: and split (no random forest row for ToxCast)
PUBLISHED = {
    "tox21": {
        "mt-nn": {"index": (0.854, 0.768), "random": (0.849, 0.754), "scaffold": (0.863, 0.725)},
        "logreg": {"index": (0.902, 0.705), "random": (0.900, 0.735), "scaffold": (0.901, 0.676)},
        "rf": {"index": (0.999, 0.736), "random": (0.999, 0.763), "scaffold": (0.999, 0.665)},
    },
    "toxcast": {
        "mt-nn": {"index": (0.830, 0.684), "random": (0.836, 0.676), "scaffold": (0.835, 0.612)},
        "logreg": {"index": (0.724, 0.577), "random": (0.719, 0.538), "scaffold": (0.717, 0.511)},
    },
    "sider": {
        "mt-nn": {"index": (0.781, 0.630), "random": (0.782, 0.662), "scaffold": (0.771, 0.555)},
        "logreg": {"index": (0.932, 0.622), "random": (0.931, 0.639), "scaffold": (0.926, 0.594)},
        "rf": {"index": (1.000, 0.669), "random": (1.000, 0.682), "scaffold": (1.000, 0.611)},
    },
    "clintox": {
        "mt-nn": {"index": (0.929, 0.832), "random": (0.946, 0.793), "scaffold": (0.923, 0.825)},
        "logreg": {"index": (0.969, 0.683), "random": (0.968, 0.734), "scaffold": (0.962, 0.687)},
        "rf": {"index": (0.995, 0.763), "random": (0.996, 0.730), "scaffold": (0.994, 0.664)},
    },
}
MODELS = ("mt-nn", "st-nn", "logreg", "logreg-dc", "rf")
#: the published row each model is compared with
PUBLISHED_ROW: dict[str, str | None] = {
    "mt-nn": "mt-nn",
    "st-nn": None,  # not in the published table
    "logreg": "logreg",
    "logreg-dc": "logreg",
    "rf": "rf",
}
SPLITS = ("index", "random", "scaffold")


class Fingerprint(Encoder):
    """The identity on the fingerprint: each task's head is a logistic regression."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.out_features = int(in_features)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def build(
    model: str, dm: MoleculeNetDataModule, select_tasks: list[str] | None = None
) -> MultiTaskModule:
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
        select_tasks=select_tasks,
    )


def mean_auc(metrics: dict, stage: str) -> tuple[float, int]:
    values = [
        float(v) for k, v in metrics.items() if k.startswith(f"{stage}/") and k.endswith("/auroc")
    ]
    return statistics.fmean(values), len(values)


def split_arrays(dm: MoleculeNetDataModule, split: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """(fingerprints, labels with NaN where missing, balancing weights) of one split."""
    dataset = dm.datasets[split]
    return dataset.x, dataset.labels, dataset.weights  # type: ignore[union-attr]


def mean_split_auc(scores: Tensor, labels: Tensor) -> float:
    """MoleculeNet's number: the mean over tasks of each task's ROC-AUC over its labelled
    entries (tasks without both classes in the split left out)."""
    values = []
    for j in range(labels.shape[1]):
        known = ~torch.isnan(labels[:, j])
        y = labels[known, j]
        if 0 < int(y.sum()) < int(y.numel()):
            values.append(roc_auc(scores[known, j].double(), y.double()))
    return statistics.fmean(values)


@torch.no_grad()
def train_auc(module: MultiTaskModule, dm: MoleculeNetDataModule) -> float:
    x, labels, _ = split_arrays(dm, "train")
    module.eval()
    preds = module(x)
    scores = torch.stack([preds[name].reshape(-1) for name in dm.task_names], dim=1)
    return mean_split_auc(scores, labels)


def run_forest(split: str, seed: int, args: argparse.Namespace) -> dict:
    from sklearn.ensemble import RandomForestClassifier

    dm = make_datamodule(split, seed, args)
    dm.setup()
    arrays = {s: split_arrays(dm, s) for s in ("train", "val", "test")}
    x_train, y_train, w_train = arrays["train"]
    scores = {s: torch.full_like(arrays[s][1], float("nan")) for s in arrays}
    start = time.perf_counter()
    for j in range(y_train.shape[1]):
        known = ~torch.isnan(y_train[:, j])
        forest = RandomForestClassifier(
            n_estimators=500, class_weight="balanced", n_jobs=2, random_state=seed
        )
        weights = None if w_train is None else w_train[known, j].numpy()
        forest.fit(x_train[known].numpy(), y_train[known, j].numpy(), sample_weight=weights)
        positive = list(forest.classes_).index(1.0) if 1.0 in forest.classes_ else None
        for s, (x, _, _) in arrays.items():
            if positive is not None:
                scores[s][:, j] = torch.from_numpy(forest.predict_proba(x.numpy())[:, positive])
    seconds = time.perf_counter() - start
    auc = {s: mean_split_auc(scores[s], arrays[s][1]) for s in arrays}
    return {"model": "rf", "split": split, "seed": seed, "train": auc["train"],
            "valid": auc["val"], "test": auc["test"], "seconds": seconds}  # fmt: skip


def deepchem_logreg_cost(ce: Tensor, weights: Tensor, batch_size: int = 50) -> Tensor:
    """The batch cost of ``lr.py``'s ``add_training_cost`` for (B, T) cross-entropies and example
    weights: per task, ``reduce_sum(multiply(ce (B, 1), w (B,))) / batch_size``, whose (B, B)
    broadcast sums to ``sum_i ce_i * sum_j w_j``; summed over tasks."""
    return (ce.sum(dim=0) * weights.sum(dim=0)).sum() / batch_size


def run_logreg_as_deepchem(split: str, seed: int, args: argparse.Namespace) -> dict:
    """DeepChem's ``TensorflowLogisticRegression`` cost as its 2017 code computes it (``lr.py``
    at 2af0ba37): ``cost`` multiplies the (B, 1) cross-entropy of a task by its (B,) example
    weights, which broadcasts to (B, B), so the batch's cost of task t is
    ``sum_i CE_it * sum_j w_jt / batch_size``: every example (an unlabelled one too, whose label
    is 0 in DeepChem's arrays) weighted by the batch's total weight instead of its own. Plus
    ``0.1 * ||W||^2 / 2``, weights truncated-normal(0.02), biases 1.0, Adam lr 5e-3, batch 50,
    10 epochs. A plain PyTorch loop: this is DeepChem's cost, not one lit_mtl offers."""
    generator = torch.Generator().manual_seed(seed)
    dm = make_datamodule(split, seed, args)
    dm.setup()
    arrays = {s: split_arrays(dm, s) for s in ("train", "val", "test")}
    x, labels, weights = arrays["train"]
    assert weights is not None  # the balancing weights (0 where a label is missing)
    y = torch.nan_to_num(labels, nan=0.0)
    features, tasks = x.shape[1], labels.shape[1]
    w = torch.nn.init.trunc_normal_(torch.empty(features, tasks), std=0.02, a=-0.04, b=0.04)
    w.requires_grad_()
    b = torch.ones(tasks, requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=5e-3)
    start = time.perf_counter()
    for _ in range(10):
        order = torch.randperm(x.shape[0], generator=generator)
        for batch in order.split(50):
            logits = x[batch] @ w + b
            ce = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, y[batch], reduction="none"
            )
            cost = deepchem_logreg_cost(ce, weights[batch])
            loss = cost + 0.1 * (w**2).sum() / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        auc = {s: mean_split_auc(arrays[s][0] @ w + b, arrays[s][1]) for s in arrays}
    return {"model": "logreg-dc", "split": split, "seed": seed, "train": auc["train"],
            "valid": auc["val"], "test": auc["test"], "seconds": seconds}  # fmt: skip


def make_datamodule(split: str, seed: int, args: argparse.Namespace) -> MoleculeNetDataModule:
    return MoleculeNetDataModule(
        args.dataset,
        root=args.root,
        split=split,
        split_seed=seed,
        invalid_smiles="skip",
        batch_size=50,
        seed=seed,
        cache_dir=args.cache_dir,
    )


def fit(module: MultiTaskModule, dm: MoleculeNetDataModule) -> tuple[dict, dict, float]:
    """Train 10 epochs; (the last epoch's validation metrics, the test metrics, seconds)."""
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
    valid = dict(trainer.callback_metrics)
    return valid, trainer.test(module, dm, verbose=False)[0], seconds


def run_single_task_networks(split: str, seed: int, args: argparse.Namespace) -> dict:
    """One network of the multitask network's shape per task (``select_tasks=[task]``: the same
    preset, one head): the control a shared hidden layer is measured against."""
    dm = make_datamodule(split, seed, args)
    dm.setup()
    x, labels, _ = split_arrays(dm, "train")
    train_scores = torch.full_like(labels, float("nan"))
    valid, test, seconds = [], [], 0.0
    for j, name in enumerate(dm.task_names):
        L.seed_everything(seed, verbose=False)
        module = build("mt-nn", dm, select_tasks=[name])
        val_metrics, test_metrics, took = fit(module, dm)
        seconds += took
        valid += [float(v) for k, v in val_metrics.items() if k == f"val/{name}/auroc"]
        test += [float(v) for k, v in test_metrics.items() if k == f"test/{name}/auroc"]
        module.eval()
        with torch.no_grad():
            train_scores[:, j] = module(x)[name].reshape(-1)
    return {"model": "st-nn", "split": split, "seed": seed,
            "train": mean_split_auc(train_scores, labels), "valid": statistics.fmean(valid),
            "test": statistics.fmean(test), "tasks_valid": len(valid), "tasks_test": len(test),
            "seconds": seconds}  # fmt: skip


def run(model: str, split: str, seed: int, args: argparse.Namespace) -> dict:
    if model == "rf":
        return run_forest(split, seed, args)
    if model == "logreg-dc":
        return run_logreg_as_deepchem(split, seed, args)
    if model == "st-nn":
        return run_single_task_networks(split, seed, args)
    L.seed_everything(seed, verbose=False)
    dm = make_datamodule(split, seed, args)
    module = build(model, dm)
    val_metrics, test_metrics, seconds = fit(module, dm)
    valid, n_valid = mean_auc(val_metrics, "val")
    test, n_test = mean_auc(test_metrics, "test")
    return {"model": model, "split": split, "seed": seed, "train": train_auc(module, dm),
            "valid": valid, "test": test, "tasks_valid": n_valid, "tasks_test": n_test,
            "seconds": seconds}  # fmt: skip


def markdown(dataset: str, rows: list[dict]) -> str:
    lines = [
        "| model | split | seeds | train ROC-AUC | DeepChem train | valid ROC-AUC, mean ± std "
        "| DeepChem valid | difference | test ROC-AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    published = PUBLISHED[dataset]
    for model in MODELS:
        for split in SPLITS:
            runs = [r for r in rows if r["model"] == model and r["split"] == split]
            if not runs:
                continue
            train = statistics.fmean(r["train"] for r in runs)
            valid = [r["valid"] for r in runs]
            test = [r["test"] for r in runs]
            spread = statistics.stdev(valid) if len(valid) > 1 else 0.0
            test_spread = statistics.stdev(test) if len(test) > 1 else 0.0
            row = PUBLISHED_ROW[model]
            theirs = published.get(row, {}).get(split) if row else None
            their_train = f"{theirs[0]:.3f}" if theirs else "-"
            their_valid = f"{theirs[1]:.3f}" if theirs else "-"
            difference = f"{statistics.fmean(valid) - theirs[1]:+.3f}" if theirs else "-"
            lines.append(
                f"| {model} | {split} | {len(runs)} | {train:.3f} | {their_train} | "
                f"{statistics.fmean(valid):.3f} ± {spread:.3f} | {their_valid} | {difference} | "
                f"{statistics.fmean(test):.3f} ± {test_spread:.3f} |"
            )
    seeds = sorted({r["seed"] for r in rows})
    lines.append("")
    lines.append(
        f"{dataset}: seeds {', '.join(map(str, seeds))} (a row's count in its seeds column); "
        "mean over tasks of each task's ROC-AUC on its labelled entries; st-nn: one network of "
        "mt-nn's shape per task."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/moleculenet")
    parser.add_argument("--dataset", default="tox21", choices=sorted(PUBLISHED))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--models", nargs="+", default=["mt-nn", "logreg"], choices=MODELS)
    parser.add_argument("--cache-dir", default=None, help="fingerprint cache (default ~/.cache)")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: results/moleculenet_<dataset>.json"
    )
    parser.add_argument(
        "--add",
        action="store_true",
        help="keep the stored JSON's rows of the other models (and its command) and add these",
    )
    args = parser.parse_args()
    if args.out is None:
        args.out = Path(f"benchmarks/results/moleculenet_{args.dataset}.json")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    torch.set_num_threads(2)
    rows, commands = [], []
    if args.add and args.out.exists():
        stored = json.loads(args.out.read_text())
        rows = [r for r in stored["rows"] if r["model"] not in args.models]
        commands = stored["command"].split(" && ")
    for model in args.models:
        for split in args.splits:
            for seed in args.seeds:
                rows.append(run(model, split, seed, args))
                print(rows[-1], file=sys.stderr, flush=True)
    table = markdown(args.dataset, rows)
    print(table)
    commands.append(
        f"python benchmarks/moleculenet_reproduction.py --dataset {args.dataset} "
        f"--seeds {' '.join(map(str, args.seeds))} --splits {' '.join(args.splits)} "
        f"--models {' '.join(args.models)}" + (" --add" if args.add else "")
    )
    command = " && ".join(commands)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"command": command, "torch": torch.__version__, "rows": rows, "markdown": table},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
