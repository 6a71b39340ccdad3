"""What forming the Gramian in float64 costs, and what it buys, side by side in one run.

The engines hand a Gramian rule G = J J^T of the float32 task gradients J (T x P). Forming it
with float32 products carries an absolute error of about eps32 * ||g||^2, so a small quantity
read from it (sqrt(w^T G w) near a Pareto-stationary point, a small eigenvalue of a
rank-deficient G) keeps half of float32's digits. By default ``lit_mtl`` forms G with float32
products (what the methods' authors do); a method that reads such a small quantity (CAGrad's
||g_w||) declares float64 accumulation, :func:`lit_mtl.engines.float64_gramian`: float64 copies
of ``GRAMIAN_CHUNK_COLUMNS`` columns of J at a time, multiplied and accumulated in float64.

Cost: for T in {2, 10, 40} and P in {1e5, 1e6, 1e7}, the float32 product ``J @ J.T`` and the
float64 one are timed interleaved over several rounds (median ms, and the ratio in the same
round); next to them, the time of one float32 backward-sized matmul is not a fair reference, so
the table also gives the float64 Gramian's time as a share of one training step of an MLP trunk
with P shared parameters (batch 64, T heads, forward + T per-task backwards + one backward), the
step the Gramian belongs to.

Precision: on T = 10 rows with one row the sum of two others (rank 9), the smallest eigenvalue
of G and the norm of the min-norm combination, from each Gramian, against the exact values (the
float64 Gramian of the same float32 J, computed by numpy).

    python benchmarks/gramian_precision.py   # writes benchmarks/results/gramian_precision.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lit_mtl.engines import float64_gramian
from lit_mtl.functional import min_norm_coefficients


def _time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def _trunk_step(num_params: int, num_tasks: int):  # type: ignore[no-untyped-def]
    """A step with ~num_params shared parameters: MLP 256 -> h -> h, T linear heads."""
    hidden = int((-257 + (257**2 + 4 * num_params) ** 0.5) / 2)  # 256 h + h^2 + 2 h ~ P
    trunk = nn.Sequential(nn.Linear(256, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
    heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(num_tasks))
    x, y = torch.randn(64, 256), torch.randn(64, num_tasks)
    params = list(trunk.parameters())

    def step() -> None:
        z = trunk(x)
        losses = [((h(z).squeeze(1) - y[:, i]) ** 2).mean() for i, h in enumerate(heads)]
        for loss in losses:  # the per-task gradients of the shared parameters
            torch.autograd.grad(loss, params, retain_graph=True)
        torch.stack(losses).sum().backward()

    return step, sum(p.numel() for p in params)


def cost(tasks: list[int], sizes: list[int], rounds: int) -> list[dict]:
    rows = []
    for t in tasks:
        for p in sizes:
            j = torch.randn(t, p)
            step, shared = _trunk_step(p, t) if t * p <= 4e8 else (None, p)
            f32, f64, ratios, steps = [], [], [], []
            repeats = max(1, int(2e7 // (t * p)))
            for _ in range(rounds):
                a = _time(lambda j=j: j @ j.T, repeats)
                b = _time(lambda j=j: float64_gramian([j]), repeats)
                f32.append(a)
                f64.append(b)
                ratios.append(b / a)
                if step is not None:
                    steps.append(_time(step, 1))
            row = {
                "tasks": t,
                "P": p,
                "float32_ms": statistics.median(f32),
                "float64_ms": statistics.median(f64),
                "float64_over_float32": statistics.median(ratios),
                "step_ms": statistics.median(steps) if steps else None,
                "step_shared_params": shared,
            }
            if steps:
                row["float64_share_of_step"] = row["float64_ms"] / row["step_ms"]
            rows.append(row)
            print(row, flush=True)
    return rows


def precision(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    j = torch.randn(10, 10_000, generator=gen)
    j[0] = j[1] + j[2]
    exact = j.double().numpy() @ j.double().numpy().T
    out = {}
    for name, g in (("float32", (j @ j.T).double().numpy()), ("float64", float64_gramian([j]))):
        g = np.asarray(g)
        w = min_norm_coefficients(exact)
        out[name] = {
            "smallest_eigenvalue": float(np.linalg.eigvalsh(g)[0]),
            "norm_of_min_norm_point": float(np.sqrt(max(w @ g @ w, 0.0))),
        }
    w = min_norm_coefficients(exact)
    out["exact"] = {
        "smallest_eigenvalue": float(np.linalg.eigvalsh(exact)[0]),
        "norm_of_min_norm_point": float(np.sqrt(max(w @ exact @ w, 0.0))),
        "largest_eigenvalue": float(np.linalg.eigvalsh(exact)[-1]),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--rounds", type=int, default=7)
    default_out = Path("benchmarks/results/gramian_precision.json")
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = cost(args.tasks, args.sizes, args.rounds)
    prec = precision()
    lines = [
        "| T | P | float32 G (ms) | float64 G (ms) | float64 / float32 | step (ms) "
        "| float64 G / step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        step = f"{r['step_ms']:.1f}" if r["step_ms"] is not None else "-"
        share = f"{r['float64_share_of_step']:.3f}" if r["step_ms"] is not None else "-"
        lines.append(
            f"| {r['tasks']} | {r['P']:.0e} | {r['float32_ms']:.2f} | {r['float64_ms']:.2f} | "
            f"{r['float64_over_float32']:.2f} | {step} | {share} |"
        )
    lines += [
        "",
        "| rank-9 Gramian (T = 10, P = 1e4) | smallest eigenvalue | norm of the min-norm point |",
        "|---|---|---|",
    ]
    for name in ("exact", "float64", "float32"):
        lines.append(
            f"| {name} | {prec[name]['smallest_eigenvalue']:.3g} | "
            f"{prec[name]['norm_of_min_norm_point']:.3g} |"
        )
    table = "\n".join(lines)
    print(table)
    command = (
        "python benchmarks/gramian_precision.py "
        f"--tasks {' '.join(map(str, args.tasks))} --sizes {' '.join(map(str, args.sizes))} "
        f"--rounds {args.rounds}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": command,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "rows": rows,
                "precision": prec,
                "markdown": table,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
