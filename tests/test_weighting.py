"""Every weighting method through the same property checks, plus pinned hand-computed values."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from lit_mtl.weighting import EqualWeighting, StaticWeighting, UncertaintyWeighting, Weighting

from conftest import fast_trainer, small_data, small_module

KINDS = ["regression", "regression", "multiclass"]

#: one factory per method; each builds an unbound weighting (T = 3 where T must be given)
METHODS: dict[str, Callable[[], Weighting]] = {
    "equal": EqualWeighting,
    "static": lambda: StaticWeighting([1.0, 0.5, 2.0]),
    "uncertainty": UncertaintyWeighting,
}


def bound(name: str) -> Weighting:
    w = METHODS[name]()
    w.bind(["a", "b", "c"], KINDS)
    return w


@pytest.fixture(params=sorted(METHODS))
def method(request: pytest.FixtureRequest) -> str:
    return request.param


def test_finite_differentiable_scalar(method: str) -> None:
    w = bound(method)
    losses = [torch.tensor(v, requires_grad=True) for v in (0.5, 2.0, 1.2)]
    out = w(losses)
    assert out.dim() == 0 and torch.isfinite(out)
    out.backward()
    assert all(loss.grad is not None and torch.isfinite(loss.grad) for loss in losses)
    assert w.last_weights.shape == (3,) and torch.isfinite(w.last_weights).all()


def test_state_dict_round_trip(method: str) -> None:
    w = bound(method)
    with torch.no_grad():
        for p in w.parameters():
            p.add_(torch.linspace(-0.3, 0.7, p.numel()).view_as(p))
    fresh = bound(method)
    fresh.load_state_dict(w.state_dict())
    losses = torch.tensor([0.5, 2.0, 1.2])
    assert torch.equal(fresh(losses), w(losses))


def test_wrong_number_of_tasks_is_an_error(method: str) -> None:
    w = bound(method)
    with pytest.raises(ValueError, match="expects 3 task losses, got 2"):
        w(torch.tensor([1.0, 2.0]))


def test_absent_task_contributes_zero(method: str) -> None:
    w = bound(method)
    losses = [torch.tensor(v, requires_grad=True) for v in (0.5, 2.0, 1.2)]
    out = w(losses, present=torch.tensor([True, False, True]))
    out.backward()
    assert losses[1].grad is not None and losses[1].grad.item() == 0.0
    assert w.last_weights[1].item() == 0.0
    for p in w.parameters():  # no gradient to an absent task's own parameters either
        if p.grad is not None and p.numel() == 3:
            assert p.grad[1].item() == 0.0


def test_short_fit_trains(method: str) -> None:
    torch.manual_seed(0)
    dm = small_data()
    module = small_module(dm, METHODS[method]())
    fast_trainer(max_epochs=2).fit(module, dm)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_module_rejects_weighting_for_other_task_count() -> None:
    dm = small_data()  # 3 tasks
    with pytest.raises(ValueError, match=r"num_tasks=2 but the module has 3 tasks"):
        small_module(dm, StaticWeighting([1.0, 2.0]))


# ---------------------------------------------------------------------- pinned values
# (method factory, task kinds, losses, expected combined loss, expected weights), by hand.
PINNED = [
    ("equal 3 tasks", EqualWeighting, KINDS, [1.0, 2.0, 3.0], 6.0, [1.0, 1.0, 1.0]),
    (
        "static (0.5, 2)",
        lambda: StaticWeighting([0.5, 2.0]),
        KINDS[:2],
        [2.0, 3.0],
        7.0,
        [0.5, 2.0],
    ),
    # s = 0 everywhere: regression 0.5 * L, classification 1.0 * L, + 0.5 s = 0
    (
        "uncertainty s=0",
        UncertaintyWeighting,
        ["regression", "multiclass"],
        [2.0, 3.0],
        0.5 * 2.0 + 3.0,
        [0.5, 1.0],
    ),
]


@pytest.mark.parametrize(
    ("label", "factory", "kinds", "losses", "expected", "weights"),
    PINNED,
    ids=[p[0] for p in PINNED],
)
def test_pinned_values(label, factory, kinds, losses, expected, weights) -> None:  # type: ignore[no-untyped-def]
    w = factory()
    w.bind([f"t{i}" for i in range(len(kinds))], kinds)
    out = w(torch.tensor(losses))
    assert out.item() == pytest.approx(expected, rel=1e-6)
    assert w.last_weights.tolist() == pytest.approx(weights, rel=1e-6)


def test_uncertainty_pinned_nonzero_log_vars() -> None:
    w = UncertaintyWeighting(task_kinds=["regression", "multiclass"])
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.0, math.log(2.0)]))
    # 0.5 * e^0 * 2 + 0.5 * 0  +  e^{-log 2} * 3 + 0.5 * log 2
    expected = 1.0 + 1.5 + 0.5 * math.log(2.0)
    assert w(torch.tensor([2.0, 3.0])).item() == pytest.approx(expected, rel=1e-6)
    assert w.sigma.tolist() == pytest.approx([1.0, math.sqrt(2.0)], rel=1e-6)


def test_uncertainty_stationary_points() -> None:
    """d/ds = 0 exactly at exp(s) = L (regression) and exp(s) = 2 L (classification)."""
    losses = torch.tensor([0.7, 0.7])
    w = UncertaintyWeighting(task_kinds=["regression", "multiclass"])
    with torch.no_grad():
        w.log_vars.copy_(torch.log(torch.tensor([0.7, 1.4])))
    w(losses).backward()
    assert w.log_vars.grad.abs().max().item() < 1e-6


def test_uncertainty_has_own_param_group_without_weight_decay() -> None:
    w = UncertaintyWeighting(num_tasks=2, lr=0.1)
    (group,) = w.parameter_groups()
    assert group["weight_decay"] == 0.0 and group["lr"] == 0.1 and group["name"] == "weighting"
    dm = small_data()
    module = small_module(
        dm,
        UncertaintyWeighting(),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1),
    )
    opt = module.configure_optimizers()
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["weighting"]["weight_decay"] == 0.0
    assert by_name["encoder"]["weight_decay"] == 0.1


def test_uncertainty_drop_in_without_module() -> None:
    """A user's own training loop can call UncertaintyWeighting on its stacked losses."""
    w = UncertaintyWeighting(num_tasks=2, task_kinds=["regression", "binary"])
    loss = w(torch.stack([torch.tensor(1.0), torch.tensor(2.0)]))
    assert loss.item() == pytest.approx(0.5 * 1.0 + 2.0)
    with pytest.raises(ValueError, match="num_tasks=3 but 2 task_kinds"):
        UncertaintyWeighting(num_tasks=3, task_kinds=["regression", "binary"])


def test_unbound_weighting_error() -> None:
    with pytest.raises(RuntimeError, match="not bound to tasks"):
        EqualWeighting()(torch.tensor([1.0]))
