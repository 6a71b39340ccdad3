"""Multi-input training: each task's batch has its own inputs ({task: (x, targets)})."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from test_weighting import METHODS

from lit_mtl import (
    MGDA,
    EqualWeighting,
    MLPEncoder,
    MMoESyntheticDataModule,
    MultiTaskModule,
    PerTaskDataModule,
    UPGrad,
)
from lit_mtl.data.synthetic import MultiTaskTensorDataset

from conftest import assert_resumes_identically, fast_trainer, small_data


def _fit(module: MultiTaskModule, dm: L.LightningDataModule, **trainer: Any) -> MultiTaskModule:
    fast_trainer(max_epochs=2, limit_val_batches=0, **trainer).fit(module, dm)
    return module


def _module(dm: Any, weighting: Any) -> MultiTaskModule:
    return MultiTaskModule(
        MLPEncoder(dm.in_features if hasattr(dm, "in_features") else 8, [16, 16]),
        dm.task_specs,
        weighting,
        optimizer=functools.partial(torch.optim.SGD, lr=0.05),
        plots=False,
    )


@pytest.mark.parametrize(
    "weighting",
    [
        EqualWeighting,
        functools.partial(MGDA, target="shared"),
        functools.partial(UPGrad, target="representation"),
    ],
    ids=["equal", "mgda-shared", "upgrad-z"],
)
@pytest.mark.parametrize("encoder_pass", ["concatenated", "per_task"])
def test_every_task_on_the_same_dataset_equals_single_input_training(
    weighting: Any, encoder_pass: str
) -> None:
    """The same dataset in the same order for every task: the multi-input fit (the encoder run
    on the stacked inputs, or once per task; for UPGrad on z the inputs are recognised as
    shared) ends with the single-input fit's parameters."""
    single = small_data(num_train=96)
    single.setup()
    multi = PerTaskDataModule(
        single.task_specs,
        train={name: single.datasets["train"] for name in single.task_names},
        batch_size=single.batch_size,
        seed=single.seed,
    )
    torch.manual_seed(0)
    reference = _module(single, weighting())
    module = copy.deepcopy(reference)
    module.encoder_pass = encoder_pass
    module.weighting = weighting()
    module.weighting.bind(module.task_names, [s.kind for s in single.task_specs], module.encoder)
    _fit(reference, single)
    _fit(module, multi)
    for (key, a), b in zip(
        reference.state_dict().items(), module.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), key
    assert not torch.equal(
        reference.encoder.state_dict()["blocks.0.0.weight"],
        _module(single, weighting()).encoder.state_dict()["blocks.0.0.weight"],
    )


def _mmoe(**overrides: Any) -> MMoESyntheticDataModule:
    kwargs: dict[str, Any] = dict(
        p=0.5,
        in_features=8,
        num_train=64,
        num_val=24,
        num_test=24,
        batch_size=16,
        per_task_inputs=True,
    )
    kwargs.update(overrides)
    return MMoESyntheticDataModule(**kwargs)


def test_representation_target_on_distinct_inputs_is_a_clear_error() -> None:
    dm = _mmoe()
    module = _module(dm, UPGrad(target="representation"))
    with pytest.raises(ValueError, match=r"UPGrad\(target='representation'\).*target='shared'"):
        _fit(module, dm)


def test_each_task_is_evaluated_on_its_own_split() -> None:
    """val/{task}/loss is the task's loss over its own validation set, val/loss their sum."""
    dm = _mmoe(num_val=20)  # 16 + 4: two batches per task
    module = _module(dm, MGDA(target="shared"))
    trainer = fast_trainer(max_epochs=1)
    trainer.fit(module, dm)
    module.eval()
    expected = {}
    with torch.no_grad():
        for name, dataset in dm.per_task_datasets("val").items():
            x, target = dataset.inputs, dataset.targets[name]
            expected[name] = torch.mean((module(x)[name] - target) ** 2).item()
    logged = trainer.callback_metrics
    for name, value in expected.items():
        assert logged[f"val/{name}/loss"].item() == pytest.approx(value, rel=1e-5)
    assert logged["val/loss"].item() == pytest.approx(sum(expected.values()), rel=1e-5)
    predictions = trainer.predict(module, dm)
    # one list of batches per task's loader, each batch {task: predictions}
    assert [sorted({k for batch in per_task for k in batch}) for per_task in predictions] == [
        ["task1"],
        ["task2"],
    ]


