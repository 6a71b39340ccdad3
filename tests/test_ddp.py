"""2-process DDP on CPU (gloo): ranks end with identical parameters and weighting state.

Most fits fork the test process (``ddp_fork``: the ranks start in about a second instead of
re-importing torch and Lightning); the spawn test and the EMA test keep ``ddp_spawn``, whose
pickling of the module, the weighting and the callbacks is part of what they check."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_mtl import (
    DBMTL,
    DWA,
    FAMO,
    MGDAUB,
    RLW,
    GradNorm,
    MLPEncoder,
    MultiTaskModule,
    NashMTL,
    PCGrad,
    UncertaintyWeighting,
    Weighting,
)

from conftest import fast_trainer, small_data


class SaveStatePerRank(L.Callback):
    """Writes every rank's final state_dict to `<dir>/rank<r>.pt`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.directory / f"rank{trainer.global_rank}.pt")


#: one method per family, and the state that must move and stay identical across ranks
FAMILIES: dict[str, tuple[type[Weighting], str]] = {
    "uncertainty (learned parameters)": (UncertaintyWeighting, "weighting.log_vars"),
    "gradnorm (own update, last layer)": (GradNorm, "weighting.w"),
    "famo (losses after the step)": (FAMO, "weighting.logits"),
    "dwa (epoch statistics)": (DWA, "weighting.history"),
    "rlw (seeded draws)": (RLW, "weighting.step"),
    "mgda-ub (Gramian of z, summed)": (MGDAUB, "encoder.blocks.0.0.weight"),
    "pcgrad (parameter gradients, averaged)": (PCGrad, "weighting.step"),
    "nash-mtl (solver state)": (NashMTL, "weighting.alpha"),
    "db-mtl (gradient buffer, averaged)": (DBMTL, "weighting.buffer"),
}


