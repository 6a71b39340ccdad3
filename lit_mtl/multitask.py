"""MultiTaskModule: a shared encoder, one head per task, and a weighting of the task losses."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor, nn

from lit_mtl.engines import StepContext, loss_scale_of, stack_losses, task_views
from lit_mtl.tasks import Task, TaskSpec, as_task_spec
from lit_mtl.weighting import EqualWeighting, Weighting

__all__ = ["MultiTaskModule", "unpack_batch"]

log = logging.getLogger(__name__)

_MODULE_ARGS = ["encoder", "weighting", "heads", "optimizer", "lr_scheduler"]

Batch = Any
STAGES = ("train", "val", "test")


def unpack_batch(batch: Batch) -> tuple[Tensor, Mapping[str, Tensor], Mapping[str, Tensor]]:
    """Split a batch into (inputs, targets by task, masks by task).

    Accepted forms: ``(x, targets)``, ``(x, targets, masks)`` or a mapping with keys ``inputs``,
    ``targets`` and optionally ``masks``. ``targets``/``masks`` map task names to tensors.
    """
    if isinstance(batch, Mapping):
        if "inputs" not in batch or "targets" not in batch:
            raise ValueError(
                f"a dict batch needs the keys 'inputs' and 'targets', got {sorted(batch)}"
            )
        return batch["inputs"], batch["targets"], batch.get("masks") or {}
    if isinstance(batch, list | tuple) and len(batch) in (2, 3):
        x, targets = batch[0], batch[1]
        masks = batch[2] if len(batch) == 3 else {}
        return x, targets, masks
    raise ValueError(
        "a batch must be (inputs, targets), (inputs, targets, masks) or a dict with 'inputs' and "
        f"'targets'; got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, list | tuple) else "")
    )


class MultiTaskModule(L.LightningModule):
    """Shared encoder + one head per task; the task losses are combined by a weighting method.

    Args:
        encoder: the shared trunk; must expose ``out_features`` (the representation width).
        tasks: the task specs (``TaskSpec`` or mappings with name/kind/num_outputs). Under the
            Lightning CLI they are linked from the DataModule's ``task_specs``.
        weighting: how task losses are combined (default :class:`~lit_mtl.EqualWeighting`). It is
            bound to the tasks here; a weighting built for another number of tasks is an error.
        optimizer: a callable ``params -> Optimizer`` (default Adam, lr 1e-3).
        lr_scheduler: optional callable ``optimizer -> scheduler`` (stepped every epoch).
        heads: optional custom heads by task name (default ``nn.Linear``).
        nonfinite_loss: ``"raise"`` (default): a NaN/inf task loss raises an error naming the task
            and the step; ``"skip"``: the step is skipped (no update) with a warning.
        lr_scheduler_monitor: metric monitored by plateau schedulers.
        plots: add a :class:`~lit_mtl.callbacks.TrainingPlots` callback, which writes the
            task-weight trajectory (``task_weights.png``) to the log dir at the end of fit and
            logs it as an image to W&B / TensorBoard. ``False`` to leave callbacks to you.
        select_tasks: train and evaluate only these tasks (e.g. a single-task baseline on a
            multi-task DataModule); the batch's targets for the other tasks are ignored.

    Logged: ``train/loss``; per task ``{stage}/{task}/loss`` and ``{stage}/{task}/{metric}``;
    the task weights as ``train/{task}/weight``.

    Training uses Lightning's automatic optimization, so ``precision``, ``strategy``,
    ``accumulate_grad_batches`` and ``gradient_clip_val`` work unchanged. The weighting is a
    submodule: its state is in the checkpoint. To restore from Python,
    ``MultiTaskModule.load_from_checkpoint(path, encoder=..., weighting=...)`` (encoder and
    weighting are modules and not stored as hyperparameters; a checkpoint written by the
    ``lit-mtl`` CLI restores without arguments).
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        weighting: Weighting | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        heads: Mapping[str, nn.Module] | None = None,
        nonfinite_loss: Literal["raise", "skip"] = "raise",
        lr_scheduler_monitor: str = "val/loss",
        plots: bool = True,
        select_tasks: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        # Under the lit-mtl CLI the hyperparameters are the parsed config (class_path/init_args
        # dicts), so a CLI checkpoint restores without arguments; in plain Python the modules are
        # callables are not pickled into hparams (pass them to load_from_checkpoint).
        from_cli_config = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=["tasks"] if from_cli_config else [*_MODULE_ARGS, "tasks"])
        specs = [as_task_spec(t) for t in tasks]
        if not specs:
            raise ValueError("MultiTaskModule: tasks must not be empty")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"MultiTaskModule: task names must be unique, got {names}")
        self.hparams["tasks"] = [s.to_dict() for s in specs]  # all of them; selection is its own
        self._ignored_tasks: frozenset[str] = frozenset()
        if select_tasks is not None:
            unknown = sorted(set(select_tasks) - set(names))
            if unknown or not select_tasks:
                raise ValueError(
                    f"MultiTaskModule: select_tasks={list(select_tasks)} must name some of the "
                    f"tasks {names}" + (f"; unknown: {unknown}" if unknown else "")
                )
            self._ignored_tasks = frozenset(set(names) - set(select_tasks))
            specs = [s for s in specs if s.name in select_tasks]
            names = [s.name for s in specs]
        if nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
        width = getattr(encoder, "out_features", None)
        if not isinstance(width, int):
            raise ValueError(
                f"encoder {type(encoder).__name__} must expose an integer `out_features` (the "
                "width of the representation the heads read)"
            )
        heads = dict(heads or {})
        unknown_heads = set(heads) - set(names)
        if unknown_heads:
            raise KeyError(
                f"heads given for unknown task(s) {sorted(unknown_heads)}; tasks: {names}"
            )

        self.encoder = encoder
        self.tasks = nn.ModuleDict({s.name: Task(s, width, heads.get(s.name)) for s in specs})
        self.weighting = weighting if weighting is not None else EqualWeighting()
        self.weighting.bind(
            names,
            [s.kind for s in specs],
            encoder=encoder,
            baseline_losses=[task.baseline_loss() for task in self.tasks.values()],
        )
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_metrics": nn.ModuleDict(
                    {s.name: _task_metrics(s, prefix=f"{stage}/{s.name}/") for s in specs}
                )
                for stage in STAGES
            }
        )
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.nonfinite_loss = nonfinite_loss
        self.lr_scheduler_monitor = lr_scheduler_monitor
        self.plots = bool(plots)

    # ------------------------------------------------------------------ helpers
    @property
    def task_names(self) -> list[str]:
        return list(self.tasks.keys())

    def shared_parameters(self) -> list[nn.Parameter]:
        """The encoder's trainable parameters (the shared target of parameter-gradient methods)."""
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Predictions by task name: raw outputs (logits for classification tasks)."""
        z = self.encoder(x)  # (N, D)
        return {name: task(z) for name, task in self.tasks.items()}

    def _check_targets(self, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
        if isinstance(targets, Tensor):
            raise TypeError(
                "targets must be a dict {task name: tensor}; the model's tasks are "
                f"{self.task_names}"
            )
        unknown = sorted(set(targets) - set(self.tasks) - self._ignored_tasks)
        if unknown:
            raise KeyError(
                f"batch has targets for unknown task(s) {unknown}; the model's tasks are "
                f"{self.task_names}"
            )
        missing = [name for name in self.tasks if name not in targets]
        if missing:
            raise KeyError(
                f"batch has no targets for task(s) {missing}; mark missing labels with NaN, -100 "
                "or a mask instead of leaving a task out"
            )
        unknown_masks = sorted(set(masks) - set(self.tasks) - self._ignored_tasks)
        if unknown_masks:
            raise KeyError(f"batch has masks for unknown task(s) {unknown_masks}")

    def _task_losses(
        self,
        x: Tensor,
        targets: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        stage: str | None,
    ) -> tuple[Tensor, list[Tensor], Tensor, list[Tensor] | None]:
        """(z, T scalar losses, (T,) presence, the heads' views of z or None); updates the
        stage's metrics when ``stage`` is given.

        When the weighting differentiates w.r.t. z, each head reads its own view of z
        (:func:`~lit_mtl.task_views`) so that all T gradients come from a single backward pass.
        """
        z = self.encoder(x)  # (N, D) shared representation
        wants_z_grads = self.weighting.uses_task_representations and stage == "train"
        if wants_z_grads and torch.is_grad_enabled() and not z.requires_grad:
            z = z.detach().requires_grad_()  # frozen encoder: the heads' gradients w.r.t. z
        views = wants_z_grads and z.requires_grad
        head_inputs = task_views(z, len(self.tasks)) if views else None
        losses: list[Tensor] = []
        present: list[Tensor] = []
        for i, (name, task) in enumerate(self.tasks.items()):
            pred = task(z if head_inputs is None else head_inputs[i])  # (N,) or (N, d)
            target, mask = targets[name], masks.get(name)
            task.check_target(pred, target)
            losses.append(task.loss(pred, target, mask))  # scalar, 0 when unlabelled
            present.append(task.labelled(target, mask).any())
            if stage is not None:
                inputs = task.metric_inputs(pred, target, mask)
                if inputs is not None:
                    self.metrics[f"{stage}_metrics"][name].update(*inputs)
        return z, losses, torch.stack(present), head_inputs

    @torch.no_grad()
    def _recompute_losses(
        self, x: Tensor, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Task losses of a training batch under the current parameters (FAMO's l').

        Runs in train mode (as the step did) under the trainer's precision context; BatchNorm
        running statistics are restored afterwards so the extra forward leaves no trace.
        """
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
        context = (
            self.trainer.precision_plugin.forward_context()
            if self._trainer is not None
            else contextlib.nullcontext()
        )
        with context:
            _, losses, present, _ = self._task_losses(x, targets, masks, stage=None)
        for m, state in zip(norms, saved, strict=True):
            m.load_state_dict(state)
        return stack_losses(losses), present

    def _loss_scale(self) -> Tensor | float | None:
        """The fp16 GradScaler's current scale, or None."""
        if self._trainer is None:
            return None
        return loss_scale_of(getattr(self.trainer.precision_plugin, "scaler", None))

    def _check_finite(self, stacked: Tensor, batch_idx: int) -> bool:
        finite = torch.isfinite(stacked)
        all_finite = bool(finite.all())
        if self.nonfinite_loss == "skip" and self.trainer.world_size > 1:
            flag = torch.tensor(float(all_finite), device=stacked.device)
            all_finite = bool(self.trainer.strategy.reduce(flag, reduce_op="min") > 0.5)
        if all_finite:
            return True
        bad = {
            name: float(v)
            for name, v, ok in zip(self.task_names, stacked.tolist(), finite.tolist(), strict=True)
            if not ok
        }
        where = f"at global step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        if self.nonfinite_loss == "raise":
            raise FloatingPointError(
                f"non-finite loss for task(s) {bad} {where}; pass nonfinite_loss='skip' to skip "
                "such steps instead"
            )
        log.warning(
            "skipping a step: non-finite loss for task(s) %s %s", bad or "(other rank)", where
        )
        return False

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        x, targets, masks = unpack_batch(batch)
        self._check_targets(targets, masks)
        z, losses, present, views = self._task_losses(x, targets, masks, "train")
        n = x.shape[0]
        stacked = stack_losses(losses).detach()  # (T,)
        if not self._check_finite(stacked, batch_idx):
            return None
        context = StepContext(  # what the weighting may read (one immutable object per step)
            losses=tuple(losses),
            present=present,
            representation=z,
            task_representations=None if views is None else tuple(views),
            head_parameters=None
            if views is None
            else tuple(tuple(task.parameters()) for task in self.tasks.values()),
            loss_scale=self._loss_scale(),
            recompute_losses=lambda: self._recompute_losses(x, targets, masks),
        )
        loss = self.weighting(context)  # its post-step update runs after the optimizer step
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        weights = self.weighting.last_weights
        for i, name in enumerate(self.task_names):
            self.log(f"train/{name}/loss", stacked[i], batch_size=n)
            self.log(f"train/{name}/weight", weights[i], batch_size=n)
            self.log_dict(
                self.metrics["train_metrics"][name], on_step=False, on_epoch=True, batch_size=n
            )
        return loss

    def _eval_step(self, batch: Batch, stage: str) -> None:
        x, targets, masks = unpack_batch(batch)
        self._check_targets(targets, masks)
        _, losses, _, _ = self._task_losses(x, targets, masks, stage)
        n = x.shape[0]
        stacked = stack_losses(losses)
        self.log(
            f"{stage}/loss", stacked.sum(), prog_bar=stage == "val", batch_size=n, sync_dist=True
        )
        for i, name in enumerate(self.task_names):
            self.log(f"{stage}/{name}/loss", stacked[i], batch_size=n, sync_dist=True)
            self.log_dict(
                self.metrics[f"{stage}_metrics"][name], on_step=False, on_epoch=True, batch_size=n
            )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        x = batch if isinstance(batch, Tensor) else unpack_batch(batch)[0]
        return self(x)

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict]:
        """Named optimizer param groups: encoder, heads, and the weighting's own groups."""
        groups = [
            {"params": list(self.encoder.parameters()), "name": "encoder"},
            {"params": list(self.tasks.parameters()), "name": "heads"},
        ]
        return groups + self.weighting.parameter_groups()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.lr_scheduler_monitor},
        }

    def on_train_epoch_start(self) -> None:
        self.weighting.on_train_epoch_start()

    def configure_callbacks(self) -> list:
        if not self.plots:
            return []
        from lit_mtl.callbacks import TrainingPlots  # plotting is imported only when plots are on

        # one instance for the module's lifetime: Lightning re-attaches model callbacks on every
        # fit/validate/test, and a fresh one would drop the recorded history
        if getattr(self, "_training_plots", None) is None:
            self._training_plots = TrainingPlots()
        return [self._training_plots]


def _task_metrics(spec: TaskSpec, prefix: str) -> nn.Module:
    from lit_mtl.tasks import default_metrics

    return default_metrics(spec).clone(prefix=prefix)
