"""2-process DDP on CPU (gloo): ranks end with identical parameters and weighting state."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_mtl import MLPEncoder, MultiTaskModule, UncertaintyWeighting

from conftest import fast_trainer, small_data


class SaveStatePerRank(L.Callback):
    """Writes every rank's final state_dict to `<dir>/rank<r>.pt`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.directory / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_ddp_ranks_stay_identical(tmp_path: Path, precision: str) -> None:
    L.seed_everything(0)
    dm = small_data(num_train=256, batch_size=32)
    module = MultiTaskModule(
        MLPEncoder(dm.in_features, [16, 16]),
        dm.task_specs,
        UncertaintyWeighting(),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
    )
    before = module.weighting.log_vars.detach().clone()
    trainer = fast_trainer(
        max_epochs=2,
        devices=2,
        strategy="ddp_spawn",
        precision=precision,
        callbacks=[SaveStatePerRank(tmp_path)],
    )
    trainer.fit(module, dm)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert not torch.equal(rank0["weighting.log_vars"], before)  # the weighting did train
