"""MultiTaskModule: a shared encoder, one head per task, and a weighting of the task losses."""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple, TypeVar

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor, nn

from lit_mtl.checkpoints import check_checkpoint_file, unsafe_error
from lit_mtl.diagnostics import GateUsage, conflict_share, gradient_cosines, pair_names
from lit_mtl.engines import StepContext, loss_scale_of, stack_losses, task_views
from lit_mtl.engines.representation import gradients_of
from lit_mtl.epoch_metrics import EpochTaskMetrics
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


_Module = TypeVar("_Module", bound="MultiTaskModule")


class _TaskLosses(NamedTuple):
    """One forward pass over the tasks (:meth:`MultiTaskModule._task_losses`)."""

    representation: Tensor | None  # z (None: the encoder gave each task its own z_i)
    batch_size: int
    losses: list[Tensor]  # T scalars with their graphs
    stacked: Tensor  # the same as one (T,) tensor (graph kept)
    loss_values: list[float]  # the same, on the host
    present: Tensor  # (T,) bool: the task has a labelled entry in the batch
    statistics: Tensor  # the tasks' metric statistics, concatenated
    views: list[Tensor] | None  # what each head read (views of z, or the z_i; gradient methods)


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
        heads: optional custom heads by task name. Default: the encoder's ``make_head(spec)``
            where it has one (the dense encoders' decoder heads), else
            :class:`~lit_mtl.tasks.PooledLinear` for vector tasks and
            :class:`~lit_mtl.tasks.DenseHead` for dense ones.
        nonfinite_loss: ``"raise"`` (default): a NaN/inf task loss raises an error naming the task
            and the step; ``"skip"``: the step is skipped (no update) with a warning.
        lr_scheduler_monitor: metric monitored by plateau schedulers.
        plots: add a :class:`~lit_mtl.callbacks.TrainingPlots` callback, which writes the
            task-weight trajectory (``task_weights.png``) to the log dir at the end of fit and
            logs it as an image to W&B / TensorBoard. ``False`` to leave callbacks to you.
        select_tasks: train and evaluate only these tasks (e.g. a single-task baseline on a
            multi-task DataModule); the batch's targets for the other tasks are ignored.
        dense_reduction: how the dense tasks' metrics reduce over an epoch: ``"pooled"`` (all
            valid pixels of the split; LibMTL's normals) or ``"per_batch"`` (the mean of the
            batches' values; the MTAN / CAGrad / Nash-MTL / FAMO code). See
            :mod:`lit_mtl.functional.dense_metrics`.
        gradient_conflicts_every: every this many optimizer steps, the pairwise cosines of the
            task gradients (:mod:`lit_mtl.diagnostics`) are logged as
            ``train/grad_cosine/{a}~{b}`` with ``train/grad_conflict_share`` and drawn over
            training (``gradient_conflict.png``): from the Gramian a gradient method already
            computed (its own target: z or the shared parameters), else from the per-task
            gradients w.r.t. the shared parameters (T extra backward passes that step).

    Logged: ``train/loss`` every step; per task, ``train/{task}/loss`` and
    ``train/{task}/weight`` (the step's values) on the steps the trainer writes logs
    (``log_every_n_steps``) and on the last step of each epoch; ``val/loss``, ``test/loss``;
    at each epoch's end ``{val,test}/{task}/loss`` (batch-size-weighted means) and
    ``{stage}/{task}/{metric}`` (mse and mae; acc and f1), synchronised across DDP ranks.
    A step pays for this once, not once per task: the metrics' sufficient statistics of all
    tasks are summed in one vector on the device
    (:class:`~lit_mtl.epoch_metrics.EpochTaskMetrics`), and the step's only host read is the
    task losses (with the class labels' range check) that ``nonfinite_loss`` needs anyway.

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
        dense_reduction: Literal["pooled", "per_batch"] = "pooled",
        gradient_conflicts_every: int | None = None,
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
        bind_tasks = getattr(encoder, "bind_tasks", None)  # architectures with per-task parts
        if callable(bind_tasks):
            bind_tasks(names)
        make_head = getattr(encoder, "make_head", None)
        for spec in specs:
            if spec.name not in heads and callable(make_head):
                heads[spec.name] = make_head(spec)
        self.tasks = nn.ModuleDict(
            {s.name: Task(s, width, heads.get(s.name), dense_reduction) for s in specs}
        )
        self.dense_reduction = dense_reduction
        if gradient_conflicts_every is not None and int(gradient_conflicts_every) < 1:
            raise ValueError(
                f"gradient_conflicts_every must be >= 1 (or None), got {gradient_conflicts_every}"
            )
        self.gradient_conflicts_every = gradient_conflicts_every
        #: (global step, (T, T) cosines) of the last conflict measurement
        self.last_gradient_cosines: tuple[int, Tensor] | None = None
        # mixture-of-experts encoders: the epoch's expert use per task
        gated = hasattr(encoder, "last_gate_weights")
        self.gate_usage = GateUsage(names) if gated else None
        #: the last epoch's {task: (mean gate weight per expert, mean gate entropy)}
        self.last_expert_use: dict[str, tuple[Tensor, Tensor]] = {}
        self.weighting = weighting if weighting is not None else EqualWeighting()
        self.weighting.bind(
            names,
            [s.kind for s in specs],
            encoder=encoder,
            baseline_losses=[task.baseline_loss() for task in self.tasks.values()],
        )
        sizes = [task.statistics_size for task in self.tasks.values()]
        self.epoch_metrics = nn.ModuleDict(
            {
                f"{stage}_metrics": EpochTaskMetrics(specs, sizes, dense_reduction)
                for stage in STAGES
            }
        )
        # where each task's labelled count sits in the concatenated statistics of a step
        counts_at = torch.tensor([sum(sizes[:i]) for i in range(len(sizes))], dtype=torch.long)
        self.register_buffer("_count_positions", counts_at, persistent=False)
        self._step_log: tuple[Tensor, Tensor, int] | None = None
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.nonfinite_loss = nonfinite_loss
        self.lr_scheduler_monitor = lr_scheduler_monitor
        self.plots = bool(plots)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls: type[_Module],
        checkpoint_path: str | Path | IO[bytes],
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool = True,
        **kwargs: Any,
    ) -> _Module:
        """Lightning's ``load_from_checkpoint``, with ``weights_only=True`` always (a pickled
        object in the file never runs, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says) and
        errors that name the file (missing, empty, truncated, not a checkpoint, unsafe)."""
        if not weights_only:
            raise ValueError(
                "load_from_checkpoint(weights_only=False): lit_mtl reads checkpoints with "
                "weights_only=True only (a pickled object in a checkpoint would run code)"
            )
        if isinstance(checkpoint_path, str | Path) and "://" not in str(checkpoint_path):
            check_checkpoint_file(checkpoint_path, "checkpoint")
        try:
            return super().load_from_checkpoint(  # type: ignore[misc]
                checkpoint_path,
                map_location=map_location,
                hparams_file=hparams_file,
                strict=strict,
                weights_only=True,
                **kwargs,
            )
        except pickle.UnpicklingError as err:
            raise unsafe_error(Path(str(checkpoint_path)), "checkpoint", err) from err

    # ------------------------------------------------------------------ helpers
    @property
    def task_names(self) -> list[str]:
        return list(self.tasks.keys())

    def shared_parameters(self) -> list[nn.Parameter]:
        """The encoder's trainable shared parameters (the target of parameter-gradient methods):
        all of them, or those the encoder declares (``encoder.shared_parameters()``)."""
        declared = getattr(self.encoder, "shared_parameters", None)
        source = declared() if callable(declared) else self.encoder.parameters()
        return [p for p in source if p.requires_grad]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Predictions by task name: raw outputs (logits for classification tasks); dense
        predictions at the input's spatial size."""
        z = self._per_task(self.encoder(x))  # (N, D), (N, C, h, w), or one per task
        size = tuple(x.shape[-2:]) if isinstance(x, Tensor) and x.dim() >= 3 else None
        return {name: task(z[i], size) for i, (name, task) in enumerate(self.tasks.items())}

    def _per_task(self, output: Tensor | Sequence[Tensor]) -> list[Tensor]:
        """What each head reads: the shared z T times, or the encoder's T per-task z_i."""
        if isinstance(output, Tensor):
            return [output] * len(self.tasks)
        outputs = list(output)
        if len(outputs) != len(self.tasks):
            raise ValueError(
                f"encoder {type(self.encoder).__name__} returned {len(outputs)} representations "
                f"for {len(self.tasks)} tasks {self.task_names}"
            )
        return outputs

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
        self, x: Any, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor], train: bool
    ) -> _TaskLosses:
        """The step's task losses, their values on the host and the statistics of the tasks'
        metrics.

        Each loss takes its task's fast path (one fused op) unless a mask is given; the losses
        and the class tasks' label probes are read on the host together, once per step
        (:meth:`Task.fast_path_exact`: an invalid label is an error naming the task and the
        value), and a task whose fast path was not exact (a missing label) is redone masked
        from the same prediction. When the weighting differentiates w.r.t. z (``train``), each
        head reads its own view of z (:func:`~lit_mtl.task_views`) so that all T gradients come
        from a single backward pass.
        """
        output = self.encoder(x)  # (N, ...) shared z, or T per-task z_i (architectures)
        per_task = not isinstance(output, Tensor)
        z_all = self._per_task(output)
        n = z_all[0].shape[0]
        for name, task in self.tasks.items():
            task.check_target(targets[name], n)
        wants_z_grads = self.weighting.uses_task_representations and train
        if wants_z_grads and torch.is_grad_enabled():  # frozen encoder: gradients w.r.t. z still
            z_all = [zi if zi.requires_grad else zi.detach().requires_grad_() for zi in z_all]
        z = None if per_task else z_all[0]
        views = wants_z_grads and z_all[0].requires_grad
        if views:  # each head reads its own z_i, or its own view of the shared z
            head_inputs = z_all if per_task else task_views(z_all[0], len(self.tasks))
        else:
            head_inputs = None
        preds: list[Tensor] = []
        losses: list[Tensor] = []
        statistics: list[Tensor] = []
        probes: list[Tensor] = []
        for i, (name, task) in enumerate(self.tasks.items()):
            size = targets[name].shape[-2:] if task.spec.dense else None  # the target's (H, W)
            pred = task(z_all[i] if head_inputs is None else head_inputs[i], size)  # (N, ...)
            mask = masks.get(name)
            loss, stats = task.evaluate(pred, targets[name], mask, fast=mask is None)
            if mask is None and task.probe_size:
                probes.append(task.probe(targets[name]))
            preds.append(pred)
            losses.append(loss)  # scalar, 0 when unlabelled
            statistics.append(stats)
        stacked = stack_losses(losses)
        values = torch.cat([stacked.detach(), *probes]).tolist()  # one host read
        probe_at = len(losses)
        redo = []
        for i, (name, task) in enumerate(self.tasks.items()):
            if masks.get(name) is not None:
                continue
            size = task.probe_size
            probe = values[probe_at : probe_at + size]
            probe_at += size
            if not task.fast_path_exact(probe, targets[name]) or not math.isfinite(values[i]):
                redo.append((i, name, task))
        for i, name, task in redo:  # missing labels: the masked path, from the same prediction
            losses[i], statistics[i] = task.evaluate(preds[i], targets[name])
        loss_values = values[: len(losses)]
        if redo:
            stacked = stack_losses(losses)
            loss_values = stacked.detach().tolist()
        stats_all = torch.cat(statistics)
        present = stats_all[self._count_positions] > 0
        return _TaskLosses(z, n, losses, stacked, loss_values, present, stats_all, head_inputs)

    @torch.no_grad()
    def _recompute_losses(
        self,
        x: Any,
        targets: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
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
            step = self._task_losses(x, targets, masks, train=False)
        for m, state in zip(norms, saved, strict=True):
            m.load_state_dict(state)
        return step.stacked, step.present

    def _loss_scale(self) -> Tensor | float | None:
        """The fp16 GradScaler's current scale, or None."""
        if self._trainer is None:
            return None
        return loss_scale_of(getattr(self.trainer.precision_plugin, "scaler", None))

    def _check_finite(self, values: Sequence[float], batch_idx: int) -> bool:
        """Whether the step's task losses (host values) are all finite, on every rank when
        steps are skipped; raises or warns naming the tasks otherwise."""
        all_finite = all(math.isfinite(v) for v in values)
        if self.nonfinite_loss == "skip" and self.trainer.world_size > 1:
            flag = torch.tensor(float(all_finite), device=self.device)
            all_finite = bool(self.trainer.strategy.reduce(flag, reduce_op="min") > 0.5)
        if all_finite:
            return True
        bad = {
            name: v for name, v in zip(self.task_names, values, strict=True) if not math.isfinite(v)
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
        self._step_log = None
        x, targets, masks = unpack_batch(batch)
        self._check_targets(targets, masks)
        step = self._task_losses(x, targets, masks, train=True)
        n = step.batch_size
        if not self._check_finite(step.loss_values, batch_idx):
            return None
        stacked = step.stacked.detach()  # (T,)
        views = step.views
        context = StepContext(  # what the weighting may read (one immutable object per step)
            losses=tuple(step.losses),
            present=step.present,
            representation=step.representation,
            task_representations=None if views is None else tuple(views),
            head_parameters=None
            if views is None
            else tuple(tuple(task.parameters()) for task in self.tasks.values()),
            loss_scale=self._loss_scale(),
            recompute_losses=lambda: self._recompute_losses(x, targets, masks),
        )
        loss = self.weighting(context)  # its post-step update runs after the optimizer step
        if self.gate_usage is not None and self.encoder.last_gate_weights:  # gated experts
            self.gate_usage.update(self.encoder.last_gate_weights)
        every = self.gradient_conflicts_every
        if every is not None and self.global_step % int(every) == 0:
            self._measure_conflicts(step.losses)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.epoch_metrics["train_metrics"].update(stacked, step.statistics, n)
        self._step_log = (stacked, self.weighting.last_weights, n)  # logged at logging steps
        return loss

    def expert_labels(self, task: int, count: int) -> list[str]:
        """Names of the experts task ``task``'s gate weighs (the encoder's, else expert0...)."""
        labels = getattr(self.encoder, "expert_labels", None)
        names = list(labels(task)) if callable(labels) else []
        return names if len(names) == count else [f"expert{e}" for e in range(count)]

    def _measure_conflicts(self, losses: Sequence[Tensor]) -> None:
        """The step's task-gradient cosines: from the weighting's Gramian, or from per-task
        gradients w.r.t. the shared parameters (averaged over DDP ranks)."""
        gramian = getattr(self.weighting, "last_gramian", None)
        if gramian is None:
            per_param = gradients_of(losses, [True] * len(losses), self.shared_parameters())
            t = len(losses)
            jacobian = torch.cat([g.reshape(t, -1) for g in per_param], dim=1).float()
            if self._trainer is not None and self.trainer.world_size > 1:
                jacobian = self.trainer.strategy.reduce(jacobian, reduce_op="mean")
            gramian = jacobian @ jacobian.T
        cosines = gradient_cosines(gramian).float()
        self.last_gradient_cosines = (int(self.global_step), cosines.detach().cpu())
        names = self.task_names
        i, j = torch.triu_indices(len(names), len(names), offset=1)
        for name, value in zip(pair_names(names), cosines[i, j].tolist(), strict=True):
            self.log(f"train/grad_cosine/{name}", value)
        self.log("train/grad_conflict_share", conflict_share(cosines))

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        """Log the step's per-task losses and weights where their values are read: on the steps
        the trainer writes to its loggers (``log_every_n_steps``) and on the last step of an
        epoch or of the fit (so ``trainer.callback_metrics`` ends each epoch with them). 2T
        ``self.log`` calls there, none on the other steps."""
        if self._step_log is None or not self._step_values_read():
            return
        losses, weights, n = self._step_log
        self._step_log = None
        for i, name in enumerate(self.task_names):
            self.log(f"train/{name}/loss", losses[i], batch_size=n)
            self.log(f"train/{name}/weight", weights[i], batch_size=n)

    def _step_values_read(self) -> bool:
        """Whether this training step's on-step values are written or end an epoch / the fit."""
        trainer = self.trainer
        if trainer.fast_dev_run or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return True
        if 0 < trainer.max_steps <= trainer.global_step:
            return True
        connector = getattr(trainer, "_logger_connector", None)  # Lightning's own cadence test
        return bool(getattr(connector, "should_update_logs", True))

    def _eval_step(self, batch: Batch, stage: str) -> None:
        x, targets, masks = unpack_batch(batch)
        self._check_targets(targets, masks)
        step = self._task_losses(x, targets, masks, train=False)
        n = step.batch_size
        stacked = step.stacked
        self.log(
            f"{stage}/loss", stacked.sum(), prog_bar=stage == "val", batch_size=n, sync_dist=True
        )
        self.epoch_metrics[f"{stage}_metrics"].update(stacked, step.statistics, n)

    def _log_epoch_metrics(self, stage: str) -> None:
        """Log the stage's per-task epoch values (``{stage}/{task}/loss`` for val and test,
        ``{stage}/{task}/{metric}``), computed once from the epoch's summed statistics."""
        metric = self.epoch_metrics[f"{stage}_metrics"]
        for key, value in metric.compute().items():  # on every rank: one all-reduce
            if stage == "train" and key.endswith("/loss"):
                continue  # the training losses are logged per step
            # identical on every rank (the states were summed across ranks); sync_dist keeps
            # Lightning's epoch-level contract and its warning quiet
            self.log(f"{stage}/{key}", value.float(), sync_dist=True)
        metric.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")
        if self.gate_usage is not None:  # every rank: one all-reduce
            usage = self.gate_usage.compute()
            self.gate_usage.reset()
            self.last_expert_use = {k: (w.cpu(), e.cpu()) for k, (w, e) in usage.items()}
            for k, (task, (weights, entropy)) in enumerate(usage.items()):
                labels = self.expert_labels(k, weights.numel())
                for label, value in zip(labels, weights.tolist(), strict=True):
                    self.log(f"train/{task}/gate/{label}", value, sync_dist=True)
                self.log(f"train/{task}/gate/entropy", entropy.float(), sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self.epoch_metrics["val_metrics"].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.epoch_metrics["test_metrics"].reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

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

    def on_fit_end(self) -> None:
        trainer = self.trainer
        if trainer.global_step == 0 and trainer.num_training_batches == 0:
            if trainer.limit_train_batches != 0:  # not a deliberate "no training"
                raise ValueError(
                    "fit ended without a training step: the training dataloader has no batches "
                    "(an empty training split?)"
                )

    def on_train_epoch_start(self) -> None:
        self.epoch_metrics["train_metrics"].reset()
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
