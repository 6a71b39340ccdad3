"""Figures: one line / bar per task, method or group, clear errors on inconsistent input."""

from __future__ import annotations

import pytest

from lit_mtl.diagnostics.plots import (
    plot_delta_m,
    plot_lr_schedule,
    plot_task_weights,
    plot_tradeoff,
)


def test_task_weights_one_line_per_task_log_scale_when_spread() -> None:
    fig = plot_task_weights([1, 2, 3], [[1.0, 1.0], [1.9, 0.1], [1.99, 0.01]], ["a", "b"])
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["a", "b"]
    assert list(ax.lines[1].get_ydata()) == [1.0, 0.1, 0.01]
    assert ax.get_yscale() == "log"  # spread 199x
    flat = plot_task_weights([1, 2], [[1.0, 1.0], [1.1, 0.9]], ["a", "b"])
    assert flat.axes[0].get_yscale() == "linear"


def test_task_weights_rejects_mismatched_input() -> None:
    with pytest.raises(ValueError, match="steps"):
        plot_task_weights([1, 2], [[1.0, 1.0]], ["a", "b"])
    with pytest.raises(ValueError, match="columns"):
        plot_task_weights([1], [[1.0, 1.0, 1.0]], ["a", "b"])


def test_lr_schedule_marks_unfreezing() -> None:
    fig = plot_lr_schedule(
        [1, 2, 3, 4], {"block0": [0, 0, 0.5, 0.5], "heads": [1, 1, 1, 1]}, {"block0": 3}
    )
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.lines]
    assert labels[:2] == ["block0", "heads"]
    assert any("unfreeze block0" in t.get_text() for t in ax.texts)
    with pytest.raises(ValueError, match="block0"):
        plot_lr_schedule([1, 2], {"block0": [0.0]})


def test_delta_m_bars_and_tradeoff_points(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fig = plot_delta_m(["equal", "pcgrad"], [1.5, -2.0], [0.5, 0.7])
    heights = sorted(p.get_width() for p in fig.axes[0].patches)
    assert heights == [-2.0, 1.5]
    fig.savefig(tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="same length"):
        plot_delta_m(["a"], [1.0, 2.0], [0.0])
    trade = plot_tradeoff({"stl": (0.9, 0.01, 0.8, 0.02), "equal": (0.85, 0.0, 0.9, 0.0)}, "x", "y")
    assert len(trade.axes[0].containers) == 2
