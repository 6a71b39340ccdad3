"""The Gramian solvers on the path training takes: a float32 (or bf16) Jacobian, its Gramian
formed by the engines (:meth:`TaskJacobian.gramian`, in the method's ``gramian_dtype``), handed to
the rule as float64.

Each case is a seeded Jacobian of a kind that breaks solvers (rank-deficient, a zero row, a
duplicated task, norms over six orders of magnitude, T > P, a Pareto-stationary set). For every
solver the update d = J^T c from the real path is compared with the same rule on the float64
Gramian of the same Jacobian (the exact answer for that input), and each claim the method's paper
makes is checked on the real path's answer, with the tolerance stated beside it. The last tests
reproduce one reported defect each, with the inputs it was reported with.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from lit_mtl import weighting
from lit_mtl.engines import TaskJacobian
from lit_mtl.functional import (
    aligned_mtl_coefficients,
    cagrad_coefficients,
    imtl_g_coefficients,
    min_norm_coefficients,
    nash_mtl_coefficients,
    pcgrad_coefficients,
    upgrad_coefficients,
)


def _pcgrad(g: np.ndarray) -> np.ndarray:
    return pcgrad_coefficients(g, np.tile(np.arange(g.shape[0]), (g.shape[0], 1)))


RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mgda": min_norm_coefficients,
    "pcgrad": _pcgrad,
    "cagrad": cagrad_coefficients,
    "imtl_g": imtl_g_coefficients,
    "nash_mtl": nash_mtl_coefficients,
    "aligned_mtl": aligned_mtl_coefficients,
    "upgrad": upgrad_coefficients,
}


def _jacobian(case: str, seed: int) -> torch.Tensor:
    """A float64 (T, P) Jacobian of the named kind."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    if case == "random":
        return randn(4, 50)
    if case == "conflicting":  # every pair at an obtuse angle: rows around a simplex
        base = torch.eye(3, dtype=torch.float64) - 1 / 3
        return torch.cat([base, 0.05 * randn(3, 20)], dim=1)
    if case == "rank_deficient":  # [a, b, a + b, a + noise]: rank 3
        a, b = randn(2, 50)
        return torch.stack([a, b, a + b, a + 0.1 * randn(50)])
    if case == "zero_row":
        j = randn(3, 30)
        j[1] = 0.0
        return j
    if case == "duplicated":
        j = randn(3, 30)
        return torch.cat([j, j[:1]])
    if case == "six_orders":  # norms 1e-3 .. 1e3
        return randn(4, 40) * torch.tensor([1e-3, 1e-1, 1e1, 1e3], dtype=torch.float64)[:, None]
    if case == "t_above_p":
        return randn(6, 3)
    raise ValueError(case)


CASES = ["random", "conflicting", "rank_deficient", "zero_row", "duplicated", "six_orders"]
CASES += ["t_above_p"]

#: (rule, case) pairs whose exact answer is ill-posed: 6 random rows in R^3 have 0 in their
#: convex hull, where Nash-MTL's G alpha = 1 / alpha has no solution (a ridge decides)
ILL_POSED = {("nash_mtl", "t_above_p")}


#: the method each rule belongs to (its Gramian precision)
METHOD_OF = {
    "mgda": weighting.MGDA,
    "pcgrad": weighting.PCGrad,
    "cagrad": weighting.CAGrad,
    "imtl_g": weighting.IMTLG,
    "nash_mtl": weighting.NashMTL,
    "aligned_mtl": weighting.AlignedMTL,
    "upgrad": weighting.UPGrad,
}


def _path_gramian(j: torch.Tensor, name: str = "mgda") -> np.ndarray:
    """The Gramian as training forms it for method ``name``: a float32 J through the engine's
    TaskJacobian, in the method's precision."""
    dtype = METHOD_OF[name].gramian_dtype
    return TaskJacobian([j.float()], "mean").gramian(dtype).double().numpy()


