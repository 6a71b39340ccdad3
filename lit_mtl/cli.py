"""The ``lit-mtl`` command: Lightning's CLI with the data's task specs linked into the model.

lit-mtl fit --config configs/quickstart.yaml
lit-mtl fit --config configs/quickstart.yaml --print_config
lit-mtl --help
lit-mtl compare --config configs/compare/mnist1d.yaml   (see lit_mtl.compare)

The console script's entry point is :func:`lit_mtl.__main__.main`, which hands ``compare`` to
:mod:`lit_mtl.compare` and everything else to :func:`build_cli` (so neither module imports the
other's caller).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import ArgsType, LightningCLI

from lit_mtl._lightning import CHECKED_LIGHTNING, last_checkpoints, missing_private_apis
from lit_mtl.checkpoints import read_checkpoint

__all__ = ["MultiTaskCLI", "ResumeConflictError", "build_cli", "model_config_conflicts"]

#: model arguments a resumed run may not take from the checkpoint: the task list is linked from
#: the DataModule (its consistency is checked when the weights load)
_LINKED = ("tasks",)


class ResumeConflictError(ValueError):
    """The command line or config asks for a model that differs from the checkpoint's."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        value = [_flatten(v) if isinstance(v, Mapping) else v for v in value]
    return {prefix: value}


def model_config_conflicts(given: Mapping[str, Any], hparams: Mapping[str, Any]) -> list[str]:
    """The model settings of a resumed run that differ from the checkpoint's.

    Args:
        given: the parsed model section (``{"class_path": ..., "init_args": {...}}``).
        hparams: the checkpoint's ``hyper_parameters`` (a CLI checkpoint stores its parsed init
            arguments and ``_class_path``).

    Returns ``"model.init_args.KEY: checkpoint X, given Y"`` lines, for every key both define
    (other than the linked task list) whose values differ, and for the class itself.
    """
    lines = []
    stored_class = hparams.get("_class_path")
    if stored_class is not None and given.get("class_path") not in (None, stored_class):
        lines.append(
            f"model.class_path: checkpoint {stored_class!r}, given {given['class_path']!r}"
        )
    stored = _flatten({k: v for k, v in hparams.items() if not k.startswith("_")})
    wanted = _flatten(dict(given.get("init_args") or {}))
    for key in sorted(set(stored) & set(wanted)):
        if key.split(".")[0] in _LINKED:
            continue
        if stored[key] != wanted[key]:
            lines.append(
                f"model.init_args.{key}: checkpoint {stored[key]!r}, given {wanted[key]!r}"
            )
    for key in sorted(set(wanted) - set(stored)):
        top = key.split(".")[0]
        if top in _LINKED or not stored or wanted[key] is None:
            continue
        if any(s == top or s.startswith(top + ".") for s in stored):
            lines.append(f"model.init_args.{key}: not in the checkpoint, given {wanted[key]!r}")
    return lines


