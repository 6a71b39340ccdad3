"""What MultiTaskModule logs: names, epoch values against a direct computation, the cadence."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger
from torch.utils.data import DataLoader

from lit_mtl import IGNORE_INDEX, MLPEncoder, MultiTaskModule, MultiTaskTensorDataset, TaskSpec

from conftest import fast_trainer, torchmetrics_reference

SPECS = [
    TaskSpec("reg", "regression", 2),
    TaskSpec("bin", "binary"),
    TaskSpec("cls", "multiclass", 3),
    TaskSpec("multi", "multilabel", 2),
]


def dataset(n: int, seed: int) -> MultiTaskTensorDataset:
    """All four kinds, about a quarter of the labels missing (some batches fully labelled)."""
    g = torch.Generator().manual_seed(seed)
    missing = torch.rand(n, generator=g) < 0.25
    missing[: n // 2] = False  # the first half fully labelled: the fast path runs too
    reg = torch.randn(n, 2, generator=g)
    reg[missing, 1] = float("nan")
    binary = torch.randint(0, 2, (n,), generator=g).float()
    binary[missing] = float("nan")
    cls = torch.where(missing, IGNORE_INDEX, torch.randint(0, 3, (n,), generator=g))
    multi = torch.randint(0, 2, (n, 2), generator=g)
    multi[missing, 0] = IGNORE_INDEX
    targets = {"reg": reg, "bin": binary, "cls": cls, "multi": multi}
    return MultiTaskTensorDataset(torch.randn(n, 6, generator=g), targets)


def module() -> MultiTaskModule:
    torch.manual_seed(0)
    return MultiTaskModule(
        MLPEncoder(6, [8]),
        SPECS,
        optimizer=functools.partial(torch.optim.SGD, lr=0.0),  # fixed parameters
        plots=False,
        ranking_metrics=True,  # val and test: bin/auroc, bin/auprc
    )


def reference(  # type: ignore[no-untyped-def]
    model: MultiTaskModule,
    data: MultiTaskTensorDataset,
    batches: list[list[int]],
    ranking: bool = True,
):
    """Per-task losses (batch-size-weighted mean of the batch losses) and metrics (torchmetrics
    over every labelled entry; ``ranking``: scikit-learn's ROC-AUC and average precision of the
    binary task) computed directly."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    metrics = {
        "bin": torchmetrics_reference("binary", 1),
        "cls": torchmetrics_reference("multiclass", 3),
        "multi": torchmetrics_reference("multilabel", 2),
    }
    loss_sums = dict.fromkeys(model.task_names, 0.0)
    squared, absolute, count = 0.0, 0.0, 0
    scores, labels = [], []
    with torch.no_grad():
        for idx in batches:
            x, targets = data.inputs[idx], {k: v[idx] for k, v in data.targets.items()}
            out = model(x)
            for name, task in model.tasks.items():
                loss_sums[name] += task.loss(out[name], targets[name]).item() * len(idx)
            labelled = ~torch.isnan(targets["reg"])
            error = (out["reg"] - targets["reg"])[labelled]
            squared += (error**2).sum().item()
            absolute += error.abs().sum().item()
            count += int(labelled.sum())
            binary = targets["bin"].nan_to_num(IGNORE_INDEX).long()
            scores.append(out["bin"][binary != IGNORE_INDEX])
            labels.append(binary[binary != IGNORE_INDEX])
            for name, target in (
                ("bin", binary),
                ("cls", targets["cls"]),
                ("multi", targets["multi"]),
            ):
                for metric in metrics[name].values():
                    metric.update(out[name] * 1000, target)  # logits outside [0, 1], same sign
    total = sum(len(idx) for idx in batches)
    values = {f"{name}/loss": s / total for name, s in loss_sums.items()}
    values |= {"reg/mse": squared / count, "reg/mae": absolute / count}
    for name, group in metrics.items():
        values |= {f"{name}/{k}": m.compute().item() for k, m in group.items()}
    if ranking:
        y, s = torch.cat(labels).numpy(), torch.cat(scores).numpy()
        values |= {"bin/auroc": roc_auc_score(y, s), "bin/auprc": average_precision_score(y, s)}
    return values