def _exact_gramian(j: torch.Tensor) -> np.ndarray:
    j = j.double()
    return (j @ j.T).numpy()


def _direction(j: torch.Tensor, c: np.ndarray) -> np.ndarray:
    return j.double().numpy().T @ c


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", sorted(RULES))
def test_the_real_path_gives_the_float64_answer(name: str, case: str, dtype: torch.dtype) -> None:
    """||d_path - d_exact|| <= r ||d_exact|| + 1e-6 max ||g_i|| with r = max(1e-4, T eps32 kappa),
    kappa the condition number of G on its range (float32 and bf16 J: the exact answer is the
    rule on the float64 Gramian of the same, rounded, Jacobian; a float32 Gramian is exact to
    eps32 relative to its largest eigenvalue, so an ill-conditioned G loses kappa of it)."""
    if (name, case) in ILL_POSED:
        pytest.skip("no exact answer to compare with (see ILL_POSED)")
    rule = RULES[name]
    j = _jacobian(case, seed=0).to(dtype).float()
    path = rule(_path_gramian(j, name))
    exact = rule(_exact_gramian(j))
    assert path.shape == (j.shape[0],) and np.isfinite(path).all()
    d_path, d_exact = _direction(j, path), _direction(j, exact)
    eig = np.linalg.eigvalsh(_exact_gramian(j))
    kept = eig[eig > eig.max() * len(eig) * np.finfo(np.float32).eps]
    relative = max(1e-4, len(eig) * np.finfo(np.float32).eps * kept.max() / kept.min())
    bound = relative * np.linalg.norm(d_exact) + 1e-6 * float(j.double().norm(dim=1).max())
    assert np.linalg.norm(d_path - d_exact) <= bound


@pytest.mark.parametrize("case", CASES)
def test_non_conflicting_methods_conflict_with_no_task_on_the_real_path(case: str) -> None:
    """MGDA: g_i . d >= -1e-6 ||g_i|| max_j ||g_j|| for every task (d may be ~0: then it is
    Pareto-stationary). UPGrad guarantees it for the Gramian it solves with, G + reg_eps tr(G) I
    (as TorchJD's): (G + reg_eps tr(G) I) c >= -1e-9 tr(G); with norms 1e-3 .. 1e3 the ridge is
    larger than the small tasks' squared norms, and with 0 in the convex hull (T > P here) the
    ridge decides the direction, so G c alone may be negative in those two cases."""
    j = _jacobian(case, seed=1).float()
    g = j.double().numpy()
    norms = np.linalg.norm(g, axis=1)
    d = _direction(j, min_norm_coefficients(_path_gramian(j)))
    assert (g @ d >= -1e-6 * norms * norms.max()).all()
    gramian = _path_gramian(j, "upgrad")
    trace = float(np.trace(gramian))
    c = upgrad_coefficients(gramian)
    assert ((gramian + 1e-4 * trace * np.eye(len(c))) @ c >= -1e-9 * trace).all()
    if case not in ("six_orders", "t_above_p"):
        assert (g @ _direction(j, c) >= -1e-6 * norms * norms.max()).all()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", sorted(RULES))
def test_permutation_equivariance_on_the_real_path(name: str, case: str) -> None:
    if (name, case) in ILL_POSED:
        pytest.skip("no exact answer to compare with (see ILL_POSED)")
    j = _jacobian(case, seed=2).float()
    perm = np.random.default_rng(0).permutation(j.shape[0])
    if name == "pcgrad":  # its orders move with the tasks
        orders = np.tile(np.arange(j.shape[0]), (j.shape[0], 1))
        reference = pcgrad_coefficients(_path_gramian(j, name), orders)
        permuted = pcgrad_coefficients(_path_gramian(j[perm], name), np.argsort(perm)[orders[perm]])
    else:
        reference = RULES[name](_path_gramian(j, name))
        permuted = RULES[name](_path_gramian(j[perm], name))
    d, d_perm = _direction(j, reference), _direction(j[perm], permuted)
    assert np.linalg.norm(d_perm - d) <= 1e-4 * np.linalg.norm(d) + 1e-9


