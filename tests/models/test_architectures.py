"""Mixture-of-experts encoders: their formulas, what they declare shared, and every weighting
method on every architecture."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from test_weighting import METHODS

from lit_mtl import (
    CGC,
    PLE,
    CrossStitch,
    MMoE,
    MMoESyntheticDataModule,
    MultiTaskModule,
    OMoE,
    PCGrad,
    UPGrad,
)
from lit_mtl.data.mmoe_synthetic import make_mmoe_synthetic, mmoe_functions
from lit_mtl.models import gate_dropout

from conftest import assert_resumes_identically, fast_trainer, small_data

ARCHITECTURES = {
    "mmoe": lambda d: MMoE(d, num_experts=3, expert_widths=[8]),
    "omoe": lambda d: OMoE(d, num_experts=3, expert_widths=[8]),
    "cgc": lambda d: CGC(d, num_shared_experts=2, num_task_experts=1, expert_widths=[8]),
    "ple": lambda d: PLE(d, levels=2, num_shared_experts=1, num_task_experts=1, expert_widths=[8]),
    "cross_stitch": lambda d: CrossStitch(d, widths=[8, 8]),
}


def test_mmoe_is_a_per_task_softmax_mixture_of_shared_experts() -> None:
    torch.manual_seed(0)
    mmoe = MMoE(5, num_experts=3, expert_widths=[4])
    mmoe.bind_tasks(["a", "b"])
    x = torch.randn(6, 5)
    outputs = mmoe(x)
    experts = [expert(x) for expert in mmoe.experts.experts]
    for k, z in enumerate(outputs):
        g = torch.softmax(mmoe.gates[k].linear(x), dim=-1)
        expected = sum(g[:, e : e + 1] * experts[e] for e in range(3))
        assert torch.allclose(z, expected, atol=1e-6)
        assert torch.allclose(mmoe.last_gate_weights[k], g)
    assert {id(p) for p in mmoe.shared_parameters()} == {id(p) for p in mmoe.experts.parameters()}


def test_ple_levels_gates_and_declared_shared_parameters() -> None:
    torch.manual_seed(0)
    ple = PLE(4, levels=2, num_shared_experts=2, num_task_experts=1, expert_widths=[6])
    ple.bind_tasks(["a", "b", "c"])
    outputs = ple(torch.randn(5, 4))
    assert [tuple(z.shape) for z in outputs] == [(5, 6)] * 3
    assert len(ple.shared_gates) == 1  # none on the last level
    assert all(w.shape == (5, 3) for w in ple.last_gate_weights)  # own 1 + shared 2
    shared = {id(p) for p in ple.shared_parameters()}
    task_only = [*ple.task_experts.parameters(), *ple.task_gates.parameters()]
    assert shared and not shared & {id(p) for p in task_only}
    # a task's loss reaches its own experts and the shared ones, not another task's
    outputs[0].sum().backward()
    assert ple.task_experts[1][1].experts[0][0].weight.grad is None
    assert ple.task_experts[1][0].experts[0][0].weight.grad is not None  # via the shared gate
    cgc = CGC(4, num_shared_experts=1, num_task_experts=0, expert_widths=[3])
    cgc.bind_tasks(["a"])
    assert cgc(torch.zeros(2, 4))[0].shape == (2, 3)


def test_gate_dropout_renormalises_and_keeps_fully_dropped_rows() -> None:
    g = torch.Generator().manual_seed(0)
    weights = torch.softmax(torch.randn(500, 4, generator=g), dim=-1)
    dropped = gate_dropout(weights, 0.5, torch.Generator().manual_seed(1))
    assert torch.allclose(dropped.sum(dim=-1), torch.ones(500))
    zeroed = dropped == 0
    assert 0.3 < zeroed.float().mean() < 0.6
    whole = gate_dropout(weights, 1.0)  # every expert dropped: rows kept as they were
    assert torch.equal(whole, weights)


def test_architectures_need_their_tasks_and_explain_gradnorm_targets() -> None:
    with pytest.raises(RuntimeError, match="MMoE has no tasks yet"):
        MMoE(3)(torch.zeros(2, 3))
    mmoe = MMoE(3)
    mmoe.bind_tasks(["a", "b"])
    with pytest.raises(ValueError, match=r"bound to tasks \['a', 'b'\], not \['a'\]"):
        mmoe.bind_tasks(["a"])
    with pytest.raises(ValueError, match="MMoE has no single last shared layer"):
        mmoe.last_shared_layer()


def test_mmoe_synthetic_correlation_follows_p() -> None:
    functions = mmoe_functions(100, 0.3, 5, torch.Generator().manual_seed(0))
    assert abs(float(functions["u1"] @ functions["u2"])) < 1e-12
    correlations = []
    for p in (1.0, 0.9, 0.5):
        _, y1, y2 = make_mmoe_synthetic(20000, p, torch.Generator().manual_seed(1), functions)
        correlations.append(float(torch.corrcoef(torch.stack([y1, y2]))[0, 1]))
    assert correlations[0] > 0.99 and correlations[0] > correlations[1] > correlations[2]
    with pytest.raises(ValueError, match="p must be in"):
        MMoESyntheticDataModule(p=1.5)


def _data() -> MMoESyntheticDataModule:
    return MMoESyntheticDataModule(
        p=0.9, in_features=12, num_train=64, num_val=16, num_test=16, batch_size=16
    )


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_on_every_architecture(architecture: str, method: str) -> None:
    """Three tasks (two regressions, one 3-class), as the methods' shared property checks."""
    L.seed_everything(0)
    dm = small_data(num_train=64, num_val=16, batch_size=16)
    encoder = ARCHITECTURES[architecture](dm.in_features)
    if method == "gradnorm":  # W = the last shared layer: not one layer in a mixture
        with pytest.raises(ValueError, match=f"{type(encoder).__name__} has no (single last )?sh"):
            MultiTaskModule(encoder, dm.task_specs, METHODS[method](), plots=False)
        return
    module = MultiTaskModule(
        encoder,
        dm.task_specs,
        METHODS[method](),
        plots=False,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
    )
    trainer = fast_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, dm)
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())
    for task in dm.task_names:
        assert torch.isfinite(trainer.callback_metrics[f"train/{task}/weight"])


