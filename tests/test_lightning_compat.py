"""The private Lightning API lit_mtl leans on is all there, and a missing piece is loud."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.cli import LightningCLI
from packaging.version import Version

from lit_mtl import _lightning
from lit_mtl.cli import build_cli


def test_every_private_lightning_api_in_use_exists() -> None:
    assert _lightning.missing_private_apis() == []


def test_the_installed_lightning_is_in_the_checked_range() -> None:
    low, high = (Version(v) for v in _lightning.CHECKED_LIGHTNING)
    assert low <= Version(L.__version__) <= high


def test_a_vanished_override_point_stops_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(LightningCLI, "_prepare_subcommand_kwargs")
    assert _lightning.missing_private_apis() == ["LightningCLI._prepare_subcommand_kwargs"]
    with pytest.raises(RuntimeError, match="_prepare_subcommand_kwargs"):
        build_cli(["fit", "--help"], run=False)
