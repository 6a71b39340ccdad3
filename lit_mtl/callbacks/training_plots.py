"""Callbacks: task-weight and transfer-schedule trajectories, plotted at the end of fit.

``MultiTaskModule`` adds :class:`TrainingPlots` by default (``plots=True``), so every run of the
CLI or of ``Trainer.fit`` ends with ``task_weights.png`` (and, for a ``TransferModule``,
``lr_schedule.png``) in its log dir, also logged as images to W&B and TensorBoard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lit_mtl._lightning import log_every_n_steps, trainer_callbacks
from lit_mtl._optional import require

if TYPE_CHECKING:
    from lit_mtl.multitask import MultiTaskModule


class LearningRateSchedule(Callback):
    """Base of the callbacks whose per-group effective learning rates :class:`TrainingPlots`
    records and draws (e.g. :class:`~lit_mtl.transfer.UnfreezeScheduleCallback`)."""

    def effective_lrs(
        self, optimizer: torch.optim.Optimizer, epoch: int, step: int
    ) -> dict[str, float]:
        """The effective lr of every named param group at this epoch and step."""
        raise NotImplementedError

    def trainable_groups(self, epoch: int) -> list[str]:
        """The groups that train at ``epoch`` (their first step is marked in the plot)."""
        raise NotImplementedError


class TrainingPlots(Callback):
    """Records the task weights (``pl_module.weighting.last_weights``) and, when a
    :class:`LearningRateSchedule` (e.g. :class:`~lit_mtl.transfer.UnfreezeScheduleCallback`) is
    in the trainer, every param group's
    effective lr every ``every_n_steps`` optimizer steps; at the end of fit (global rank zero)
    writes ``task_weights.png`` / ``lr_schedule.png`` to the log dir and logs them as images
    (keys ``plots/task_weights``, ``plots/lr_schedule``).

    Without a logger (``Trainer(logger=False)``) there is no log dir: nothing is written and
    the history stays in the callback (``steps``, ``weights``, ``lrs``).
    The history is part of the callback's checkpoint state, so a resumed run plots the whole
    trajectory. Recording reads T numbers per recorded step (one device sync).

    Args:
        every_n_steps: record every n optimizer steps (default: the trainer's
            ``log_every_n_steps``).
        task_weights: record and plot the task weights.
        lr_schedule: record and plot the transfer schedule (when there is one).
    """

    def __init__(
        self, every_n_steps: int | None = None, task_weights: bool = True, lr_schedule: bool = True
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.task_weights = task_weights
        self.lr_schedule = lr_schedule
        self.steps: list[int] = []
        self.weights: list[list[float]] = []
        self.task_names: list[str] = []
        self.lr_steps: list[int] = []
        self.lrs: dict[str, list[float]] = {}
        self.unfreeze_steps: dict[str, int] = {}
        self.paths: dict[str, str] = {}
        self._last_recorded = -1
        #: task-gradient cosines (MultiTaskModule(gradient_conflicts_every=k)): steps, pair rows
        self.conflict_steps: list[int] = []
        self.conflicts: list[list[float]] = []
        #: the last epoch's expert use (read at fit end): per task the mean gate weights, the
        #: entropies, the experts' labels
        self.expert_use: list[list[float]] = []
        self.gate_entropies: list[float] = []
        self.expert_labels: list[str] = []

    # ------------------------------------------------------------------ recording
    def _interval(self, trainer: L.Trainer) -> int:
        return self.every_n_steps or max(1, log_every_n_steps(trainer))

    @staticmethod
    def _schedule_callback(trainer: L.Trainer) -> LearningRateSchedule | None:
        return next(
            (c for c in trainer_callbacks(trainer) if isinstance(c, LearningRateSchedule)), None
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.task_names = list(getattr(pl_module, "task_names", []))
        if trainer.logger is not None and (self.task_weights or self.lr_schedule):
            # at the start, not after training: the figures need matplotlib at fit end
            require(
                "matplotlib.figure",
                "plots",
                "TrainingPlots (MultiTaskModule(plots=True), the default, with a logger; pass "
                "plots=False to go without the figures)",
            )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        measured = getattr(pl_module, "last_gradient_cosines", None)
        if measured is not None and (
            not self.conflict_steps or measured[0] > self.conflict_steps[-1]
        ):
            step_of, cosines = measured
            t = cosines.shape[0]
            rows, cols = torch.triu_indices(t, t, offset=1)
            self.conflict_steps.append(int(step_of))
            self.conflicts.append([float(v) for v in cosines[rows, cols]])
        step = trainer.global_step  # optimizer steps taken so far
        if step == self._last_recorded or (step - 1) % self._interval(trainer) != 0:
            return
        self._last_recorded = step
        weighting = getattr(pl_module, "weighting", None)
        if self.task_weights and weighting is not None:
            weights = weighting.last_weights.detach().float().cpu()
            self.steps.append(step)
            self.weights.append([float(w) for w in weights])
        schedule = self._schedule_callback(trainer) if self.lr_schedule else None
        if schedule is not None and trainer.optimizers:
            epoch = trainer.current_epoch
            lrs = schedule.effective_lrs(trainer.optimizers[0], epoch, step)
            self.lr_steps.append(step)
            for name, lr in lrs.items():
                self.lrs.setdefault(name, [0.0] * (len(self.lr_steps) - 1)).append(float(lr))
            for name in schedule.trainable_groups(epoch):
                self.unfreeze_steps.setdefault(name, step)

    def _record_expert_use(self, pl_module: L.LightningModule) -> None:
        """The module's last epoch of expert use (its epoch-end hook runs after the callbacks',
        so this is read at fit end)."""
        usage = getattr(pl_module, "last_expert_use", None)
        if usage:
            names = list(usage)
            widths = {int(w.numel()) for w, _ in usage.values()}
            if len(widths) == 1:  # one heatmap needs one expert axis
                self.expert_use = [[float(v) for v in usage[n][0]] for n in names]
                self.gate_entropies = [float(usage[n][1]) for n in names]
                module = cast("MultiTaskModule", pl_module)  # the module that records gate use
                self.expert_labels = module.expert_labels(0, widths.pop())

    # ------------------------------------------------------------------ plotting
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.logger is None:
            return  # no logger, no log dir: the history stays in the callback
        from lit_mtl.diagnostics import pair_names
        from lit_mtl.diagnostics.plots import (  # only when drawing
            plot_expert_use,
            plot_gradient_conflicts,
            plot_lr_schedule,
            plot_task_weights,
        )
        from lit_mtl.tracking import log_figure

        if self.task_weights and self.steps:
            fig = plot_task_weights(self.steps, self.weights, self.task_names)
            path = log_figure(trainer, "plots/task_weights", fig, "task_weights.png")
            self.paths["task_weights"] = str(path)
        if self.lr_schedule and self.lr_steps:
            first = {n: s for n, s in self.unfreeze_steps.items() if s > self.lr_steps[0]}
            fig = plot_lr_schedule(self.lr_steps, self.lrs, first)
            path = log_figure(trainer, "plots/lr_schedule", fig, "lr_schedule.png")
            self.paths["lr_schedule"] = str(path)
        self._record_expert_use(pl_module)
        if self.conflict_steps:
            pairs = pair_names(self.task_names)
            fig = plot_gradient_conflicts(self.conflict_steps, self.conflicts, pairs)
            path = log_figure(trainer, "plots/gradient_conflict", fig, "gradient_conflict.png")
            self.paths["gradient_conflict"] = str(path)
        if self.expert_use:
            fig = plot_expert_use(
                self.expert_use, self.task_names, self.expert_labels, self.gate_entropies
            )
            path = log_figure(trainer, "plots/expert_use", fig, "expert_use.png")
            self.paths["expert_use"] = str(path)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "weights": [list(w) for w in self.weights],
            "task_names": list(self.task_names),
            "lr_steps": list(self.lr_steps),
            "lrs": {k: list(v) for k, v in self.lrs.items()},
            "unfreeze_steps": dict(self.unfreeze_steps),
            "last_recorded": self._last_recorded,
            "conflict_steps": list(self.conflict_steps),
            "conflicts": [list(c) for c in self.conflicts],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = list(state_dict["steps"])
        self.weights = [list(w) for w in state_dict["weights"]]
        self.task_names = list(state_dict["task_names"])
        self.lr_steps = list(state_dict["lr_steps"])
        self.lrs = {k: list(v) for k, v in state_dict["lrs"].items()}
        self.unfreeze_steps = dict(state_dict["unfreeze_steps"])
        self._last_recorded = int(state_dict["last_recorded"])
        self.conflict_steps = list(state_dict.get("conflict_steps", []))
        self.conflicts = [list(c) for c in state_dict.get("conflicts", [])]


def weights_tensor(callback: TrainingPlots) -> torch.Tensor:
    """The recorded weights as an (S, T) tensor (handy in notebooks and tests)."""
    return torch.tensor(callback.weights, dtype=torch.float64).reshape(-1, len(callback.task_names))