def test_shared_target_differentiates_the_declared_parameters_only() -> None:
    """On MMoE, target='shared' builds the Gramian from the experts' gradients: equal to the
    Gramian of per-task gradients computed directly."""
    L.seed_everything(0)
    dm = _data()
    dm.setup()
    module = MultiTaskModule(MMoE(12, 3, [8]), dm.task_specs, PCGrad(target="shared"), plots=False)
    engine = module.weighting.engine
    assert {id(p) for p in engine.params} == {id(p) for p in module.encoder.experts.parameters()}
    x, targets = next(iter(dm.train_dataloader()))
    step = module._task_losses(x, targets, {}, train=True)
    from lit_mtl.engines import StepContext

    ctx = StepContext(
        losses=tuple(step.losses),
        present=step.present,
        representation=step.representation,
        task_representations=tuple(step.views) if step.views else None,
    )
    jacobian = engine.jacobian(ctx, [True, True])
    rows = []
    for loss in step.losses:
        grads = torch.autograd.grad(loss, engine.params, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    direct = torch.stack(rows)
    assert torch.allclose(jacobian.gramian().float(), direct @ direct.T, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_ddp_mmoe_and_ple_ranks_stay_identical(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from test_dense import _SavePerRank

    for name in ("mmoe", "ple"):
        L.seed_everything(0)
        dm = _data()
        module = MultiTaskModule(
            ARCHITECTURES[name](dm.in_features),
            dm.task_specs,
            UPGrad(target="representation"),
            plots=False,
        )
        trainer = fast_trainer(
            max_epochs=2, devices=2, strategy="ddp_fork", callbacks=[_SavePerRank(tmp_path)]
        )
        trainer.fit(module, dm)
        (s0, m0), (s1, m1) = (
            torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)
        )
        for key in s0:
            assert torch.equal(s0[key], s1[key]), (name, key)
        assert m0 == m1


@pytest.mark.parametrize("architecture", ["mmoe", "ple"])
def test_resumed_architecture_run_continues_identically(architecture: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from lit_mtl import NashMTL

    assert_resumes_identically(
        tmp_path,
        lambda: small_data(num_train=64, num_val=16, batch_size=16),
        lambda dm: MultiTaskModule(
            ARCHITECTURES[architecture](dm.in_features),
            dm.task_specs,
            NashMTL(update_weights_every=2),
            plots=False,
            optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        ),
    )


def test_cross_stitch_mixes_the_task_networks_with_learned_units() -> None:
    torch.manual_seed(0)
    net = CrossStitch(5, widths=[4, 3], alpha_same=0.8)
    net.bind_tasks(["a", "b"])
    x = torch.randn(6, 5)
    with torch.no_grad():
        net.stitches[1].copy_(torch.tensor([[0.7, 0.3], [0.4, 0.6]]))
    za, zb = net(x)
    first = [net.networks[t][0](x) for t in range(2)]  # layer 1, then the initial unit
    mixed = [0.8 * first[0] + 0.2 * first[1], 0.2 * first[0] + 0.8 * first[1]]
    second = [net.networks[t][1](mixed[t]) for t in range(2)]
    assert torch.allclose(za, 0.7 * second[0] + 0.3 * second[1], atol=1e-6)
    assert torch.allclose(zb, 0.4 * second[0] + 0.6 * second[1], atol=1e-6)
    za.sum().backward()  # through the stitches task a's loss reaches task b's network
    assert net.networks[1][0][0].weight.grad is not None
    assert {id(p) for p in net.shared_parameters()} == {id(p) for p in net.parameters()}


def test_mmoe_synthetic_per_task_datasets_share_functions_not_inputs() -> None:
    dm = MMoESyntheticDataModule(p=0.5, in_features=6, num_train=32, num_val=8, num_test=8)
    per_task = dm.per_task_datasets("train")
    (x1, y1), (x2, y2) = per_task["task1"][0], per_task["task2"][0]
    assert set(y1) == {"task1"} and set(y2) == {"task2"}
    assert not torch.equal(x1, x2)  # each task its own sample
    again = dm.per_task_datasets("train")["task1"]
    assert torch.equal(again.inputs, per_task["task1"].inputs)  # seeded
    assert not torch.equal(
        dm.per_task_datasets("test")["task1"].inputs[:8], per_task["task1"].inputs[:8]
    )
    with pytest.raises(ValueError, match="split must be one of"):
        dm.per_task_datasets("holdout")
