"""Adding a method is writing its rule: a Gramian rule defined here, in one class, runs through
MultiTaskModule, checkpoints and DDP with no other change; the post-step update needs no call."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from lit_mtl import GradNorm, GramianWeighting, MultiTaskModule, step_context, task_views

from conftest import fast_trainer, small_data, small_module


class UnitNormWeighting(GramianWeighting):
    """A rule written for this test: c_i = (1 / ||g_i||) / sum_j (1 / ||g_j||)."""

    default_target = "shared"

    def coefficients(self, gramian: np.ndarray, losses: np.ndarray) -> np.ndarray:
        inverse = 1.0 / np.sqrt(np.maximum(np.diag(gramian), 1e-12))
        return inverse / inverse.sum()


def test_a_rule_written_in_one_class_trains_and_checkpoints(tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = small_data()
    module = small_module(dm, UnitNormWeighting())
    trainer = fast_trainer(max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    weights = module.weighting.last_weights
    assert weights.sum().item() == pytest.approx(1.0, rel=1e-5) and (weights > 0).all()
    trainer.save_checkpoint(tmp_path / "rule.ckpt")
    restored = MultiTaskModule.load_from_checkpoint(
        tmp_path / "rule.ckpt", encoder=module.encoder, weighting=UnitNormWeighting()
    )
    for key, value in module.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key


@pytest.mark.slow
def test_a_rule_written_in_one_class_keeps_ddp_ranks_identical(tmp_path: Path) -> None:
    from test_ddp import _fit_ddp

    before, rank0, rank1 = _fit_ddp(tmp_path, UnitNormWeighting(), "32-true")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert not torch.equal(rank0["encoder.blocks.0.0.weight"], before["encoder.blocks.0.0.weight"])


class DropIn(L.LightningModule):
    """A user's own module that never calls the weighting's post-step update."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(16, 1), nn.Linear(16, 1)])
        self.weighting = GradNorm()
        self.weighting.bind(["a", "b"], encoder=self.trunk)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, ya, yb = batch
        z = self.trunk(x)
        views = task_views(z, 2)
        losses = [
            nn.functional.mse_loss(h(v).squeeze(1), y)
            for h, v, y in zip(self.heads, views, (ya, yb * 10), strict=True)
        ]
        ctx = step_context(losses, representation=z, task_representations=views, heads=self.heads)
        return self.weighting(ctx)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_drop_in_update_runs_by_itself_once_per_step_and_only_for_its_optimizer() -> None:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64), torch.randn(64))
    module = DropIn()
    fast_trainer(max_epochs=1, accumulate_grad_batches=2).fit(
        module, torch.utils.data.DataLoader(data, batch_size=8)
    )
    assert int(module.weighting.adam_step) == 4  # 8 batches, 2 per optimizer step
    assert not torch.equal(module.weighting.w, torch.ones(2))
    # a forward without a step, then another model's optimizer steps: no update
    x, ya, yb = data[:8]
    module.training_step((x, ya, yb), 0)
    other = nn.Linear(2, 2)
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    other(torch.ones(1, 2)).sum().backward()
    opt.step()
    assert int(module.weighting.adam_step) == 4
