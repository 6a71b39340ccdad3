"""Cost of every weighting method per training step, relative to equal weighting, side by side.

Fixed CPU model: the GradNorm toy trunk (250 -> 4 x 100 ReLU) with one Linear(100, 100) head per
task, batch 256, squared loss, SGD; T = 2, 10 and 40. ``--feature-map``: a small CNN whose
representation is a feature map (N, 64, 16, 16) (batch 8, 3 x 32 x 32 inputs), one 1x1-conv
dense-regression head per task, T = 3 and 10, for the loss-based and representation methods.
Each method runs the same plain training step
(forward, the weighting, backward, optimizer step, the weighting's hooks), so the numbers measure
the methods, not Lightning. Methods are interleaved round-robin over several rounds and each
round's time is divided by equal weighting's time *in the same round*; the table reports the
median ratio. Where TorchJD implements the same aggregator (MGDA, PCGrad, IMTL-G, Aligned-MTL,
CAGrad, Nash-MTL, UPGrad) its step (``mtl_backward`` + ``jac_to_grad``, on all shared parameters) is
timed in the same rounds, next to ours on the same target ("shared").

Memory: the extra tensors a method holds during a step (per-task gradients w.r.t. z and, for a
parameter target, the T x P Jacobian), computed from the shapes. (Peak RSS of a fresh process was
tried first: at this model size it is dominated by the interpreter and libraries and showed no
difference.)

    pip install "torchjd[full]"     # optional, only for the comparison columns
    python benchmarks/weighting_cost.py   # writes benchmarks/results/weighting_cost.json
    python benchmarks/weighting_cost.py --feature-map --tasks 3 10 \
        --out benchmarks/results/weighting_cost_feature_map.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lit_mtl import (
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
    UncertaintyWeighting,
    UPGrad,
    Weighting,
    task_views,
)

OURS: dict[str, Callable[[], Weighting]] = {
    "equal": EqualWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DWA,
    "rlw": RLW,
    "famo": FAMO,
    "gradnorm (last shared layer)": GradNorm,
    "mgda-ub (representation)": MGDAUB,
    "pcgrad (representation)": lambda: PCGrad(target="representation"),
    "cagrad (representation)": lambda: CAGrad(target="representation"),
    "imtl-g (representation)": IMTLG,
    "nash-mtl (representation)": lambda: NashMTL(target="representation"),
    "aligned-mtl (representation)": lambda: AlignedMTL(target="representation"),
    "upgrad (representation)": lambda: UPGrad(target="representation"),
    "mgda (shared)": MGDA,
    "pcgrad (shared)": PCGrad,
    "cagrad (shared)": CAGrad,
    "imtl-g (shared)": lambda: IMTLG(target="shared"),
    "nash-mtl (shared)": NashMTL,
    "aligned-mtl (shared)": AlignedMTL,
    "upgrad (shared)": UPGrad,
    "db-mtl (shared)": DBMTL,
}
#: the methods of the feature-map run (no parameter target: its encoder's J would dominate)
FEATURE_MAP = [n for n in OURS if "(shared)" not in n and "gradnorm" not in n]
#: our method name -> the TorchJD aggregator implementing the same thing on shared parameters
TORCHJD_SAME = {
    "mgda (shared)": "MGDA",
    "pcgrad (shared)": "PCGrad",
    "cagrad (shared)": "CAGrad",
    "imtl-g (shared)": "IMTLG",
    "nash-mtl (shared)": "NashMTL",
    "aligned-mtl (shared)": "AlignedMTL",
    "upgrad (shared)": "UPGrad",
}


class ToyModel(nn.Module):
    def __init__(self, num_tasks: int, feature_map: bool = False) -> None:
        super().__init__()
        if feature_map:  # (N, 3, 32, 32) -> (N, 64, 16, 16); 1x1-conv dense heads
            self.encoder = nn.Sequential(
                nn.Conv2d(3, 32, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(64, 64, 3, padding=1),
                nn.ReLU(),
            )
            self.heads = nn.ModuleList([nn.Conv2d(64, 4, 1) for _ in range(num_tasks)])
            return
        layers: list[nn.Module] = []
        width = 250
        for _ in range(4):
            layers += [nn.Linear(width, 100), nn.ReLU()]
            width = 100
        self.encoder = nn.Sequential(*layers)
        self.heads = nn.ModuleList([nn.Linear(100, 100) for _ in range(num_tasks)])

    def losses(
        self, x: torch.Tensor, ys: list[torch.Tensor], views: bool = False
    ) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor] | None]:
        """Task losses, z, and (as MultiTaskModule does for gradient methods) per-task views."""
        z = self.encoder(x)  # (N, 100)
        zs = task_views(z, len(self.heads)) if views else [z] * len(self.heads)
        losses = [
            ((head(zi) - y) ** 2).mean() for head, zi, y in zip(self.heads, zs, ys, strict=True)
        ]
        return losses, z, zs if views else None


def toy_batch(num_tasks: int, feature_map: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    if feature_map:
        x = torch.rand(8, 3, 32, 32, generator=gen)
        return x, [torch.randn(8, 4, 16, 16, generator=gen) for _ in range(num_tasks)]
    x = torch.rand(256, 250, generator=gen)
    return x, [torch.randn(256, 100, generator=gen) for _ in range(num_tasks)]


def make_ours(
    name: str, num_tasks: int, feature_map: bool = False
) -> tuple[ToyModel, Weighting, Callable[[], None]]:
    torch.manual_seed(0)
    model = ToyModel(num_tasks, feature_map)
    weighting = OURS[name]()
    weighting.bind(
        [f"t{i}" for i in range(num_tasks)], ["regression"] * num_tasks, encoder=model.encoder
    )
    params = list(model.parameters()) + list(weighting.parameters())
    opt = torch.optim.SGD(params, lr=1e-3)
    x, ys = toy_batch(num_tasks, feature_map)

    def recompute() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            losses, _, _ = model.losses(x, ys)
        return torch.stack(losses), torch.ones(num_tasks, dtype=torch.bool)

    views = weighting.uses_task_representations

    def step() -> None:  # as MultiTaskModule's step: views, heads and recompute in the context
        losses, z, zs = model.losses(x, ys, views=views)
        opt.zero_grad(set_to_none=True)
        weighting(
            losses,
            representation=z,
            task_representations=zs,
            heads=model.heads if views else None,
            recompute_losses=recompute,
        ).backward()
        opt.step()  # the weighting's post-step update runs in the optimizer's step hook

    return model, weighting, step


def make_torchjd(name: str, num_tasks: int) -> Callable[[], None]:
    import torchjd.aggregation as agg
    from torchjd.autojac import jac_to_grad, mtl_backward

    torch.manual_seed(0)
    model = ToyModel(num_tasks)
    aggregator = {
        "MGDA": lambda: agg.MGDA(),
        "PCGrad": lambda: agg.PCGrad(),
        "CAGrad": lambda: agg.CAGrad(c=0.4),
        "IMTLG": lambda: agg.IMTLG(),
        "NashMTL": lambda: agg.NashMTL(n_tasks=num_tasks),
        "AlignedMTL": lambda: agg.AlignedMTL(),
        "UPGrad": lambda: agg.UPGrad(),
    }[name]()
    shared = list(model.encoder.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(256, 250, generator=gen)
    ys = [torch.randn(256, 100, generator=gen) for _ in range(num_tasks)]

    def step() -> None:
        losses, z, _ = model.losses(x, ys)
        opt.zero_grad(set_to_none=True)
        mtl_backward(losses, features=z)
        jac_to_grad(shared, aggregator)
        opt.step()

    return step


def time_steps(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def jacobian_mib(name: str, num_tasks: int, feature_map: bool) -> float:
    """Extra memory our method holds per step: the per-task gradients w.r.t. z (T x |z|) and,
    for a parameter target, the T x P Jacobian (float32, MiB). Loss-based methods: 0."""
    _model, weighting, _ = make_ours(name, num_tasks, feature_map)
    target = getattr(weighting, "target", None)
    if target is None:
        return 0.0
    numel = num_tasks * (8 * 64 * 16 * 16 if feature_map else 256 * 100)
    if target != "representation":
        params = getattr(getattr(weighting, "engine", None), "params", None) or []
        numel += num_tasks * sum(p.numel() for p in params)
    return numel * 4 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40])
    parser.add_argument("--feature-map", action="store_true", help="(N, 64, 16, 16) representation")
    parser.add_argument(
        "--torchjd-max-tasks",
        type=int,
        default=10,
        help="time TorchJD up to this T (cvxpy is slow)",
    )
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/weighting_cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    try:
        import torchjd  # noqa: F401

        have_torchjd = not args.feature_map
    except ImportError:
        if not args.feature_map:  # the stored table has TorchJD's columns: do not drop them
            raise SystemExit(
                "weighting_cost.py: TorchJD is not installed, and the table compares with it: "
                'pip install "torchjd[full]"'
            ) from None
        have_torchjd = False
    methods = FEATURE_MAP if args.feature_map else list(OURS)

    rows = []
    for num_tasks in args.tasks:
        runners: dict[str, Callable[[], None]] = {
            n: make_ours(n, num_tasks, args.feature_map)[2] for n in methods
        }
        if have_torchjd and num_tasks <= args.torchjd_max_tasks:
            for _ours, theirs in TORCHJD_SAME.items():
                runners[f"torchjd {theirs}"] = make_torchjd(theirs, num_tasks)
        for step in runners.values():  # warm-up
            time_steps(step, 3)
        ratios: dict[str, list[float]] = {n: [] for n in runners}
        seconds: dict[str, list[float]] = {n: [] for n in runners}
        for _ in range(args.rounds):
            base = time_steps(runners["equal"], args.steps)
            for name, step in runners.items():
                t = base if name == "equal" else time_steps(step, args.steps)
                seconds[name].append(t)
                ratios[name].append(t / base)
        for name in methods:
            row = {
                "num_tasks": num_tasks,
                "method": name,
                "ms_per_step": 1e3 * statistics.median(seconds[name]),
                "ratio_to_equal": statistics.median(ratios[name]),
            }
            row["extra_mib"] = jacobian_mib(name, num_tasks, args.feature_map)
            if f"torchjd {TORCHJD_SAME.get(name)}" in runners:
                key = f"torchjd {TORCHJD_SAME[name]}"
                row["torchjd_ratio_to_equal"] = statistics.median(ratios[key])
                row["torchjd_over_ours"] = statistics.median(
                    [a / b for a, b in zip(seconds[key], seconds[name], strict=True)]
                )
            rows.append(row)
            print(row, file=sys.stderr)

    lines = [
        "| T | method | ms / step | x equal | extra memory (MiB) | TorchJD x equal | "
        "TorchJD / ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tj = r.get("torchjd_ratio_to_equal")
        lines.append(
            f"| {r['num_tasks']} | {r['method']} | {r['ms_per_step']:.2f} | "
            f"{r['ratio_to_equal']:.2f} | "
            f"{r['extra_mib']:.1f} | "
            + (f"{tj:.2f} | {r['torchjd_over_ours']:.2f} |" if tj is not None else "- | - |")
        )
    table = "\n".join(lines)
    print(table)
    command = "python benchmarks/weighting_cost.py " + " ".join(
        [
            f"--tasks {' '.join(map(str, args.tasks))}",
            f"--rounds {args.rounds}",
            f"--steps {args.steps}",
        ]
        + (["--feature-map", f"--out {args.out}"] if args.feature_map else [])
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": command,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "representation": "(8, 64, 16, 16)" if args.feature_map else "(256, 100)",
                "rows": rows,
                "markdown": table,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
