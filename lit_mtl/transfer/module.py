"""TransferModule: load a source encoder, then fine-tune on target tasks with a schedule."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from lit_mtl.checkpoints import file_sha256
from lit_mtl.models.base import encoder_hooks
from lit_mtl.multitask import MultiTaskModule
from lit_mtl.tasks import TaskSpec
from lit_mtl.transfer.l2sp import is_l2sp_weight, l2sp_penalty
from lit_mtl.transfer.loading import LoadReport, hf_folder_weights, load_source_into
from lit_mtl.transfer.lora import inject_lora, lora_settings
from lit_mtl.transfer.schedule import UnfreezeSchedule, UnfreezeScheduleCallback
from lit_mtl.weighting import Weighting

log = logging.getLogger(__name__)


def resolve_layer_groups(
    encoder: nn.Module, patterns: Mapping[str, Sequence[str]] | None = None
) -> OrderedDict[str, list[nn.Module]]:
    """Ordered layer groups (input side first): the encoder's own ``layer_groups()``, or, from
    ``patterns`` ``{group: [regex, ...]}``, the submodules whose names match (first match wins).
    Every parameter of the encoder must fall in exactly one group."""
    if patterns:
        groups: OrderedDict[str, list[nn.Module]] = OrderedDict((g, []) for g in patterns)
        compiled = {g: [re.compile(p) for p in ps] for g, ps in patterns.items()}
        for name, module in encoder.named_modules():
            if not name or not any(True for _ in module.parameters(recurse=False)):
                continue
            for g, regexes in compiled.items():
                if any(r.fullmatch(name) or r.match(name) for r in regexes):
                    groups[g].append(module)
                    break
    else:
        groups = OrderedDict(encoder_hooks(encoder).layer_groups())
    covered = {id(p) for mods in groups.values() for m in mods for p in m.parameters()}
    stray = [n for n, p in encoder.named_parameters() if id(p) not in covered]
    if stray:
        raise ValueError(f"encoder parameters in no layer group: {stray[:8]}")
    empty = [g for g, mods in groups.items() if not mods]
    if empty:
        raise ValueError(f"layer groups match no module: {empty}")
    return groups


class TransferModule(MultiTaskModule):
    """A MultiTaskModule whose encoder starts from source weights and unfreezes on a schedule.

    Args (besides those of :class:`~lit_mtl.MultiTaskModule`):
        source: path of the source weights (``.ckpt``, ``.pt``/``.pth``/``.bin``,
            ``.safetensors``, or a Hugging Face style folder: ``model.safetensors`` +
            ``config.json``); None trains from scratch (with the same groups and schedule).
        source_prefix: sub-tree of the source to load into the encoder (``encoder.`` for a
            MultiTaskModule checkpoint; empty for a bare encoder / torchvision state_dict).
        source_rename: key handling (see :mod:`lit_mtl.transfer.loading`).
        source_skip: key handling (see :mod:`lit_mtl.transfer.loading`).
        strict: key handling (see :mod:`lit_mtl.transfer.loading`).
        schedule: the :class:`UnfreezeSchedule` (default: no freezing).
        layer_groups: optional ``{group: [module-name regex, ...]}`` instead of the encoder's.
        lr_decay: discriminative lr factor per group from the top (ULMFiT: 1/2.6; 1 = none).
        warmup_steps: linear lr warmup of a group after it is unfrozen.
        train_bn: let BatchNorm of frozen groups update its running statistics.
        l2sp_alpha: L2-SP strengths (0 = off; authors: 0.1 and 0.01). Use with an
            optimizer without weight decay: L2-SP replaces it.
        l2sp_beta: as ``l2sp_alpha``.
        lora: LoRA adapters on the encoder after the source is loaded (needs the ``lora``
            extra, peft): ``{"target_modules": [name patterns], "r": 8, "alpha": 16,
            "dropout": 0}``; the encoder's other weights stay frozen whatever the schedule, the
            adapters and heads train (:mod:`lit_mtl.transfer.lora`).

    Param groups exist from step 0: one per layer group (named after it), ``heads`` and the
    weighting's. The schedule is applied by an :class:`UnfreezeScheduleCallback` this module
    returns from ``configure_callbacks``; its state is a function of the epoch, so resuming
    restores it. The load report is in :attr:`load_report`. The source is read when the module
    is built; a checkpoint holds every weight, so restoring one (``load_from_checkpoint`` or a
    resumed fit) does not need the source file: when it is gone, the module starts without it,
    and only a run that is not restored from a checkpoint raises ``FileNotFoundError``. The
    source's path and SHA-256 are kept in :attr:`source_provenance` and in the checkpoint.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        weighting: Weighting | None = None,
        source: str | None = None,
        source_prefix: str = "",
        source_rename: dict[str, str] | None = None,
        source_skip: list[str] | None = None,
        strict: bool = True,
        schedule: UnfreezeSchedule | dict | None = None,
        layer_groups: dict[str, list[str]] | None = None,
        lr_decay: float = 1.0,
        warmup_steps: int = 0,
        train_bn: bool = False,
        l2sp_alpha: float = 0.0,
        l2sp_beta: float = 0.0,
        lora: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder=encoder, tasks=tasks, weighting=weighting, **kwargs)
        self.load_report: LoadReport | None = None
        #: where the source weights came from: ``{"path": ..., "sha256": ...}`` (also in the
        #: checkpoint, under ``"lit_mtl_source"``)
        self.source_provenance: dict[str, str] | None = None
        self._source_pending: str | None = None
        if source and not Path(source).exists():
            # restoring a checkpoint needs no source (its weights are in the checkpoint);
            # starting without a checkpoint raises at fit/validate/test start
            self._source_pending = str(source)
            log.info("TransferModule: source %r not found; expecting a checkpoint restore", source)
        elif source:
            self.load_report = load_source_into(
                self.encoder,
                source,
                prefix=source_prefix or None,
                rename=source_rename,
                skip=source_skip or (),
                strict=strict,
            )
            weights = hf_folder_weights(Path(source)) if Path(source).is_dir() else source
            self.source_provenance = {"path": str(source), "sha256": file_sha256(weights)}
        self._restored = False
        if isinstance(schedule, dict):
            schedule = UnfreezeSchedule(**schedule)
        self.schedule = schedule or UnfreezeSchedule()
        if "schedule" in self.hparams:  # plain data in the checkpoint (weights_only loading)
            self.hparams["schedule"] = dataclasses.asdict(self.schedule)
        #: the modules carrying LoRA adapters (empty without ``lora``)
        self.lora_modules: list[str] = []
        if lora:
            if l2sp_alpha > 0:
                raise ValueError(
                    "lora and L2-SP (l2sp_alpha > 0) do not combine: LoRA keeps the source "
                    "weights frozen, there is nothing for L2-SP to hold near them"
                )
            settings = lora_settings(lora)
            self.lora_modules = inject_lora(self.encoder, **settings)
            self.bind_weighting()  # the gradient target is now the adapters
        self.groups = resolve_layer_groups(self.encoder, layer_groups)
        self.lr_decay = float(lr_decay)
        self.warmup_steps = int(warmup_steps)
        self.train_bn = bool(train_bn)
        if l2sp_alpha < 0 or l2sp_beta < 0:
            raise ValueError("l2sp_alpha and l2sp_beta must be >= 0")
        self.l2sp_alpha, self.l2sp_beta = float(l2sp_alpha), float(l2sp_beta)
        self._anchor_names: list[str] = []
        if self.l2sp_alpha > 0:
            if not source:
                raise ValueError("L2-SP (l2sp_alpha > 0) needs source weights to anchor to")
            loaded = set(self.load_report.loaded if self.load_report else [])
            for mname, module in self.encoder.named_modules():
                for pname, param in module.named_parameters(recurse=False):
                    full = f"{mname}.{pname}" if mname else pname
                    if full in loaded and is_l2sp_weight(module, pname):
                        buf = "l2sp_anchor__" + full.replace(".", "__")
                        self.register_buffer(buf, param.detach().clone())
                        self._anchor_names.append(full)
        self.unfreeze_callback = UnfreezeScheduleCallback(
            self.schedule,
            self.groups,
            lr_decay=self.lr_decay,
            warmup_steps=self.warmup_steps,
            train_bn=self.train_bn,
            fixed=[p for p in self.encoder.parameters() if not p.requires_grad] if lora else (),
        )

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.source_provenance is not None:
            checkpoint["lit_mtl_source"] = dict(self.source_provenance)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Everything comes from the checkpoint: the L2-SP anchors (registered here when the
        source was not read) and the source's provenance."""
        self._restored = True
        self.source_provenance = checkpoint.get("lit_mtl_source", self.source_provenance)
        prefix = "l2sp_anchor__"
        for key, value in checkpoint.get("state_dict", {}).items():
            if key.startswith(prefix) and not hasattr(self, key):
                self.register_buffer(key, torch.empty_like(value, device=self.device))
                self._anchor_names.append(key[len(prefix) :].replace("__", "."))

    def _require_weights(self) -> None:
        if self._source_pending is not None and not self._restored:
            raise FileNotFoundError(
                f"TransferModule: source {self._source_pending!r} does not exist (resolved from "
                f"{str(Path.cwd())!r}); the source is needed to start a run, not to resume one "
                "(--ckpt_path / ckpt_path=...) or to load a checkpoint (load_from_checkpoint)"
            )

    def on_fit_start(self) -> None:
        self._require_weights()
        super().on_fit_start()

    def on_validation_start(self) -> None:
        self._require_weights()
        super().on_validation_start()

    def on_test_start(self) -> None:
        self._require_weights()
        super().on_test_start()

    def on_predict_start(self) -> None:
        self._require_weights()
        super().on_predict_start()

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict]:
        groups = [
            {"params": [p for m in mods for p in m.parameters()], "name": name}
            for name, mods in self.groups.items()
        ]
        groups.append({"params": list(self.tasks.parameters()), "name": "heads"})
        return groups + self.weighting.parameter_groups()

    def configure_callbacks(self) -> list:
        return [*super().configure_callbacks(), self.unfreeze_callback]

    def l2sp(self) -> Tensor:
        """The L2-SP penalty at the current weights (0 when disabled)."""
        if self.l2sp_alpha == 0 and self.l2sp_beta == 0:
            return torch.zeros((), device=self.device)
        params = dict(self.encoder.named_parameters())
        transferred = {
            n: (params[n], getattr(self, "l2sp_anchor__" + n.replace(".", "__")))
            for n in self._anchor_names
        }
        new = [
            cast(nn.Parameter, m.weight)
            for m in self.tasks.modules()
            if isinstance(getattr(m, "weight", None), nn.Parameter) and is_l2sp_weight(m, "weight")
        ]
        return l2sp_penalty(transferred, new, self.l2sp_alpha, self.l2sp_beta)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        loss = super().training_step(batch, batch_idx)
        if loss is None or (self.l2sp_alpha == 0 and self.l2sp_beta == 0):
            return loss
        penalty = self.l2sp()
        self.log("train/l2sp", penalty)
        return loss + penalty