class Recorder(Logger):
    """Keeps every ``log_metrics`` call in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))


def test_epoch_values_and_cadence_match_a_direct_computation() -> None:
    train, val = dataset(22, seed=1), dataset(20, seed=2)
    model = module()
    logged_steps: list[tuple[int, str]] = []  # (batch, key) of every per-task self.log

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
            self.batch = batch_idx

    spy = Spy()
    original_log = model.log

    def log(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        if (
            name.startswith("train/")
            and name.endswith(("/loss", "/weight"))
            and name.count("/") == 2
        ):
            logged_steps.append((spy.batch, name))
        original_log(name, value, *args, **kwargs)

    model.log = log  # type: ignore[method-assign]
    recorder = Recorder()
    trainer = fast_trainer(logger=recorder, log_every_n_steps=2, callbacks=[spy])
    trainer.fit(model, DataLoader(train, batch_size=8), DataLoader(val, batch_size=6))

    # cadence: batches 0, 1, 2 (sizes 8, 8, 6); Lightning writes step 1; the last batch (2)
    # refreshes callback_metrics; batch 0 logs nothing per task
    per_task = {f"train/{t}/{q}" for t in model.task_names for q in ("loss", "weight")}
    assert sorted({b for b, _ in logged_steps}) == [1, 2]
    assert {k for _, k in logged_steps} == per_task
    written = [step for step, row in recorder.rows if "train/reg/loss" in row]
    assert written == [step for step, row in recorder.rows if "train/loss" in row] == [1]
    # the values written at step 1 are batch 1's losses; weights are 1 (equal weighting)
    row = next(row for step, row in recorder.rows if step == 1)
    batch1 = reference(model, train, [list(range(8, 16))], ranking=False)
    for name in model.task_names:
        assert row[f"train/{name}/loss"] == pytest.approx(batch1[f"{name}/loss"], rel=1e-5)
        assert row[f"train/{name}/weight"] == 1.0
    last = reference(model, train, [list(range(16, 22))], ranking=False)
    assert trainer.callback_metrics["train/cls/loss"].item() == pytest.approx(
        last["cls/loss"], rel=1e-5
    )

    # epoch values: the validation set in batches of 6, 6, 6, 2; the training set's metrics
    expected_val = reference(model, val, [list(range(i, min(i + 6, 20))) for i in range(0, 20, 6)])
    expected_train = reference(model, train, [list(range(0, 22))], ranking=False)  # not ranked
    assert not any(
        k.endswith(("/auroc", "/auprc")) for k in trainer.callback_metrics if "train" in k
    )
    epoch_row = next(row for _, row in reversed(recorder.rows) if "val/reg/mse" in row)
    for key, value in expected_val.items():
        assert epoch_row[f"val/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    train_row = next(row for _, row in reversed(recorder.rows) if "train/reg/mse" in row)
    for key, value in expected_train.items():
        if not key.endswith("/loss"):  # the training losses are per-step values
            assert train_row[f"train/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert not any(k.startswith("train/") and k.endswith("/loss_epoch") for k in train_row)

    test = trainer.test(model, DataLoader(val, batch_size=20), verbose=False)[0]
    for key, value in reference(model, val, [list(range(20))]).items():
        assert test[f"test/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-7), key


class SaveValidationMetrics(L.Callback):
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        path = self.directory / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(values))


@pytest.mark.slow
def test_ddp_epoch_values_cover_both_ranks_and_agree(tmp_path: Path) -> None:
    train, val = dataset(16, seed=1), dataset(20, seed=2)
    model = module()
    trainer = fast_trainer(
        devices=2,
        strategy="ddp_spawn",
        num_sanity_val_steps=0,
        callbacks=[SaveValidationMetrics(tmp_path)],
    )
    trainer.fit(model, DataLoader(train, batch_size=4), DataLoader(val, batch_size=4))
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0 == rank1
    # the distributed sampler gives rank r the samples r, r + 2, ...; batches of 4, 4, 2 each
    batches = []
    for rank in (0, 1):
        indices = list(range(rank, 20, 2))
        batches += [indices[i : i + 4] for i in range(0, 10, 4)]
    for key, value in reference(module(), val, batches).items():
        assert rank0[f"val/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_epoch_state_is_not_shared_with_processes_it_was_sent_to() -> None:
    """ddp_spawn sends the module to each rank through torch's multiprocessing pickler, which
    puts CPU tensors in memory shared by all processes: each rank must sum into its own state
    (found as a flaky DDP metric: one rank read the other's sums mid-epoch)."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # registers the shared-memory tensor reductions

    from lit_mtl.diagnostics import GateUsage
    from lit_mtl.metrics.epoch import EpochTaskMetrics

    spec = SPECS[0]
    metric = EpochTaskMetrics([spec], [3])
    received = pickle.loads(ForkingPickler.dumps(metric))
    received.update(torch.tensor([2.0]), torch.tensor([4.0, 1.0, 1.0]), 4)
    assert metric.totals.sum().item() == 0.0 and metric.loss_sums.sum().item() == 0.0
    gates = GateUsage(["a"])
    sent = pickle.loads(ForkingPickler.dumps(gates))
    sent.update([torch.full((3, 2), 0.5)])
    assert gates.samples.item() == 0.0 and gates.entropy_sums.sum().item() == 0.0


def test_ranking_metrics_leave_out_a_task_without_both_classes_and_say_so_once() -> None:
    train, val = dataset(16, seed=1), dataset(12, seed=2)
    val.targets["bin"] = torch.zeros(12)  # no positive in the validation split
    trainer = fast_trainer(max_epochs=2, num_sanity_val_steps=0)
    with pytest.warns(UserWarning, match=r"val: no ROC-AUC .* task\(s\) \['bin'\]") as said:
        trainer.fit(module(), DataLoader(train, batch_size=8), DataLoader(val, batch_size=6))
    assert sum("no ROC-AUC" in str(w.message) for w in said) == 1  # two epochs, said once
    assert "val/bin/auroc" not in trainer.callback_metrics
    assert "val/bin/acc" in trainer.callback_metrics
    with pytest.raises(ValueError, match="ranking_metrics=True scores binary tasks"):
        MultiTaskModule(MLPEncoder(6, [8]), [TaskSpec("reg")], ranking_metrics=True)
