"""Figures for task weights, transfer schedules and method comparisons (pure functions).

Every function takes plain data and returns a :class:`matplotlib.figure.Figure` built with the
object-oriented API (no pyplot state, no backend switch), so it works in notebooks, callbacks and
headless CI alike.

Examples:
    >>> fig = plot_task_weights([0, 10, 20], [[1.0, 1.0], [1.4, 0.6], [1.8, 0.2]], ["depth", "seg"])
    >>> [line.get_label() for line in fig.axes[0].lines]
    ['depth', 'seg']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lit_mtl._optional import require

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


#: the one export path of these names: this module (the package leaves it out of ``import lit_mtl``)
__all__ = [
    "plot_delta_m",
    "plot_expert_use",
    "plot_gradient_conflicts",
    "plot_lr_schedule",
    "plot_task_weights",
    "plot_tradeoff",
]


#: above this many tasks, the per-task line plots become a heatmap (one row per task) with the
#: spread across tasks below it, instead of one legend entry per task
MAX_LINES = 10


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
    """One line per task: its weight against the optimizer step; above :data:`MAX_LINES`
    tasks, a heatmap (tasks x steps) above the minimum, median and maximum weight per step.

    Args:
        steps: the optimizer steps at which the weights were recorded, length S.
        weights: S rows of T weights.
        task_names: the T task names (legend).
        log_scale: log y axis (colour scale for the heatmap); by default when the weights span
            more than a factor of 20.

    >>> names = [f"attr{k}" for k in range(40)]
    >>> fig = plot_task_weights([0, 1], [[1.0] * 40, [0.5] * 20 + [1.5] * 20], names)
    >>> len(fig.axes), [line.get_label() for line in fig.axes[-1].lines]  # heatmap, bar, spread
    (3, ['max', 'median', 'min'])
    """
    if len(steps) != len(weights):
        raise ValueError(f"steps ({len(steps)}) and weights ({len(weights)}) differ in length")
    fig = _figure()
    ax = fig.add_subplot()
    columns: list[Sequence[float]] = (
        list(zip(*weights, strict=True)) if weights else [[] for _ in task_names]
    )
    if len(columns) != len(task_names):
        raise ValueError(f"weights have {len(columns)} columns for {len(task_names)} task names")
    positive = [w for col in columns for w in col if w > 0]
    if log_scale is None:
        log_scale = bool(positive) and max(positive) / min(positive) > 20
    if len(task_names) > MAX_LINES:
        fig.clear()
        return _many_task_weights(fig, steps, weights, task_names, title, log_scale)
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


def _many_task_weights(
    fig: Figure,
    steps: Sequence[int],
    weights: Sequence[Sequence[float]],
    task_names: Sequence[str],
    title: str,
    log_scale: bool,
) -> Figure:
    """Many tasks: heatmap of the weights (tasks x steps) and their spread per step."""
    colors = require("matplotlib.colors", "plots", "drawing figures")
    count = len(task_names)
    fig.set_size_inches(7.5, max(4.5, 0.16 * count + 2.5))
    grid = fig.add_gridspec(2, 1, height_ratios=[max(2, count // 6), 1])
    ax = fig.add_subplot(grid[0])
    matrix = [list(col) for col in zip(*weights, strict=True)] if weights else []
    positive = [w for row in matrix for w in row if w > 0]
    norm = (
        colors.LogNorm() if log_scale and positive and len(positive) == count * len(steps) else None
    )
    extent = (min(steps), max(steps) + 1, count - 0.5, -0.5) if steps else None
    image = ax.imshow(
        matrix, aspect="auto", interpolation="nearest", extent=extent, norm=norm, cmap="viridis"
    )
    ax.set_yticks(range(count), list(task_names), fontsize=6 if count > 20 else "small")
    ax.set_title(f"{title} ({count} tasks)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="weight")
    spread = fig.add_subplot(grid[1], sharex=ax)
    rows = [sorted(row) for row in weights]
    for label, pick in (("max", -1), ("median", None), ("min", 0)):
        values = [row[len(row) // 2] if pick is None else row[pick] for row in rows]
        spread.plot(list(steps), values, label=label)
    if log_scale:
        spread.set_yscale("log")
    spread.set_xlabel("optimizer step")
    spread.set_ylabel("weight across tasks")
    spread.legend(loc="best", fontsize="small")
    spread.grid(alpha=0.3)
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

    Examples:
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
    above the share of conflicting pairs per step. With more than :data:`MAX_LINES` tasks
    (pairs ``"a~b"`` in upper-triangle order), the heatmap is the last recorded step's
    task x task cosine matrix instead of one row per pair.

    >>> fig = plot_gradient_conflicts([0, 5], [[0.5], [-0.2]], ["a~b"])
    >>> len(fig.axes)  # heatmap, colour bar, share
    3
    """
    if len(steps) != len(cosines):
        raise ValueError(f"steps ({len(steps)}) and cosines ({len(cosines)}) differ in length")
    columns = [list(row) for row in cosines]
    if any(len(row) != len(pair_labels) for row in columns):
        raise ValueError(f"every row needs {len(pair_labels)} cosines (one per pair)")
    names = list(dict.fromkeys(n for label in pair_labels for n in label.split("~", 1)))
    if len(names) > MAX_LINES and columns:
        return _conflict_matrix(names, steps, columns, title)
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
    _conflict_share_axis(fig, grid[1], steps, columns, sharex=ax)
    return fig


def _conflict_share_axis(
    fig: Figure, position: Any, steps: Sequence[int], columns: list, sharex: Any = None
) -> None:
    """The share of conflicting pairs (negative cosines) per recorded step."""
    share_ax = fig.add_subplot(position, sharex=sharex)
    shares = [sum(1 for c in row if c < 0) / max(1, len(row)) for row in columns]
    share_ax.plot(list(steps), shares, color="tab:red")
    share_ax.set_ylim(-0.05, 1.05)
    share_ax.set_ylabel("conflicting pairs")
    share_ax.set_xlabel("optimizer step")
    share_ax.grid(alpha=0.3)


def _conflict_matrix(
    names: list[str], steps: Sequence[int], columns: list[list[float]], title: str
) -> Figure:
    """Many tasks: the last step's cosine matrix (tasks x tasks) above the conflict share."""
    count = len(names)
    fig = _figure(7.5, max(5.0, 0.16 * count + 3.5))
    grid = fig.add_gridspec(2, 1, height_ratios=[4, 1])
    ax = fig.add_subplot(grid[0])
    matrix = [[1.0 if i == j else 0.0 for j in range(count)] for i in range(count)]
    last = iter(columns[-1])
    for i in range(count):
        for j in range(i + 1, count):
            matrix[i][j] = matrix[j][i] = next(last)
    image = ax.imshow(matrix, vmin=-1.0, vmax=1.0, cmap="RdBu", interpolation="nearest")
    font = 6 if count > 20 else "small"
    ax.set_yticks(range(count), names, fontsize=font)
    ax.set_xticks(range(count), names, fontsize=font, rotation=90)
    ax.set_title(f"{title} at step {steps[-1]} ({count} tasks)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="cosine")
    _conflict_share_axis(fig, grid[1], steps, columns)
    return fig
