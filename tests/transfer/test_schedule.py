"""Unfreezing schedules, discriminative LR, BatchNorm, L2-SP, resume, DDP, drop-in callback."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lit_mtl import MLPEncoder, MultiTaskModule, TransferModule, UnfreezeSchedule
from lit_mtl.transfer import (
    UnfreezeScheduleCallback,
    discriminative_factors,
    l2sp_penalty,
    named_param_groups,
)

from conftest import fast_trainer, small_data

GROUPS = ["block0", "block1", "block2"]


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (UnfreezeSchedule("no_freeze"), [GROUPS] * 4),
        (UnfreezeSchedule("freeze"), [[]] * 4),
        (UnfreezeSchedule("freeze_unfreeze", epoch=2), [[], [], GROUPS, GROUPS]),
        (UnfreezeSchedule("gradual", every=1), [["block2"], ["block1", "block2"], GROUPS, GROUPS]),
        (
            UnfreezeSchedule("gradual", every=2),
            [["block2"], ["block2"], ["block1", "block2"], ["block1", "block2"]],
        ),
        (
            UnfreezeSchedule("milestones", milestones={1: ["block2"], 3: ["block0"]}),
            [[], ["block2"], ["block2"], ["block0", "block2"]],
        ),
    ],
    ids=["no_freeze", "freeze", "freeze_unfreeze", "gradual1", "gradual2", "milestones"],
)
def test_trainable_groups_epoch_by_epoch(schedule: UnfreezeSchedule, expected: list) -> None:
    assert [schedule.trainable(e, GROUPS) for e in range(4)] == expected


def test_schedule_validation() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        UnfreezeSchedule("sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs milestones"):
        UnfreezeSchedule("milestones")
    with pytest.raises(ValueError, match="unknown layer groups"):
        UnfreezeSchedule("milestones", milestones={0: ["fc"]}).trainable(0, GROUPS)


def test_discriminative_factors_ulmfit() -> None:
    f = discriminative_factors(GROUPS, 1 / 2.6)
    assert f == pytest.approx({"block2": 1.0, "block1": 1 / 2.6, "block0": 1 / 2.6**2})


def make_module(schedule: UnfreezeSchedule, **kwargs) -> TransferModule:  # type: ignore[no-untyped-def]
    dm = small_data()
    defaults = dict(optimizer=functools.partial(torch.optim.Adam, lr=1e-2))
    defaults.update(kwargs)
    return TransferModule(
        MLPEncoder(dm.in_features, [16, 16, 16], batch_norm=True),
        dm.task_specs,
        schedule=schedule,
        **defaults,
    )


class Snapshots(L.Callback):
    """Encoder state (parameters and BN buffers) per group at every epoch end."""

    def __init__(self) -> None:
        self.states: list[dict[str, dict[str, torch.Tensor]]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self.states.append(
            {
                name: {k: v.detach().clone() for k, v in mods[0].state_dict().items()}
                for name, mods in pl_module.groups.items()
            }
        )


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["freeze", "freeze_unfreeze", "gradual", "milestones"])
def test_frozen_groups_bit_identical_including_bn_stats(kind: str) -> None:
    schedule = {
        "freeze": UnfreezeSchedule("freeze"),
        "freeze_unfreeze": UnfreezeSchedule("freeze_unfreeze", epoch=2),
        "gradual": UnfreezeSchedule("gradual"),
        "milestones": UnfreezeSchedule("milestones", milestones={1: ["block1"], 2: ["block0"]}),
    }[kind]
    L.seed_everything(0)
    module = make_module(schedule)
    start = {
        n: {k: v.clone() for k, v in m[0].state_dict().items()} for n, m in module.groups.items()
    }
    snaps = Snapshots()
    fast_trainer(max_epochs=4, callbacks=[snaps]).fit(module, small_data())
    history = [start, *snaps.states]
    for epoch in range(4):
        trainable = schedule.trainable(epoch, GROUPS)
        for group in GROUPS:
            unchanged = _equal(history[epoch][group], history[epoch + 1][group])
            assert unchanged == (group not in trainable), (kind, epoch, group)
    # heads always train
    assert module.tasks["reg0"].head.weight.requires_grad


def test_train_bn_updates_running_stats_of_frozen_groups() -> None:
    L.seed_everything(0)
    module = make_module(UnfreezeSchedule("freeze"), train_bn=True)
    bn = module.groups["block0"][0][1]
    before = bn.running_mean.clone()
    weight = module.groups["block0"][0][0].weight.detach().clone()
    fast_trainer(max_epochs=1).fit(module, small_data())
    assert not torch.equal(bn.running_mean, before)
    assert torch.equal(module.groups["block0"][0][0].weight, weight)


def test_effective_lr_is_scheduler_times_group_factor_across_unfreeze() -> None:
    L.seed_everything(0)
    decay = 1 / 2.6
    module = make_module(
        UnfreezeSchedule("gradual"),
        lr_decay=decay,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4),
    )
    seen: list[tuple[int, dict, dict]] = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
            if batch_idx == 0:
                opt = trainer.optimizers[0]
                seen.append(
                    (
                        trainer.current_epoch,
                        {g["name"]: g["lr"] for g in opt.param_groups},
                        pl_module.unfreeze_callback.effective_lrs(
                            opt, trainer.current_epoch, trainer.global_step
                        ),
                    )
                )

    fast_trainer(max_epochs=4, callbacks=[Probe()]).fit(module, small_data())
    factors = {"block2": 1.0, "block1": decay, "block0": decay**2, "heads": 1.0}
    for epoch, scheduled, effective in seen:
        base = 0.1 * (1 + math.cos(math.pi * epoch / 4)) / 2  # cosine, stepped per epoch
        trainable = [*UnfreezeSchedule("gradual").trainable(epoch, GROUPS), "heads"]
        for name, lr in scheduled.items():
            assert lr == pytest.approx(base)  # the scheduler never sees the factors
            expected = base * factors[name] if name in trainable else 0.0
            assert effective[name] == pytest.approx(expected), (epoch, name)


def test_onecycle_runs_across_an_unfreeze() -> None:
    module = make_module(
        UnfreezeSchedule("freeze_unfreeze", epoch=1),
        lr_scheduler=functools.partial(
            torch.optim.lr_scheduler.OneCycleLR, max_lr=0.05, total_steps=16
        ),
    )
    module.lr_scheduler_factory = lambda opt: {  # OneCycle steps per batch
        "scheduler": torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=16),
        "interval": "step",
    }
    original = module.configure_optimizers

    def configure():  # type: ignore[no-untyped-def]
        opt = module.optimizer_factory(module.parameter_groups())
        return {"optimizer": opt, "lr_scheduler": module.lr_scheduler_factory(opt)}

    module.configure_optimizers = configure  # type: ignore[method-assign]
    trainer = fast_trainer(max_epochs=2)
    trainer.fit(module, small_data())
    assert trainer.global_step == 16
    assert original is not None


def test_warmup_after_unfreeze() -> None:
    module = make_module(UnfreezeSchedule("freeze_unfreeze", epoch=1), warmup_steps=4)
    cb = module.unfreeze_callback
    cb._steps_per_epoch = 8
    assert cb.factor("block0", 0, 3) == 0.0
    assert [cb.factor("block0", 1, s) for s in (8, 9, 10, 11, 12)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_resume_mid_schedule_matches_uninterrupted(tmp_path: Path) -> None:
    schedule = UnfreezeSchedule("gradual")

    def run(max_epochs: int, ckpt=None, save=False):  # type: ignore[no-untyped-def]
        L.seed_everything(0)
        module = make_module(schedule, lr_decay=0.5)
        callbacks = [ModelCheckpoint(dirpath=tmp_path, save_last=True)] if save else []
        trainer = fast_trainer(
            max_epochs=max_epochs,
            callbacks=callbacks,
            enable_checkpointing=save,
            default_root_dir=tmp_path,
        )
        trainer.fit(module, small_data(), ckpt_path=ckpt)
        return module, trainer

    full, _ = run(4)
    run(2, save=True)
    resumed, _trainer = run(4, ckpt=tmp_path / "last.ckpt")
    for (key, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    frozen = [p.requires_grad for p in resumed.encoder.parameters()]
    assert all(frozen)  # epoch 3: every group unfrozen, as in the uninterrupted run


def test_l2sp_penalty_values(tmp_path: Path) -> None:
    w, w0, new = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([3.0])
    # alpha/2 * (1 + 1) + beta/2 * 9
    assert l2sp_penalty({"a": (w, w0)}, [new], 0.1, 0.01).item() == pytest.approx(0.1 + 0.045)
    src = MLPEncoder(8, [16, 16, 16], batch_norm=True)
    torch.save(src.state_dict(), tmp_path / "src.pt")
    module = make_module(
        UnfreezeSchedule(), source=str(tmp_path / "src.pt"), l2sp_alpha=0.1, l2sp_beta=0.01
    )
    heads = sum(t.head.weight.pow(2).sum() for t in module.tasks.values())
    assert module.l2sp().item() == pytest.approx(0.005 * heads.item(), rel=1e-5)  # at the source
    assert len(module._anchor_names) == 3  # Linear weights only: no biases, no BatchNorm
    fast_trainer(max_epochs=1).fit(module, small_data())
    assert module.l2sp().item() > 0


def test_transfer_from_a_multitask_checkpoint(tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = small_data()
    source = MultiTaskModule(MLPEncoder(8, [16, 16]), dm.task_specs)
    trainer = fast_trainer(
        max_epochs=1,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)],
    )
    trainer.fit(source, dm)
    from lit_mtl import TaskSpec

    target = TransferModule(
        MLPEncoder(8, [16, 16]),
        [TaskSpec("new", "multiclass", 5)],
        source=str(tmp_path / "last.ckpt"),
        source_prefix="encoder.",
        schedule=UnfreezeSchedule("freeze"),
    )
    assert target.load_report is not None and len(target.load_report.loaded) == 4
    assert torch.equal(target.encoder.blocks[0][0].weight, source.encoder.blocks[0][0].weight)


class UserModule(L.LightningModule):
    """A user's own module with named param groups, using only the schedule callback."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        self.out = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        return nn.functional.mse_loss(self.out(self.body(x)).squeeze(1), y)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(
            [
                {"params": self.body[0].parameters(), "name": "low"},
                {"params": self.body[2].parameters(), "name": "high"},
                {"params": self.out.parameters(), "name": "out"},
            ],
            lr=0.1,
        )


