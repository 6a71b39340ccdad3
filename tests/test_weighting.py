"""Every weighting method through the same property checks, plus pinned hand-computed values."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from lit_mtl.functional import (
    aligned_mtl_coefficients,
    cagrad_coefficients,
    imtl_g_coefficients,
    min_norm_coefficients,
    nash_mtl_coefficients,
    pcgrad_coefficients,
)
from lit_mtl.weighting import (
    DBMTL,
    DWA,
    FAMO,
    IMTLG,
    MGDA,
    MGDAUB,
    RLW,
    AlignedMTL,
    CAGrad,
    EqualWeighting,
    GradNorm,
    NashMTL,
    PCGrad,
    StaticWeighting,
    UncertaintyWeighting,
    UPGrad,
    Weighting,
    dwa_weights,
    famo_logit_gradient,
    famo_weights,
    gradnorm_weight_gradient,
)

from conftest import fast_trainer, small_data, small_module

KINDS = ["regression", "regression", "multiclass"]

#: every method, each built unbound (T = 3 where T must be given)
METHODS: dict[str, Callable[[], Weighting]] = {
    "equal": EqualWeighting,
    "static": lambda: StaticWeighting([1.0, 0.5, 2.0]),
    "uncertainty": UncertaintyWeighting,
    "dwa": DWA,
    "rlw": RLW,
    "famo": FAMO,
    "gradnorm": GradNorm,
    "gradnorm_repr": lambda: GradNorm(target="representation"),
    "mgda": MGDA,
    "mgda_ub": MGDAUB,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "imtl_g": IMTLG,
    "nash_mtl": NashMTL,
    "aligned_mtl": AlignedMTL,
    "upgrad": UPGrad,
    "upgrad_repr": lambda: UPGrad(target="representation"),
    "db_mtl": DBMTL,
}


def test_every_exported_method_is_in_the_harness() -> None:
    """A method added to ``lit_mtl.weighting.__all__`` cannot skip the shared property checks."""
    import inspect

    import lit_mtl.weighting as package

    exported = {
        name
        for name in package.__all__
        if inspect.isclass(getattr(package, name))
        and issubclass(getattr(package, name), Weighting)
        and name not in {"Weighting", "GramianWeighting"}  # the bases
    }
    assert exported == {type(make()).__name__ for make in METHODS.values()}


class Problem(nn.Module):
    """A tiny 3-task problem: encoder -> z -> three heads -> three losses."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6))
        self.heads = nn.ModuleList([nn.Linear(6, 1), nn.Linear(6, 1), nn.Linear(6, 3)])
        self.x = torch.randn(16, 4)
        self.y = [torch.randn(16), torch.randn(16) * 5, torch.randint(0, 3, (16,))]

    def losses(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        z = self.encoder(self.x)
        losses = [
            nn.functional.mse_loss(self.heads[0](z).squeeze(1), self.y[0]),
            nn.functional.mse_loss(self.heads[1](z).squeeze(1), self.y[1]),
            nn.functional.cross_entropy(self.heads[2](z), self.y[2]),
        ]
        return losses, z


def bound(name: str, problem: Problem) -> Weighting:
    w = METHODS[name]()
    w.bind(["a", "b", "c"], KINDS, encoder=problem.encoder, baseline_losses=[None, None, 1.0])
    return w


def run_steps(w: Weighting, problem: Problem, steps: int, lr: float = 0.05) -> None:
    """A plain training loop; the weighting's own updates run after opt.step() by themselves."""
    opt = torch.optim.SGD(list(problem.parameters()) + list(w.parameters()), lr=lr)
    for step in range(steps):
        if step % 2 == 0:
            w.on_train_epoch_start()
        losses, z = problem.losses()
        opt.zero_grad()

        def recompute() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                again, _ = problem.losses()
            return torch.stack(again), torch.ones(3, dtype=torch.bool)

        w(losses, representation=z, recompute_losses=recompute).backward()
        opt.step()  # the weighting's post-step update runs by itself (optimizer hook)


@pytest.fixture(params=sorted(METHODS))
def method(request: pytest.FixtureRequest) -> str:
    return request.param


def test_finite_differentiable_scalar(method: str) -> None:
    problem = Problem()
    w = bound(method, problem)
    losses, z = problem.losses()
    out = w(losses, representation=z)
    assert out.dim() == 0 and torch.isfinite(out)
    out.backward()
    grads = [p.grad for p in problem.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert w.last_weights.shape == (3,) and torch.isfinite(w.last_weights).all()


def test_state_dict_round_trip_after_training(method: str) -> None:
    problem = Problem()
    w = bound(method, problem)
    run_steps(w, problem, steps=5)
    state = {k: v.clone() for k, v in w.state_dict().items()}
    fresh = bound(method, problem)
    fresh.load_state_dict(state)
    losses, z = problem.losses()
    out_a = w(losses, representation=z)
    losses, z = problem.losses()
    out_b = fresh(losses, representation=z)
    assert torch.allclose(out_a, out_b, rtol=1e-6, atol=1e-7)
    assert torch.allclose(w.last_weights, fresh.last_weights, rtol=1e-6, atol=1e-7)


def test_wrong_number_of_tasks_is_an_error(method: str) -> None:
    problem = Problem()
    w = bound(method, problem)
    losses, z = problem.losses()
    with pytest.raises(ValueError, match="expects 3 task losses, got 2"):
        w(losses[:2], representation=z)


def test_absent_task_contributes_zero_and_no_nan(method: str) -> None:
    problem = Problem()
    w = bound(method, problem)
    run_steps(w, problem, steps=3)
    losses, z = problem.losses()
    # task b has no label in this batch: its loss is 0 * pred, as Task.loss returns it
    losses[1] = problem.heads[1](z).sum() * 0.0
    out = w(losses, present=torch.tensor([True, False, True]), representation=z)
    out.backward()
    assert torch.isfinite(out) and w.last_weights[1].item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in problem.parameters() if p.grad is not None)
    assert torch.isfinite(w.last_weights).all()


def test_short_fit_trains_fp32_and_bf16(method: str) -> None:
    for precision in ("32-true", "bf16-mixed"):
        L.seed_everything(0)
        dm = small_data()
        module = small_module(dm, METHODS[method]())
        trainer = fast_trainer(max_epochs=3, precision=precision)
        trainer.fit(module, dm)
        assert trainer.global_step > 0
        assert all(torch.isfinite(p).all() for p in module.parameters())
        buffers = [b for b in module.weighting.buffers() if b.is_floating_point()]
        assert all(torch.isfinite(b).all() for b in buffers)


def test_module_rejects_weighting_for_other_task_count() -> None:
    dm = small_data()  # 3 tasks
    with pytest.raises(ValueError, match=r"num_tasks=2 but the module has 3 tasks"):
        small_module(dm, StaticWeighting([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"num_tasks=4 but the module has 3 tasks"):
        small_module(dm, GradNorm(num_tasks=4))


def test_bad_shared_target_is_an_error() -> None:
    dm = small_data()
    with pytest.raises(ValueError, match=r"shared target .blocks\.9."):
        small_module(dm, PCGrad(target="blocks.9"))
    module = small_module(dm, PCGrad(target="blocks.1"))  # a named encoder module works
    assert len(module.weighting.engine.params) == 2


def test_gradient_method_without_target_in_drop_in_call() -> None:
    w = MGDAUB(num_tasks=2)
    with pytest.raises(ValueError, match="needs the representation"):
        w([torch.tensor(1.0, requires_grad=True), torch.tensor(2.0, requires_grad=True)])
    w = PCGrad(num_tasks=2)
    with pytest.raises(ValueError, match="needs shared_parameters"):
        w([torch.tensor(1.0, requires_grad=True), torch.tensor(2.0, requires_grad=True)])


# ---------------------------------------------------------------------- pinned values
def gram(*vectors: list[float]) -> np.ndarray:
    m = np.array(vectors, dtype=float)
    return m @ m.T


# (label, computed, expected): each expected value worked out by hand in the comment
PINNED = [
    # two-task MGDA closed form, g1 = (1, 0), g2 = (0.5, 2):
    # gamma = ((g2 - g1) . g2) / ||g1 - g2||^2 = 3.75 / 4.25 = 15/17
    (
        "mgda two-task closed form",
        lambda: min_norm_coefficients(gram([1, 0], [0.5, 2])),
        [15 / 17, 2 / 17],
    ),
    # g1 = (1, 0), g2 = (0, 1): min-norm point (0.5, 0.5)
    ("mgda orthogonal", lambda: min_norm_coefficients(gram([1, 0], [0, 1])), [0.5, 0.5]),
    # g1 . g2 = -1 < 0: g1' = g1 + g2 / 2, g2' = g2 + g1 -> sum = 2 g1 + 1.5 g2
    (
        "pcgrad conflicting",
        lambda: pcgrad_coefficients(gram([1, 0], [-1, 1]), np.array([[0, 1], [1, 0]])),
        [2.0, 1.5],
    ),
    # no conflict (g1 . g2 = 1 > 0): unchanged sum
    (
        "pcgrad agreeing",
        lambda: pcgrad_coefficients(gram([1, 0], [1, 1]), np.array([[0, 1], [1, 0]])),
        [1.0, 1.0],
    ),
    # c = 0: the mean gradient
    (
        "cagrad c=0 is the mean",
        lambda: cagrad_coefficients(gram([1, 0], [-1, 3], [2, 2]), c=0.0),
        [1 / 3, 1 / 3, 1 / 3],
    ),
    # orthogonal, unnormalised: alpha_i = 1 / ||g_i|| = (1/2, 2)
    (
        "nash orthogonal",
        lambda: nash_mtl_coefficients(gram([2, 0], [0, 0.5]), normalize=False),
        [0.5, 2.0],
    ),
    # d = a g1 + (1 - a) g2 = (a, 2 - 2a); equal projections on u1, u2: a = 2 - 2a -> a = 2/3
    ("imtl-g orthogonal", lambda: imtl_g_coefficients(gram([1, 0], [0, 2])), [2 / 3, 1 / 3]),
    # G = diag(1, 4): B = sqrt(1) diag(1, 1/2) -> c = (1, 0.5), balanced grads (1,0), (0,1)
    ("aligned-mtl orthogonal", lambda: aligned_mtl_coefficients(gram([1, 0], [0, 2])), [1.0, 0.5]),
    # REFERENCE: T = 2, r = (0.5, 1.0), Temp = 2 -> (0.87565, 1.12435)
    (
        "dwa",
        lambda: dwa_weights(torch.tensor([0.5, 1.0]), torch.tensor([1.0, 1.0]), 2.0).numpy(),
        [0.87565, 1.12435],
    ),
    # w = (1, 1), ||grad L|| = (1, 3), L = L0: r = 1, G = (1, 3), target = 2 -> sign(-1, 1) * (1, 3)
    (
        "gradnorm dL/dw",
        lambda: gradnorm_weight_gradient(
            *map(torch.tensor, ([1.0, 1.0], [1.0, 3.0], [1.0, 1.0], [1.0, 1.0])), 1.5
        )[0],
        [-1.0, 3.0],
    ),
    # z = (1/2, 1/2), l = (1, 3): raw z/l = (1/2, 1/6) -> normalised (3/4, 1/4)
    (
        "famo weights",
        lambda: famo_weights(*map(torch.tensor, ([0.0, 0.0], [1.0, 3.0], [0.0, 0.0]))),
        [0.75, 0.25],
    ),
    # d = (log 2, 0), z . d = log2 / 2: z * (d - z.d) = (log2 / 4, -log2 / 4)
    (
        "famo logit gradient",
        lambda: famo_logit_gradient(
            *map(torch.tensor, ([0.0, 0.0], [1.0, 3.0], [0.5, 3.0], [0.0, 0.0]))
        ),
        [math.log(2) / 4, -math.log(2) / 4],
    ),
]


@pytest.mark.parametrize(("label", "computed", "expected"), PINNED, ids=[p[0] for p in PINNED])
def test_pinned_values(label: str, computed: Callable, expected: list[float]) -> None:
    assert np.asarray(computed(), dtype=float) == pytest.approx(expected, rel=1e-4, abs=1e-6)


LOSS_PINNED = [
    ("equal 3 tasks", EqualWeighting, KINDS, [1.0, 2.0, 3.0], 6.0, [1.0, 1.0, 1.0]),
    (
        "static (0.5, 2)",
        lambda: StaticWeighting([0.5, 2.0]),
        KINDS[:2],
        [2.0, 3.0],
        7.0,
        [0.5, 2.0],
    ),
    # s = 0: regression 0.5 * L, classification 1.0 * L, + 0.5 s = 0
    (
        "uncertainty s=0",
        UncertaintyWeighting,
        ["regression", "multiclass"],
        [2.0, 3.0],
        0.5 * 2.0 + 3.0,
        [0.5, 1.0],
    ),
    # the first two epochs: lambda = 1
    ("dwa first epochs", DWA, KINDS[:2], [2.0, 3.0], 5.0, [1.0, 1.0]),
    # xi = 0: w = (3/4, 1/4) for l = (1, 3) -> 0.75 + 0.75
    ("famo initial", FAMO, KINDS[:2], [1.0, 3.0], 1.5, [0.75, 0.25]),
]


@pytest.mark.parametrize(
    ("label", "factory", "kinds", "losses", "expected", "weights"),
    LOSS_PINNED,
    ids=[p[0] for p in LOSS_PINNED],
)
def test_pinned_loss_weightings(label, factory, kinds, losses, expected, weights) -> None:  # type: ignore[no-untyped-def]
    w = factory()
    w.bind([f"t{i}" for i in range(len(kinds))], kinds)
    out = w(torch.tensor(losses))
    assert out.item() == pytest.approx(expected, rel=1e-6)
    assert w.last_weights.tolist() == pytest.approx(weights, rel=1e-6)


@pytest.mark.parametrize("name", ["nash_mtl", "imtl_g", "aligned_mtl"])
def test_a_zero_initialised_head_still_trains(name: str) -> None:
    """A head initialised to zero has a zero gradient of the shared target: Nash-MTL gives it
    coefficient 1 (was 15635: its bias gradient 6.6e3 instead of 0.42), IMTL-G and Aligned-MTL
    the others' mean (was 0 and a frozen head, or d = 0); the others are solved among themselves."""
    problem = Problem()
    with torch.no_grad():
        problem.heads[0].weight.zero_()
        problem.heads[0].bias.zero_()
    w = bound(name, problem)
    losses, z = problem.losses()
    w(losses, representation=z).backward()
    c = w.last_weights
    others = c[1:].mean().item()
    assert c[0].item() == pytest.approx(1.0 if name == "nash_mtl" else others, rel=1e-5)
    own = torch.autograd.grad(problem.losses()[0][0], problem.heads[0].bias)[0]
    torch.testing.assert_close(problem.heads[0].bias.grad, c[0] * own, rtol=1e-5, atol=1e-7)
    assert problem.encoder[0].weight.grad.abs().sum() > 0  # the other tasks move the encoder


def test_gradient_methods_apply_the_coefficients_to_the_task_gradients() -> None:
    """Drop-in with explicit shared parameters: the backward equals sum_i c_i g_i exactly."""
    problem = Problem()
    params = list(problem.encoder.parameters())
    for factory in (MGDA, PCGrad, CAGrad, NashMTL, AlignedMTL, lambda: IMTLG(target="shared")):
        for with_z in (False, True):  # T encoder backwards / one batched pull-back from z
            w = factory()
            w.bind(["a", "b", "c"], KINDS)
            losses, z = problem.losses()
            per_task = [torch.autograd.grad(loss, params, retain_graph=True) for loss in losses]
            jac = torch.stack([torch.cat([g.flatten() for g in row]) for row in per_task])
            out = w(losses, shared_parameters=params, representation=z if with_z else None)
            got = torch.autograd.grad(out, params)
            c = w.last_weights
            for k, g in enumerate(got):
                expected = sum(c[i] * per_task[i][k] for i in range(3))
                assert torch.allclose(g, expected, atol=1e-6)
            # and c is the method's own function of that Jacobian's Gramian
            fresh = factory()
            fresh.bind(["a", "b", "c"], KINDS)
            ref = fresh.coefficients(
                (jac @ jac.T).double().numpy(), torch.stack(losses).detach().double().numpy()
            )
            assert c.double().numpy() == pytest.approx(ref, rel=1e-4, abs=1e-6)


def test_mgda_ub_coefficients_match_min_norm_of_representation_gradients() -> None:
    problem = Problem()
    w = MGDAUB(num_tasks=3)
    losses, z = problem.losses()
    rows = [torch.autograd.grad(loss, z, retain_graph=True)[0].flatten() for loss in losses]
    jac = torch.stack(rows).double()
    expected = min_norm_coefficients((jac @ jac.T).numpy())
    w(losses, representation=z)
    assert w.last_weights.double().numpy() == pytest.approx(expected, rel=1e-5)
    assert w.last_weights.sum().item() == pytest.approx(1.0, rel=1e-6)


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


def test_uncertainty_form_of_every_kind_and_its_stationary_point() -> None:
    """Each kind's term is the negative log-likelihood of its loss: MSE kinds Gaussian
    (exp(s*) = L), depth's L1 Laplace (exp(s*/2) = L), cross-entropy kinds classification
    (exp(s*) = 2 L), normals' 1 - cos von Mises-Fisher (exp(s*) = L); d/ds = 0 exactly there."""
    kinds = ["regression", "dense_regression", "depth", "normals", "binary", "segmentation"]
    w = UncertaintyWeighting(task_kinds=kinds)
    assert (
        w.forms == ["gaussian", "gaussian", "laplace", "von_mises_fisher"] + ["classification"] * 2
    )
    loss = 0.3
    stationary = [loss, loss, loss**2, loss, 2 * loss, 2 * loss]  # exp(s*)
    with torch.no_grad():
        w.log_vars.copy_(torch.log(torch.tensor(stationary)))
    w(torch.full((6,), loss)).backward()
    assert w.log_vars.grad.abs().max().item() < 1e-6
    # at s = 0 the weights are the forms' a: 0.5 for Gaussian, 1 otherwise
    assert UncertaintyWeighting(task_kinds=kinds)(torch.ones(6)).item() == pytest.approx(5.0)
    # an explicit form per task overrides the kind (a regression trained with L1)
    assert UncertaintyWeighting(forms=["laplace"]).forms == ["laplace"]
    with pytest.raises(ValueError, match="unknown uncertainty form"):
        UncertaintyWeighting(forms=["cauchy"])


def test_uncertainty_loads_a_checkpoint_with_the_old_is_regression_state() -> None:
    w = UncertaintyWeighting(task_kinds=["regression", "multiclass"])
    old = {"log_vars": torch.tensor([0.1, 0.2]), "is_regression": torch.tensor([True, False])}
    w.load_state_dict(old)
    assert w.log_vars.tolist() == pytest.approx([0.1, 0.2])


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


def test_gradnorm_weights_sum_to_t_and_stay_positive() -> None:
    problem = Problem()
    w = bound("gradnorm", problem)
    for _ in range(10):
        run_steps(w, problem, steps=1)
        assert w.w.sum().item() == pytest.approx(3.0, rel=1e-5)
        assert (w.w > 0).all()
    assert not torch.allclose(w.w, torch.ones(3))


def test_gradnorm_log_c_initial_loss() -> None:
    dm = small_data()  # cls0 has 3 classes
    module = small_module(dm, GradNorm(initial_loss="log_c"))
    init = module.weighting.initial_losses
    assert torch.isnan(init[0]) and init[2].item() == pytest.approx(math.log(3))


def test_rlw_weights_sum_to_one_and_change_per_step() -> None:
    w = RLW(num_tasks=3, seed=1)
    first = w.sample()
    assert first.sum().item() == pytest.approx(1.0)
    assert torch.equal(w.sample(), first)  # same step, same draw (accumulation, DDP ranks)
    w.on_optimizer_step()  # no training forward since the last update: nothing to do
    assert torch.equal(w.sample(), first)
    w(torch.ones(3, requires_grad=True))
    w.on_optimizer_step()
    w.on_optimizer_step()  # at most once per step
    assert int(w.step) == 1 and not torch.equal(w.sample(), first)


def test_famo_logits_move_toward_slower_task() -> None:
    w = FAMO(num_tasks=2)
    w(torch.tensor([1.0, 1.0]))
    # task 0 improved, task 1 did not: xi_0 should drop (FAMO raises the weight of the laggard)
    w.apply_losses_after_step(torch.tensor([0.5, 1.0]))
    assert w.logits[0] < w.logits[1]


def test_dwa_closes_epochs_at_the_next_epoch_start() -> None:
    w = DWA(num_tasks=2)
    for epoch_losses in ([1.0, 1.0], [0.5, 1.0]):
        w.on_train_epoch_start()
        w(torch.tensor(epoch_losses))
        w(torch.tensor(epoch_losses))
    assert w.last_weights.tolist() == [1.0, 1.0]
    w.on_train_epoch_start()  # closes the 2nd epoch: r = (0.5, 1.0)
    w(torch.tensor([0.4, 0.9]))
    assert w.last_weights.tolist() == pytest.approx([0.87565, 1.12435], rel=1e-4)


def test_task_views_backward_sums_and_hands_every_task_gradient_to_a_listener() -> None:
    from lit_mtl import task_views
    from lit_mtl.engines.views import set_views_listener

    u = torch.randn(4, 3, requires_grad=True)
    z = u * 1.0
    views = task_views(z, 3)
    assert len(views) == 3 and all(v.shape == z.shape for v in views)
    losses = [(views[i] * (i + 1)).sum() for i in range(3)]
    # autograd.grad w.r.t. the views: each task's own gradient, the node is not run
    per_task = torch.autograd.grad(sum(losses), views, retain_graph=True)
    for i, g in enumerate(per_task):
        torch.testing.assert_close(g, torch.full((4, 3), float(i + 1)))
    received = []
    set_views_listener(views, lambda grads: received.append([g.clone() for g in grads]))
    sum(losses).backward()
    torch.testing.assert_close(u.grad, torch.full((4, 3), 6.0))  # 1 + 2 + 3
    assert len(received) == 1 and [float(g[0, 0]) for g in received[0]] == [1.0, 2.0, 3.0]
    modified = task_views(u * 1.0, 2)
    modified[0].add_(1.0)  # a head that writes into its input: caught by the backward
    with pytest.raises(RuntimeError, match="inplace"):
        (modified[0] + modified[1]).sum().backward()
    frozen = torch.ones(2, 2)
    assert all(v is frozen for v in task_views(frozen, 2))
    with pytest.raises(ValueError, match="num_tasks"):
        task_views(z, 0)


def test_elementwise_chain_names_the_diagonal_ops_between_a_layer_and_z() -> None:
    from lit_mtl.engines.layer_norms import elementwise_chain

    u = torch.nn.Linear(3, 4)(torch.randn(5, 3))
    assert elementwise_chain(u, u) == ()
    assert elementwise_chain(torch.relu(u), u) == ("ReluBackward0",)
    assert elementwise_chain(torch.tanh(u) * 2.0, u) == ("MulBackward0", "TanhBackward0")
    other = torch.randn(5, 4, requires_grad=True)
    assert elementwise_chain(u * other, u) is None  # a second differentiable input
    assert elementwise_chain(torch.nn.BatchNorm1d(4)(u), u) is None
    assert elementwise_chain(u[:1] * torch.ones(5, 4), u[:1]) is None  # broadcast: not diagonal


@pytest.mark.parametrize("seed", range(5))
def test_two_task_min_norm_closed_form_is_the_minimum_over_the_segment(seed: int) -> None:
    g = torch.randn(2, 6, generator=torch.Generator().manual_seed(seed)).double()
    g[1] *= 0.2 + 3 * seed  # different norms, some pairs in conflict
    gramian = (g @ g.T).numpy()
    a = min_norm_coefficients(gramian)
    gammas = np.linspace(0.0, 1.0, 20001)
    norms = [float(np.sum((t * g[0] + (1 - t) * g[1]).numpy() ** 2)) for t in gammas]
    best = gammas[int(np.argmin(norms))]
    assert a.sum() == pytest.approx(1.0) and a.min() >= 0
    assert a[0] == pytest.approx(best, abs=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_cagrad_matches_the_authors_slsqp_solution(seed: int) -> None:
    """The authors solve CAGrad's inner problem with SciPy's SLSQP on the Gramian (their
    ``cagrad`` function); our projected gradient descent reaches the same coefficients."""
    minimize = pytest.importorskip("scipy.optimize").minimize
    grads = torch.randn(4, 20, generator=torch.Generator().manual_seed(seed)).double()
    grads[0] *= 5.0
    gg = (grads @ grads.T).numpy()
    t, c = 4, 0.4
    x_start = np.ones(t) / t
    g0_norm = np.sqrt(gg.mean() + 1e-8)
    radius = c * g0_norm + 1e-8

    def objective(x: np.ndarray) -> float:
        return float(x @ gg @ x_start + radius * np.sqrt(x @ gg @ x + 1e-8))

    res = minimize(
        objective,
        x_start,
        bounds=[(0, 1)] * t,
        constraints={"type": "eq", "fun": lambda x: 1 - sum(x)},
        options={"ftol": 1e-12, "maxiter": 1000},
    )
    ww = res.x
    gw_norm = np.sqrt(ww @ gg @ ww + 1e-8)
    authors = (x_start + radius / (gw_norm + 1e-8) * ww) / (1 + c**2)
    ours = cagrad_coefficients(gg, c=c)
    np.testing.assert_allclose(ours, authors, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["mgda", "pcgrad", "imtl_g", "aligned_mtl", "gradnorm"])
def test_gradient_methods_are_invariant_to_an_fp16_loss_scale(name: str) -> None:
    """As under a GradScaler: the per-task gradients are taken of scale * L_i and unscaled, and
    the returned scalar is backpropagated times the scale; coefficients, GradNorm's update and
    the gradients divided by the scale equal the unscaled run's."""
    from lit_mtl import task_views

    results = []
    for scale in (None, 2.0**12):
        problem = Problem()
        w = bound(name, problem)
        params = list(problem.parameters())
        z = problem.encoder(problem.x)
        views = task_views(z, 3)
        losses = [
            nn.functional.mse_loss(problem.heads[0](views[0]).squeeze(1), problem.y[0]),
            nn.functional.mse_loss(problem.heads[1](views[1]).squeeze(1), problem.y[1]),
            nn.functional.cross_entropy(problem.heads[2](views[2]), problem.y[2]),
        ]
        out = w(
            losses,
            representation=z,
            task_representations=views,
            heads=problem.heads,  # as MultiTaskModule does
            loss_scale=scale,
        )
        grads = torch.autograd.grad(out * (scale or 1.0), params)
        w.on_optimizer_step()  # no optimizer here: the post-step update by hand
        unscaled = [g / (scale or 1.0) for g in grads]
        state = {k: v.clone() for k, v in w.state_dict().items()}
        results.append((w.last_weights.clone(), unscaled, state))
        if name == "gradnorm":  # the single-backward path ran and moved w
            assert not torch.equal(state["w"], torch.ones(3)) and state["pending_count"] == 0
    (c0, g0, s0), (c1, g1, s1) = results
    torch.testing.assert_close(c1, c0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for key, value in s0.items():
        torch.testing.assert_close(s1[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_db_mtl_gradients_follow_the_authors_formula() -> None:
    """Two steps by hand (the authors' code, beta = 0.9, beta_sigma = 0): encoder gradient
    sum_i (max_j ||b_j|| / ||b_i||) b_i with b the EMA of the gradients of log L_i; heads get
    the gradient of sum_i log L_i."""
    problem = Problem()
    w = bound("db_mtl", problem)
    shared = list(problem.encoder.parameters())
    heads = list(problem.heads.parameters())
    buffer = torch.zeros(3, sum(p.numel() for p in shared))
    for _ in range(2):
        losses, z = problem.losses()
        logs = [torch.log(loss + 1e-8) for loss in losses]
        g = torch.stack(
            [
                torch.cat(
                    [x.reshape(-1) for x in torch.autograd.grad(v, shared, retain_graph=True)]
                )
                for v in logs
            ]
        )
        buffer = g + 0.9 * (buffer - g)
        norms = buffer.norm(dim=1)
        expected = ((norms.max() / (norms + 1e-8))[:, None] * buffer).sum(0)
        expected_heads = torch.autograd.grad(sum(logs), heads, retain_graph=True)
        problem.zero_grad()
        out = w(losses, representation=z, heads=problem.heads)
        assert out.item() == pytest.approx(sum(v.item() for v in logs), rel=1e-6)
        out.backward()
        got = torch.cat([p.grad.reshape(-1) for p in shared])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
        for p, e in zip(heads, expected_heads, strict=True):
            torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)
        with torch.no_grad():
            for p in problem.parameters():
                p -= 0.05 * p.grad
        w.on_optimizer_step()
    assert int(w.step) == 2


def test_db_mtl_refuses_the_representation_target() -> None:
    with pytest.raises(ValueError, match="target='representation' is not supported"):
        DBMTL(target="representation")


@pytest.mark.parametrize("name", ["gradnorm", "famo"])
def test_state_updates_agree_on_numpy_views_and_on_tensors(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The post-step rules run on numpy views of CPU state and on the tensors themselves (as on
    an accelerator): the same state after a few steps."""
    states = []
    for on_tensors in (False, True):
        if on_tensors:  # the accelerator branch of state_arrays, on the CPU
            monkeypatch.setattr(
                Weighting,
                "state_arrays",
                lambda self, *names: {n: getattr(self, n) for n in names},
            )
        problem = Problem()
        w = bound(name, problem)
        run_steps(w, problem, steps=5)
        states.append({k: v.clone() for k, v in w.state_dict().items()})
    numpy_state, tensor_state = states
    assert numpy_state.keys() == tensor_state.keys()
    for key, value in numpy_state.items():
        torch.testing.assert_close(tensor_state[key], value, rtol=1e-6, atol=1e-7, msg=key)


def test_build_runs_after_the_subclass_init_whatever_its_order() -> None:
    from lit_mtl.weighting.base import Weighting as Base

    class LateField(Base):
        def __init__(self, num_tasks: int | None = None, scale: float = 2.0) -> None:
            super().__init__(num_tasks=num_tasks)
            self.scale = scale  # set after super().__init__: build must still see it

        def build(self, num_tasks: int, task_kinds) -> None:  # type: ignore[no-untyped-def]
            self.add_state("weights", torch.full((num_tasks,), self.scale))

        def combine(self, ctx):  # type: ignore[no-untyped-def]
            return self._weighted_sum(self.weights, ctx.stacked, ctx.present)

    class Inherits(LateField):
        def __init__(self, num_tasks: int | None = None) -> None:
            super().__init__(num_tasks=num_tasks, scale=3.0)

    assert LateField(num_tasks=2).weights.tolist() == [2.0, 2.0]
    assert Inherits(num_tasks=3).weights.tolist() == [3.0, 3.0, 3.0]  # built once, at the end
    assert not hasattr(LateField(), "weights")  # T unknown: built when a module binds it
    with pytest.warns(DeprecationWarning, match="_build is now spelt build"):

        class Legacy(Base):
            def _build(self, num_tasks: int, task_kinds) -> None:  # type: ignore[no-untyped-def]
                self.add_state("weights", torch.ones(num_tasks))

    assert Legacy(num_tasks=2).weights.tolist() == [1.0, 1.0]
