"""The notebooks are in git without outputs (nbmake executes them: see pyproject's addopts)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_four_example_notebooks_exist() -> None:
    assert [p.stem for p in NOTEBOOKS] == [
        "01_quickstart",
        "02_gradnorm_toy",
        "03_uncertainty_weighting",
        "04_transfer_mnist1d",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_outputs_are_stripped(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    for i, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_small_under_pytest(path: Path) -> None:
    """Each notebook shrinks itself when run by the test suite (and only then)."""
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
    assert "PYTEST_CURRENT_TEST" in source and "SMALL" in source