def test_drop_in_callback_in_a_users_module() -> None:
    model = UserModule()
    low = model.body[0].weight.detach().clone()
    callback = UnfreezeScheduleCallback(
        UnfreezeSchedule("freeze_unfreeze", epoch=1),
        {"low": [model.body[0]], "high": [model.body[2]]},
    )
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    fast_trainer(max_epochs=1, callbacks=[callback]).fit(model, loader)
    assert torch.equal(model.body[0].weight, low)
    fast_trainer(max_epochs=2, callbacks=[callback]).fit(model, loader)
    assert not torch.equal(model.body[0].weight, low)


class HelperModule(UserModule):
    """The same module with its groups built by the callback's helper, not by hand."""

    def __init__(self, callback_groups: dict) -> None:
        super().__init__()
        self.callback = UnfreezeScheduleCallback(
            UnfreezeSchedule("freeze_unfreeze", epoch=1),
            {"low": [self.body[0]], "high": [self.body[2]]},
            **callback_groups,
        )

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.callback.param_groups(self), lr=0.1)


def test_drop_in_param_groups_helper() -> None:
    """``callback.param_groups(module)`` names one group per layer group plus ``heads`` (the
    rest); the schedule then freezes and unfreezes as with hand-named groups."""
    model = HelperModule({"lr_decay": 0.5})
    groups = model.callback.param_groups(model, weight_decay=0.1)
    assert [(g["name"], len(g["params"]), g["weight_decay"]) for g in groups] == [
        ("low", 2, 0.1),
        ("high", 2, 0.1),
        ("heads", 2, 0.1),
    ]
    low = model.body[0].weight.detach().clone()
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    fast_trainer(max_epochs=1, callbacks=[model.callback]).fit(model, loader)
    assert torch.equal(model.body[0].weight, low)
    fast_trainer(max_epochs=2, callbacks=[model.callback]).fit(model, loader)
    assert not torch.equal(model.body[0].weight, low)
    with pytest.raises(ValueError, match="in both 'low' and 'again'"):
        named_param_groups(model, {"low": [model.body[0]], "again": [model.body]})
    with pytest.raises(ValueError, match="not one of UserModule's"):
        named_param_groups(UserModule(), {"low": [model.body[0]]})


