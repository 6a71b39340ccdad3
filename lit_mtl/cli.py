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

from lightning.pytorch.cli import ArgsType, LightningCLI

__all__ = ["MultiTaskCLI", "build_cli"]


class MultiTaskCLI(LightningCLI):
    """LightningCLI in subclass mode for model and data (``class_path``/``init_args``).

    Links ``data.task_specs`` (available right after the DataModule's ``__init__``) into
    ``model.init_args.tasks``, so a config never repeats the task list. The full parsed config is
    written next to the logs and sent to every logger's run config
    (:class:`~lit_mtl.tracking.LogConfigCallback`).
    """

    def add_arguments_to_parser(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.link_arguments("data.task_specs", "model.init_args.tasks", apply_on="instantiate")

    def init_parser(self, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault(
            "epilog",
            "Method comparisons (single-task baselines, seeds, delta-m): "
            "lit-mtl compare --config FILE  (lit-mtl compare --help)",
        )
        return super().init_parser(**kwargs)


def build_cli(args: ArgsType = None, *, run: bool = True) -> MultiTaskCLI:
    """Build (and by default run) the CLI; returns it, e.g. for tests: ``build_cli([...])``."""
    import lightning as L

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
