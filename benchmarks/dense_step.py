"""Step cost of each weighting family on a dense T = 3 model, as a ratio to equal weighting.

The model is what a dense user trains: ``MultiTaskModule`` with a ``DenseCNNEncoder`` (16, 32, 32
channels; the map at half the input's resolution) and one decoder head per task, for
segmentation (4 classes), depth and surface normals of procedural scenes, batch 8, Adam, inside
a Lightning ``Trainer`` (CPU, 2 threads). A step is timed from ``on_train_batch_start`` to
``on_train_batch_end`` (forward, weighting, backward, optimizer step); each (method, round) is a
fresh fit of ``warmup + steps`` steps, methods interleaved round-robin, and each round's median
step time is divided by equal weighting's in the same round; the table shows the median ratio
over rounds.

Peak memory: each method runs once more in a fresh process (``--memory-child``) that resets the
kernel's peak resident set size (``/proc/self/clear_refs``, Linux) when the warm-up steps are
done and reports the peak over the timed steps above the resident size at that moment: what a
step adds at its peak (activations, per-task gradients, Jacobians), with model, data, optimizer
state and Lightning already resident. The child runs with glibc's mmap threshold at 64 KiB and
trimming on, so freed tensors leave the resident set (otherwise the allocator's cache from the
warm-up steps hides every later peak). On a GPU (``--device cuda``) it is
``torch.cuda.max_memory_allocated`` over the timed steps instead (the model's memory included).

    python benchmarks/dense_step.py    # writes benchmarks/results/dense_step.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from lit_mtl import (
    FAMO,
    MGDAUB,
    CAGrad,
    DenseCNNEncoder,
    EqualWeighting,
    GradNorm,
    MultiTaskModule,
    NashMTL,
    ProceduralScenesDataModule,
    UncertaintyWeighting,
    UPGrad,
    Weighting,
)

#: one entry per family: label -> (family, weighting factory)
METHODS: dict[str, tuple[str, Callable[[], Weighting]]] = {
    "equal": ("loss-based", EqualWeighting),
    "uncertainty": ("loss-based", UncertaintyWeighting),
    "famo": ("loss-based, extra forward", FAMO),
    "gradnorm": ("last shared layer norms", GradNorm),
    "mgda-ub": ("Gramian of z", MGDAUB),
    "upgrad (z)": ("Gramian of z", lambda: UPGrad(target="representation")),
    "cagrad": ("Gramian of shared parameters", CAGrad),
    "upgrad (shared)": ("Gramian of shared parameters", UPGrad),
    "nash-mtl": ("Gramian of shared parameters", NashMTL),
}


#: glibc serves allocations over 64 KiB with mmap and unmaps them when freed, so the resident
#: size follows the live tensors instead of the allocator's cache
_MALLOC_RETURNS_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class StepTimer(L.Callback):
    """Wall time of each training step; with ``track_memory``, the peak memory of the steps
    after ``warmup`` above what was resident when they started."""

    def __init__(self, device: str, warmup: int = 0, track_memory: bool = False) -> None:
        self.device = device
        self.warmup = warmup
        self.track_memory = track_memory
        self.times: list[float] = []
        self.resident_kib = 0
        self._start = 0.0

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.track_memory and len(self.times) == self.warmup:
            if self.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            else:
                Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
                self.resident_kib = _status_kib("VmRSS")
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        self._sync()
        self.times.append(time.perf_counter() - self._start)


def fit_steps(
    method: str, size: int, steps: int, device: str, warmup: int = 0, track_memory: bool = False
) -> StepTimer:
    L.seed_everything(0, verbose=False)
    dm = ProceduralScenesDataModule(
        image_size=size, num_train=8 * steps, num_val=8, num_test=8, batch_size=8, seed=0
    )
    module = MultiTaskModule(
        DenseCNNEncoder(3, (16, 32, 32)),
        dm.task_specs,
        METHODS[method][1](),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        plots=False,
    )
    timer = StepTimer(device, warmup, track_memory)
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, dm)
    return timer


def memory_child(method: str, size: int, steps: int, warmup: int, device: str) -> None:
    timer = fit_steps(method, size, warmup + steps, device, warmup, track_memory=True)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (_status_kib("VmHWM") - timer.resident_kib) / 1024
    print(json.dumps({"peak_mib": peak}))


def measure_memory(method: str, size: int, steps: int, warmup: int, device: str) -> float:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-child",
            method,
            "--sizes",
            str(size),
            "--steps",
            str(steps),
            "--warmup",
            str(warmup),
            "--device",
            device,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **_MALLOC_RETURNS_MEMORY},
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per fit")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dense_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    if args.memory_child:
        memory_child(args.memory_child, args.sizes[0], args.steps, args.warmup, args.device)
        return
    rows = []
    for size in args.sizes:
        seconds: dict[str, list[float]] = {m: [] for m in METHODS}
        ratios: dict[str, list[float]] = {m: [] for m in METHODS}
        for _ in range(args.rounds):
            per_round = {}
            for method in METHODS:
                timer = fit_steps(method, size, args.warmup + args.steps, args.device)
                per_round[method] = statistics.median(timer.times[args.warmup :])
            for method, value in per_round.items():
                seconds[method].append(value)
                ratios[method].append(value / per_round["equal"])
        for method, (family, _factory) in METHODS.items():
            row = {
                "size": size,
                "method": method,
                "family": family,
                "ms_per_step": 1e3 * statistics.median(seconds[method]),
                "ratio_to_equal": statistics.median(ratios[method]),
                "peak_mib": measure_memory(method, size, args.steps, args.warmup, args.device),
            }
            rows.append(row)
            print(row, file=sys.stderr)
    memory = "peak CUDA memory (MiB)" if args.device == "cuda" else "step peak above resident (MiB)"
    lines = [
        f"| input | method | family | ms / step | x equal | {memory} |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} x {r['size']} | {r['method']} | {r['family']} | "
            f"{r['ms_per_step']:.1f} | {r['ratio_to_equal']:.2f} | {r['peak_mib']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    command = (
        f"python benchmarks/dense_step.py --sizes {' '.join(map(str, args.sizes))} "
        f"--rounds {args.rounds} --steps {args.steps} --warmup {args.warmup}"
        + (f" --device {args.device}" if args.device != "cpu" else "")
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": command,
                "torch": torch.__version__,
                "device": args.device,
                "threads": torch.get_num_threads(),
                "rows": rows,
                "markdown": table,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