def test_callback_requires_named_groups() -> None:
    model = UserModule()
    model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.1)  # type: ignore[method-assign]
    callback = UnfreezeScheduleCallback(UnfreezeSchedule("freeze"), {"low": [model.body[0]]})
    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8))
    with pytest.raises(ValueError, match="no param group named"):
        fast_trainer(callbacks=[callback]).fit(model, torch.utils.data.DataLoader(data))


def test_layer_groups_from_regex_patterns() -> None:
    from lit_mtl.transfer import resolve_layer_groups

    enc = MLPEncoder(8, [16, 16, 16], batch_norm=True)
    groups = resolve_layer_groups(enc, {"low": [r"blocks\.0\..*"], "high": [r"blocks\.[12]\..*"]})
    assert list(groups) == ["low", "high"]
    assert len(groups["high"]) == 4  # two Linear + two BatchNorm modules
    with pytest.raises(ValueError, match="in no layer group"):
        resolve_layer_groups(enc, {"low": [r"blocks\.0\..*"]})
    module = make_module(
        UnfreezeSchedule("gradual"),
        layer_groups={"low": [r"blocks\.0\..*"], "high": [r"blocks\.[12]\..*"]},
    )
    assert [g["name"] for g in module.parameter_groups()][:2] == ["low", "high"]


