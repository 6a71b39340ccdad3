"""The suite's own guard: a file written into the repository fails the run."""

from __future__ import annotations

from pathlib import Path

from conftest import repository_files


def test_repository_files_sees_new_files_and_skips_caches(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.pyc").write_text("")
    before = repository_files(str(tmp_path))
    (tmp_path / "stray.png").write_text("")
    assert repository_files(str(tmp_path)) - before == {"stray.png"}
    assert before == {"pkg/a.py"}
