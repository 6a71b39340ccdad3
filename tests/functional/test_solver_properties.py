"""One property harness over every Gramian solver (as TorchJD's aggregator asserts): each property
runs for every solver that claims it, on random and degenerate Gramians."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from lit_mtl.functional import (
    aligned_mtl_coefficients,
    cagrad_coefficients,
    db_mtl_scales,
    imtl_g_coefficients,
    min_norm_coefficients,
    nash_mtl_coefficients,
    pcgrad_coefficients,
    upgrad_coefficients,
)


@dataclass(frozen=True)
class Solver:
    rule: Callable[[np.ndarray], np.ndarray]
    scale_invariant: bool = True
    #: c(s G) = s^power c(G) (Nash-MTL: -1/2, so that d = J^T c is unchanged)
    scale_power: float = 0.0
    non_conflicting: bool = False  # g_i . d >= 0 for every task (d = J^T c)
    non_negative: bool = False
    sums_to_one: bool = False
    tolerance: float = 1e-6
    #: below this trace the rule treats G as zero (UPGrad's norm_eps, as the authors' code)
    min_trace: float = 0.0


def _pcgrad(g: np.ndarray) -> np.ndarray:  # fixed orders: the identity permutation per task
    return pcgrad_coefficients(g, np.tile(np.arange(g.shape[0]), (g.shape[0], 1)))


SOLVERS = {
    "mgda": Solver(
        min_norm_coefficients, non_conflicting=True, non_negative=True, sums_to_one=True
    ),
    "pcgrad": Solver(_pcgrad),
    "cagrad": Solver(cagrad_coefficients, non_negative=True, tolerance=1e-4),
    "imtl_g": Solver(imtl_g_coefficients, sums_to_one=True),
    "nash_mtl": Solver(nash_mtl_coefficients, non_negative=True, tolerance=1e-5, scale_power=-0.5),
    "aligned_mtl": Solver(aligned_mtl_coefficients),
    "upgrad": Solver(upgrad_coefficients, non_conflicting=True, non_negative=True, min_trace=1e-4),
}


def random_gramian(t: int, seed: int, dim: int = 12) -> np.ndarray:
    j = np.random.default_rng(seed).normal(size=(t, dim))
    return j @ j.T


@pytest.fixture(params=sorted(SOLVERS))
def solver(request: pytest.FixtureRequest) -> Solver:
    return SOLVERS[request.param]


@pytest.mark.parametrize("seed", range(3))
def test_structure_of_the_weights(solver: Solver, seed: int) -> None:
    g = random_gramian(4, seed)
    c = solver.rule(g)
    assert c.shape == (4,) and np.isfinite(c).all()
    if solver.non_negative:
        assert (c >= -1e-9).all()
    if solver.sums_to_one:
        assert c.sum() == pytest.approx(1.0, abs=1e-6)
    if solver.non_conflicting:  # g_i . d = (G c)_i >= 0
        assert (g @ c >= -1e-6 * np.abs(g).max()).all()


@pytest.mark.parametrize("seed", range(3))
def test_permutation_equivariance(solver: Solver, seed: int) -> None:
    g = random_gramian(4, seed)
    perm = np.random.default_rng(seed + 10).permutation(4)
    if solver.rule is _pcgrad:  # its orders move with the tasks
        orders = np.tile(np.arange(4), (4, 1))
        permuted = pcgrad_coefficients(g[np.ix_(perm, perm)], np.argsort(perm)[orders[perm]])
        reference = pcgrad_coefficients(g, orders)
    else:
        permuted = solver.rule(g[np.ix_(perm, perm)])
        reference = solver.rule(g)
    np.testing.assert_allclose(permuted, reference[perm], rtol=1e-4, atol=solver.tolerance)


@pytest.mark.parametrize("scale", [1e-6, 1e4])
def test_invariance_to_a_uniform_scale(solver: Solver, scale: float) -> None:
    if not solver.scale_invariant:
        pytest.skip("not claimed")
    g = random_gramian(3, 7)
    if np.trace(g) * scale < solver.min_trace:
        scale = 1.01 * solver.min_trace / np.trace(g)  # the smallest scale the rule resolves
    expected = solver.rule(g) * scale**solver.scale_power
    np.testing.assert_allclose(
        solver.rule(g * scale), expected, rtol=1e-4, atol=solver.tolerance * np.abs(expected).max()
    )


def test_one_task(solver: Solver) -> None:
    c = solver.rule(np.array([[4.0]]))
    assert c.shape == (1,) and np.isfinite(c).all() and c[0] > 0


def test_identical_gradients(solver: Solver) -> None:
    g = np.full((3, 3), 2.0)  # three copies of one gradient
    c = solver.rule(g)
    assert np.isfinite(c).all() and c.sum() > 0  # the update points along that gradient


def test_a_zero_gradient(solver: Solver) -> None:
    g = random_gramian(3, 3)
    g[1, :] = g[:, 1] = 0.0
    c = solver.rule(g)
    assert np.isfinite(c).all()
    if solver.non_conflicting:
        assert (g @ c >= -1e-6 * np.abs(g).max()).all()


def test_upgrad_is_the_weighted_mean_without_conflict_and_projects_under_conflict() -> None:
    # orthogonal gradients: nothing to project, the mean (p = 1/T)
    np.testing.assert_allclose(upgrad_coefficients(np.diag([1.0, 4.0, 9.0])), [1 / 3] * 3)
    # g1 = (1, 0), g2 = (-1, 1): each projected onto the dual cone, by hand
    g = np.array([[1.0, -1.0], [-1.0, 2.0]])
    c = upgrad_coefficients(g, norm_eps=0.0, reg_eps=0.0)
    # g1/2 conflicts with g2: v = (1/2, 1/4) (g2 . d = 0); g2/2 conflicts with g1: v = (1/2, 1/2)
    np.testing.assert_allclose(c, [1.0, 0.75], atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_upgrad_projection_matches_a_general_qp_solver(seed: int) -> None:
    from scipy.optimize import minimize

    from lit_mtl.functional import dual_cone_projection_weights

    g = random_gramian(5, seed, dim=4) + 1e-3 * np.eye(5)  # rank-deficient plus ridge
    u = np.random.default_rng(seed).uniform(-0.5, 1.0, size=5)
    ours = dual_cone_projection_weights(g, u)
    ref = minimize(
        lambda v: v @ g @ v,
        x0=np.maximum(u, 0) + 1.0,
        jac=lambda v: 2 * g @ v,
        bounds=[(ui, None) for ui in u],
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    ).x
    assert ours @ g @ ours <= ref @ g @ ref + 1e-9
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_db_mtl_scales_give_every_gradient_the_largest_norm() -> None:
    norms = torch.tensor([0.5, 2.0, 8.0])
    scales = db_mtl_scales(norms)
    torch.testing.assert_close(scales * norms, torch.full((3,), 8.0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(db_mtl_scales(norms * 1e3), scales, rtol=1e-5, atol=1e-6)
    masked = db_mtl_scales(norms, torch.tensor([True, True, False]))
    torch.testing.assert_close(masked, torch.tensor([4.0, 1.0, 0.0]), rtol=1e-6, atol=1e-6)
