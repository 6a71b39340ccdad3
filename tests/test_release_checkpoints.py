"""Checkpoints written by an earlier release restore and resume on this one.

The fixtures in ``tests/fixtures/release_0_1/`` were written at commit 407a9d4, before the
package's modules moved into ``tasks/`` and ``models/`` (``make_checkpoints.py`` there says how):
one by the CLI (class paths in its hyperparameters), one from Python (the modules passed again).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from lit_mtl import MultiTaskModule

from conftest import CliRun

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "release_0_1"


def saved(path: Path) -> dict:  # type: ignore[type-arg]
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_restores(module: MultiTaskModule, checkpoint: dict) -> None:  # type: ignore[type-arg]
    state = module.state_dict()
    assert set(state) == set(checkpoint["state_dict"])
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(state[key], value), key


def test_cli_checkpoint_of_the_earlier_release_restores_and_resumes(
    lit_mtl_cli: Callable[..., CliRun], tmp_path: Path
) -> None:
    fixture = shutil.copy(FIXTURES / "cli_quickstart.ckpt", tmp_path / "old.ckpt")
    checkpoint = saved(fixture)
    assert checkpoint["hyper_parameters"]["_class_path"] == "lit_mtl.MultiTaskModule"
    assert_restores(MultiTaskModule.load_from_checkpoint(fixture), checkpoint)

    out = lit_mtl_cli(
        "fit",
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--trainer.max_epochs=3",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--data.init_args.num_train=256",
        f"--trainer.default_root_dir={tmp_path}",
        f"--ckpt_path={fixture}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    resumed = saved(tmp_path / "checkpoints" / "last.ckpt")
    assert (checkpoint["global_step"], resumed["global_step"]) == (6, 9)
    assert resumed["epoch"] == 2


def test_python_checkpoint_of_the_earlier_release_restores_and_resumes(tmp_path: Path) -> None:
    sys.path.insert(0, str(FIXTURES))
    try:
        from make_checkpoints import python_parts
    finally:
        sys.path.remove(str(FIXTURES))
    fixture = shutil.copy(FIXTURES / "python_mmoe.ckpt", tmp_path / "old.ckpt")
    checkpoint = saved(fixture)
    data, encoder, weighting = python_parts()
    restored = MultiTaskModule.load_from_checkpoint(fixture, encoder=encoder, weighting=weighting)
    assert_restores(restored, checkpoint)
    assert restored.task_names == ["reg0", "reg1", "cls0"]

    data, encoder, weighting = python_parts()
    module = MultiTaskModule(
        encoder=encoder,
        tasks=data.task_specs,
        weighting=weighting,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        limit_train_batches=4,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data, ckpt_path=fixture)
    assert (checkpoint["global_step"], trainer.global_step) == (8, 12)
    steps = checkpoint["state_dict"]["weighting.adam_step"]
    assert module.weighting.adam_step > steps  # GradNorm's own optimizer went on from its state


#: names of the earlier release's ``__all__`` lists that went with the kind-string dispatch (each
#: kind's class now answers what these tables and dispatchers looked up by name)
REMOVED_WITH_THE_STRING_DISPATCH = {
    ("lit_mtl.functional", "KIND_UNCERTAINTY_FORM"),
    ("lit_mtl.functional.loss_weighting", "KIND_UNCERTAINTY_FORM"),
    ("lit_mtl.functional.dense_metrics", "DENSE_METRIC_DIRECTIONS"),
    ("lit_mtl.functional.dense_metrics", "dense_metrics_from_statistics"),
    ("lit_mtl.functional.dense_metrics", "dense_statistics_size"),
    ("lit_mtl.functional.task_metrics", "METRIC_DIRECTIONS"),
    ("lit_mtl.functional.task_metrics", "class_statistics"),
    ("lit_mtl.functional.task_metrics", "metrics_from_statistics"),
    ("lit_mtl.functional.task_metrics", "regression_statistics"),
    ("lit_mtl.functional.task_metrics", "statistics_size"),
    ("lit_mtl.tasks", "DENSE_KINDS"),
}


def test_every_name_the_earlier_release_exported_still_resolves() -> None:
    """``exports.json``: each module's ``__all__`` at the release (407a9d4) and before the
    packages were regrouped; each name still resolves from its old path (moved ones with a
    ``DeprecationWarning``), except the few removed with the string dispatch."""
    import importlib
    import json
    import warnings

    exports = json.loads((FIXTURES / "exports.json").read_text())
    unresolved = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for module_path, names in exports.items():
            module = importlib.import_module(module_path)
            unresolved |= {(module_path, n) for n in names if not hasattr(module, n)}
    assert unresolved == REMOVED_WITH_THE_STRING_DISPATCH
