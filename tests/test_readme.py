"""The README's two commands and its Python examples are what the suite runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CliRun

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

#: copied verbatim from the README; the install part is skipped inside pytest
MAIN_COMMAND = 'pip install -e ".[plots]" && lit-mtl fit --config configs/quickstart.yaml'
TEST_COMMAND = 'pip install -e ".[dev]" && pytest'


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_readme_states_the_two_commands_verbatim() -> None:
    blocks = [b.strip() for b in _bash_blocks()]
    assert blocks[0] == MAIN_COMMAND
    assert blocks[1] == TEST_COMMAND


def test_ci_runs_the_readme_test_command() -> None:
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_main_command_runs(lit_mtl_cli: Callable[..., CliRun], tmp_path: Path) -> None:
    run_part = MAIN_COMMAND.split(" && ", 1)[1].split()
    assert run_part[0] == "lit-mtl"
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    beside = Path(sys.executable).with_name("lit-mtl")
    exe = str(beside) if beside.exists() else (shutil.which("lit-mtl") or "lit-mtl")
    out = subprocess.run(
        [exe, *run_part[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "`Trainer.fit` stopped: `max_epochs=10` reached." in out.stderr
    assert list((tmp_path / "lightning_logs" / "quickstart").rglob("*.ckpt"))
    # the plots a new user is promised, next to the logs
    assert list((tmp_path / "lightning_logs" / "quickstart").rglob("task_weights.png"))
    # the README's resume command, verbatim, continues that run
    (resume,) = [
        line.split("#")[0].split()
        for block in _bash_blocks()
        for line in block.splitlines()
        if "--ckpt_path last" in line
    ]
    assert resume[0] == "lit-mtl"
    more = lit_mtl_cli(*resume[1:], cwd=tmp_path)  # the console script's main, in this process
    assert more.returncode == 0, more.stderr[-3000:]
    assert "Restored all states" in more.stderr
    assert "`Trainer.fit` stopped: `max_epochs=20` reached." in more.stderr


def test_readme_wandb_command_is_the_one_tested() -> None:
    """tests/test_tracking.py runs exactly these configs in offline mode."""
    assert "lit-mtl fit --config configs/quickstart.yaml --config configs/logger/wandb.yaml" in (
        README
    )
    assert (ROOT / "configs" / "logger" / "wandb.yaml").exists()


PY_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("code", PY_BLOCKS, ids=[f"block{i}" for i in range(len(PY_BLOCKS))])
def test_readme_python_examples_run(code: str) -> None:
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})


def test_results_tables_match_benchmark_json() -> None:
    """Each results block of the README and of the documentation pages is what
    benchmarks/update_readme.py renders from its JSON."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "update_readme", ROOT / "benchmarks/update_readme.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen = set()
    for page in module.pages():
        text = page.read_text()
        for name in re.findall(r"<!-- results:([\w-]+) -->", text):
            block = re.search(rf"<!-- results:{name} -->.*?<!-- /results:{name} -->", text, re.S)
            assert block is not None and block.group(0) == module.render(name), (page, name)
            seen.add(name)
    stored = {p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json")}
    stored |= {p.parent.name for p in (ROOT / "benchmarks" / "results").glob("*/results.json")}
    assert seen, "no page has a results block"
    assert not seen - stored