def test_unfreeze_events_and_group_lrs_are_logged() -> None:
    L.seed_everything(0)
    module = make_module(UnfreezeSchedule("gradual"), lr_decay=0.5)
    trainer = fast_trainer(max_epochs=2)
    trainer.fit(module, small_data())
    metrics = trainer.callback_metrics
    assert metrics["transfer/unfrozen_groups"].item() == 2.0  # epoch 1: block1 and block2
    assert metrics["lr/block0"].item() == 0.0
    assert metrics["lr/block1"].item() == pytest.approx(1e-2 * 0.5)
    assert module.unfreeze_callback.events == [(0, ["block2"]), (1, ["block1"])]


@pytest.mark.parametrize("target", ["representation", "last_shared_layer"])
def test_gradient_weighting_with_a_frozen_encoder(target: str) -> None:
    """A linear probe with a gradient method: z-gradients still exist; a frozen parameter target
    is a clear error."""
    from lit_mtl import MGDAUB, GradNorm

    L.seed_everything(0)
    weighting = MGDAUB() if target == "representation" else GradNorm()
    module = make_module(UnfreezeSchedule("freeze"), weighting=weighting)
    before = module.encoder.blocks[0][0].weight.detach().clone()
    if target == "representation":
        fast_trainer(max_epochs=1).fit(module, small_data())
        assert torch.equal(module.encoder.blocks[0][0].weight, before)
        assert torch.isfinite(module.weighting.last_weights).all()
    else:
        with pytest.raises(ValueError, match="every target parameter is frozen"):
            fast_trainer(max_epochs=1).fit(module, small_data())


def test_trainable_state_per_group_is_logged() -> None:
    L.seed_everything(0)
    module = make_module(UnfreezeSchedule("gradual"))
    trainer = fast_trainer(max_epochs=2)
    trainer.fit(module, small_data())
    metrics = trainer.callback_metrics
    assert [metrics[f"transfer/trainable/{g}"].item() for g in GROUPS] == [0.0, 1.0, 1.0]
