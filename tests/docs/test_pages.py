"""Every Python block of the documentation pages runs: each page's blocks in order, in one
namespace (as a reader would paste them), with the task-kind registry as it was afterwards."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lit_mtl.tasks.kinds import _REGISTRY

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").rglob("*.md"))


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def run_page(page: Path) -> dict:  # type: ignore[type-arg]
    """The namespace after the page's Python blocks ran."""
    namespace: dict = {"__name__": f"docs_{page.stem.replace('-', '_')}"}  # type: ignore[type-arg]
    for block in python_blocks(page):
        exec(compile(block, str(page), "exec"), namespace)
    return namespace


def test_there_are_pages_with_code() -> None:
    assert sum(bool(python_blocks(p)) for p in PAGES) >= 2


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_every_python_block_of_a_page_runs(page: Path) -> None:
    kinds = dict(_REGISTRY)
    try:
        run_page(page)
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(kinds)