def identical_ranks(directory: Path) -> dict:
    """Rank 0's final state (:class:`SaveStatePerRank`), after asserting rank 1's is equal
    entry by entry."""
    rank0 = torch.load(directory / "rank0.pt", weights_only=True)
    rank1 = torch.load(directory / "rank1.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    return rank0


def _fit_ddp(
    tmp_path: Path, weighting: Weighting, precision: str, strategy: str = "ddp_fork"
) -> tuple[dict, dict, dict]:
    L.seed_everything(0)
    dm = small_data(num_train=256, batch_size=32, missing_fraction={"reg1": 0.3})
    module = MultiTaskModule(
        MLPEncoder(dm.in_features, [16, 16]),
        dm.task_specs,
        weighting,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
    )
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainer = fast_trainer(
        max_epochs=3,
        devices=2,
        strategy=strategy,
        precision=precision,
        callbacks=[SaveStatePerRank(tmp_path)],
    )
    trainer.fit(module, dm)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    return before, rank0, rank1


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ddp_ranks_stay_identical(tmp_path: Path, family: str) -> None:
    factory, moving = FAMILIES[family]
    before, rank0, rank1 = _fit_ddp(tmp_path, factory(), "32-true")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert not torch.equal(rank0[moving], before[moving])  # the state did change


@pytest.mark.slow
def test_ddp_spawn_sends_a_gramian_weighting_to_the_ranks(tmp_path: Path) -> None:
    """Under ``ddp_spawn`` the module and its weighting are pickled to each rank (per-step
    transients dropped): the solver state still moves and stays identical."""
    before, rank0, rank1 = _fit_ddp(tmp_path, NashMTL(), "32-true", strategy="ddp_spawn")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert not torch.equal(rank0["weighting.alpha"], before["weighting.alpha"])


@pytest.mark.slow
def test_ddp_bf16_ranks_stay_identical(tmp_path: Path) -> None:
    before, rank0, rank1 = _fit_ddp(tmp_path, GradNorm(), "bf16-mixed")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert not torch.equal(rank0["weighting.w"], before["weighting.w"])


class SaveEncoderPerEpoch(L.Callback):
    """Every rank's encoder state at each epoch end: `<dir>/rank<r>_epoch<e>.pt`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.encoder.state_dict().items()}
        name = f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.pt"
        torch.save(state, self.directory / name)


@pytest.mark.slow
def test_ddp_unfreezing_mid_run_trains_and_keeps_ranks_identical(tmp_path: Path) -> None:
    from lit_mtl import TransferModule, UnfreezeSchedule

    L.seed_everything(0)
    dm = small_data(num_train=256, batch_size=32)
    module = TransferModule(
        MLPEncoder(dm.in_features, [16, 16], batch_norm=True),
        dm.task_specs,
        schedule=UnfreezeSchedule("freeze_unfreeze", epoch=1),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
    )
    start = {k: v.detach().clone() for k, v in module.encoder.state_dict().items()}
    trainer = fast_trainer(
        max_epochs=2,
        devices=2,
        strategy="ddp_fork",
        callbacks=[SaveEncoderPerEpoch(tmp_path), SaveStatePerRank(tmp_path)],
    )
    trainer.fit(module, dm)
    load = functools.partial(torch.load, weights_only=True)
    for epoch in (0, 1):
        r0, r1 = (
            load(tmp_path / f"rank0_epoch{epoch}.pt"),
            load(tmp_path / f"rank1_epoch{epoch}.pt"),
        )
        for key in r0:
            assert torch.equal(r0[key], r1[key]), (epoch, key)
    frozen_epoch = load(tmp_path / "rank0_epoch0.pt")
    trained_epoch = load(tmp_path / "rank0_epoch1.pt")
    for key in start:  # frozen in epoch 0 (BN statistics included), trained in epoch 1
        assert torch.equal(frozen_epoch[key], start[key]), key
    assert not torch.equal(trained_epoch["blocks.0.0.weight"], start["blocks.0.0.weight"])
    rank0, rank1 = load(tmp_path / "rank0.pt"), load(tmp_path / "rank1.pt")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key


@pytest.mark.parametrize("combine", ["max_size_cycle", "temperature"])
def test_ddp_multi_input_ranks_stay_identical(tmp_path: Path, combine: str) -> None:
    """Each task its own data (the MMoE generator's per-task mode), 2 processes: Lightning
    shards the combined loaders, the task-sampling loader shards itself and draws the same
    task on both ranks; parameters and the weighting end identical. One task per step leaves
    the other heads unused in a step, which DDP accepts with find_unused_parameters."""
    from lit_mtl import MGDA, MMoESyntheticDataModule

    L.seed_everything(0)
    dm = MMoESyntheticDataModule(
        p=0.5,
        in_features=8,
        num_train=128,
        num_val=32,
        num_test=32,
        batch_size=16,
        per_task_inputs=True,
        combine=combine,
        temperature=2.0,
    )
    module = MultiTaskModule(
        MLPEncoder(8, [16, 16]),
        dm.task_specs,
        MGDA(target="shared"),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        plots=False,
    )
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainer = fast_trainer(
        max_epochs=2,
        devices=2,
        strategy="ddp_fork"
        if combine == "max_size_cycle"
        else "ddp_fork_find_unused_parameters_true",
        callbacks=[SaveStatePerRank(tmp_path)],
    )
    trainer.fit(module, dm)
    rank0 = identical_ranks(tmp_path)
    assert not torch.equal(rank0["encoder.blocks.0.0.weight"], before["encoder.blocks.0.0.weight"])


def test_ddp_ema_across_an_unfreeze_keeps_ranks_identical(tmp_path: Path) -> None:
    """EMA while the encoder unfreezes at epoch 1, 2 processes: the averaged weights that end
    the fit are identical on both ranks (each rank averages the same all-reduced updates)."""
    from lit_mtl import EMA
    from lit_mtl.transfer import TransferModule, UnfreezeSchedule

    L.seed_everything(0)
    dm = small_data(num_train=128, batch_size=16)
    module = TransferModule(
        MLPEncoder(dm.in_features, [16, 16]),
        dm.task_specs,
        schedule=UnfreezeSchedule("freeze_unfreeze", epoch=1),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        plots=False,
    )
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainer = fast_trainer(
        max_epochs=2,
        devices=2,
        strategy="ddp_spawn",
        callbacks=[EMA(decay=0.9), SaveStatePerRank(tmp_path)],
    )
    trainer.fit(module, dm)
    rank0 = identical_ranks(tmp_path)
    assert not torch.equal(rank0["encoder.blocks.0.0.weight"], before["encoder.blocks.0.0.weight"])


def test_ddp_lora_keeps_ranks_identical(tmp_path: Path) -> None:
    """LoRA adapters on a loaded source, 2 processes: adapters, heads and the frozen source
    weights end identical on both ranks."""
    pytest.importorskip("peft")
    from lit_mtl.transfer import TransferModule

    L.seed_everything(0)
    dm = small_data(num_train=128, batch_size=16)
    torch.save(MLPEncoder(dm.in_features, [16, 16]).state_dict(), tmp_path / "source.pt")
    module = TransferModule(
        MLPEncoder(dm.in_features, [16, 16]),
        dm.task_specs,
        source=str(tmp_path / "source.pt"),
        lora={"target_modules": [r"blocks\.\d\.0"], "r": 4},
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        plots=False,
    )
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainer = fast_trainer(
        max_epochs=2, devices=2, strategy="ddp_fork", callbacks=[SaveStatePerRank(tmp_path)]
    )
    trainer.fit(module, dm)
    rank0 = identical_ranks(tmp_path)
    adapter = "encoder.blocks.0.0.lora_B.default.weight"
    assert not torch.equal(rank0[adapter], before[adapter])
    base = "encoder.blocks.0.0.base_layer.weight"
    assert torch.equal(rank0[base], before[base])
