"""Pure functions: task coefficients from the T x T Gramian of the per-task gradients.

Every aggregator here returns coefficients ``c`` (T,) such that the update direction is
``d = sum_i c_i g_i``; the caller then backpropagates ``sum_i c_i L_i`` once. All of them only read
the Gramian ``G_ij = g_i . g_j`` (never the gradients themselves), and all are invariant to a
uniform scaling of G except where stated, which makes them safe under fp16 loss scaling.

The solvers run in float64 on the CPU (T x T problems are tiny). A Gramian formed from float32
gradients with float32 products (the training path of most methods, and the authors' codes)
carries an absolute error of about eps32 * ||g||^2: a rank decision is made at float32's
precision (Aligned-MTL, IMTL-G), and a small norm read from G (CAGrad's sqrt(w^T G w) near a
Pareto-stationary point) needs G accumulated in float64
(:meth:`~lit_mtl.engines.TaskJacobian.gramian`).

A task with a zero gradient (its Gramian row exactly zero, or its squared norm below
``ZERO_GRADIENT_RTOL`` times the largest) has no say in the shared direction; what it gets is
stated in each rule's docstring: where the paper's formula is undefined for it (Nash-MTL, IMTL-G,
Aligned-MTL) the rule runs on the other tasks and the zero-gradient task gets a neutral
coefficient, so that its own head still trains on its loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _as_numpy(gramian: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(gramian, Tensor):
        gramian = gramian.detach().to("cpu", torch.float64).numpy()
    g = np.asarray(gramian, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"the Gramian must be a square T x T matrix, got shape {g.shape}")
    return 0.5 * (g + g.T)


#: a task whose squared gradient norm is at most this fraction of the largest counts as zero
ZERO_GRADIENT_RTOL = 1e-20

#: the precision of the task gradients (float32): below it, a Gramian's eigenvalues are round-off
GRADIENT_EPS = float(np.finfo(np.float32).eps)


def _nonzero_tasks(g: np.ndarray) -> np.ndarray:
    """Indices of the tasks whose gradient is not zero (see ``ZERO_GRADIENT_RTOL``)."""
    diag = np.diag(g)
    largest = float(np.max(diag)) if diag.size else 0.0
    if largest <= 0.0:
        return np.zeros(0, dtype=int)
    return np.flatnonzero(diag > ZERO_GRADIENT_RTOL * largest)


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {x >= 0, sum x = 1} (Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    idx = np.arange(1, len(v) + 1)
    rho = np.nonzero(u - css / idx > 0)[0][-1]
    theta = css[rho] / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def _solve_kkt(kkt: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve the (affine min-norm) KKT system; least squares when it is singular."""
    try:
        out = np.linalg.solve(kkt, rhs)
        if np.all(np.isfinite(out)):
            return out
    except np.linalg.LinAlgError:
        pass
    return np.linalg.lstsq(kkt, rhs, rcond=None)[0]


