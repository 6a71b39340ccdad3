"""MultiTaskModule: a shared encoder, one head per task, and a weighting of the task losses."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lit_mtl._lightning import fast_dev_run, hyperparameters_from_cli, logs_this_step
from lit_mtl._modules import TypedModuleDict
from lit_mtl._moved import moved_names
from lit_mtl.checkpoints import WeightsOnlyLoading
from lit_mtl.diagnostics import (
    GateUsage,
    conflict_share,
    gradient_cosines,
    pair_names,
    task_gramian,
)
from lit_mtl.engines import StepContext, loss_scale_of, task_views
from lit_mtl.functional.optim import split_weight_decay
from lit_mtl.metrics.epoch import EpochRankingMetrics, EpochTaskMetrics
from lit_mtl.models.base import encoder_hooks
from lit_mtl.tasks import Task, TaskSpec, as_task_spec
from lit_mtl.tasks.batch import (
    Batch,
    TaskBatch,
    check_targets,
    is_multi_input,
    shared_inputs,
    total_batch_size,
    unpack_task_batch,
)
from lit_mtl.tasks.evaluation import evaluate_tasks
from lit_mtl.tasks.relations import check_task_relations, conditional_mask, with_derived
from lit_mtl.weighting import EqualWeighting, Weighting

__all__ = ["MultiTaskModule"]

#: moved to lit_mtl.tasks.batch (still importable from here, with a DeprecationWarning)
__getattr__ = moved_names(__name__, "lit_mtl.tasks.batch", ["unpack_batch"])

log = logging.getLogger(__name__)

_MODULE_ARGS = ["encoder", "weighting", "heads", "optimizer", "lr_scheduler"]

STAGES = ("train", "val", "test")


class _TaskLosses(NamedTuple):
    """One forward pass over the tasks (:meth:`MultiTaskModule._task_losses`)."""

    representation: Tensor | None  # z (None: the encoder gave each task its own z_i)
    batch_size: int | tuple[int, ...]  # one for all tasks, or per task (multi-input; 0: absent)
    losses: list[Tensor]  # T scalars with their graphs
    stacked: Tensor  # the same as one (T,) tensor (graph kept)
    loss_values: list[float]  # the same, on the host
    present: Tensor  # (T,) bool: the task has a labelled entry in the batch
    statistics: Tensor  # the tasks' metric statistics, concatenated
    views: list[Tensor] | None  # what each head read (views of z, or the z_i; gradient methods)
    predictions: Sequence[Tensor | None]  # each task's prediction (None: absent from the step)
    parts: Sequence[TaskBatch | None]  # the batch each task's prediction is scored against


def _check_options(
    nonfinite_loss: str, gradient_conflicts_every: int | None, encoder_pass: str
) -> None:
    """The module's option arguments, checked before anything is built."""
    if nonfinite_loss not in ("raise", "skip"):
        raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
    if gradient_conflicts_every is not None and int(gradient_conflicts_every) < 1:
        raise ValueError(
            f"gradient_conflicts_every must be >= 1 (or None), got {gradient_conflicts_every}"
        )
    if encoder_pass not in ("concatenated", "per_task"):
        raise ValueError(f"encoder_pass must be 'concatenated' or 'per_task', got {encoder_pass!r}")


def selected_task_specs(
    tasks: Sequence[TaskSpec | Mapping[str, Any]], select_tasks: Sequence[str] | None
) -> tuple[list[TaskSpec], list[TaskSpec]]:
    """(every task's spec, the specs of the tasks trained: ``select_tasks``, or all of them);
    empty, repeated or unknown names are errors that list the tasks."""
    specs = [as_task_spec(t) for t in tasks]
    if not specs:
        raise ValueError("MultiTaskModule: tasks must not be empty")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"MultiTaskModule: task names must be unique, got {names}")
    if select_tasks is None:
        return specs, specs
    unknown = sorted(set(select_tasks) - set(names))
    if unknown or not select_tasks:
        raise ValueError(
            f"MultiTaskModule: select_tasks={list(select_tasks)} must name some of the "
            f"tasks {names}" + (f"; unknown: {unknown}" if unknown else "")
        )
    return specs, [s for s in specs if s.name in select_tasks]


