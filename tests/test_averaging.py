"""EMA / SWA on Lightning's WeightAveraging: the model is averaged, the weighting's state is not;
validation and the checkpoint see the average; frozen groups keep their source values; resume."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_mtl import EMA, SWA, GradNorm, MLPEncoder
from lit_mtl.transfer import TransferModule, UnfreezeSchedule

from conftest import assert_resumes_identically, fast_trainer, small_data, small_module

WEIGHT = "encoder.blocks.0.0.weight"


class Record(L.Callback):
    """The live weights after every optimizer step, and what validation ran with."""

    def __init__(self) -> None:
        self.after_step: list[dict[str, torch.Tensor]] = []
        self.validated: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.after_step.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    def on_validation_epoch_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self.validated.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_ema_is_the_exponential_average_and_leaves_the_weighting_live(tmp_path: Path) -> None:
    """Hand computation over the recorded steps: avg = w_1, then 0.9 avg + 0.1 w_k. Validation
    and the end of training see the average; GradNorm's task weights stay live (in the module
    and in the checkpoint's state_dict)."""
    L.seed_everything(0)
    dm = small_data(num_train=64, batch_size=16)
    module = small_module(dm, GradNorm())
    record = Record()
    trainer = fast_trainer(
        max_epochs=2,
        callbacks=[EMA(decay=0.9), record, ModelCheckpoint(dirpath=tmp_path, save_last=True)],
        enable_checkpointing=True,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, dm)
    expected = record.after_step[0][WEIGHT]
    for state in record.after_step[1:]:
        expected = 0.9 * expected + 0.1 * state[WEIGHT]
    assert torch.allclose(module.state_dict()[WEIGHT], expected, atol=1e-6)
    after_epoch0 = record.after_step[0][WEIGHT]
    for state in record.after_step[1:4]:
        after_epoch0 = 0.9 * after_epoch0 + 0.1 * state[WEIGHT]
    assert torch.allclose(record.validated[0][WEIGHT], after_epoch0, atol=1e-6)
    live_w = record.after_step[-1]["weighting.w"]
    assert torch.equal(module.weighting.w, live_w)
    assert not torch.equal(live_w, record.after_step[0]["weighting.w"])  # it did move
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert torch.equal(saved["state_dict"]["weighting.w"], live_w)
    assert torch.allclose(saved["state_dict"][WEIGHT], expected, atol=1e-6)
    assert torch.equal(saved["current_model_state"][WEIGHT], record.after_step[-1][WEIGHT])


def _transfer(schedule: UnfreezeSchedule) -> TransferModule:
    torch.manual_seed(0)
    dm = small_data(num_train=64, batch_size=16)
    return TransferModule(
        MLPEncoder(dm.in_features, [16, 16, 16], batch_norm=True),
        dm.task_specs,
        schedule=schedule,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        plots=False,
    )


def test_a_frozen_group_keeps_its_source_value_in_the_average() -> None:
    """freeze_unfreeze at epoch 1: during epoch 0 the encoder is frozen, so the EMA of its
    weights is the source value; after the unfreeze the average moves."""
    module = _transfer(UnfreezeSchedule("freeze_unfreeze", epoch=1))
    source = module.state_dict()[WEIGHT].clone()
    record = Record()
    trainer = fast_trainer(max_epochs=2, callbacks=[EMA(decay=0.5), record], num_sanity_val_steps=0)
    trainer.fit(module, small_data(num_train=64, batch_size=16))
    assert torch.equal(record.validated[0][WEIGHT], source)  # epoch 0: frozen
    assert not torch.equal(module.state_dict()[WEIGHT], source)


@pytest.mark.parametrize("averaging", [lambda: EMA(decay=0.8), lambda: SWA(start_epoch=1)])
def test_averaging_across_an_unfreeze_resumes_exactly(tmp_path: Path, averaging) -> None:  # type: ignore[no-untyped-def]
    """Gradual unfreezing with EMA (per step) or SWA (per epoch): 4 epochs in one run equal 2
    epochs, a checkpoint, and 2 more: the weights, the average and the weighting."""
    assert_resumes_identically(
        tmp_path,
        lambda: small_data(num_train=64, batch_size=16),
        lambda dm: _transfer(UnfreezeSchedule("gradual")),
        make_callbacks=lambda: [averaging()],
    )


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        EMA(decay=1.0)
    with pytest.raises(ValueError, match="start_epoch must be >= 0"):
        SWA(start_epoch=-1)
