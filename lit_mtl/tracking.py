"""Experiment tracking: a W&B logger that goes offline without an account, the full CLI config
sent to every logger, and figures logged as images.

``configs/logger/wandb.yaml`` uses these::

    lit-mtl fit --config configs/quickstart.yaml --config configs/logger/wandb.yaml
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import lightning as L
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "LogConfigCallback",
    "WandbLogger",
    "log_figure",
    "plot_dir",
    "wandb_credentials_available",
]


def wandb_credentials_available() -> bool:
    """True when W&B can authenticate: ``WANDB_API_KEY`` is set or ``~/.netrc`` (or
    ``$NETRC``) has an entry for the W&B host (``WANDB_BASE_URL``, default api.wandb.ai)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not path.is_file():
        return False
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that runs **offline when there is no W&B account**.

    ``offline=None`` (the default) decides at construction: ``WANDB_MODE`` wins when set
    (``offline``/``dryrun`` -> offline), otherwise the run is online only when
    :func:`wandb_credentials_available`. An offline run writes its ``.wandb`` log under
    ``save_dir/wandb/offline-run-*`` and can be uploaded later with ``wandb sync``.

    Args:
        project: W&B project.
        name: run name (default: W&B's).
        group: run group (the comparison runner uses the comparison's name).
        save_dir: where the ``wandb/`` run directories go.
        offline: force offline (True) or online (False); None = decide as above.
        log_model: upload checkpoints as artifacts (Lightning's meaning).
        tags: W&B run metadata.
        notes: W&B run metadata.
        job_type: W&B run metadata.
        **kwargs: passed to ``wandb.init``.
    """

    def __init__(
        self,
        project: str = "lit-mtl",
        name: str | None = None,
        group: str | None = None,
        save_dir: str = "lightning_logs",
        offline: bool | None = None,
        log_model: bool | Literal["all"] = False,
        tags: list[str] | None = None,
        notes: str | None = None,
        job_type: str | None = None,
        **kwargs: Any,
    ) -> None:
        if offline is None:
            mode = os.environ.get("WANDB_MODE", "").strip().lower()
            offline = mode in ("offline", "dryrun") if mode else not wandb_credentials_available()
        # absolute: W&B's service process may run in another working directory (it is shared by
        # every run of a process) and would write the .wandb log relative to its own
        save_dir = str(Path(save_dir).resolve())
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        given = (("tags", tags), ("notes", notes), ("job_type", job_type))
        extra: dict[str, Any] = {k: v for k, v in given if v}
        super().__init__(
            name=name,
            save_dir=save_dir,
            offline=offline,
            project=project,
            log_model=log_model,
            group=group,
            **extra,
            **kwargs,
        )
        self.offline = bool(offline)


def plot_dir(trainer: L.Trainer) -> Path:
    """Where a run's PNGs go: the W&B run's files directory, else the logger's log dir (or
    ``save_dir``), else the trainer's ``default_root_dir``."""
    logger = trainer.logger
    if isinstance(logger, _LightningWandbLogger):
        experiment_dir = getattr(logger.experiment, "dir", None)
        if isinstance(experiment_dir, str):
            return Path(experiment_dir)
    if logger is not None and getattr(logger, "log_dir", None):
        return Path(logger.log_dir)  # type: ignore[arg-type]
    return Path(trainer.default_root_dir)


def log_figure(trainer: L.Trainer, key: str, figure: Figure, filename: str) -> Path:
    """Save ``figure`` as ``filename`` (PNG) in :func:`plot_dir` and log it as an image to every
    logger that takes images (W&B ``log_image``, TensorBoard ``add_figure``; CSV keeps the PNG).
    Call on global rank zero only. Returns the PNG's path."""
    directory = plot_dir(trainer)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    figure.savefig(path, dpi=110)
    for logger in trainer.loggers:
        if isinstance(logger, _LightningWandbLogger):
            logger.log_image(key=key, images=[str(path)], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(key, figure, global_step=trainer.global_step)
        # a CSVLogger cannot hold images: the PNG in its log dir is the plot
    return path


class LogConfigCallback(SaveConfigCallback):
    """LightningCLI's config saver that also sends the **full parsed config** (the same YAML
    ``--print_config`` prints, which runs again as is) to every logger's run config
    (``log_hyperparams``): LightningCLI by itself only writes ``config.yaml`` next to the logs.

    For a W&B logger, the config is written as ``lit_mtl_config.yaml`` into the run's own files
    directory (synced with the run; two runs never collide; W&B's own ``config.yaml`` is left
    alone).
    """

    wandb_config_filename = "lit_mtl_config.yaml"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if isinstance(trainer.logger, _LightningWandbLogger):
            if trainer.is_global_zero:
                run_dir = plot_dir(trainer)
                run_dir.mkdir(parents=True, exist_ok=True)
                self.parser.save(
                    self.config,
                    str(run_dir / self.wandb_config_filename),
                    skip_none=False,
                    overwrite=True,
                    multifile=self.multifile,
                )
                self.save_config(trainer, pl_module, stage)
                self.already_saved = True
            self.already_saved = trainer.strategy.broadcast(self.already_saved)
            return
        super().setup(trainer, pl_module, stage)

    def config_dict(self) -> dict[str, Any]:
        """The parsed config as plain, YAML-safe data."""
        return yaml.safe_load(self.parser.dump(self.config, skip_none=False))

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = self.config_dict()
        for logger in trainer.loggers:
            _log_config(logger, config)


def _log_config(logger: Logger, config: dict[str, Any]) -> None:
    if isinstance(logger, _LightningWandbLogger):
        logger.experiment.config.update(config, allow_val_change=True)
    else:
        logger.log_hyperparams({"config": config})