class MultiTaskModule(WeightsOnlyLoading, L.LightningModule):  # type: ignore[misc]
    # (misc: Lightning's load_from_checkpoint is a private descriptor, not a classmethod, so
    # the checker cannot match WeightsOnlyLoading's override of it)
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
        encoder_pass: multi-input batches (``{task: batch}``, each task its own inputs):
            ``"concatenated"`` (default) runs the encoder once on all tasks' inputs stacked
            along the batch (they need equal shapes; BatchNorm then normalises every task's
            samples with the statistics its running averages will hold at evaluation), or
            ``"per_task"``: once per task (inputs of any shape; BatchNorm normalises each
            task's batch by its own statistics in training but by the running mixture of all
            tasks at evaluation).
        ranking_metrics: also log the exact ROC-AUC and average precision of every binary task
            at the end of each validation and test epoch, ``{stage}/{task}/auroc`` and
            ``{stage}/{task}/auprc``, over the epoch's labelled entries of all ranks
            (:class:`~lit_mtl.metrics.epoch.EpochRankingMetrics`; the field's numbers on
            MoleculeNet). A task whose entries lack a positive or a negative gets none (said
            once). Off by default: it keeps every labelled score of the epoch.
        weighted_loss_denominator: with per-sample weights in the batch, a task's loss is
            ``sum w l`` over its labelled entries divided by ``sum w`` (``"weights"``) or by the
            batch size (``"batch"``: DeepChem's 2017 networks, where the balancing weights and
            the share of missing labels also scale the loss against an L2 penalty).
        decay_matrices_only: the optimizer's weight decay applies to parameters with two or
            more dimensions only (weight matrices and kernels); biases, norms' scales and other
            vectors get ``weight_decay=0`` (each param group split in two). With
            ``torch.optim.Adam(weight_decay=lam)`` this is TensorFlow-era DeepChem's
            ``penalty * sum ||W||^2 / 2`` over the weight matrices.

    Logged: ``train/loss`` every step; per task, ``train/{task}/loss`` and
    ``train/{task}/weight`` (the step's values) on the steps the trainer writes logs
    (``log_every_n_steps``) and on the last step of each epoch; ``val/loss``, ``test/loss``;
    at each epoch's end ``{val,test}/{task}/loss`` (batch-size-weighted means) and
    ``{stage}/{task}/{metric}`` (mse and mae; acc and f1), synchronised across DDP ranks.
    A step pays for this once, not once per task: the metrics' sufficient statistics of all
    tasks are summed in one vector on the device
    (:class:`~lit_mtl.metrics.epoch.EpochTaskMetrics`), and the step's only host read is the
    task losses (with the class labels' range check) that ``nonfinite_loss`` needs anyway.

    Training uses Lightning's automatic optimization, so ``precision``, ``strategy``,
    ``accumulate_grad_batches`` and ``gradient_clip_val`` work unchanged. The weighting is a
    submodule: its state is in the checkpoint. To restore from Python,
    ``MultiTaskModule.load_from_checkpoint(path, encoder=..., weighting=...)`` (encoder and
    weighting are modules and not stored as hyperparameters; a checkpoint written by the
    ``lit-mtl`` CLI restores without arguments).
    """

    #: each task's labelled-count position in a step's statistics (a non-persistent buffer)
    _count_positions: Tensor

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
        encoder_pass: Literal["concatenated", "per_task"] = "concatenated",
        ranking_metrics: bool = False,
        weighted_loss_denominator: Literal["weights", "batch"] = "weights",
        decay_matrices_only: bool = False,
    ) -> None:
        super().__init__()
        # Under the lit-mtl CLI the hyperparameters are the parsed config (class_path/init_args
        # dicts), so a CLI checkpoint restores without arguments; in plain Python the modules are
        # callables are not pickled into hparams (pass them to load_from_checkpoint).
        from_cli_config = hyperparameters_from_cli()
        self.save_hyperparameters(ignore=["tasks"] if from_cli_config else [*_MODULE_ARGS, "tasks"])
        _check_options(nonfinite_loss, gradient_conflicts_every, encoder_pass)
        all_specs, specs = selected_task_specs(tasks, select_tasks)
        self.hparams["tasks"] = [s.to_dict() for s in all_specs]  # selection is its own argument
        self._ignored_tasks = frozenset(s.name for s in all_specs) - {s.name for s in specs}
        check_task_relations(all_specs, [s.name for s in specs])
        #: the tasks with a head (the others are products of their probabilities)
        self._headed = [s.name for s in specs if s.product_of is None]
        self._derived = [s.name for s in specs if s.product_of is not None]
        self._build_tasks(encoder, specs, heads, dense_reduction, weighted_loss_denominator)
        self.dense_reduction = dense_reduction
        self.gradient_conflicts_every = gradient_conflicts_every
        self.encoder_pass = encoder_pass
        #: (global step, (T, T) cosines) of the last conflict measurement
        self.last_gradient_cosines: tuple[int, Tensor] | None = None
        # mixture-of-experts encoders: the epoch's expert use per task
        gated = encoder_hooks(encoder).gated
        self.gate_usage = GateUsage([s.name for s in specs]) if gated else None
        #: the last epoch's {task: (mean gate weight per expert, mean gate entropy)}
        self.last_expert_use: dict[str, tuple[Tensor, Tensor]] = {}
        self.weighting: Weighting = weighting if weighting is not None else EqualWeighting()
        if self._derived and self._differentiates_representation():
            raise ValueError(
                f"{type(self.weighting).__name__}(target='representation') needs each task's "
                f"loss to read only its own representation; the derived task(s) {self._derived} "
                "read other tasks' heads. Use target='shared' (or 'last_shared_layer'), or a "
                "loss-based weighting"
            )
        self.bind_weighting()
        self._build_metrics(specs, dense_reduction, ranking_metrics)
        self._step_log: tuple[Tensor, Tensor, int] | None = None
        self.decay_matrices_only = bool(decay_matrices_only)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.nonfinite_loss = nonfinite_loss
        self.lr_scheduler_monitor = lr_scheduler_monitor
        self.plots = bool(plots)

    def _build_tasks(
        self,
        encoder: nn.Module,
        specs: Sequence[TaskSpec],
        heads: Mapping[str, nn.Module] | None,
        dense_reduction: Literal["pooled", "per_batch"],
        weighted_loss_denominator: Literal["weights", "batch"],
    ) -> None:
        """The encoder, and one :class:`Task` per spec with a head: given in ``heads``, the
        encoder's own (``make_head``: towers, decoders), or the kind's default."""
        width = getattr(encoder, "out_features", None)
        if not isinstance(width, int):
            raise ValueError(
                f"encoder {type(encoder).__name__} must expose an integer `out_features` (the "
                "width of the representation the heads read)"
            )
        names = [s.name for s in specs]
        given = dict(heads or {})
        unknown_heads = set(given) - set(names)
        if unknown_heads:
            raise KeyError(
                f"heads given for unknown task(s) {sorted(unknown_heads)}; tasks: {names}"
            )
        self.encoder: nn.Module = encoder
        hooks = encoder_hooks(encoder)  # the encoder contract (lit_mtl.models.base)
        hooks.bind_tasks(self._headed)  # architectures build their per-task parts
        for spec in specs:
            if spec.name not in given and spec.product_of is None:
                head = hooks.make_head(spec)
                if head is not None:
                    given[spec.name] = head
        self.tasks: TypedModuleDict[Task] = TypedModuleDict(
            {
                s.name: Task(
                    s, width, given.get(s.name), dense_reduction, weighted_loss_denominator
                )
                for s in specs
            }
        )

    def _build_metrics(
        self,
        specs: Sequence[TaskSpec],
        dense_reduction: Literal["pooled", "per_batch"],
        ranking_metrics: bool,
    ) -> None:
        """The per-stage epoch accumulators, the ranking metrics' (val/test) and where each
        task's labelled count sits in a step's concatenated statistics."""
        sizes = [task.statistics_size for task in self.tasks.values()]
        self.epoch_metrics: TypedModuleDict[EpochTaskMetrics] = TypedModuleDict(
            {
                f"{stage}_metrics": EpochTaskMetrics(specs, sizes, dense_reduction)
                for stage in STAGES
            }
        )
        ranked = [i for i, task in enumerate(self.tasks.values()) if task.task_kind.ranked]
        if ranking_metrics and not ranked:
            raise ValueError(
                "MultiTaskModule: ranking_metrics=True scores binary tasks, and none of "
                f"{self.task_names} is binary"
            )
        #: the ranked (binary) tasks' positions, and the val/test accumulators of their scores
        self._ranked_tasks = ranked if ranking_metrics else []
        self.epoch_ranking = {
            stage: EpochRankingMetrics([self.task_names[i] for i in self._ranked_tasks])
            for stage in ("val", "test")
            if ranking_metrics
        }
        self._unranked_said: set[tuple[str, str]] = set()
        counts_at = torch.tensor([sum(sizes[:i]) for i in range(len(sizes))], dtype=torch.long)
        self.register_buffer("_count_positions", counts_at, persistent=False)

    # ------------------------------------------------------------------ helpers
    @property
    def task_names(self) -> list[str]:
        return list(self.tasks.keys())

    def bind_weighting(self) -> None:
        """Bind the weighting to the tasks and the encoder (its gradient target); called again
        when the encoder's parameters change after construction (LoRA adapters)."""
        self.weighting.bind(
            self.task_names,
            [task.spec.kind for task in self.tasks.values()],
            encoder=self.encoder,
            baseline_losses=[task.baseline_loss() for task in self.tasks.values()],
        )

    def _differentiates_representation(self) -> bool:
        """Whether the weighting takes per-task gradients w.r.t. the representation z."""
        return self.weighting.differentiates_representation

    def shared_parameters(self) -> list[nn.Parameter]:
        """The encoder's trainable shared parameters (the target of parameter-gradient methods):
        all of them, or those the encoder declares (``encoder.shared_parameters()``)."""
        return [p for p in encoder_hooks(self.encoder).shared_parameters() if p.requires_grad]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Predictions by task name: raw outputs (logits for classification tasks; a derived
        task's logit of its product probability); dense predictions at the input's size."""
        z = self._per_task(self.encoder(x))  # (N, D), (N, C, h, w), or one per task
        size = tuple(x.shape[-2:]) if isinstance(x, Tensor) and x.dim() >= 3 else None
        preds = {
            name: task(z[i], size)
            for i, (name, task) in enumerate(self.tasks.items())
            if task.head is not None
        }
        return self._with_derived(preds)

    def _with_derived(self, preds: dict[str, Tensor]) -> dict[str, Tensor]:
        """All tasks' predictions, in task order: the derived tasks' from their factors'."""
        return with_derived(preds, [task.spec for task in self.tasks.values()])

    def _per_task(self, output: Tensor | Sequence[Tensor]) -> list[Tensor]:
        """What each head reads, in task order: the shared z T times, or the encoder's per-task
        z_i (one per task with a head; a derived task's entry is unused)."""
        if isinstance(output, Tensor):
            return [output] * len(self.tasks)
        outputs = list(output)
        if len(outputs) != len(self._headed):
            raise ValueError(
                f"encoder {type(self.encoder).__name__} returned {len(outputs)} representations "
                f"for {len(self._headed)} tasks {self._headed}"
            )
        if not self._derived:
            return outputs
        by_name = dict(zip(self._headed, outputs, strict=True))
        return [by_name.get(name, outputs[0]) for name in self.tasks]

    def _parse_batch(self, batch: Batch) -> TaskBatch | dict[str, TaskBatch]:
        """A checked batch: one :class:`TaskBatch` for all tasks, or (multi-input) one per task
        present in the step (a task whose loader is exhausted in ``max_size`` mode, or not drawn
        in a sampling mode, is absent)."""
        if not is_multi_input(batch):
            parsed = unpack_task_batch(batch)
            parents = [t.spec.parent for t in self.tasks.values() if t.spec.parent]
            required = list(dict.fromkeys([*self.task_names, *parents]))
            check_targets(
                parsed.targets, parsed.masks, self.task_names, self._ignored_tasks, required
            )
            return parsed
        unknown = sorted(set(batch) - set(self.tasks) - self._ignored_tasks)
        if unknown:
            raise KeyError(
                f"a multi-input batch {{task: batch}} has entries for unknown task(s) {unknown}; "
                f"the model's tasks are {self.task_names}"
            )
        if self._derived:
            raise ValueError(
                f"the derived task(s) {self._derived} multiply other tasks' predictions on the "
                "same inputs; they need single-input batches (one dataset for all tasks)"
            )
        parts = {}
        for name, sub in batch.items():
            if sub is None or name not in self.tasks:
                continue
            parsed = unpack_task_batch(sub)
            parent = self.tasks[name].spec.parent
            required = [name] if parent is None else [name, parent]
            check_targets(
                parsed.targets,
                parsed.masks,
                self.task_names,
                self._ignored_tasks,
                required,
                f"task {name!r}'s batch",
            )
            parts[name] = parsed
        return parts

    def _batch_losses(self, batch: TaskBatch | dict[str, TaskBatch], train: bool) -> _TaskLosses:
        """:meth:`_task_losses` of a parsed batch, single- or multi-input."""
        if isinstance(batch, TaskBatch):
            return self._task_losses(*batch[:3], train=train, weights=batch.weights)
        if train and self._differentiates_representation():
            shared = shared_inputs(batch, self.task_names)
            if shared is None:
                raise ValueError(
                    f"{type(self.weighting).__name__}(target='representation') differentiates "
                    "w.r.t. the shared representation z, which does not exist when each task "
                    "brings its own inputs; use target='shared' (or 'last_shared_layer'), or a "
                    "loss-based weighting"
                )
            return self._task_losses(*shared[:3], train=train, weights=shared.weights)
        return self._multi_input_losses(batch)

    def _multi_input_losses(self, parts: Mapping[str, TaskBatch]) -> _TaskLosses:
        """Each present task's loss on its own inputs (``encoder_pass``: one encoder run on
        the stacked inputs, or one per task); an absent task's loss is a constant 0 (its head
        is not used in the step)."""
        preds: list[Tensor | None] = []
        sizes: list[int] = []
        representations = self._multi_input_representations(parts)
        for name, task in self.tasks.items():
            part = parts.get(name)
            if part is None:
                preds.append(None)
                sizes.append(0)
                continue
            z = representations[name]  # this task's representation of its own inputs
            n = z.shape[0]
            task.check_target(part.targets[name], n)
            target = part.targets[name]
            preds.append(task(z, target.shape[-2:] if task.spec.dense else None))
            sizes.append(n)
        return self._evaluate_tasks(
            preds, [parts.get(name) for name in self.tasks], sizes, None, None
        )

    def _multi_input_representations(self, parts: Mapping[str, TaskBatch]) -> dict[str, Tensor]:
        """What each present task's head reads, computed from the task's own inputs."""
        names = self.task_names
        if self.encoder_pass == "per_task":
            return {
                name: self._per_task(self.encoder(part.inputs))[names.index(name)]
                for name, part in parts.items()
            }
        inputs = {name: part.inputs for name, part in parts.items()}
        shapes = {
            name: tuple(x.shape[1:]) if isinstance(x, Tensor) else type(x).__name__
            for name, x in inputs.items()
        }
        if len(set(shapes.values())) != 1 or not all(
            isinstance(x, Tensor) for x in inputs.values()
        ):
            raise ValueError(
                "encoder_pass='concatenated' stacks the tasks' inputs into one batch, which "
                f"needs tensors of one shape; got {shapes}. Use encoder_pass='per_task'"
            )
        stacked = self._per_task(self.encoder(torch.cat(list(inputs.values()))))
        out, start = {}, 0
        for name, x in inputs.items():
            n = x.shape[0]
            out[name] = stacked[names.index(name)][start : start + n]
            start += n
        return out

    def _task_losses(
        self,
        x: Any,
        targets: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        train: bool,
        weights: Mapping[str, Tensor] | None = None,
    ) -> _TaskLosses:
        """The step's task losses, their values on the host and the statistics of the tasks'
        metrics, for one input shared by all tasks.

        When the weighting differentiates w.r.t. z (``train``), each head reads its own view
        of z (:func:`~lit_mtl.task_views`) so that all T gradients come from a single backward
        pass (not with derived tasks, whose losses read other tasks' heads).
        """
        output = self.encoder(x)  # (N, ...) shared z, or per-task z_i (architectures)
        per_task = not isinstance(output, Tensor)
        z_all = self._per_task(output)
        n = z_all[0].shape[0]
        for name, task in self.tasks.items():
            task.check_target(targets[name], n)
        wants_z_grads = self.weighting.uses_task_representations and train and not self._derived
        if wants_z_grads and torch.is_grad_enabled():  # frozen encoder: gradients w.r.t. z still
            z_all = [zi if zi.requires_grad else zi.detach().requires_grad_() for zi in z_all]
        z = None if per_task else z_all[0]
        views = wants_z_grads and z_all[0].requires_grad
        if views:  # each head reads its own z_i, or its own view of the shared z
            head_inputs = z_all if per_task else task_views(z_all[0], len(self.tasks))
        else:
            head_inputs = None
        reads = z_all if head_inputs is None else head_inputs
        preds: dict[str, Tensor] = {}
        for i, (name, task) in enumerate(self.tasks.items()):
            if task.head is not None:
                size = targets[name].shape[-2:] if task.spec.dense else None  # the target's (H, W)
                preds[name] = task(reads[i], size)  # (N, ...)
        ordered = list(self._with_derived(preds).values())
        part = TaskBatch(x, targets, masks, weights or {})
        return self._evaluate_tasks(
            ordered, [part] * len(self.tasks), [n] * len(self.tasks), z, head_inputs
        )

    def _evaluate_tasks(
        self,
        preds: Sequence[Tensor | None],
        parts: Sequence[TaskBatch | None],
        sizes: Sequence[int],
        z: Tensor | None,
        head_inputs: list[Tensor] | None,
    ) -> _TaskLosses:
        """Losses and metric statistics of every task's prediction against its batch's target
        (:func:`~lit_mtl.tasks.evaluation.evaluate_tasks`: one host read per step)."""
        scored = evaluate_tasks(self.tasks, preds, parts, self._count_positions)
        batch_size: int | tuple[int, ...] = sizes[0] if len(set(sizes)) == 1 else tuple(sizes)
        return _TaskLosses(
            z, batch_size, scored.losses, scored.stacked, scored.values,
            scored.present, scored.statistics, head_inputs, preds, parts,
        )  # fmt: skip

    def _effective_mask(self, name: str, part: TaskBatch) -> Tensor | None:
        """The task's mask, with a conditional task's parent rule applied."""
        return conditional_mask(self.tasks[name].spec, part)

    @torch.no_grad()
    def _recompute_losses(self, batch: TaskBatch | dict[str, TaskBatch]) -> tuple[Tensor, Tensor]:
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
            step = self._batch_losses(batch, train=False)
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
        parsed = self._parse_batch(batch)  # one batch, or (multi-input) one per task
        step = self._batch_losses(parsed, train=True)
        n = total_batch_size(step.batch_size)
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
            recompute_losses=lambda: self._recompute_losses(parsed),
        )
        loss = self.weighting(context)  # its post-step update runs after the optimizer step
        if self.gate_usage is not None:  # gated experts
            gates = encoder_hooks(self.encoder).gate_weights()
            if gates:
                self.gate_usage.update(gates)
        every = self.gradient_conflicts_every
        if every is not None and self.global_step % int(every) == 0:
            self._measure_conflicts(step.losses)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.epoch_metrics["train_metrics"].update(stacked, step.statistics, step.batch_size)
        self._step_log = (stacked, self.weighting.last_weights, n)  # logged at logging steps
        return loss

    def expert_labels(self, task: int, count: int) -> list[str]:
        """Names of the experts task ``task``'s gate weighs (the encoder's, else expert0...)."""
        names = list(encoder_hooks(self.encoder).expert_labels(task))
        return names if len(names) == count else [f"expert{e}" for e in range(count)]

    def _measure_conflicts(self, losses: Sequence[Tensor]) -> None:
        """The step's task-gradient cosines: from the weighting's Gramian, or from per-task
        gradients w.r.t. the shared parameters (averaged over DDP ranks)."""
        gramian = self.weighting.last_gramian
        if gramian is None:
            distributed = self._trainer is not None and self.trainer.world_size > 1
            gramian = task_gramian(
                losses,
                self.shared_parameters(),
                (lambda j: self.trainer.strategy.reduce(j, reduce_op="mean"))
                if distributed
                else None,
            )
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
        # fast_dev_run: set on the Trainer by Lightning's debugging connector, not declared there
        if fast_dev_run(trainer) or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return True
        if 0 < trainer.max_steps <= trainer.global_step:
            return True
        return logs_this_step(trainer)  # Lightning's own cadence test

    def _eval_step(self, batch: Batch, stage: str) -> None:
        step = self._batch_losses(self._parse_batch(batch), train=False)
        self.epoch_metrics[f"{stage}_metrics"].update(
            step.stacked, step.statistics, step.batch_size
        )
        ranking = self.epoch_ranking.get(stage)
        if ranking is None:
            return
        names = self.task_names
        for k, i in enumerate(self._ranked_tasks):
            pred, part = step.predictions[i], step.parts[i]
            if pred is None or part is None:
                continue
            target = part.targets[names[i]]
            present = self.tasks[names[i]].labelled(target, self._effective_mask(names[i], part))
            present = present.reshape(-1)
            ranking.update(k, pred.reshape(-1)[present], target.reshape(-1)[present])

    def _log_epoch_metrics(self, stage: str) -> None:
        """Log the stage's per-task epoch values (``{stage}/{task}/loss`` for val and test,
        ``{stage}/{task}/{metric}``), computed once from the epoch's summed statistics, and
        ``{stage}/loss`` (val, test): the sum of the tasks' epoch losses."""
        metric = self.epoch_metrics[f"{stage}_metrics"]
        values = metric.compute()  # on every rank: one all-reduce
        for key, value in values.items():
            if stage == "train" and key.endswith("/loss"):
                continue  # the training losses are logged per step
            # identical on every rank (the states were summed across ranks); sync_dist keeps
            # Lightning's epoch-level contract and its warning quiet
            self.log(f"{stage}/{key}", value.float(), sync_dist=True)
        if stage != "train" and metric.updates:
            task_losses = [
                values[f"{name}/loss"] for name in self.task_names if f"{name}/loss" in values
            ]
            if task_losses:
                total = torch.stack(task_losses).sum().float()
                self.log(f"{stage}/loss", total, prog_bar=stage == "val", sync_dist=True)
        metric.reset()
        ranking = self.epoch_ranking.get(stage)
        if ranking is not None:
            self._log_ranking_metrics(stage, ranking)

    def _log_ranking_metrics(self, stage: str, ranking: EpochRankingMetrics) -> None:
        values, undefined = ranking.compute()  # on every rank: one packed all-gather
        ranking.reset()
        for key, value in values.items():
            self.log(f"{stage}/{key}", value, sync_dist=True)
        new = [name for name in undefined if (stage, name) not in self._unranked_said]
        if new and not self.trainer.sanity_checking:
            self._unranked_said.update((stage, name) for name in new)
            rank_zero_warn(
                f"{stage}: no ROC-AUC / average precision for task(s) {new}: their labelled "
                "entries lack a positive or a negative (said once per task and stage)"
            )

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
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
        if "val" in self.epoch_ranking:
            self.epoch_ranking["val"].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.epoch_metrics["test_metrics"].reset()
        if "test" in self.epoch_ranking:
            self.epoch_ranking["test"].reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def predict_step(
        self, batch: Batch, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Predictions by task; for a multi-input batch ``{task: batch}``, each task's on its
        own inputs."""
        if isinstance(batch, Tensor):
            return self(batch)
        if is_multi_input(batch):
            return {
                name: self(unpack_task_batch(sub).inputs)[name]
                for name, sub in batch.items()
                if sub is not None and name in self.tasks
            }
        return self(unpack_task_batch(batch).inputs)

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict]:
        """Named optimizer param groups: encoder, heads, and the weighting's own groups."""
        groups = [
            {"params": list(self.encoder.parameters()), "name": "encoder"},
            {"params": list(self.tasks.parameters()), "name": "heads"},
        ]
        return groups + self.weighting.parameter_groups()

    def configure_optimizers(self) -> Any:
        groups = self.parameter_groups()
        if self.decay_matrices_only:
            groups = split_weight_decay(groups)
        optimizer = self.optimizer_factory(groups)
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
