"""Optional dependencies: a missing package gives an error naming the extra to install."""

from __future__ import annotations

import sys

import pytest

from lit_mtl import (
    DigitsDataModule,
    MLPEncoder,
    MNIST1DDataModule,
    TimmEncoder,
    TorchvisionEncoder,
)
from lit_mtl._optional import require
from lit_mtl.data.molecules import morgan_fingerprints
from lit_mtl.diagnostics.plots import plot_task_weights
from lit_mtl.transfer.lora import inject_lora

from conftest import fast_trainer, small_data, small_module


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Make the named top-level packages unimportable for one test."""

    def hide(*packages: str) -> None:
        for name in list(sys.modules):
            if name.split(".")[0] in packages:
                monkeypatch.delitem(sys.modules, name)
        for package in packages:
            monkeypatch.setitem(sys.modules, package, None)  # import raises ImportError

    return hide


def test_require_names_the_extra(without) -> None:  # type: ignore[no-untyped-def]
    without("matplotlib")
    with pytest.raises(
        ImportError,
        match=r"drawing needs the optional package 'matplotlib': pip install 'lit-mtl\[plots\]'",
    ):
        require("matplotlib.figure", "plots", "drawing")


@pytest.mark.parametrize(
    ("packages", "build", "extra"),
    [
        (("sklearn",), lambda: DigitsDataModule().setup(), "data"),
        (("mnist1d",), lambda: MNIST1DDataModule(num_samples=100).setup(), "data"),
        (("torchvision",), lambda: TorchvisionEncoder("resnet18"), "vision"),
        (("matplotlib",), lambda: plot_task_weights([0], [[1.0]], ["a"]), "plots"),
        (("timm",), lambda: TimmEncoder("resnet18"), "timm"),
        (("peft",), lambda: inject_lora(MLPEncoder(4, [4]), ["blocks.0.0"]), "lora"),
        (("rdkit",), lambda: morgan_fingerprints(["CCO"]), "molecules"),
    ],
    ids=["digits", "mnist1d", "torchvision", "plots", "timm", "peft", "rdkit"],
)
def test_pieces_name_their_extra(without, packages, build, extra) -> None:  # type: ignore[no-untyped-def]
    without(*packages)
    with pytest.raises(ImportError, match=rf"lit-mtl\[{extra}\]"):
        build()


def test_plots_without_matplotlib_stop_at_fit_start_not_after_training(without, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from lightning.pytorch.loggers import CSVLogger

    without("matplotlib")
    dm = small_data()
    module = small_module(dm)
    trainer = fast_trainer(max_epochs=1, logger=CSVLogger(tmp_path))
    with pytest.raises(ImportError, match=r"plots=False"):
        trainer.fit(module, dm)
    assert trainer.global_step == 0
    small_module(dm, plots=False)  # without figures, training needs no matplotlib
    fast_trainer(max_epochs=1, logger=CSVLogger(tmp_path)).fit(small_module(dm, plots=False), dm)
