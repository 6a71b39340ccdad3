"""Unfreezing schedules as data, discriminative learning rates, and the schedule callback.

The trainable set at any epoch is a pure function of (schedule, epoch, group names), so a run
resumed from a checkpoint restores it with no extra state. Optimizer param groups exist from step 0
(one named group per layer group); a frozen group gets an lr factor of 0 (and
``requires_grad=False`` where that is safe: a single process), an unfrozen one its discriminative
factor decay**k (k = 0 for the top group), optionally ramped up linearly over ``warmup_steps``.

The factor is applied by optimizer step hooks *around* each ``optimizer.step()``: the group's lr
is multiplied just before the step and restored just after, so any torch or Lightning LR scheduler
keeps computing its own schedule, and the effective lr is always schedule x factor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from lit_mtl.callbacks.training_plots import LearningRateSchedule

ScheduleKind = Literal["no_freeze", "freeze", "freeze_unfreeze", "gradual", "milestones"]


@dataclass
class UnfreezeSchedule:
    """Which encoder layer groups train at each epoch (the heads always train).

    Args:
        kind: ``no_freeze`` (full fine-tuning), ``freeze`` (linear probe: encoder frozen
            throughout), ``freeze_unfreeze`` (frozen before ``epoch``, all trainable from it),
            ``gradual`` (ULMFiT: the top group from epoch 0, one more group from the top every
            ``every`` epochs), ``milestones`` (explicit ``{epoch: [group names]}``, each unfrozen
            from that epoch on, cumulative).
        epoch: the unfreeze epoch of ``freeze_unfreeze``.
        every: epochs between two unfreezes of ``gradual``.
        milestones: for ``milestones``.

    >>> UnfreezeSchedule("gradual", every=2).trainable(2, ["stem", "block1", "block2"])
    ['block1', 'block2']
    >>> UnfreezeSchedule("freeze_unfreeze", epoch=3).trainable(1, ["stem", "block1"])
    []
    """

    kind: ScheduleKind = "no_freeze"
    epoch: int = 1
    every: int = 1
    milestones: dict[int, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kinds = ("no_freeze", "freeze", "freeze_unfreeze", "gradual", "milestones")
        if self.kind not in kinds:
            raise ValueError(f"schedule kind must be one of {kinds}, got {self.kind!r}")
        if self.epoch < 0 or self.every < 1:
            raise ValueError(f"need epoch >= 0 and every >= 1, got {self.epoch}, {self.every}")
        if self.kind == "milestones" and not self.milestones:
            raise ValueError("a 'milestones' schedule needs milestones={epoch: [groups]}")
        self.milestones = {int(k): list(v) for k, v in self.milestones.items()}

    def trainable(self, epoch: int, groups: Sequence[str]) -> list[str]:
        """The encoder groups that train at ``epoch`` (``groups`` ordered input side first)."""
        names = list(groups)
        if self.kind == "no_freeze":
            return names
        if self.kind == "freeze":
            return []
        if self.kind == "freeze_unfreeze":
            return names if epoch >= self.epoch else []
        if self.kind == "gradual":
            count = min(len(names), 1 + epoch // self.every)
            return names[len(names) - count :]
        unknown = {g for gs in self.milestones.values() for g in gs} - set(names)
        if unknown:
            raise ValueError(
                f"milestones name unknown layer groups {sorted(unknown)}; groups: {names}"
            )
        active = {g for e, gs in self.milestones.items() if e <= epoch for g in gs}
        return [g for g in names if g in active]


def discriminative_factors(groups: Sequence[str], decay: float) -> dict[str, float]:
    """lr factor per group: decay**k for group k counted from the top (ULMFiT decay = 1/2.6).

    >>> discriminative_factors(["stem", "block1", "block2"], 0.5)
    {'stem': 0.25, 'block1': 0.5, 'block2': 1.0}
    """
    names = list(groups)
    return {g: decay ** (len(names) - 1 - i) for i, g in enumerate(names)}


def _batchnorms(modules: Sequence[nn.Module]) -> list[nn.Module]:
    return [
        m
        for mod in modules
        for m in mod.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


def named_param_groups(
    module: nn.Module,
    layer_groups: Mapping[str, Sequence[nn.Module]],
    rest: str = "heads",
    **options: Any,
) -> list[dict[str, Any]]:
    """Optimizer param groups for :class:`UnfreezeScheduleCallback` in your own module: one
    group per layer group, named after it, then ``rest`` with every other parameter of
    ``module`` (heads, anything not scheduled). ``options`` (``lr``, ``weight_decay``, ...) go
    into every group.

    Examples:
        >>> body, out = nn.Linear(4, 8), nn.Linear(8, 1)
        >>> model = nn.Sequential(body, out)
        >>> [(g["name"], len(g["params"])) for g in named_param_groups(model, {"body": [body]})]
        [('body', 2), ('heads', 2)]
    """
    owned = {id(p): p for p in module.parameters()}
    placed: dict[int, str] = {}
    groups = []
    for name, modules in layer_groups.items():
        params = []
        for m in modules:
            for p in m.parameters():
                if id(p) not in owned:
                    raise ValueError(
                        f"named_param_groups: layer group {name!r} holds a parameter that is not "
                        f"one of {type(module).__name__}'s"
                    )
                if id(p) in placed:
                    if placed[id(p)] != name:
                        raise ValueError(
                            f"named_param_groups: a parameter is in both {placed[id(p)]!r} and "
                            f"{name!r}"
                        )
                    continue
                placed[id(p)] = name
                params.append(p)
        groups.append({"params": params, "name": name, **options})
    if rest in layer_groups:
        raise ValueError(f"named_param_groups: rest={rest!r} is also a layer group name")
    others = [p for key, p in owned.items() if key not in placed]
    return [*groups, {"params": others, "name": rest, **options}]


class UnfreezeScheduleCallback(LearningRateSchedule):
    """Applies an :class:`UnfreezeSchedule` to named optimizer param groups (drop-in usable).

    Args:
        schedule: the schedule.
        layer_groups: ordered ``{group name: [modules]}`` (input side first); the optimizer must
            have one param group per name with ``"name": group name``
            (:meth:`param_groups` builds them from your module).
        lr_decay: discriminative factor (1 = none; ULMFiT 1/2.6).
        warmup_steps: after a group is unfrozen, its factor ramps linearly from 0 to full over
            this many optimizer steps (0 = none).
        train_bn: keep BatchNorm layers of frozen groups in train mode (default: eval mode, so
            their running statistics stay frozen).
        log_lrs: log every group's effective lr (``lr/<group>``), the number of trainable
            groups (``transfer/unfrozen_groups``) and each group's state
            (``transfer/trainable/<group>``: 1 once unfrozen) each epoch.
        fixed: parameters that stay frozen whatever the schedule (LoRA's base weights): their
            ``requires_grad`` is never switched on.
    """

    def __init__(
        self,
        schedule: UnfreezeSchedule,
        layer_groups: Mapping[str, Sequence[nn.Module]],
        lr_decay: float = 1.0,
        warmup_steps: int = 0,
        train_bn: bool = False,
        log_lrs: bool = True,
        fixed: Sequence[nn.Parameter] = (),
    ) -> None:
        if not 0 < lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay}")
        self.schedule = schedule
        self.layer_groups = {k: list(v) for k, v in layer_groups.items()}
        self.group_names = list(self.layer_groups)
        self.decay = discriminative_factors(self.group_names, lr_decay)
        self.warmup_steps = int(warmup_steps)
        self.train_bn = bool(train_bn)
        self.log_lrs = bool(log_lrs)
        self._fixed = {id(p) for p in fixed}
        self._hooks: list[Any] = []
        self._saved: list[float] = []
        self._steps_per_epoch = 1
        self._prepared_epoch: int | None = None  # the epoch whose freezing is in place
        self.events: list[tuple[int, list[str]]] = []

    def param_groups(
        self, module: nn.Module, rest: str = "heads", **options: Any
    ) -> list[dict[str, Any]]:
        """The named param groups this callback needs, for ``module``'s optimizer
        (:func:`named_param_groups` with this callback's layer groups)."""
        return named_param_groups(module, self.layer_groups, rest, **options)

    # ------------------------------------------------------------------ pure state
    def unfrozen_since(self, group: str, epoch: int) -> int | None:
        """First epoch <= ``epoch`` from which ``group`` has been trainable without a break."""
        if group not in self.schedule.trainable(epoch, self.group_names):
            return None
        start = epoch
        while start > 0 and group in self.schedule.trainable(start - 1, self.group_names):
            start -= 1
        return start

    def factor(self, group: str, epoch: int, step_in_run: int) -> float:
        """Effective lr multiplier of ``group`` at ``epoch`` and global optimizer step."""
        if group not in self.layer_groups:
            return 1.0  # heads, weighting
        since = self.unfrozen_since(group, epoch)
        if since is None:
            return 0.0
        factor = self.decay[group]
        if self.warmup_steps and since > 0:
            steps = step_in_run - since * self._steps_per_epoch
            factor *= min(1.0, (steps + 1) / self.warmup_steps)
        return factor

    # ------------------------------------------------------------------ hooks
    def _apply_freezing(self, trainer: L.Trainer, epoch: int) -> list[str]:
        trainable = self.schedule.trainable(epoch, self.group_names)
        safe_to_toggle = trainer.world_size == 1
        for name, modules in self.layer_groups.items():
            frozen = name not in trainable
            if safe_to_toggle:
                for module in modules:
                    for p in module.parameters():
                        if id(p) not in self._fixed:
                            p.requires_grad_(not frozen)
            self._set_bn_mode(modules, frozen)
        return trainable

    def _set_bn_mode(self, modules: Sequence[nn.Module], frozen: bool) -> None:
        # explicit both ways: Lightning restores each submodule's previous mode after validation,
        # so a group unfrozen after an eval-mode epoch must be put back into train mode
        for bn in _batchnorms(modules):
            bn.train(not frozen or self.train_bn)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optimizers = trainer.optimizers
        if not optimizers:
            raise RuntimeError("UnfreezeScheduleCallback needs an optimizer")
        named = {g.get("name") for opt in optimizers for g in opt.param_groups}
        missing = [n for n in self.group_names if n not in named]
        if missing:
            raise ValueError(
                f"the optimizer has no param group named {missing}: build one group per layer "
                "group with {'params': ..., 'name': <group>} (TransferModule does this)"
            )
        for opt in optimizers:
            self._hooks.append(opt.register_step_pre_hook(self._make_pre_hook(trainer)))
            self._hooks.append(opt.register_step_post_hook(self._post_hook))

    def _make_pre_hook(self, trainer: L.Trainer):
        def pre_hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            epoch, step = trainer.current_epoch, trainer.global_step
            self._saved = [g["lr"] for g in optimizer.param_groups]
            for g in optimizer.param_groups:
                g["lr"] = g["lr"] * self.factor(g.get("name", ""), epoch, step)

        return pre_hook

    def _post_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for g, lr in zip(optimizer.param_groups, self._saved, strict=True):
            g["lr"] = lr

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._prepared_epoch = None
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _prepare_epoch(self, trainer: L.Trainer) -> list[str]:
        """Steps per epoch and the epoch's freezing. Run at the epoch's start, and at the first
        batch of a run resumed mid-epoch (Lightning does not call ``on_train_epoch_start``
        there, and the restored module is not frozen yet)."""
        batches = trainer.num_training_batches
        if batches != float("inf"):
            per_epoch = int(batches) // max(1, trainer.accumulate_grad_batches)
            self._steps_per_epoch = max(1, per_epoch)
        self._prepared_epoch = trainer.current_epoch
        return self._apply_freezing(trainer, trainer.current_epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        trainable = self._prepare_epoch(trainer)
        previous = self.schedule.trainable(epoch - 1, self.group_names) if epoch > 0 else []
        newly = [g for g in trainable if g not in previous]
        if newly or epoch == 0:
            self.events.append((epoch, newly))
        if self.log_lrs and trainer.optimizers:
            values = {"transfer/unfrozen_groups": float(len(trainable))}
            for g in self.group_names:
                values[f"transfer/trainable/{g}"] = float(g in trainable)
            for group in trainer.optimizers[0].param_groups:
                name = group.get("name", "")
                lr = group["lr"] * self.factor(name, epoch, trainer.global_step)
                values[f"lr/{name}"] = lr
            pl_module.log_dict(values, on_step=False, on_epoch=True)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._prepared_epoch != trainer.current_epoch:
            self._prepare_epoch(trainer)  # resumed mid-epoch
        # re-assert every step: validation switches modes in between
        trainable = self.schedule.trainable(trainer.current_epoch, self.group_names)
        for name, modules in self.layer_groups.items():
            self._set_bn_mode(modules, name not in trainable)

    def trainable_groups(self, epoch: int) -> list[str]:
        return list(self.schedule.trainable(epoch, self.group_names))

    def effective_lrs(self, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> dict:
        """{group name: effective lr} as the next optimizer step would apply it."""
        return {
            g.get("name", str(i)): g["lr"] * self.factor(g.get("name", ""), epoch, step)
            for i, g in enumerate(optimizer.param_groups)
        }
