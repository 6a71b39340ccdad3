"""Linear probes on cached features: the same heads as the uncached probe, a cache that follows
the encoder and the data."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch

from lit_mtl import MLPEncoder, MultiTaskModule
from lit_mtl.transfer import (
    CachedFeatureDataModule,
    FeatureInput,
    TransferModule,
    UnfreezeSchedule,
)

from conftest import fast_trainer, small_data


def _encoder() -> MLPEncoder:
    torch.manual_seed(0)
    encoder = MLPEncoder(8, [16, 16], batch_norm=True)
    encoder.train()
    with torch.no_grad():  # running statistics that are not the identity
        for _ in range(3):
            encoder(torch.randn(64, 8) * 2 + 1)
    return encoder


def test_the_cached_probe_trains_the_heads_the_uncached_probe_trains() -> None:
    """Same seed, same batches: a frozen-encoder TransferModule and heads on the cached
    features end with the same head weights (to 1e-5) and the same validation losses."""
    encoder = _encoder()
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    uncached = TransferModule(
        copy.deepcopy(encoder),
        small_data(num_train=96).task_specs,
        schedule=UnfreezeSchedule("freeze"),
        optimizer=sgd,
        plots=False,
    )
    probe = MultiTaskModule(FeatureInput(16), small_data().task_specs, optimizer=sgd, plots=False)
    probe.tasks.load_state_dict(uncached.tasks.state_dict())
    initial = copy.deepcopy(uncached.tasks.state_dict())
    plain = fast_trainer(max_epochs=3)
    plain.fit(uncached, small_data(num_train=96))
    cached_data = CachedFeatureDataModule(small_data(num_train=96), encoder)
    cached = fast_trainer(max_epochs=3)
    cached.fit(probe, cached_data)
    assert cached_data.cache_status == {"train": "computed", "val": "computed", "test": "computed"}
    for (key, a), b in zip(
        uncached.tasks.state_dict().items(), probe.tasks.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5), key
        assert not torch.equal(a, initial[key]), key  # the heads did train
    for key in ("val/reg0/loss", "val/cls0/acc"):
        assert cached.callback_metrics[key].item() == pytest.approx(
            plain.callback_metrics[key].item(), rel=1e-4
        )


def test_the_cache_is_found_again_and_follows_encoder_and_data(tmp_path: Path) -> None:
    encoder = _encoder()

    def status(enc: MLPEncoder, seed: int = 0) -> dict[str, str]:
        dm = CachedFeatureDataModule(small_data(seed=seed), enc, cache_dir=tmp_path)
        dm.setup()
        assert isinstance(dm.datasets["train"].inputs, torch.Tensor)
        return dm.cache_status

    assert set(status(encoder).values()) == {"computed"}
    assert set(status(encoder).values()) == {"hit"}
    changed = copy.deepcopy(encoder)
    with torch.no_grad():
        changed.blocks[0][0].weight[0, 0] += 1e-3
    assert set(status(changed).values()) == {"computed"}  # another encoder
    assert set(status(encoder, seed=1).values()) == {"computed"}  # other data
    assert len(list(tmp_path.glob("*.pt"))) == 9
    spilled = CachedFeatureDataModule(small_data(), encoder, max_memory_mb=1e-3)
    spilled.setup()  # above the memory budget: memory-mapped from a temporary file
    train = spilled.datasets["train"]
    in_memory = CachedFeatureDataModule(small_data(), encoder)
    in_memory.setup()
    assert torch.equal(train.inputs, in_memory.datasets["train"].inputs)
    assert set(spilled.cache_files) == {"train", "val", "test"} and not in_memory.cache_files
    assert spilled.cache_files["train"].is_file()


def test_augmented_inputs_are_refused() -> None:
    from lit_mtl import ProceduralScenesDataModule

    scenes = ProceduralScenesDataModule(num_train=4, num_val=2, num_test=2, augment=True)
    with pytest.raises(ValueError, match=r"augment=True\) changes its inputs every epoch"):
        CachedFeatureDataModule(scenes, _encoder())
