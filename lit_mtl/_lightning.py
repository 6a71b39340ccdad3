"""Every use of Lightning's private API, in one place.

Lightning has no public API for these five needs; each entry says why it is used, which public
API would replace it, and the Lightning versions it was checked against (the range pinned in
``pyproject.toml``). ``missing_private_apis()`` lists what a Lightning upgrade took away; the
suite fails on a non-empty list, and the CLI refuses to start (its overrides would otherwise stop
applying without a word).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.core.mixins import hparams_mixin

__all__ = [
    "CHECKED_LIGHTNING",
    "fast_dev_run",
    "hyperparameters_from_cli",
    "last_checkpoints",
    "log_every_n_steps",
    "logs_this_step",
    "missing_private_apis",
    "trainer_callbacks",
]

#: the Lightning releases these uses were checked against (both ends of the pinned range)
CHECKED_LIGHTNING = ("2.6.0", "2.6.6")

#: LightningCLI methods that lit_mtl.cli overrides (they are private: a rename upstream would
#: silently bypass the override)
#: * ``_parse_ckpt_path``: Lightning replaces the model section by the checkpoint's
#:   hyperparameters there; lit-mtl checks they agree instead. Public replacement: none.
#: * ``_prepare_subcommand_kwargs``: where ``--ckpt_path last`` is resolved to the file chosen
#:   and ``--weights_only=false`` refused. Public replacement: none (``before_<subcommand>``
#:   hooks cannot change the subcommand's arguments).
CLI_OVERRIDES = ("_parse_ckpt_path", "_prepare_subcommand_kwargs")


def missing_private_apis() -> list[str]:
    """The private Lightning names lit_mtl uses that this Lightning does not have."""
    missing = [f"LightningCLI.{name}" for name in CLI_OVERRIDES if not hasattr(LightningCLI, name)]
    if not hasattr(hparams_mixin, "_given_hyperparameters"):
        missing.append("lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters")
    if not hasattr(ModelCheckpoint, "_find_last_checkpoints"):
        missing.append("ModelCheckpoint._find_last_checkpoints")
    connector = _logger_connector_class()
    if connector is None or not hasattr(connector, "should_update_logs"):
        missing.append("_LoggerConnector.should_update_logs")
    return missing


def hyperparameters_from_cli() -> bool:
    """Whether the module is being built by LightningCLI (its hyperparameters are then the parsed
    config, so a CLI checkpoint restores without arguments).

    Private: ``hparams_mixin._given_hyperparameters``, the context variable through which
    LightningCLI hands the config to ``save_hyperparameters``. Public replacement: none.
    """
    given: Any = hparams_mixin._given_hyperparameters
    return given.get() is not None


def logs_this_step(trainer: L.Trainer) -> bool:
    """Whether the trainer writes this training step's logged values to its loggers
    (``log_every_n_steps``, counted as Lightning counts it: optimizer steps, with accumulation).

    Private: ``trainer._logger_connector.should_update_logs``, Lightning's own test. Public
    replacement: none exact (``trainer.global_step % trainer.log_every_n_steps`` counts steps
    differently under gradient accumulation).
    """
    return bool(trainer._logger_connector.should_update_logs)


def last_checkpoints(callback: ModelCheckpoint, trainer: L.Trainer) -> set[str]:
    """The ``last*.ckpt`` files ``callback`` would resume from in its folder.

    Private: ``ModelCheckpoint._find_last_checkpoints``. Public replacement: none (the callback's
    ``last_model_path`` is only known after it saved in this process).
    """
    find: Callable[[L.Trainer], Any] = callback._find_last_checkpoints
    return set(find(trainer))


def _logger_connector_class() -> type | None:
    try:
        from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import (
            _LoggerConnector,
        )
    except ImportError:
        return None
    return _LoggerConnector


# Public Trainer attributes that the Trainer's connectors assign (``trainer.callbacks`` by the
# callback connector, ``log_every_n_steps`` by the logger connector, ``fast_dev_run`` by the
# debugging flags): documented and public, but undeclared on the class, so a type checker cannot
# see them. Read here, once, with their types.


def trainer_callbacks(trainer: L.Trainer) -> list[Callback]:
    """``trainer.callbacks`` (the list Lightning calls; appending to it adds a callback)."""
    callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
    return callbacks


def log_every_n_steps(trainer: L.Trainer) -> int:
    """``trainer.log_every_n_steps``."""
    return int(trainer.log_every_n_steps)  # type: ignore[attr-defined]


def fast_dev_run(trainer: L.Trainer) -> bool:
    """Whether ``trainer.fast_dev_run`` is on (``True`` or a number of batches)."""
    return bool(trainer.fast_dev_run)  # type: ignore[attr-defined]
