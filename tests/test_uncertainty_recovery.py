"""Learning result: uncertainty weighting recovers the per-task noise (Kendall et al. 2018).

Runs the README's benchmark (benchmarks/uncertainty_recovery.py) for one seed and checks its claim.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "uncertainty_recovery", ROOT / "benchmarks/uncertainty_recovery.py"
)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.slow
def test_learned_sigma_matches_true_noise_and_exp_s_equals_train_mse() -> None:
    out = bench.run(seed=0, epochs=30)
    assert out["true_noise_std"] == [0.1, 1.0, 10.0]  # two orders of magnitude
    for sigma, sd in zip(out["learned_sigma"], out["true_noise_std"], strict=True):
        assert sigma == pytest.approx(sd, rel=0.10), out["learned_sigma"]
    for exp_s, mse in zip(out["exp_s"], out["train_mse"], strict=True):
        assert exp_s == pytest.approx(mse, rel=0.05)
