"""MultiTaskModule: training, logging, errors, missing labels, AMP, accumulation, checkpoints."""

from __future__ import annotations

import functools
import math
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lit_mtl import (
    IGNORE_INDEX,
    MLPEncoder,
    MultiTaskModule,
    TaskSpec,
    UncertaintyWeighting,
    UPGrad,
    unpack_task_batch,
)

from conftest import fast_trainer, small_data, small_module


def one_batch(dm, **changes):  # type: ignore[no-untyped-def]
    dm.setup()
    x, targets = next(iter(dm.train_dataloader()))
    targets = dict(targets)
    targets.update(changes)
    return x, targets


def test_logs_loss_per_task_metrics_and_weights() -> None:
    torch.manual_seed(0)
    dm = small_data()
    module = small_module(dm, UncertaintyWeighting())
    trainer = fast_trainer(max_epochs=1)
    trainer.fit(module, dm)
    keys = set(trainer.logged_metrics)
    assert "train/loss" in keys
    for name in dm.task_names:
        assert {f"train/{name}/loss", f"train/{name}/weight", f"val/{name}/loss"} <= keys
    assert {"val/reg0/mse", "val/reg0/mae", "val/cls0/acc", "train/cls0/f1"} <= keys
    trainer.test(module, dm)
    assert "test/cls0/acc" in trainer.logged_metrics


def test_predict_returns_outputs_by_task() -> None:
    dm = small_data()
    module = small_module(dm)
    out = fast_trainer().predict(module, dm)
    assert set(out[0]) == {"reg0", "reg1", "cls0"}
    assert out[0]["cls0"].shape == (32, 3) and out[0]["reg0"].shape == (32,)


def test_unknown_task_in_batch_is_an_error() -> None:
    dm = small_data()
    module = small_module(dm)
    x, targets = one_batch(dm, depth=torch.zeros(32))
    with pytest.raises(KeyError, match=r"unknown task\(s\) \['depth'\]"):
        module.training_step((x, targets), 0)


def test_task_left_out_of_batch_is_an_error() -> None:
    dm = small_data()
    module = small_module(dm)
    x, targets = one_batch(dm)
    del targets["reg1"]
    with pytest.raises(KeyError, match=r"no targets for task\(s\) \['reg1'\]"):
        module.training_step((x, targets), 0)


def test_wrong_target_dtype_is_an_error() -> None:
    dm = small_data()
    module = small_module(dm)
    x, targets = one_batch(dm, cls0=torch.zeros(32))
    with pytest.raises(TypeError, match="task 'cls0'"):
        module.training_step((x, targets), 0)


def test_bad_batch_structure_is_an_error() -> None:
    with pytest.raises(ValueError, match="a batch must be"):
        unpack_task_batch(torch.zeros(3))
    with pytest.raises(ValueError, match="needs the keys 'inputs' and 'targets'"):
        unpack_task_batch({"x": torch.zeros(3)})


def test_the_old_unpack_batch_still_works_with_a_deprecation_warning() -> None:
    import lit_mtl

    batch = (torch.zeros(2, 3), {"t": torch.zeros(2)})
    with pytest.warns(DeprecationWarning, match="unpack_task_batch"):
        x, targets, masks = lit_mtl.unpack_batch(batch)
    assert x.shape == (2, 3) and set(targets) == {"t"} and masks == {}


def test_encoder_without_out_features_is_an_error() -> None:
    with pytest.raises(ValueError, match="out_features"):
        MultiTaskModule(torch.nn.ReLU(), [TaskSpec("a")])


