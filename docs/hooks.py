"""MkDocs hook: the figures that benchmark scripts write under ``benchmarks/results/`` are served
from there (``benchmarks/results/...`` on the site), so no copy of them is kept under ``docs/``."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]


def on_files(files: Files, config) -> Files:  # type: ignore[no-untyped-def]
    for figure in sorted((ROOT / "benchmarks" / "results").rglob("*.png")):
        uri = figure.relative_to(ROOT).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(figure)))
    return files
