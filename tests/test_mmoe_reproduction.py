"""The MMoE benchmark's side-by-side training is independent trainings, and its statistics are
the stated ones."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "mmoe_reproduction", ROOT / "benchmarks/mmoe_reproduction.py"
)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

ARGS = argparse.Namespace(lr=3e-3, epochs=2, batch_size=16, bottom_width=8, schedule="cosine")


def _data(repeats: int) -> tuple[tuple, tuple]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 6, generator=generator)
    y = torch.randn(2, 40, 2, generator=generator)
    return (x[:repeats], y[:repeats]), (x[:repeats, :8], y[:repeats, :8])


@pytest.mark.parametrize("name", ["shared-bottom", "mmoe"])
def test_stacked_repeats_train_as_separate_runs(name: str) -> None:
    """Repeat 0 trained alongside repeat 1 follows the same curve as trained alone, and the two
    repeats (other data, other initialisation) differ."""
    alone = bench.train_repeats(name, *_data(1), ARGS)
    together = bench.train_repeats(name, *_data(2), ARGS)
    torch.testing.assert_close(
        torch.tensor(together["test"][0]), torch.tensor(alone["test"][0]), rtol=1e-4, atol=1e-6
    )
    assert together["test"][0] != together["test"][1]
    assert together["parameters"] == sum(
        q.numel() for q in bench.build(name, 6, ARGS.bottom_width).parameters()
    )


def test_intervals() -> None:
    mean, low, high = bench.t_interval([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.3027, sd = 1, n = 3
    assert (mean, low, high) == pytest.approx((2.0, 2 - 4.3027 / 3**0.5, 2 + 4.3027 / 3**0.5), 1e-4)
    ratio, low, high = bench.bootstrap_std_ratio([0.0, 2.0, 4.0, 6.0], [0.0, 1.0, 2.0, 3.0])
    assert ratio == pytest.approx(2.0) and low == pytest.approx(2.0) and high == pytest.approx(2.0)
