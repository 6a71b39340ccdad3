"""Figures for task weights, transfer schedules and method comparisons (pure functions).

Every function takes plain data and returns a :class:`matplotlib.figure.Figure` built with the
object-oriented API (no pyplot state, no backend switch), so it works in notebooks, callbacks and
headless CI alike.

>>> fig = plot_task_weights([0, 10, 20], [[1.0, 1.0], [1.4, 0.6], [1.8, 0.2]], ["depth", "seg"])
>>> [line.get_label() for line in fig.axes[0].lines]
['depth', 'seg']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from lit_mtl._optional import require

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "plot_delta_m",
    "plot_expert_use",
    "plot_gradient_conflicts",
    "plot_lr_schedule",
    "plot_task_weights",
    "plot_tradeoff",
]


def _figure(width: float = 6.4, height: float = 4.0) -> Figure:
    figure = require("matplotlib.figure", "plots", "drawing figures")
    return figure.Figure(figsize=(width, height), layout="constrained")


def plot_task_weights(
    steps: Sequence[int],
    weights: Sequence[Sequence[float]],
    task_names: Sequence[str],
    title: str = "task weights",
    log_scale: bool | None = None,
) -> Figure:
    """One line per task: its weight against the optimizer step.

    Args:
        steps: the optimizer steps at which the weights were recorded, length S.
        weights: S rows of T weights.
        task_names: the T task names (legend).
        log_scale: log y axis; by default when the weights span more than a factor of 20.
    """
    if len(steps) != len(weights):
        raise ValueError(f"steps ({len(steps)}) and weights ({len(weights)}) differ in length")
    fig = _figure()
    ax = fig.add_subplot()
    columns = list(zip(*weights, strict=True)) if weights else [[] for _ in task_names]
    if len(columns) != len(task_names):
        raise ValueError(f"weights have {len(columns)} columns for {len(task_names)} task names")
    positive = [w for col in columns for w in col if w > 0]
    if log_scale is None:
        log_scale = bool(positive) and max(positive) / min(positive) > 20
    for name, col in zip(task_names, columns, strict=True):
        ax.plot(list(steps), list(col), label=name)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("weight")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small", ncol=1 + len(task_names) // 8)
    ax.grid(alpha=0.3)
    return fig


def plot_lr_schedule(
    steps: Sequence[int],
    lrs: Mapping[str, Sequence[float]],
    unfreeze_steps: Mapping[str, int] | None = None,
    title: str = "learning rate per layer group",
) -> Figure:
    """Effective learning rate of every param group against the optimizer step (log scale where
    positive), with a dashed vertical line where a layer group was unfrozen.

    Args:
        steps: recording steps, length S.
        lrs: ``{group: S effective lrs}`` (0 while frozen).
        unfreeze_steps: ``{group: step at which it became trainable}``.
    """
    fig = _figure()
    ax = fig.add_subplot()
    for name, values in lrs.items():
        if len(values) != len(steps):
            raise ValueError(f"lrs[{name!r}] has {len(values)} values for {len(steps)} steps")
        ax.step(list(steps), list(values), where="post", label=name)
    for i, (name, step) in enumerate((unfreeze_steps or {}).items()):
        ax.axvline(step, color=f"C{i % 10}", linestyle="--", alpha=0.6)
        ax.annotate(
            f"unfreeze {name}",
            (step, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            fontsize="x-small",
        )
    if any(v > 0 for values in lrs.values() for v in values):
        ax.set_yscale("symlog", linthresh=min(v for vs in lrs.values() for v in vs if v > 0))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("effective lr")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def plot_delta_m(
    methods: Sequence[str],
    means: Sequence[float],
    stds: Sequence[float],
    title: str = "delta-m % vs single-task (lower is better)",
) -> Figure:
    """Horizontal bars: delta-m % per method with one standard deviation over seeds."""
    if not len(methods) == len(means) == len(stds):
        raise ValueError("methods, means and stds must have the same length")
    fig = _figure(6.4, 0.45 * len(methods) + 1.2)
    ax = fig.add_subplot()
    colors = ["C2" if m < 0 else "C3" for m in means]
    ax.barh(list(methods), list(means), xerr=list(stds), color=colors, capsize=3)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("delta-m % (negative = better than single-task)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_tradeoff(
    points: Mapping[str, tuple[float, float, float, float]],
    x_label: str,
    y_label: str,
    title: str = "per-task trade-off",
) -> Figure:
    """Two-task trade-off: one point per method at (mean x, mean y) with std error bars.

    Args:
        points: ``{method: (x mean, x std, y mean, y std)}``.
    """
    fig = _figure(5.2, 4.4)
    ax = fig.add_subplot()
    for i, (name, (x, sx, y, sy)) in enumerate(points.items()):
        ax.errorbar(x, y, xerr=sx, yerr=sy, fmt="o", color=f"C{i % 10}", capsize=3, label=name)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def plot_expert_use(
    usage: Sequence[Sequence[float]],
    task_names: Sequence[str],
    expert_labels: Sequence[str],
    entropies: Sequence[float] | None = None,
    title: str = "expert use (mean gate weight)",
) -> Figure:
    """Heatmap tasks x experts of the mean gate weights (rows sum to 1); the gate entropy of each
    task in its row label.

    >>> fig = plot_expert_use([[0.7, 0.3], [0.1, 0.9]], ["a", "b"], ["e0", "e1"], [0.6, 0.3])
    >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ['a (H 0.60)', 'b (H 0.30)']
    """
    if len(usage) != len(task_names):
        raise ValueError(f"{len(usage)} rows for {len(task_names)} task names")
    if any(len(row) != len(expert_labels) for row in usage):
        raise ValueError(f"every row needs {len(expert_labels)} values (one per expert)")
    fig = _figure(max(4.0, 0.6 * len(expert_labels) + 2.5), max(2.5, 0.45 * len(task_names) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow([list(row) for row in usage], vmin=0.0, aspect="auto", cmap="viridis")
    rows = list(task_names)
    if entropies is not None:
        rows = [f"{name} (H {h:.2f})" for name, h in zip(task_names, entropies, strict=True)]
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xticks(range(len(expert_labels)), list(expert_labels), rotation=45, ha="right")
    for i, row in enumerate(usage):
        for j, value in enumerate(row):
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize="x-small",
                color="white" if value < 0.5 * max(max(r) for r in usage) else "black",
            )
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title)
    return fig


def plot_gradient_conflicts(
    steps: Sequence[int],
    cosines: Sequence[Sequence[float]],
    pair_labels: Sequence[str],
    title: str = "task-gradient cosines",
) -> Figure:
    """Heatmap of the pairwise task-gradient cosines (pairs x recorded steps, red = conflict)
    above the share of conflicting pairs per step.

    >>> fig = plot_gradient_conflicts([0, 5], [[0.5], [-0.2]], ["a~b"])
    >>> len(fig.axes)  # heatmap, colour bar, share
    3
    """
    if len(steps) != len(cosines):
        raise ValueError(f"steps ({len(steps)}) and cosines ({len(cosines)}) differ in length")
    columns = [list(row) for row in cosines]
    if any(len(row) != len(pair_labels) for row in columns):
        raise ValueError(f"every row needs {len(pair_labels)} cosines (one per pair)")
    fig = _figure(7.0, max(3.5, 0.3 * len(pair_labels) + 3.0))
    grid = fig.add_gridspec(2, 1, height_ratios=[max(1, len(pair_labels) // 4 + 2), 1])
    ax = fig.add_subplot(grid[0])
    matrix = [list(col) for col in zip(*columns, strict=True)] if columns else []
    extent = (min(steps), max(steps) + 1, len(pair_labels) - 0.5, -0.5) if steps else None
    image = ax.imshow(
        matrix,
        vmin=-1.0,
        vmax=1.0,
        cmap="RdBu",
        aspect="auto",
        interpolation="nearest",
        extent=extent,
    )
    ax.set_yticks(range(len(pair_labels)), list(pair_labels), fontsize="small")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="cosine")
    share_ax = fig.add_subplot(grid[1], sharex=ax)
    shares = [sum(1 for c in row if c < 0) / max(1, len(row)) for row in columns]
    share_ax.plot(list(steps), shares, color="tab:red")
    share_ax.set_ylim(-0.05, 1.05)
    share_ax.set_ylabel("conflicting pairs")
    share_ax.set_xlabel("optimizer step")
    share_ax.grid(alpha=0.3)
    return fig