@pytest.mark.parametrize("name", sorted(RULES))
def test_scale_behaviour_on_the_real_path(name: str) -> None:
    """J scaled by 1e-3 and 1e3: the coefficients are unchanged (every method but Nash-MTL);
    Nash-MTL's scale as 1 / scale, so that d, with ||d|| = sqrt(T), is unchanged."""
    j = _jacobian("random", seed=3).float()
    base = RULES[name](_path_gramian(j, name))
    for scale in (1e-3, 1e3):
        scaled = RULES[name](_path_gramian(j * scale, name))
        expected = base / scale if name == "nash_mtl" else base
        np.testing.assert_allclose(scaled, expected, rtol=1e-4, atol=1e-8 * np.abs(expected).max())


def _pareto_stationary(seed: int, t: int = 20, p: int = 100) -> torch.Tensor:
    """t rows with 0 strictly inside their convex hull (positive weights w give sum w_i g_i = 0)."""
    gen = torch.Generator().manual_seed(seed)
    j = torch.randn(t, p, generator=gen, dtype=torch.float64)
    w = torch.rand(t, generator=gen, dtype=torch.float64) + 0.1
    j[-1] = -(w[:-1, None] * j[:-1]).sum(0) / w[-1]
    return j


@pytest.mark.parametrize("seed", range(3))
def test_mgda_finds_pareto_stationarity(seed: int) -> None:
    """0 inside the hull: the min-norm point is 0 (||d|| <= 1e-5 max ||g_i||)."""
    j = _pareto_stationary(seed).float()
    d = _direction(j, min_norm_coefficients(_path_gramian(j)))
    assert np.linalg.norm(d) <= 1e-5 * float(j.double().norm(dim=1).max())


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("c", [0.4, 2.0])
def test_cagrad_stays_in_its_trust_region(seed: int, c: float) -> None:
    """||d - g0|| <= c ||g0|| (rescale=0), to 1e-4, also near a Pareto-stationary point."""
    j = _pareto_stationary(seed).float()
    d = _direction(j, cagrad_coefficients(_path_gramian(j, "cagrad"), c=c, rescale=0))
    g0 = j.double().numpy().mean(axis=0)
    assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-4)


@pytest.mark.parametrize("case", ["random", "conflicting", "six_orders", "duplicated", "zero_row"])
def test_nash_mtl_solves_the_bargaining_equations(case: str) -> None:
    """alpha_i (G alpha)_i = 1 to 1e-5 (float32 G; tasks with a gradient), so ||d|| = sqrt(T')
    for the T' tasks with a non-zero gradient."""
    j = _jacobian(case, seed=4).float()
    g = _exact_gramian(j)
    alpha = nash_mtl_coefficients(_path_gramian(j, "nash_mtl"))
    live = np.diag(g) > 0
    np.testing.assert_allclose((alpha * (g @ alpha))[live], 1.0, rtol=1e-5)
    assert np.sqrt(alpha @ g @ alpha) == pytest.approx(np.sqrt(live.sum()), rel=1e-5)


@pytest.mark.parametrize("case", ["random", "conflicting", "six_orders", "duplicated", "zero_row"])
def test_imtl_g_gives_equal_projections(case: str) -> None:
    """d . u_i equal (to 1e-5 relative, float32 G) on every task with a gradient; coefficients
    sum to 1 over those tasks."""
    j = _jacobian(case, seed=5).float()
    g = j.double().numpy()
    coef = imtl_g_coefficients(_path_gramian(j, "imtl_g"))
    live = np.linalg.norm(g, axis=1) > 0
    projections = (g[live] @ (g.T @ coef)) / np.linalg.norm(g[live], axis=1)
    np.testing.assert_allclose(projections, projections.mean(), rtol=1e-5)
    assert coef[live].sum() == pytest.approx(1.0, abs=1e-9) and projections.mean() > 0