@pytest.mark.parametrize(
    ("combine", "steps"),
    [("max_size_cycle", 4), ("min_size", 1), ("max_size", 4), ("uniform", 5)],
)
def test_combine_modes_set_the_epoch(combine: str, steps: int) -> None:
    """Tasks of 64 and 16 samples, batch 16: Lightning's modes give max / min epochs; one
    task per step gives sum of the loader lengths; in max_size an exhausted task is absent
    and its epoch loss is the mean over its own batches."""
    specs = [{"name": "a"}, {"name": "b"}]
    gen = torch.Generator().manual_seed(0)
    data = {
        "a": MultiTaskTensorDataset(torch.randn(64, 8, generator=gen), {"a": torch.randn(64)}),
        "b": MultiTaskTensorDataset(torch.randn(16, 8, generator=gen), {"b": torch.randn(16)}),
    }
    dm = PerTaskDataModule(specs, train=data, combine=combine, batch_size=16)
    module = _module(dm, EqualWeighting())
    seen: list[list[str]] = []
    module.on_train_batch_start = lambda batch, i: seen.append(  # type: ignore[method-assign]
        sorted(name for name, part in batch.items() if part is not None)
    )
    trainer = fast_trainer(max_epochs=1)
    trainer.fit(module, dm)
    assert trainer.global_step == steps
    if combine == "max_size":
        assert seen == [["a", "b"], ["a"], ["a"], ["a"]]
    if combine == "uniform":
        assert all(len(names) == 1 for names in seen)
    assert set(trainer.callback_metrics) >= {"train/a/mse", "train/b/mse"}


def test_task_sampling_draws_follow_the_temperature() -> None:
    from lit_mtl.data.loaders import EpochSeededSampler
    from lit_mtl.data.task_loaders import TaskSamplingLoader, task_sampling_probabilities

    p = task_sampling_probabilities([400, 100], "temperature", 2.0)
    assert p.tolist() == pytest.approx([2 / 3, 1 / 3])
    loaders = {
        name: torch.utils.data.DataLoader(list(range(n)), batch_size=1)
        for name, n in (("a", 400), ("b", 100))
    }
    loader = TaskSamplingLoader(loaders, p, seed=3)
    draws = loader.draws()
    assert len(draws) == 500 and abs(draws.count(1) / 500 - 1 / 3) < 0.05
    assert loader.draws() == draws  # a function of (seed, epoch)
    loader.set_epoch(1)
    assert loader.draws() != draws
    shards = [list(EpochSeededSampler(11, 0, rank, 2)) for rank in range(2)]  # DDP: per rank
    assert len(shards[0]) == len(shards[1]) == 6
    assert sorted(set(shards[0] + shards[1])) == list(range(11))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        PerTaskDataModule([{"name": "a"}], train={"a": []}, combine="temperature", temperature=0)
    with pytest.raises(ValueError, match="combine must be one of"):
        PerTaskDataModule([{"name": "a"}], train={"a": []}, combine="round_robin")  # type: ignore


@pytest.mark.parametrize("combine", ["max_size_cycle", "temperature"])
def test_multi_input_resume_mid_epoch_is_exact(tmp_path: Path, combine: str) -> None:
    """Saved after 2 of 4 epochs and resumed: the same state as the uninterrupted fit; and a
    checkpoint written mid-epoch resumes into the same remaining batches."""
    assert_resumes_identically(
        tmp_path,
        lambda: _mmoe(combine=combine, temperature=3.0, num_train=48),
        lambda dm: _module(dm, MGDA(target="shared")),
    )


def _epoch_batches(loader: Any, epoch: int) -> list[dict[str, Any]]:
    """The batches of one epoch of a training loader ({task: batch or None} each)."""
    for dl in getattr(loader, "flattened", [loader]):
        dl.sampler.set_epoch(epoch)
    return [item[0] if isinstance(item, tuple) else item for item in loader]


