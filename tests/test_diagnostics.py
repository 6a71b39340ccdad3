"""Task-gradient conflicts and expert use: values against direct computations, and the heatmaps
of a CLI run in the log dir and in TensorBoard."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lit_mtl import MMoE, MultiTaskModule, UPGrad
from lit_mtl.cli import build_cli
from lit_mtl.diagnostics import GateUsage, conflict_share, gradient_cosines, pair_names
from lit_mtl.engines import StepContext

from conftest import small_data

ROOT = Path(__file__).resolve().parents[1]


def _direct_cosines(grads: list[torch.Tensor]) -> torch.Tensor:
    rows = torch.stack(grads).double()
    unit = rows / rows.norm(dim=1, keepdim=True)
    return unit @ unit.T


def _batch(dm):  # type: ignore[no-untyped-def]
    dm.setup()
    return next(iter(dm.train_dataloader()))


def test_loss_based_method_cosines_are_those_of_the_shared_parameter_gradients() -> None:
    L.seed_everything(0)
    dm = small_data(num_train=64, batch_size=32)
    module = MultiTaskModule(
        MMoE(dm.in_features, 3, [8]), dm.task_specs, plots=False, gradient_conflicts_every=1
    )
    x, targets = _batch(dm)
    step = module._task_losses(x, targets, {}, train=True)
    module._measure_conflicts(step.losses)
    _, cosines = module.last_gradient_cosines
    params = module.shared_parameters()  # the experts only: the gates are task-specific
    assert {id(p) for p in params} == {id(p) for p in module.encoder.experts.parameters()}
    grads = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
        for loss in step.losses
    ]
    assert torch.allclose(cosines.double(), _direct_cosines(grads), atol=1e-5)


def test_gramian_method_cosines_are_those_of_its_own_target() -> None:
    """UPGrad on each task's own representation: the cosines of dL_i/dz_i (flattened)."""
    L.seed_everything(0)
    dm = small_data(num_train=64, batch_size=32)
    module = MultiTaskModule(
        MMoE(dm.in_features, 3, [8]), dm.task_specs, UPGrad(target="representation"), plots=False
    )
    x, targets = _batch(dm)
    step = module._task_losses(x, targets, {}, train=True)
    ctx = StepContext(
        losses=tuple(step.losses), present=step.present, task_representations=tuple(step.views)
    )
    module.weighting(ctx)
    module._measure_conflicts(step.losses)
    _, cosines = module.last_gradient_cosines
    grads = [
        torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1)
        for loss, z in zip(step.losses, step.views, strict=True)
    ]
    assert torch.allclose(cosines.double(), _direct_cosines(grads), atol=1e-5)


def test_cosine_and_share_functions() -> None:
    gramian = torch.tensor([[1.0, 0.5, -0.5], [0.5, 1.0, 0.0], [-0.5, 0.0, 0.0]])
    cos = gradient_cosines(gramian)  # task 3 has a zero gradient: its cosines are 0
    assert cos[0, 1] == pytest.approx(0.5) and cos[0, 2] == 0 and cos[2, 2] == 0
    assert conflict_share(
        torch.tensor([[1.0, -0.2, 0.3], [-0.2, 1.0, -0.1], [0.3, -0.1, 1.0]])
    ) == pytest.approx(2 / 3)
    assert pair_names(["a", "b", "c"]) == ["a~b", "a~c", "b~c"]


def test_gate_usage_means_and_entropy_by_hand() -> None:
    usage = GateUsage(["a", "b"])
    usage.update([torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([[0.5, 0.5], [0.5, 0.5]])])
    usage.update([torch.tensor([[0.0, 1.0], [0.5, 0.5]]), torch.tensor([[0.5, 0.5], [0.5, 0.5]])])
    out = usage.compute()
    weights, entropy = out["a"]
    assert weights.tolist() == pytest.approx([0.5, 0.5])
    assert float(entropy) == pytest.approx(torch.log(torch.tensor(2.0)).item() / 2)  # 2 of 4
    assert float(out["b"][1]) == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_cli_run_draws_expert_use_and_conflicts(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    cli = build_cli(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "mmoe.yaml"),
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=6",
            "--trainer.limit_val_batches=1",
            "--trainer.log_every_n_steps=2",
            "--model.gradient_conflicts_every=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    log_dir = Path(cli.trainer.logger.log_dir)
    for name in ("expert_use.png", "gradient_conflict.png", "task_weights.png"):
        assert (log_dir / name).exists(), name
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"plots/expert_use", "plots/gradient_conflict"} <= set(tags["images"])
    expected = {
        "train/grad_cosine/task1~task2",
        "train/grad_conflict_share",
        "train/task1/gate/expert0",
        "train/task2/gate/entropy",
    }
    assert expected <= set(tags["scalars"]), expected - set(tags["scalars"])
    plots = cli.model._training_plots
    assert plots.conflict_steps == [0, 2, 4, 6, 8, 10]
    assert len(plots.expert_use) == 2 and sum(plots.expert_use[0]) == pytest.approx(1.0)


def test_gate_usage_before_any_update_is_empty() -> None:
    assert GateUsage(["a", "b"]).compute() == {}
