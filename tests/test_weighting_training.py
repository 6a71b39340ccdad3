"""Weightings inside MultiTaskModule training: resume, accumulation, missing labels."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from test_weighting import METHODS

from lit_mtl import DBMTL, DWA, FAMO, MGDAUB, RLW, CAGrad, GradNorm, NashMTL, PCGrad

from conftest import assert_resumes_identically, fast_trainer, small_data, small_module

STATEFUL = {
    "gradnorm": GradNorm,
    "dwa": DWA,
    "famo": FAMO,
    "pcgrad": PCGrad,
    "rlw": RLW,
    "nash_mtl": lambda: NashMTL(update_weights_every=2),
    "db_mtl": DBMTL,
}


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_resumed_run_continues_identically(name: str, tmp_path: Path) -> None:
    assert_resumes_identically(tmp_path, small_data, lambda dm: small_module(dm, STATEFUL[name]()))


def test_gradnorm_and_famo_update_once_per_optimizer_step() -> None:
    for factory in (GradNorm, FAMO):
        L.seed_everything(0)
        dm = small_data()  # 8 batches per epoch
        module = small_module(dm, factory())
        state = (
            module.weighting.w
            if isinstance(module.weighting, GradNorm)
            else (module.weighting.logits)
        )
        changes = []

        class Watch(L.Callback):
            def __init__(self, state: torch.Tensor, changes: list) -> None:
                self.state, self.changes = state, changes

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
                self.before = self.state.clone()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
                self.changes.append(not torch.equal(self.before, self.state))

        trainer = fast_trainer(
            max_epochs=1,
            accumulate_grad_batches=4,
            gradient_clip_val=1.0,
            callbacks=[Watch(state, changes)],
        )
        trainer.fit(module, dm)
        assert trainer.global_step == 2
        assert changes == [False, False, False, True] * 2, factory


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_with_missing_labels(name: str) -> None:
    L.seed_everything(0)
    # 90% of reg1 missing: with batches of 8 some batches have no reg1 label at all
    dm = small_data(missing_fraction={"reg1": 0.9, "cls0": 0.5}, batch_size=8)
    module = small_module(dm, METHODS[name]())
    weights_seen = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            weights_seen.append(pl_module.weighting.last_weights.clone())

    fast_trainer(max_epochs=1, callbacks=[Watch()]).fit(module, dm)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert all(torch.isfinite(w).all() for w in weights_seen)
    assert any(w[1].item() == 0.0 for w in weights_seen)  # a batch without reg1 labels


def test_gradient_methods_on_named_and_all_shared_targets() -> None:
    for weighting in (
        PCGrad(target="shared"),
        CAGrad(target="blocks.0"),
        GradNorm(target="blocks.1.0.weight"),
        MGDAUB(),
    ):
        L.seed_everything(0)
        dm = small_data()
        module = small_module(dm, weighting)
        fast_trainer(max_epochs=1).fit(module, dm)
        assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.parametrize("factory", [MGDAUB, PCGrad, GradNorm, CAGrad], ids=lambda f: f.__name__)
def test_fused_backward_equals_backward_of_weighted_losses(factory) -> None:  # type: ignore[no-untyped-def]
    """The module's single-pass path (head grads taken with the z grads) gives exactly the
    gradients of sum_i c_i L_i, and the returned value is sum_i c_i L_i."""
    L.seed_everything(0)
    dm = small_data(missing_fraction={"reg1": 0.5})
    module = small_module(dm, factory())
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    loss = module.training_step(batch, 0)
    loss.backward()
    fused = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    c = module.weighting.last_weights.clone()
    module.zero_grad()
    x, targets = batch
    losses = module._task_losses(x, targets, {}, train=False).losses
    reference = (c * torch.stack(losses)).sum()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    reference.backward()
    for name, p in module.named_parameters():
        if name in fused:
            assert torch.allclose(fused[name], p.grad, rtol=1e-4, atol=1e-6), name


class _LinearOut(torch.nn.Module):
    """An encoder whose output is the last Linear's output itself (no activation after it)."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(in_features, 16), torch.nn.Tanh())
        self.last = torch.nn.Linear(16, 12)
        self.out_features = 12

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.body(x))


#: encoder kind -> the autograd nodes between W's output and z (None: a general vector-Jacobian
#: product, here through BatchNorm)
PULL_BACK_CHAINS = {
    "mlp_relu_after_W": ("ReluBackward0",),
    "gelu_dropout": ("MulBackward0", "GeluBackward0"),  # dropout on the CPU: a mask product
    "linear_output": (),
    "batchnorm": None,
}


@pytest.mark.parametrize("encoder_kind", list(PULL_BACK_CHAINS))
@pytest.mark.parametrize("accumulate", [1, 2])
def test_gradnorm_single_backward_path_equals_two_pass_path(
    encoder_kind: str, accumulate: int
) -> None:
    """GradNorm reads grad_W L_i off the ordinary backward (hooks); the weights, L(0), Adam
    moments and the model must match the two-pass computation exactly."""
    from lit_mtl import MLPEncoder

    def run(fast: bool) -> tuple[dict, dict]:
        L.seed_everything(0)
        dm = small_data(missing_fraction={"reg1": 0.5})
        if encoder_kind == "linear_output":
            encoder: torch.nn.Module = _LinearOut(dm.in_features)
        elif encoder_kind == "gelu_dropout":
            encoder = MLPEncoder(dm.in_features, [16, 16], activation="gelu", dropout=0.2)
        else:
            encoder = MLPEncoder(dm.in_features, [16, 16], batch_norm=encoder_kind == "batchnorm")
        weighting = GradNorm(alpha=1.5, fast=fast)
        # SGD: Adam would blow the round-off gradient of a Linear bias right before BatchNorm
        # (BN removes the mean) up to full-size steps that differ between summation orders
        module = small_module(
            dm, weighting, encoder=encoder, optimizer=lambda p: torch.optim.SGD(p, lr=0.05)
        )
        calls = []
        original = weighting.combine

        def combine(ctx):  # type: ignore[no-untyped-def]
            loss = original(ctx)
            calls.append((weighting.engine.last_path, weighting.engine.last_chain))
            return loss

        weighting.combine = combine  # type: ignore[method-assign]
        fast_trainer(max_epochs=2, accumulate_grad_batches=accumulate).fit(module, dm)
        expected = (
            ("single backward", PULL_BACK_CHAINS[encoder_kind]) if fast else ("two pass", None)
        )
        assert calls and all(call == expected for call in calls)
        state = {k: v.clone() for k, v in weighting.state_dict().items()}
        return state, {k: v.clone() for k, v in module.state_dict().items()}

    fast_state, fast_model = run(True)
    slow_state, slow_model = run(False)
    assert not torch.equal(fast_state["w"], torch.ones_like(fast_state["w"]))
    for key in ("w", "initial_losses", "exp_avg", "exp_avg_sq", "adam_step"):
        torch.testing.assert_close(fast_state[key], slow_state[key], rtol=1e-4, atol=1e-6)
    for key, value in fast_model.items():
        torch.testing.assert_close(value, slow_model[key], rtol=1e-4, atol=1e-6, msg=key)