@pytest.mark.parametrize("combine", ["max_size_cycle", "max_size", "min_size", "proportional"])
def test_a_loader_resumed_mid_epoch_yields_the_remaining_batches(combine: str) -> None:
    """Tasks of 64 and 24 samples (4 and 2 batches): after 3 consumed steps the resumed
    loader yields exactly the rest of the uninterrupted epoch (the cycled task included)."""
    gen = torch.Generator().manual_seed(0)
    data = {
        name: MultiTaskTensorDataset(torch.randn(n, 8, generator=gen), {name: torch.randn(n)})
        for name, n in (("a", 64), ("b", 24))
    }
    consumed = 1 if combine == "min_size" else 3

    def make() -> PerTaskDataModule:
        return PerTaskDataModule(
            [{"name": "a"}, {"name": "b"}], train=data, combine=combine, batch_size=16, seed=5
        )

    full = _epoch_batches(make().train_dataloader(), 2)
    dm = make()
    dm.load_state_dict({"train_epoch": 2, "train_batches": consumed})
    rest = _epoch_batches(dm.train_dataloader(), 2)
    assert (
        len(full) == {"max_size_cycle": 4, "max_size": 4, "min_size": 2, "proportional": 6}[combine]
    )
    assert len(rest) == len(full) - consumed
    for a, b in zip(full[consumed:], rest, strict=True):
        assert sorted(a) == sorted(b)
        for name in a:
            assert (a[name] is None) == (b[name] is None)
            if a[name] is not None:
                assert torch.equal(a[name][0], b[name][0]), name


def test_per_task_data_module_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"train needs one dataset per task \['a', 'b'\]; missing"):
        PerTaskDataModule([{"name": "a"}, {"name": "b"}], train={"a": []})
    dm = PerTaskDataModule(
        [{"name": "a"}],
        train={"a": MultiTaskTensorDataset(torch.zeros(0, 8), {"a": torch.zeros(0)})},
    )
    with pytest.raises(ValueError, match=r"the train split of task\(s\) \['a'\] is empty"):
        dm.train_dataloader()
    module = _module(dm, EqualWeighting())
    with pytest.raises(KeyError, match=r"unknown task\(s\) \['c'\]"):
        module.training_step({"c": (torch.zeros(2, 8), {"c": torch.zeros(2)})}, 0)
    with pytest.raises(KeyError, match=r"task 'a''s batch has no targets for task\(s\) \['a'\]"):
        module.training_step({"a": (torch.zeros(2, 8), {})}, 0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_on_distinct_inputs_with_absent_tasks(method: str) -> None:
    """Three tasks with their own samples (48, 32, 16; batch 16, ``max_size``: later steps
    lack the exhausted tasks). Methods that differentiate w.r.t. z refuse with the clear error;
    every other method trains with finite parameters and weights."""
    single = small_data(num_train=96)
    single.setup()
    data = single.datasets["train"]
    subsets = {
        name: torch.utils.data.Subset(data, range(start, start + n))
        for name, start, n in zip(single.task_names, (0, 48, 80), (48, 32, 16), strict=True)
    }
    dm = PerTaskDataModule(single.task_specs, train=subsets, combine="max_size", batch_size=16)
    torch.manual_seed(0)
    module = MultiTaskModule(
        MLPEncoder(single.in_features, [16]),
        single.task_specs,
        METHODS[method](),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        plots=False,
    )
    trainer = fast_trainer(max_epochs=1)
    if getattr(module.weighting, "target", None) == "representation":
        with pytest.raises(ValueError, match="does not exist when each task brings its own"):
            trainer.fit(module, dm)
        return
    trainer.fit(module, dm)
    assert trainer.global_step == 3
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert torch.isfinite(module.weighting.last_weights).all()


def test_inputs_of_different_shapes_need_one_encoder_pass_per_task() -> None:
    """A task with 8 features and one with 6 (a 'shape-agnostic' encoder: it crops to 6): the
    stacked pass is a clear error naming the shapes; one pass per task trains."""

    class FirstSix(torch.nn.Module):
        out_features = 6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :6]

    gen = torch.Generator().manual_seed(0)
    data = {
        "a": MultiTaskTensorDataset(torch.randn(16, 8, generator=gen), {"a": torch.randn(16)}),
        "b": MultiTaskTensorDataset(torch.randn(16, 6, generator=gen), {"b": torch.randn(16)}),
    }
    dm = PerTaskDataModule([{"name": "a"}, {"name": "b"}], train=data, batch_size=8)
    stacked = MultiTaskModule(FirstSix(), dm.task_specs, plots=False)
    with pytest.raises(ValueError, match=r"one shape; got \{'a': \(8,\), 'b': \(6,\)\}"):
        fast_trainer().fit(stacked, dm)
    per_task = MultiTaskModule(FirstSix(), dm.task_specs, plots=False, encoder_pass="per_task")
    trainer = fast_trainer()
    trainer.fit(per_task, dm)
    assert trainer.global_step == 2