class _NaNAfter(torch.utils.data.Dataset):
    """Regression data whose task 'b' target becomes inf from sample index `start` on."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        b = torch.tensor(float("inf")) if i >= self.start else torch.tensor(1.0)
        return torch.ones(4) * i / 64, {"a": torch.tensor(0.5), "b": b}


def _nan_module(**kwargs) -> MultiTaskModule:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return MultiTaskModule(MLPEncoder(4, [8]), [TaskSpec("a"), TaskSpec("b")], **kwargs)


def test_nonfinite_loss_raises_naming_task_and_step() -> None:
    module = _nan_module()
    loader = DataLoader(_NaNAfter(start=32), batch_size=16)
    with pytest.raises(FloatingPointError, match=r"task\(s\) \{'b': inf\} at global step 2"):
        fast_trainer().fit(module, loader)


def test_nonfinite_loss_skip_option_skips_the_step() -> None:
    module = _nan_module(nonfinite_loss="skip")
    loader = DataLoader(_NaNAfter(start=32), batch_size=16)
    snapshots = {}

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            snapshots[batch_idx] = [p.detach().clone() for p in pl_module.parameters()]

    fast_trainer(callbacks=[Snapshot()]).fit(module, loader)
    # batches 2 and 3 are skipped: no parameter changes after batch 1
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[1], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[3], strict=True))
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_missing_labels_train_and_metrics_use_labelled_samples_only() -> None:
    torch.manual_seed(0)
    dm = small_data(missing_fraction={"reg1": 0.5, "cls0": 0.5})
    dm.setup()
    t = dm.datasets["train"].targets
    assert 0.35 < torch.isnan(t["reg1"]).float().mean() < 0.65
    assert 0.35 < (t["cls0"] == IGNORE_INDEX).float().mean() < 0.65
    module = small_module(dm, UncertaintyWeighting())
    trainer = fast_trainer(max_epochs=2)
    trainer.fit(module, dm)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    # the epoch metrics count only labelled entries: evaluate on the training set
    loader = DataLoader(dm.datasets["train"], batch_size=7)  # batches of mixed labelling
    metrics = trainer.validate(module, loader, verbose=False)[0]
    module.eval()
    with torch.no_grad():
        out = module(dm.datasets["train"].inputs)
    labelled = ~torch.isnan(t["reg1"])
    expected = ((out["reg1"][labelled] - t["reg1"][labelled]) ** 2).mean()
    assert metrics["val/reg1/mse"] == pytest.approx(expected.item(), rel=1e-5)
    kept = t["cls0"] != IGNORE_INDEX
    accuracy = (out["cls0"][kept].argmax(1) == t["cls0"][kept]).float().mean()
    assert metrics["val/cls0/acc"] == pytest.approx(accuracy.item(), rel=1e-6)


def test_task_without_any_label_in_batch_contributes_zero_not_nan() -> None:
    dm = small_data()
    module = small_module(dm, UncertaintyWeighting())
    x, targets = one_batch(dm, reg1=torch.full((32,), float("nan")))
    loss = module.training_step((x, targets), 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert module.weighting.log_vars.grad[1].item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


def test_explicit_masks_in_batch() -> None:
    dm = small_data()
    module = small_module(dm)
    x, targets = one_batch(dm)
    masks = {"reg0": torch.zeros(32, dtype=torch.bool)}
    module.training_step((x, targets, masks), 0)
    assert module.weighting.last_weights[0].item() == 0.0
    module.training_step({"inputs": x, "targets": targets, "masks": masks}, 0)


def test_bf16_mixed_precision_trains() -> None:
    torch.manual_seed(0)
    dm = small_data()
    module = small_module(dm, UncertaintyWeighting())
    before = module.weighting.log_vars.detach().clone()
    trainer = fast_trainer(max_epochs=1, precision="bf16-mixed")
    trainer.fit(module, dm)
    assert trainer.global_step > 0
    assert not torch.equal(before, module.weighting.log_vars.detach())
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_gradient_accumulation_and_clipping() -> None:
    torch.manual_seed(0)
    dm = small_data()  # 256 samples / 32 = 8 batches
    module = small_module(dm, UncertaintyWeighting())
    calls = []
    module.weighting.update = lambda: calls.append(1)  # type: ignore[method-assign]
    trainer = fast_trainer(max_epochs=1, accumulate_grad_batches=4, gradient_clip_val=0.5)
    trainer.fit(module, dm)
    assert trainer.global_step == 2 and len(calls) == 2  # once per optimizer step


def test_lr_scheduler_is_stepped() -> None:
    dm = small_data()
    module = small_module(
        dm,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
    )
    trainer = fast_trainer(max_epochs=2)
    trainer.fit(module, dm)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.25)


def test_checkpoint_restores_weighting_state_and_resume_continues(tmp_path) -> None:  # type: ignore[no-untyped-def]
    L.seed_everything(0)
    dm = small_data()
    module = small_module(dm, UncertaintyWeighting())
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = fast_trainer(
        max_epochs=2, enable_checkpointing=True, callbacks=[ckpt], default_root_dir=tmp_path
    )
    trainer.fit(module, dm)
    path = tmp_path / "last.ckpt"
    state = module.weighting.log_vars.detach().clone()
    restored = MultiTaskModule.load_from_checkpoint(
        path, encoder=MLPEncoder(dm.in_features, [16, 16]), weighting=UncertaintyWeighting()
    )
    assert torch.equal(restored.weighting.log_vars.detach(), state)
    assert restored.task_names == dm.task_names  # tasks come from the hparams

    # resume: the continued run starts from the saved weighting and optimizer state
    resumed = small_module(dm, UncertaintyWeighting())
    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            seen["log_vars"] = pl_module.weighting.log_vars.detach().clone()
            seen["step"] = trainer.global_step

    trainer2 = fast_trainer(max_epochs=3, callbacks=[Probe()], default_root_dir=tmp_path)
    trainer2.fit(resumed, dm, ckpt_path=path)
    assert torch.equal(seen["log_vars"], state) and seen["step"] == trainer.global_step
    assert trainer2.global_step == trainer.global_step * 3 // 2


def test_resumed_run_matches_uninterrupted_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def run(max_epochs: int, ckpt_path=None, callbacks=()):  # type: ignore[no-untyped-def]
        L.seed_everything(0)
        dm = small_data()
        module = small_module(dm, UncertaintyWeighting())
        trainer = fast_trainer(
            max_epochs=max_epochs,
            callbacks=list(callbacks),
            enable_checkpointing=bool(callbacks),
            default_root_dir=tmp_path,
        )
        trainer.fit(module, dm, ckpt_path=ckpt_path)
        return module

    full = run(3)
    run(1, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    resumed = run(3, ckpt_path=tmp_path / "last.ckpt")
    # the sampler's order is a function of (seed, epoch), so the runs are bit-identical
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_missing_label_fraction_validation() -> None:
    with pytest.raises(KeyError, match="unknown task 'depth'"):
        small_data(missing_fraction={"depth": 0.5})


def test_log_c_reference() -> None:
    dm = small_data()
    module = small_module(dm)
    assert module.tasks["cls0"].baseline_loss() == pytest.approx(math.log(3))


def test_select_tasks_trains_a_single_task_on_multitask_batches(tmp_path) -> None:  # type: ignore[no-untyped-def]
    dm = small_data()
    module = small_module(dm, select_tasks=["reg1"])
    assert module.task_names == ["reg1"]
    trainer = fast_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=2)
    trainer.fit(module, dm)
    assert "val/reg1/mse" in trainer.callback_metrics
    assert not any(k.startswith("val/reg0") for k in trainer.callback_metrics)
    assert [t["name"] for t in module.hparams["tasks"]] == ["reg0", "reg1", "cls0"]
    with pytest.raises(ValueError, match="unknown: \\['nope'\\]"):
        small_module(dm, select_tasks=["nope"])
    with pytest.raises(ValueError, match="select_tasks"):
        small_module(dm, select_tasks=[])


def _conditional_module(**overrides: Any) -> MultiTaskModule:
    torch.manual_seed(0)
    specs = [
        TaskSpec("click", "binary"),
        TaskSpec("convert", "binary", parent="click"),
        *overrides.pop("extra", []),
    ]
    return MultiTaskModule(MLPEncoder(5, [8]), specs, plots=False, **overrides)


def test_a_conditional_loss_and_its_gradients_are_those_of_the_parent_positive_subset() -> None:
    """Hand-built batch: clicks on rows 0, 2, 3 (row 5's click label is missing); the child's
    loss and its encoder gradients equal the plain BCE on those rows alone."""
    module = _conditional_module()
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    click = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, -100.0])
    convert = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])  # rows 1, 4, 5 must not count
    step = module._task_losses(x, {"click": click, "convert": convert}, {}, train=False)
    rows = torch.tensor([0, 2, 3])
    subset_logits = module(x[rows])["convert"]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(subset_logits, convert[rows])
    assert step.losses[1].item() == pytest.approx(expected.item(), rel=1e-6)
    params = list(module.encoder.parameters())
    got = torch.autograd.grad(step.losses[1], params)
    want = torch.autograd.grad(expected, params)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-7)
    none = module._task_losses(x, {"click": torch.zeros(6), "convert": convert}, {}, train=False)
    assert none.losses[1].item() == 0.0 and not bool(none.present[1])


def test_a_derived_task_predicts_the_product_of_its_factors() -> None:
    module = _conditional_module(
        extra=[TaskSpec("click_convert", "binary", product_of=("click", "convert"))]
    )
    assert module.tasks["click_convert"].head is None  # no parameters of its own
    preds = module(torch.randn(4, 5))
    p = torch.sigmoid(preds["click_convert"])
    assert torch.allclose(p, torch.sigmoid(preds["click"]) * torch.sigmoid(preds["convert"]))
    with pytest.raises(ValueError, match=r"refers to task 'views'.*not one of the module"):
        _conditional_module(extra=[TaskSpec("cv", "binary", product_of=("click", "views"))])
    with pytest.raises(ValueError, match="parents and product factors are binary tasks"):
        MultiTaskModule(
            MLPEncoder(5, [8]),
            [TaskSpec("r"), TaskSpec("c", "binary", parent="r")],
            plots=False,
        )
    with pytest.raises(ValueError, match=r"derived task\(s\) \['click_convert'\] read other"):
        _conditional_module(
            extra=[TaskSpec("click_convert", "binary", product_of=("click", "convert"))],
            weighting=UPGrad(target="representation"),
        )


def test_esmm_recovers_the_conditional_conversion_rates() -> None:
    """ESMM on impressions with known rates (4 groups, 10 000 impressions, the CVR head never
    trained on its own labels): its sigmoid per group is within 0.03 of the data's conversion
    rate among clicks (what the entire-space likelihood is maximised by) and within 0.07 of
    the true p(convert | click)."""
    from lit_mtl import ClickConversionDataModule

    L.seed_everything(0)
    dm = ClickConversionDataModule(
        num_groups=4, num_train=10000, num_val=500, num_test=500, batch_size=250
    )
    module = MultiTaskModule(
        MLPEncoder(4, [16]),
        dm.task_specs,
        optimizer=functools.partial(torch.optim.Adam, lr=0.02),
        plots=False,
    )
    fast_trainer(max_epochs=4, limit_val_batches=0).fit(module, dm)
    module.eval()
    with torch.no_grad():
        learnt = torch.sigmoid(module(torch.eye(4))["conversion"])
    train = dm.datasets["train"]
    group = train.inputs.argmax(dim=1)
    click, both = train.targets["click"], train.targets["click_conversion"]
    empirical = torch.stack([both[group == g].sum() / click[group == g].sum() for g in range(4)])
    assert (train.targets["conversion"] == -100).all()  # no direct CVR supervision
    assert (learnt - empirical).abs().max() < 0.03
    assert (learnt - dm.true_rates()["cvr"]).abs().max() < 0.07


def test_sample_weights_and_parent_conditions_reach_the_step_from_the_batch() -> None:
    module = _conditional_module()
    x = torch.randn(4, 5)
    targets = {"click": torch.tensor([1.0, 1.0, 0.0, 1.0]), "convert": torch.ones(4)}
    weights = {"click": torch.tensor([1.0, 0.0, 0.0, 0.0])}
    parsed = module._parse_batch({"inputs": x, "targets": targets, "weights": weights})
    step = module._batch_losses(parsed, train=False)
    alone = module._task_losses(x[:1], {k: v[:1] for k, v in targets.items()}, {}, train=False)
    assert step.losses[0].item() == pytest.approx(alone.losses[0].item(), rel=1e-6)
    four = module._parse_batch((x, targets, {}, weights))
    assert module._batch_losses(four, train=False).losses[0].item() == pytest.approx(
        step.losses[0].item()
    )


def test_a_conditional_task_alone_keeps_its_parent_condition() -> None:
    """select_tasks=["convert"] (a single-task baseline): the parent's labels still come with
    the batch and still select the rows; a product task without its factors is refused."""
    module = _conditional_module(select_tasks=["convert"])
    x = torch.randn(4, 5)
    targets = {"click": torch.tensor([1.0, 0.0, 0.0, 1.0]), "convert": torch.ones(4)}
    step = module._batch_losses(module._parse_batch((x, targets)), train=False)
    logits = module(x[[0, 3]])["convert"]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones(2))
    assert step.losses[0].item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"without its factor\(s\) \['convert'\]"):
        _conditional_module(
            extra=[TaskSpec("click_convert", "binary", product_of=("click", "convert"))],
            select_tasks=["click", "click_convert"],
        )


def test_weight_decay_on_matrices_only() -> None:
    """Biases (and the uncertainty weighting's log variances) get weight_decay 0; the weight
    matrices keep the optimizer's; the groups' other settings are kept."""
    import functools

    from lit_mtl import UncertaintyWeighting

    module = MultiTaskModule(
        MLPEncoder(4, [8, 8]),
        [TaskSpec("a"), TaskSpec("b", "binary")],
        UncertaintyWeighting(),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3, weight_decay=0.1),
        decay_matrices_only=True,
        plots=False,
    )
    optimizer = module.configure_optimizers()
    decays = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert decays["encoder"] == decays["heads"] == 0.1
    assert decays["encoder/no_decay"] == decays["heads/no_decay"] == 0.0
    assert all(
        p.dim() >= 2 for g in optimizer.param_groups if g["weight_decay"] for p in g["params"]
    )
    count = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert count == sum(p.numel() for p in module.parameters())
