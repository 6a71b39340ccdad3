"""Learning result: uncertainty weighting recovers the per-task noise (Kendall et al. 2018)."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from lit_mtl import MLPEncoder, MultiTaskModule, SyntheticDataModule, UncertaintyWeighting

from conftest import fast_trainer

NOISE = [0.1, 1.0, 10.0]  # two orders of magnitude


@pytest.mark.slow
def test_learned_sigma_matches_true_noise_and_exp_s_equals_train_mse() -> None:
    L.seed_everything(0)
    dm = SyntheticDataModule(
        in_features=4,
        regression_scales=[1.0, 1.0, 1.0],
        regression_noise=NOISE,
        num_classification_tasks=0,
        num_train=8192,
        num_val=256,
        num_test=256,
        batch_size=256,
        shared_std=1.0,
        task_std=0.5,
        seed=0,
    )
    weighting = UncertaintyWeighting(lr=0.1)
    module = MultiTaskModule(
        MLPEncoder(4, [64, 64]),
        dm.task_specs,
        weighting,
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=30),
    )
    fast_trainer(max_epochs=30, limit_val_batches=0).fit(module, dm)

    sigma = weighting.sigma
    for i, sd in enumerate(NOISE):
        assert sigma[i].item() == pytest.approx(sd, rel=0.10), (sigma.tolist(), NOISE)

    train = dm.datasets["train"]
    module.eval()
    with torch.no_grad():
        preds = module(train.inputs)
    for i, name in enumerate(dm.task_names):
        mse = ((preds[name] - train.targets[name]) ** 2).mean().item()
        assert torch.exp(weighting.log_vars[i]).item() == pytest.approx(mse, rel=0.05), name