class MultiTaskCLI(LightningCLI):
    """LightningCLI in subclass mode for model and data (``class_path``/``init_args``).

    Links ``data.task_specs`` (available right after the DataModule's ``__init__``) into
    ``model.init_args.tasks``, so a config never repeats the task list. The full parsed config is
    written next to the logs and sent to every logger's run config
    (:class:`~lit_mtl.tracking.LogConfigCallback`).
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.task_specs", "model.init_args.tasks", apply_on="instantiate")

    # ------------------------------------------------------------------ resuming
    def _parse_ckpt_path(self) -> None:
        """Lightning's CLI replaces the model section with the checkpoint's hyperparameters
        here, silently dropping what the command line says. Here nothing is replaced: the
        model built from the config must *be* the checkpoint's (checked before the subcommand
        runs, :meth:`_check_resume`)."""

    def _check_resume(self, subcommand: str) -> None:
        """Resolve ``--ckpt_path`` (``last``: the newest last checkpoint; an error when there
        is none), read it safely (errors name the file) and refuse a model section that
        differs from the checkpoint's, naming every conflicting key."""
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        # resuming writes into the run's own checkpoint folder: expected, not worth a warning
        warnings.filterwarnings(
            "ignore", message=r"Checkpoint directory .* exists and is not empty"
        )
        if ckpt_path == "last":
            ckpt_path = self._last_checkpoint()
            config["ckpt_path"] = ckpt_path
        elif ckpt_path in ("best", "hpc") or "://" in str(ckpt_path):
            return  # Lightning's own selection
        checkpoint = read_checkpoint(ckpt_path, "--ckpt_path")
        given = (
            config["model"].as_dict() if hasattr(config["model"], "as_dict") else config["model"]
        )
        conflicts = model_config_conflicts(given, checkpoint.get("hyper_parameters") or {})
        if conflicts:
            raise ResumeConflictError(
                f"--ckpt_path {str(ckpt_path)!r} continues the run in that checkpoint, but the "
                "config / command line asks for a different model:\n  "
                + "\n  ".join(conflicts)
                + "\nResume with the checkpoint's settings (drop these), or start a new run from "
                "its weights (lit_mtl.TransferModule with source=<the checkpoint>). Trainer and "
                "data settings (e.g. a larger --trainer.max_epochs) are taken as given."
            )

    def _last_checkpoint(self) -> str:
        from lightning.pytorch.callbacks import ModelCheckpoint

        candidates: set[str] = set()
        folders = []
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                folders.append(str(callback.dirpath))
                candidates |= last_checkpoints(callback, self.trainer)
        existing = [Path(p) for p in candidates if Path(p).is_file()]
        if not existing:
            where = (
                ", ".join(repr(f) for f in folders) or "(no ModelCheckpoint: checkpointing is off)"
            )
            raise FileNotFoundError(
                f"--ckpt_path last: no last checkpoint in {where}; nothing to resume. Start the "
                "run without --ckpt_path, or give the checkpoint's path."
            )
        return str(max(existing, key=lambda p: p.stat().st_mtime))

    def _save_last_checkpoints(self) -> None:
        """Every run saves a last checkpoint in ``<default_root_dir>/checkpoints`` (unless its
        ModelCheckpoint says otherwise), so ``--ckpt_path last`` finds it in the next run."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        for callback in self.trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint):
                continue
            if callback.save_last is None:
                callback.save_last = True
            if callback.dirpath is None:
                callback.dirpath = str(Path(self.trainer.default_root_dir) / "checkpoints")

    def before_fit(self) -> None:
        self._save_last_checkpoints()
        self._check_resume("fit")

    def before_validate(self) -> None:
        self._save_last_checkpoints()  # the folder where `--ckpt_path last` looks
        self._check_resume("validate")

    def before_test(self) -> None:
        self._save_last_checkpoints()  # the folder where `--ckpt_path last` looks
        self._check_resume("test")

    def before_predict(self) -> None:
        self._save_last_checkpoints()  # the folder where `--ckpt_path last` looks
        self._check_resume("predict")

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "ckpt_path" in kwargs:
            kwargs["ckpt_path"] = self.config[subcommand].get("ckpt_path")  # "last" resolved
        if kwargs.get("weights_only") is False:
            raise ValueError(
                "--weights_only=false: lit-mtl reads checkpoints with weights_only=True only "
                "(a pickled object in a checkpoint would run code)"
            )
        if "weights_only" in kwargs:
            kwargs["weights_only"] = True
        return kwargs

    def init_parser(self, **kwargs):
        kwargs.setdefault(
            "epilog",
            "Method comparisons (single-task baselines, seeds, delta-m): "
            "lit-mtl compare --config FILE  (lit-mtl compare --help)",
        )
        return super().init_parser(**kwargs)


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")


def _quiet() -> None:
    """No line the user cannot act on: Lightning's advertising tip and a deprecation warning
    Lightning's own code triggers in torch (nothing a config can change)."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_a_tip not in rank_zero.filters:
        rank_zero.addFilter(_not_a_tip)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def build_cli(args: ArgsType = None, *, run: bool = True) -> MultiTaskCLI:
    """Build (and by default run) the CLI; returns it, e.g. for tests: ``build_cli([...])``."""
    import lightning as L

    _quiet()
    missing = missing_private_apis()
    if missing:  # the CLI's resume checks would silently stop applying
        raise RuntimeError(
            f"lit-mtl's CLI needs Lightning internals this Lightning {L.__version__} lacks: "
            f"{missing}; use a Lightning release in {CHECKED_LIGHTNING[0]}..{CHECKED_LIGHTNING[1]}"
        )

    from lit_mtl.multitask import MultiTaskModule
    from lit_mtl.tracking import LogConfigCallback

    return MultiTaskCLI(
        MultiTaskModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        save_config_callback=LogConfigCallback,
    )