def min_norm_coefficients(gramian: Tensor | np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """Min-norm point of the convex hull of the g_i: argmin_{a in simplex} a^T G a.

    Wolfe's exact min-norm-point algorithm expressed on the Gramian (finite, no step size).
    For T = 2 it reduces to Sener & Koltun's closed form
    ``gamma = clip(((g2 - g1) . g2) / ||g1 - g2||^2, 0, 1)``, a = (gamma, 1 - gamma).

    >>> import numpy as np
    >>> min_norm_coefficients(np.diag([1.0, 4.0])).round(6).tolist()  # orthogonal, norms 1 and 2
    [0.8, 0.2]
    """
    g = _as_numpy(gramian)
    t = g.shape[0]
    if t == 1:
        return np.ones(1)
    if t == 2:  # the closed form (Sener & Koltun, Algorithm 1), in float math
        (g11, g12), (_, g22) = g.tolist()
        denominator = g11 - 2.0 * g12 + g22  # ||g1 - g2||^2
        gamma = 0.5 if denominator <= 0 else min(max((g22 - g12) / denominator, 0.0), 1.0)
        return np.array([gamma, 1.0 - gamma])
    scale = max(float(np.max(np.diag(g))), 1e-300)
    g = g / scale  # scale-invariant
    start = int(np.argmin(np.diag(g)))
    active = [start]
    lam = np.zeros(t)
    lam[start] = 1.0
    for _ in range(50 * t):
        gl = g @ lam
        xx = float(lam @ gl)
        j = int(np.argmin(gl))
        if xx - gl[j] <= tol * xx or j in active:  # relative: norms may span many orders
            break
        active.append(j)
        while True:
            k = len(active)
            kkt = np.ones((k + 1, k + 1))
            kkt[:k, :k] = g[active][:, active]
            kkt[k, k] = 0.0
            rhs = np.zeros(k + 1)
            rhs[k] = 1.0
            mu = _solve_kkt(kkt, rhs)[:k]
            current = lam[active]
            if np.all(mu > 1e-12):
                lam[:] = 0.0
                lam[active] = mu
                break
            neg = mu <= 1e-12
            theta = np.min(current[neg] / (current[neg] - mu[neg]))
            new = current + theta * (mu - current)
            lam[:] = 0.0
            lam[active] = new
            keep = [a for a, v in zip(active, new, strict=True) if v > 1e-12]
            active = keep
    lam = np.maximum(lam, 0.0)
    return lam / lam.sum()


def pcgrad_coefficients(gramian: Tensor | np.ndarray, orders: np.ndarray) -> np.ndarray:
    """PCGrad (Yu et al. 2020) as coefficients on the original gradients.

    For each task i, g_i' starts at g_i and, for j in ``orders[i]`` (a permutation of the tasks),
    if g_i' . g_j < 0: g_i' -= (g_i' . g_j / ||g_j||^2) g_j. The update is sum_i g_i'. Each g_i' is
    tracked as a row of coefficients C (g_i' = sum_k C_ik g_k), so g_i' . g_j = (C G)_ij exactly.
    """
    g = _as_numpy(gramian)
    t = g.shape[0]
    coef = np.eye(t)
    for i in range(t):
        for j in orders[i]:
            if j == i or g[j, j] <= 0:
                continue
            dot = float(coef[i] @ g[:, j])
            if dot < 0:
                coef[i, j] -= dot / g[j, j]
    return coef.sum(axis=0)


def cagrad_coefficients(
    gramian: Tensor | np.ndarray,
    c: float = 0.4,
    rescale: int = 1,
    iters: int = 500,
    init: np.ndarray | None = None,
    tol: float = 1e-7,
) -> np.ndarray:
    """CAGrad (Liu et al. 2021): d = g0 + (sqrt(phi) / ||g_w||) g_w, phi = c^2 ||g0||^2.

    w = argmin_{w in simplex} g_w . g0 + sqrt(phi) ||g_w||, g0 = mean_i g_i, solved by projected
    gradient descent with backtracking, started from ``init`` (e.g. the previous step's w) or
    the uniform weights, until w moves by less than ``tol`` in a step (the authors solve it with
    SciPy's SLSQP at its default 1e-6 tolerance). ``rescale`` as in the authors' code: 0 none,
    1 divides by 1 + c^2 (their default), 2 by 1 + c. c = 0 gives the mean (1/T each).
    :func:`cagrad_solve` also returns w.
    """
    return cagrad_solve(gramian, c, rescale, iters, init, tol)[0]


def cagrad_solve(
    gramian: Tensor | np.ndarray,
    c: float = 0.4,
    rescale: int = 1,
    iters: int = 500,
    init: np.ndarray | None = None,
    tol: float = 1e-7,
) -> tuple[np.ndarray, np.ndarray]:
    """CAGrad's (coefficients, inner simplex weights w); see :func:`cagrad_coefficients`."""
    g = _as_numpy(gramian)
    t = g.shape[0]
    mean = np.full(t, 1.0 / t)
    if c == 0:
        return mean, mean
    scale = max(float(np.max(np.diag(g))), 1e-300)
    g = g / scale
    b = g @ mean  # g_i . g0
    g0_norm = float(np.sqrt(max(mean @ b, 0.0) + 1e-12))
    radius = c * g0_norm

    def objective(w: np.ndarray) -> float:
        return float(w @ b + radius * np.sqrt(max(w @ g @ w, 0.0) + 1e-12))

    w = mean.copy() if init is None or len(init) != t else project_to_simplex(init)
    step = 1.0
    f = objective(w)
    for _ in range(iters):
        norm = np.sqrt(max(w @ g @ w, 0.0) + 1e-12)
        grad = b + radius * (g @ w) / norm
        while True:
            cand = project_to_simplex(w - step * grad)
            fc = objective(cand)
            if fc <= f - 1e-4 * float(grad @ (w - cand)) or step < 1e-12:
                break
            step *= 0.5
        if np.max(np.abs(cand - w)) < tol:
            w = cand
            break
        w, f = cand, fc
        step = min(step * 2.0, 1e6)
    gw_norm = float(np.sqrt(max(w @ g @ w, 0.0) + 1e-12))
    lam = radius / (gw_norm + 1e-8)
    coef = mean + lam * w
    if rescale == 1:
        coef = coef / (1.0 + c**2)
    elif rescale == 2:
        coef = coef / (1.0 + c)
    return coef, w


def imtl_g_coefficients(gramian: Tensor | np.ndarray) -> np.ndarray:
    """IMTL-G (Liu et al. 2021): the d = sum a_i g_i, sum a_i = 1, with equal projections
    d . u_i on every unit gradient u_i = g_i / ||g_i||.

    The paper writes a_{2:T} = g_1 U^T (D U^T)^{-1}, a_1 = 1 - sum a_{2:T} (rows D_j = g_1 - g_j,
    U_j = u_1 - u_j). On the Gramian the same solution reads: U J^T a = lambda 1, i.e.
    G a = lambda n with n_i = ||g_i||, so a = G^{-1} n / (1^T G^{-1} n). This form is solved here
    (equal to the paper's whenever G is invertible), with two edge cases the paper leaves open:

    - a zero gradient has no unit vector (the paper's system then has the trivial solution
      d = 0): the rule runs on the other tasks (their coefficients sum to 1, equal projections),
      and each zero-gradient task gets the mean of their coefficients (it moves only its head);
      all zero: 1/T each;
    - linearly dependent gradients make G singular: b = C^+ 1 (pseudo-inverse, eigenvalues below
      T * eps32 * the largest dropped), which is the exact solution when one exists (e.g. a
      duplicated task: both copies get equal coefficients) and the least-squares one otherwise,
      never the trivial d = 0.

    >>> import numpy as np
    >>> imtl_g_coefficients(np.diag([1.0, 4.0])).round(6).tolist()  # g1 = (1, 0), g2 = (0, 2)
    [0.666667, 0.333333]
    """
    g = _as_numpy(gramian)
    t = g.shape[0]
    if t == 1:
        return np.ones(1)
    keep = _nonzero_tasks(g)
    if len(keep) == 0:
        return np.full(t, 1.0 / t)
    sub = g[np.ix_(keep, keep)]
    norms = np.sqrt(np.diag(sub))
    cosines = sub / np.outer(norms, norms)  # U U^T: the solve in unit-gradient coordinates
    # d = U^T (n * a) and U d = lambda 1  =>  C b = lambda 1 with b = n * a (C = U U^T)
    vals, vecs = np.linalg.eigh(cosines)
    cut = float(vals.max()) * len(keep) * GRADIENT_EPS
    inverse = np.where(vals > cut, 1.0 / np.where(vals > cut, vals, 1.0), 0.0)
    a = (vecs @ (inverse * vecs.sum(axis=0))) / norms
    total = float(a.sum())
    a = a / total if abs(total) > 1e-300 else np.full(len(keep), 1.0 / len(keep))
    out = np.full(t, float(a.mean()))
    out[keep] = a
    return out


def nash_mtl_coefficients(
    gramian: Tensor | np.ndarray,
    init: np.ndarray | None = None,
    normalize: bool = True,
    iters: int = 100,
    tol: float = 1e-18,
    ridge: float = 1e-8,
) -> np.ndarray:
    """Nash-MTL (Navon et al. 2022): alpha > 0 with G alpha = 1 / alpha (elementwise).

    It is the unique minimiser of the strictly convex f(a) = a^T G a / 2 - sum_i log a_i, found by
    damped Newton steps that keep a > 0. The update d = J^T alpha then has g_i . d = 1 / alpha_i
    and ||d|| = sqrt(T) at any gradient scale; orthogonal gradients give alpha_i = 1 / ||g_i||.

    ``normalize=True`` (the authors' code) solves with G_n = G / ||G||_F for conditioning and, as
    the authors' constraint ``-log(alpha_i * ||G||_F) - log((G_n alpha)_i) <= 0`` does, returns
    the solution for G itself: alpha = alpha_n / sqrt(||G||_F). Both settings give the paper's
    alpha (to round-off). Edge cases:

    - a zero task gradient: no alpha satisfies alpha_i (G alpha)_i = 1; that task gets
      coefficient 1 (the authors' initial alpha: it moves only its own head, at its plain loss)
      and the others are solved among themselves; all zero: 1 each;
    - duplicated or dependent, non-conflicting gradients: solved exactly (G singular is fine);
    - linearly dependent, conflicting gradients (0 in their convex hull): the system has no
      solution (f is unbounded below, Newton does not converge); a ridge of
      ``ridge * mean(diag G)`` on the diagonal then keeps the problem well posed, and the
      coefficients are large.
    """
    g = _as_numpy(gramian)
    t = g.shape[0]
    keep = _nonzero_tasks(g)
    if len(keep) < t:
        out = np.ones(t)
        if len(keep):
            sub_init = None if init is None else np.asarray(init, dtype=np.float64)[keep]
            out[keep] = nash_mtl_coefficients(
                g[np.ix_(keep, keep)], sub_init, normalize, iters, tol, ridge
            )
        return out
    factor = max(float(np.linalg.norm(g)), 1e-300) if normalize else 1.0
    g = g / factor
    if init is None:  # the solution for orthogonal gradients: 1 / ||g_i||
        start = 1.0 / np.sqrt(np.diag(g))
    else:  # a previous alpha for G: in the units of G / factor
        start = np.asarray(init, dtype=np.float64) * np.sqrt(factor)
    a, converged = _nash_newton(g, np.maximum(start, 1e-300), iters, tol)
    if not converged:  # no solution (dependent, conflicting gradients): a ridge bounds f
        ridged = g + ridge * float(np.mean(np.diag(g))) * np.eye(t)
        a, _ = _nash_newton(ridged, np.maximum(start, 1e-300), iters, tol)
    return a / np.sqrt(factor)


def _nash_newton(g: np.ndarray, a: np.ndarray, iters: int, tol: float) -> tuple[np.ndarray, bool]:
    """Damped Newton on f(a) = a^T G a / 2 - sum log a (a > 0); (a, whether it converged)."""

    def f(x: np.ndarray) -> float:
        return float(0.5 * x @ g @ x - np.sum(np.log(x)))

    for _ in range(iters):
        grad = g @ a - 1.0 / a
        hess = g + np.diag(1.0 / a**2)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return a, False
        decrement = float(grad @ step)
        if not np.isfinite(decrement):
            return a, False
        if decrement < tol:
            return a, True
        s = 1.0
        up = step > 0
        if np.any(up):
            s = min(1.0, 0.99 * float(np.min(a[up] / step[up])))
        fa = f(a)
        while f(a - s * step) > fa - 1e-4 * s * decrement and s > 1e-12:
            s *= 0.5
        a = a - s * step
    return a, False


def aligned_mtl_coefficients(gramian: Tensor | np.ndarray) -> np.ndarray:
    """Aligned-MTL (Senushkin et al. 2023), the authors' Procrustes solver with scale "min".

    Eigen-decompose G = V diag(l) V^T (rank r), B = sqrt(l_min) V diag(1 / sqrt(l)) V^T, which
    aligns the gradient system to condition number 1; the update is the sum of the balanced
    gradients, i.e. coefficients c = B 1.

    The rank is the authors' (``tol = max(l) * T * eps`` with float32's eps, the precision of
    the gradients): an eigenvalue below it is round-off, and keeping it as l_min would shrink
    the update to nothing (linearly dependent task gradients). A zero task gradient lies in G's
    null space, so B gives it 0: it gets the mean coefficient of the others instead (it moves
    only its head); all zero: 0 each (no direction).
    """
    g = _as_numpy(gramian)
    t = g.shape[0]
    vals, vecs = np.linalg.eigh(g)
    if float(np.max(vals)) <= 0.0:
        return np.zeros(t)
    tol = float(np.max(vals)) * t * GRADIENT_EPS
    keep = vals > tol
    vals, vecs = vals[keep], vecs[:, keep]
    b = np.sqrt(vals.min()) * (vecs / np.sqrt(vals)[None, :]) @ vecs.T
    coef = b.sum(axis=1)
    present = _nonzero_tasks(g)
    if len(present) < t:
        zero = np.setdiff1d(np.arange(t), present)
        coef[zero] = float(coef[present].mean())
    return coef


def dual_cone_projection_weights(
    gramian: Tensor | np.ndarray, u: np.ndarray, tol: float = 1e-12, max_iter: int | None = None
) -> np.ndarray:
    """The weights v of the projection of J^T u onto the dual cone {d : J d >= 0}, from G = J J^T.

    By Quinton & Rey (2024, Proposition 1) they solve ``min_v v^T G v  s.t.  v >= u``. With
    v = u + s this is the non-negative QP ``min_s 1/2 s^T G s + (G u)^T s, s >= 0``, solved
    exactly by an active-set method (Lawson & Hanson's, on the quadratic): finite, no QP package.
    G must be positive definite (regularise a singular Gramian first, as :func:`upgrad_coefficients`
    does).

    >>> import numpy as np
    >>> g = np.array([[1.0, -0.5], [-0.5, 1.0]])  # conflicting gradients
    >>> dual_cone_projection_weights(g, np.array([1.0, 0.0])).round(6).tolist()
    [1.0, 0.5]
    """
    g = _as_numpy(gramian)
    u = np.asarray(u, dtype=np.float64)
    t = g.shape[0]
    b = g @ u
    s = np.zeros(t)
    free = np.zeros(t, dtype=bool)
    scale = max(float(np.max(np.abs(np.diag(g)))), 1e-300)
    for _ in range(max_iter or 10 * t + 10):
        negative_grad = -(g @ s + b)
        candidates = np.where(~free, negative_grad, -np.inf)
        j = int(np.argmax(candidates))
        if free.all() or candidates[j] <= tol * scale:
            break
        free[j] = True
        while True:
            idx = np.flatnonzero(free)
            z = np.zeros(t)
            z[idx] = np.linalg.solve(g[np.ix_(idx, idx)], -b[idx])
            if np.all(z[idx] > 0):
                s = z
                break
            blocking = idx[z[idx] <= 0]
            step = np.min(s[blocking] / (s[blocking] - z[blocking]))
            s = s + step * (z - s)
            free &= s > tol
            s[~free] = 0.0
            if not free.any():
                break
    return u + s


def upgrad_coefficients(
    gramian: Tensor | np.ndarray,
    preference: np.ndarray | None = None,
    norm_eps: float = 1e-4,
    reg_eps: float = 1e-4,
) -> np.ndarray:
    """UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024).

    Each task gradient p_i g_i is projected onto the dual cone of all task gradients
    (:func:`dual_cone_projection_weights` with u = p_i e_i) and the projections are summed:
    c = sum_i v^(i). The update J^T c conflicts with no task (J J^T c >= 0) and equals
    sum_i p_i g_i when the gradients do not conflict. p defaults to 1/T (the mean). As in the
    authors' code, G is first divided by its trace (scale-invariant; zero if the trace is below
    ``norm_eps``) and ``reg_eps`` is added to its diagonal (positive definite).

    >>> import numpy as np
    >>> upgrad_coefficients(np.eye(2)).round(6).tolist()  # orthogonal: the mean
    [0.5, 0.5]
    """
    g = _as_numpy(gramian)
    t = g.shape[0]
    p = np.full(t, 1.0 / t) if preference is None else np.asarray(preference, dtype=np.float64)
    if p.shape != (t,):
        raise ValueError(f"preference must have {t} entries, got shape {p.shape}")
    trace = float(np.trace(g))
    g = np.zeros_like(g) if trace < norm_eps else g / trace
    g = g + reg_eps * np.eye(t)
    return np.sum([dual_cone_projection_weights(g, p[i] * np.eye(t)[i]) for i in range(t)], axis=0)