# ----------------------------------------------------------------- the reported defects


def test_aligned_mtl_does_not_collapse_on_dependent_gradients() -> None:
    """[a, b, a + b, a + 0.1 noise] (rank 3): ||d|| = 1.0017 from the float64 Gramian; the float32
    round-off eigenvalue once became l_min (||d|| 0.0015)."""
    torch.manual_seed(0)
    a, b = torch.randn(2, 50)
    j = torch.stack([a, b, a + b, a + 0.1 * torch.randn(50)])
    d = _direction(j, aligned_mtl_coefficients(_path_gramian(j, "aligned_mtl")))
    assert np.linalg.norm(d) == pytest.approx(1.0017, abs=1e-3)
    off = 0
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        a, b, noise = torch.randn(3, 50, generator=gen)
        j = torch.stack([a, b, a + b, a + 0.1 * noise])
        d_path = _direction(j, aligned_mtl_coefficients(_path_gramian(j, "aligned_mtl")))
        d_exact = _direction(j, aligned_mtl_coefficients(_exact_gramian(j)))
        off += np.linalg.norm(d_path - d_exact) > 0.1 * np.linalg.norm(d_exact)
    assert off == 0


def test_cagrad_trust_region_near_pareto_stationarity_on_the_engine_path() -> None:
    """c = 2, rescale = 0 near a Pareto-stationary point: ||d - g0|| / (c ||g0||) <= 1 (it was
    1.086 from a float32 Gramian for this seed)."""
    j = _pareto_stationary(0).float()
    d = _direction(j, cagrad_coefficients(_path_gramian(j, "cagrad"), c=2.0, rescale=0))
    g0 = j.double().numpy().mean(axis=0)
    assert np.linalg.norm(d - g0) / (2.0 * np.linalg.norm(g0)) <= 1.0 + 1e-6


@pytest.mark.parametrize("normalize", [True, False])
def test_nash_mtl_update_size_is_the_papers_at_every_scale(normalize: bool) -> None:
    """randn(3, 40) scaled by 1 / 1e-2 / 1e-4: ||d|| = sqrt(3) = 1.732 at each (the normalised
    solve once gave 15.2 / 0.152 / 0.0015)."""
    torch.manual_seed(0)
    j = torch.randn(3, 40)
    for scale in (1.0, 1e-2, 1e-4):
        js = j * scale
        alpha = nash_mtl_coefficients(_path_gramian(js, "nash_mtl"), normalize=normalize)
        assert np.linalg.norm(_direction(js, alpha)) == pytest.approx(np.sqrt(3), rel=1e-6)


def test_nash_mtl_with_zero_task_gradients() -> None:
    """All zero: weights 1 (was inf); one zero row: that task 1 (was ~1.5e4), the others the
    two-task Nash solution."""
    np.testing.assert_array_equal(nash_mtl_coefficients(np.zeros((3, 3))), [1.0, 1.0, 1.0])
    j = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    j[0] = 0.0
    alpha = nash_mtl_coefficients(_path_gramian(j, "nash_mtl"))
    assert alpha[0] == 1.0
    np.testing.assert_allclose(
        alpha[1:], nash_mtl_coefficients(_path_gramian(j[1:], "nash_mtl")), rtol=1e-9
    )


def test_imtl_g_with_a_zero_task_gradient() -> None:
    """Row 0 of default_rng(0).standard_normal((3, 10)) zeroed: the other two get equal
    projections 1.5095 (was coefficients [1, 0, 0], d = 0); the zero task their mean."""
    j = np.random.default_rng(0).standard_normal((3, 10))
    j[0] = 0.0
    coef = imtl_g_coefficients(j @ j.T)
    d = j.T @ coef
    projections = j[1:] @ d / np.linalg.norm(j[1:], axis=1)
    np.testing.assert_allclose(projections, [1.5095, 1.5095], atol=1e-4)
    assert coef[0] == pytest.approx(coef[1:].mean())
