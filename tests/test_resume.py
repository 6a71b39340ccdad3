"""Resume, restore and errors that do what the user asked (CLI and Python entry points)."""

from __future__ import annotations

import functools
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_mtl import MLPEncoder, MultiTaskModule, TransferModule, UnfreezeSchedule
from lit_mtl.checkpoints import UnsafeCheckpointError, file_sha256
from lit_mtl.cli import model_config_conflicts
from lit_mtl.transfer import load_source_into

from conftest import CliRun, fast_trainer, small_data

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "configs" / "quickstart.yaml")
FAST = [
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def lit_mtl_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m lit_mtl`` in a fresh interpreter (what the user's shell runs)."""
    env = {k: v for k, v in os.environ.items() if k != "LIT_MTL_TRACEBACK"}
    return subprocess.run(
        [sys.executable, "-m", "lit_mtl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_cli_resume_honours_trainer_settings_and_refuses_model_changes(
    lit_mtl_cli: Callable[..., CliRun], tmp_path: Path
) -> None:
    first = lit_mtl_cli("fit", "--config", QUICK, "--trainer.max_epochs=1", *FAST, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    last = tmp_path / "lightning_logs" / "quickstart" / "checkpoints" / "last.ckpt"
    assert last.is_file()  # every CLI run saves a last checkpoint
    more = lit_mtl_cli(
        "fit", "--config", QUICK, "--trainer.max_epochs=2", *FAST, "--ckpt_path", "last",
        cwd=tmp_path,
    )  # fmt: skip
    assert more.returncode == 0, more.stderr[-2000:]
    assert "Restored all states" in more.stderr
    assert torch.load(last, weights_only=True)["global_step"] == 4  # 2 + 2: continued
    changed = lit_mtl_cli(
        "fit", "--config", QUICK, "--trainer.max_epochs=3", *FAST, "--ckpt_path", "last",
        "--model.init_args.weighting=lit_mtl.EqualWeighting",
        "--model.init_args.optimizer.init_args.lr=0.01",
        cwd=tmp_path,
    )  # fmt: skip
    assert changed.returncode == 1
    message = changed.stderr
    assert message.index("ResumeConflictError") < message.index("LIT_MTL_TRACEBACK")
    assert (
        "model.init_args.weighting.class_path: checkpoint 'lit_mtl.UncertaintyWeighting'" in message
    )
    assert "model.init_args.optimizer.init_args.lr: checkpoint 0.003, given 0.01" in message
    assert torch.load(last, weights_only=True)["global_step"] == 4  # nothing trained


def test_cli_last_without_a_checkpoint_is_an_error(
    lit_mtl_cli: Callable[..., CliRun], tmp_path: Path
) -> None:
    out = lit_mtl_cli("fit", "--config", QUICK, *FAST, "--ckpt_path", "last", cwd=tmp_path)
    assert out.returncode == 1
    assert "FileNotFoundError: --ckpt_path last: no last checkpoint in" in out.stderr
    assert not (tmp_path / "lightning_logs" / "quickstart" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "is empty"), (b"PK\x03\x04 not a full archive", "truncated, corrupt or not")],
)
def test_bad_checkpoint_files_are_named_on_every_entry_point(
    lit_mtl_cli: Callable[..., CliRun], tmp_path: Path, content: bytes, match: str
) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    out = lit_mtl_cli("fit", "--config", QUICK, *FAST, "--ckpt_path", str(bad), cwd=tmp_path)
    assert out.returncode == 1
    assert f"--ckpt_path {str(bad)!r}" in out.stderr and match in out.stderr
    with pytest.raises(ValueError, match=match) as info:
        MultiTaskModule.load_from_checkpoint(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(ValueError, match=match) as info:
        load_source_into(MLPEncoder(8, [4]), bad)
    assert str(bad) in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt' does not exist"):
        MultiTaskModule.load_from_checkpoint(tmp_path / "missing.ckpt")


class _Payload:
    """Unpickling it would write a file: proof that code from a checkpoint ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "code ran"))


def test_payload_checkpoint_never_runs(
    lit_mtl_cli: Callable[..., CliRun], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's default switched off
    marker = tmp_path / "pwned.txt"
    payload = tmp_path / "payload.ckpt"
    torch.save(
        {"state_dict": {"encoder.w": torch.zeros(1)}, "hyper_parameters": {"x": _Payload(marker)}},
        payload,
    )
    with pytest.raises(UnsafeCheckpointError, match=r"payload\.ckpt"):
        MultiTaskModule.load_from_checkpoint(payload)
    with pytest.raises(UnsafeCheckpointError, match=r"payload\.ckpt"):
        load_source_into(MLPEncoder(8, [4]), payload)
    out = lit_mtl_cli("fit", "--config", QUICK, *FAST, "--ckpt_path", str(payload), cwd=tmp_path)
    assert out.returncode == 1 and "UnsafeCheckpointError" in out.stderr
    with pytest.raises(ValueError, match="weights_only=True only"):
        MultiTaskModule.load_from_checkpoint(payload, weights_only=False)
    assert not marker.exists()


def test_model_config_conflicts_name_each_key() -> None:
    hparams = {
        "_class_path": "lit_mtl.MultiTaskModule",
        "weighting": {"class_path": "lit_mtl.GradNorm", "init_args": {"alpha": 1.5}},
        "tasks": [{"name": "a"}],
        "plots": True,
    }
    same = {
        "class_path": "lit_mtl.MultiTaskModule",
        "init_args": {
            "weighting": {"class_path": "lit_mtl.GradNorm", "init_args": {"alpha": 1.5}},
            "tasks": None,
            "plots": True,
        },
    }
    assert model_config_conflicts(same, hparams) == []
    other = {**same, "init_args": {**same["init_args"], "plots": False}}
    other["init_args"]["weighting"] = {"class_path": "lit_mtl.EqualWeighting"}
    assert model_config_conflicts(other, hparams) == [
        "model.init_args.plots: checkpoint True, given False",
        "model.init_args.weighting.class_path: checkpoint 'lit_mtl.GradNorm', given "
        "'lit_mtl.EqualWeighting'",
    ]


def _transfer(source: Path, **kwargs) -> TransferModule:  # type: ignore[no-untyped-def]
    dm = small_data()
    torch.manual_seed(0)
    return TransferModule(
        MLPEncoder(dm.in_features, [16, 16]),
        dm.task_specs,
        source=str(source),
        source_prefix="encoder.",
        schedule=UnfreezeSchedule("freeze_unfreeze", epoch=1),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        l2sp_alpha=0.1,
        **kwargs,
    )


def test_transfer_checkpoint_restores_without_its_source(tmp_path: Path) -> None:
    dm = small_data()
    torch.manual_seed(1)
    source = tmp_path / "source.ckpt"
    torch.save(
        {"state_dict": MultiTaskModule(MLPEncoder(8, [16, 16]), dm.task_specs).state_dict()}, source
    )
    digest = file_sha256(source)
    module = _transfer(source)
    assert module.source_provenance == {"path": str(source), "sha256": digest}
    checkpoints = tmp_path / "checkpoints"
    saving = ModelCheckpoint(checkpoints, save_last=True)
    trainer = fast_trainer(max_epochs=1, enable_checkpointing=True, callbacks=[saving])
    trainer.fit(module, dm)
    last = checkpoints / "last.ckpt"
    assert torch.load(last, weights_only=True)["lit_mtl_source"]["sha256"] == digest
    source.unlink()  # the source is gone: restoring needs only the checkpoint

    restored = TransferModule.load_from_checkpoint(last, encoder=MLPEncoder(8, [16, 16]))
    for key, value in module.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    assert restored.source_provenance["sha256"] == digest
    assert torch.allclose(restored.l2sp(), module.l2sp())

    resumed = _transfer(source)
    fast_trainer(max_epochs=2).fit(resumed, dm, ckpt_path=last)
    assert resumed.trainer.current_epoch == 2 and resumed.global_step > module.global_step

    with pytest.raises(FileNotFoundError, match=r"source\.ckpt' does not exist .* not to resume"):
        fast_trainer(max_epochs=1).fit(_transfer(source), dm)


def test_empty_split_names_the_datamodule_and_the_split() -> None:
    from lit_mtl import MultiTaskTensorDataset
    from lit_mtl.data.loaders import SplitDataModule

    class Tiny(SplitDataModule):
        def setup(self, stage: str | None = None) -> None:
            full = MultiTaskTensorDataset(torch.randn(8, 8), {"reg0": torch.randn(8)})
            empty = MultiTaskTensorDataset(torch.randn(0, 8), {"reg0": torch.randn(0)})
            self.datasets = {"train": full, "val": empty, "test": full}

    dm = Tiny()
    dm.datasets = {}
    module = MultiTaskModule(MLPEncoder(8, [4]), small_data().task_specs[:1])
    with pytest.raises(ValueError, match="Tiny: the val split is empty"):
        fast_trainer().fit(module, dm)


def test_bad_labels_in_a_fit_name_the_task_and_the_value() -> None:
    from torch.utils.data import DataLoader

    from lit_mtl import MultiTaskTensorDataset, TaskSpec

    targets = {"c": torch.tensor([0, 1, 5, 2]), "b": torch.tensor([0.0, 1.0, 0.5, 1.0])}
    for name, spec in (("c", TaskSpec("c", "multiclass", 3)), ("b", TaskSpec("b", "binary"))):
        data = MultiTaskTensorDataset(torch.randn(4, 3), {name: targets[name]})
        module = MultiTaskModule(MLPEncoder(3, [4]), [spec], plots=False)
        value = "5" if name == "c" else "0.5"
        with pytest.raises(ValueError, match=f"task '{name}' .*label {value} in the batch"):
            fast_trainer().fit(module, DataLoader(data, batch_size=4))


def test_cli_constructor_error_comes_first_with_its_type(
    lit_mtl_cli: Callable[..., CliRun], tmp_path: Path
) -> None:
    out = lit_mtl_cli(
        "fit", "--config", QUICK, "--model.init_args.encoder.init_args.in_features=0", *FAST,
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line and not line.startswith("Seed")]
    assert lines[0] == "ValueError: MLPEncoder: in_features must be >= 1, got 0"
    assert len(lines) <= 3


def test_download_without_network_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torchvision")
    import urllib.error
    import urllib.request

    from lit_mtl import TorchvisionDataModule

    def offline(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    dm = TorchvisionDataModule("mnist", root=str(tmp_path), download=True)
    with pytest.raises(OSError, match=r"download=True.*no network connection") as info:
        dm.prepare_data()
        dm.setup()
    assert "pass download=True" not in str(info.value).lower()


def test_trainer_runs_are_quiet_of_lightning_tips(tmp_path: Path) -> None:
    out = lit_mtl_process("fit", "--config", QUICK, "--trainer.max_epochs=1", *FAST, cwd=tmp_path)
    assert out.returncode == 0
    assert "Tip" not in out.stderr and "deprecated" not in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "kill_step"),
    [("upgrad", 10), ("transfer", 4), ("transfer", 10)],  # transfer: frozen / warming up
)
def test_sigkill_mid_epoch_then_resume_from_last_is_bit_identical(
    tmp_path: Path, method: str, kill_step: int
) -> None:
    """The killed run is a process of its own that SIGKILLs itself (no cleanup, no atexit); the
    full and the resumed runs train here."""
    script = Path(__file__).parent / "scripts" / "killed_run.py"
    spec = importlib.util.spec_from_file_location("killed_run", script)
    assert spec is not None and spec.loader is not None
    killed_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(killed_run)
    try:
        killed_run.train("full", method, tmp_path, kill_step)
        killed = subprocess.run(
            [sys.executable, str(script), "killed", method, str(tmp_path), str(kill_step)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]  # no cleanup ran
        last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
        assert last["global_step"] == kill_step - 1  # the newest checkpoint, mid-epoch
        killed_run.train("resume", method, tmp_path, kill_step)
    finally:
        torch.use_deterministic_algorithms(False)  # the runs' Trainer(deterministic=True)
    expected = torch.load(tmp_path / "final_full.pt", weights_only=True)
    actual = torch.load(tmp_path / "final_resume.pt", weights_only=True)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_cli_transfer_resumes_with_its_source_moved_away(
    lit_mtl_cli: Callable[..., CliRun], tmp_path: Path
) -> None:
    source_config = str(ROOT / "configs" / "digits_source.yaml")
    transfer_config = str(ROOT / "configs" / "digits_transfer.yaml")
    out = lit_mtl_cli(
        "fit", "--config", source_config, "--trainer.max_epochs=1", *FAST, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    out = lit_mtl_cli(
        "fit", "--config", transfer_config, "--trainer.max_epochs=1", *FAST, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    source = tmp_path / "checkpoints" / "digits_source" / "source.ckpt"
    source.rename(tmp_path / "elsewhere.ckpt")  # the source is gone
    resumed = lit_mtl_cli(
        "fit", "--config", transfer_config, "--trainer.max_epochs=2", *FAST, "--ckpt_path", "last",
        cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    fresh = lit_mtl_cli("fit", "--config", transfer_config, *FAST, cwd=tmp_path)
    assert fresh.returncode == 1
    assert "FileNotFoundError: TransferModule: source 'checkpoints/digits_source/source.ckpt'" in (
        fresh.stderr
    )


def test_download_errors_say_what_failed() -> None:
    from lit_mtl.data.vision import download_error

    checksum = download_error("svhn", "data", RuntimeError("File not found or corrupted."))
    assert "partial download" in str(checksum)
    mismatch = download_error("cifar10", "data", RuntimeError("md5 of cifar.tar.gz does not match"))
    assert "checksums" in str(mismatch) and "Delete them under root and retry" in str(mismatch)
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError as inner:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz") from inner
    except RuntimeError as outer:
        offline = download_error("mnist", "data", outer)
    assert "no network connection" in str(offline) and "reset by peer" in str(offline)
