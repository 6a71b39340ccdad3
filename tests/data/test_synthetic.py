"""SyntheticDataModule: task spec after __init__, seeded determinism, the GradNorm toy form."""

from __future__ import annotations

import pytest
import torch

from lit_mtl import SyntheticDataModule, TaskSpec
from lit_mtl.data import EpochSeededSampler, make_synthetic_tasks


def test_task_specs_available_after_init() -> None:
    dm = SyntheticDataModule(
        regression_scales=[1, 2, 3],
        regression_noise=[0, 0, 0],
        num_classification_tasks=2,
        num_classes=4,
    )
    assert dm.num_tasks == 5 and dm.datasets == {}
    assert dm.task_specs[0] == TaskSpec("reg0", "regression", 1)
    assert dm.task_specs[-1] == TaskSpec("cls1", "multiclass", 4)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = (SyntheticDataModule(seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.datasets["train"].inputs, b.datasets["train"].inputs)
    assert torch.equal(a.datasets["test"].targets["cls0"], b.datasets["test"].targets["cls0"])
    assert not torch.equal(a.datasets["train"].inputs, c.datasets["train"].inputs)


def test_global_seed_does_not_change_data() -> None:
    torch.manual_seed(123)
    a = SyntheticDataModule(seed=0)
    a.setup()
    torch.manual_seed(999)
    b = SyntheticDataModule(seed=0)
    b.setup()
    assert torch.equal(a.datasets["val"].inputs, b.datasets["val"].inputs)


def test_gradnorm_toy_form_scales_and_noise() -> None:
    """y_i = sigma_i tanh((B + eps_i) x): with no noise, |y_i| <= sigma_i and y_i / sigma_i of two
    tasks are correlated when B dominates eps (related tasks) and not when B = 0."""
    gen = torch.Generator().manual_seed(0)
    x, t, _ = make_synthetic_tasks(
        2000,
        gen,
        in_features=250,
        out_features=100,
        regression_scales=[1.0, 100.0],
        regression_noise=[0.0, 0.0],
        num_classification_tasks=0,
        num_classes=2,
        shared_std=10.0,
        task_std=3.5,
    )
    assert torch.allclose(x.norm(dim=1), torch.ones(2000))
    assert t["reg0"].abs().max() <= 1.0 and t["reg1"].abs().max() <= 100.0
    assert t["reg1"].abs().max() > 50.0
    related = torch.corrcoef(torch.stack([t["reg0"].flatten(), t["reg1"].flatten() / 100]))[0, 1]
    gen = torch.Generator().manual_seed(0)
    _, u, _ = make_synthetic_tasks(
        2000,
        gen,
        in_features=250,
        out_features=100,
        regression_scales=[1.0, 1.0],
        regression_noise=[0.0, 0.0],
        num_classification_tasks=0,
        num_classes=2,
        shared_std=0.0,
        task_std=3.5,
    )
    unrelated = torch.corrcoef(torch.stack([u["reg0"].flatten(), u["reg1"].flatten()]))[0, 1]
    assert related > 0.6 and abs(unrelated) < 0.1


def test_noise_std_is_the_requested_one() -> None:
    dm = SyntheticDataModule(
        in_features=4,
        regression_scales=[1.0, 1.0],
        regression_noise=[0.0, 2.0],
        num_classification_tasks=0,
        num_train=20000,
        seed=3,
    )
    dm.setup()
    t = dm.datasets["train"].targets
    # same function? no: each task has its own eps; estimate noise from the clean twin instead
    gen = torch.Generator().manual_seed(3)
    x, clean, _ = make_synthetic_tasks(
        20000,
        gen,
        in_features=4,
        out_features=1,
        regression_scales=[1.0, 1.0],
        regression_noise=[0.0, 0.0],
        num_classification_tasks=0,
        num_classes=3,
        shared_std=1.0,
        task_std=0.5,
    )
    assert torch.equal(x, dm.datasets["train"].inputs)
    assert torch.equal(clean["reg0"], t["reg0"])
    assert (t["reg1"] - clean["reg1"]).std().item() == pytest.approx(2.0, rel=0.03)


def test_classification_labels_cover_classes() -> None:
    dm = SyntheticDataModule(num_classification_tasks=1, num_classes=3, num_train=3000)
    dm.setup()
    counts = torch.bincount(dm.datasets["train"].targets["cls0"], minlength=3)
    assert (counts > 100).all()


def test_sampler_is_a_function_of_seed_and_epoch() -> None:
    s = EpochSeededSampler(10, seed=0)
    first = list(s)
    assert list(s) == first and sorted(first) == list(range(10))
    s.set_epoch(1)
    assert list(s) != first


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(regression_scales=[1.0], regression_noise=[0.1, 0.2]), "one scale and one noise"),
        (dict(regression_noise=[-1.0, 0.1]), "regression_noise must be >= 0"),
        (dict(num_classes=1), "num_classes must be >= 2"),
        (dict(num_train=0), "num_train must be >= 1"),
        (dict(label_noise=2.0), "label_noise"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SyntheticDataModule(**kwargs)
