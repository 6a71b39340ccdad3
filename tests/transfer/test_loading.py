"""Source loading: formats, key mapping, strict errors, skip list, safety, bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from lit_mtl import MLPEncoder, MultiTaskModule, TaskSpec, TorchvisionEncoder
from lit_mtl.checkpoints import UnsafeCheckpointError
from lit_mtl.transfer import (
    CheckpointMismatchError,
    load_source_into,
    map_keys,
    read_state_dict,
)


def encoder(seed: int = 0) -> MLPEncoder:
    torch.manual_seed(seed)
    return MLPEncoder(4, [8, 6])


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_plain_state_dict_files(tmp_path: Path, suffix: str) -> None:
    src, dst = encoder(0), encoder(1)
    path = tmp_path / f"enc{suffix}"
    torch.save(src.state_dict(), path)
    report = load_source_into(dst, path)
    assert same(src, dst) and len(report.loaded) == 4 and not report.missing


def test_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src, dst = encoder(0), encoder(1)
    save_file(src.state_dict(), str(tmp_path / "enc.safetensors"))
    load_source_into(dst, tmp_path / "enc.safetensors")
    assert same(src, dst)


def test_lightning_ckpt_with_prefix_and_wrappers(tmp_path: Path) -> None:
    src, dst = encoder(0), encoder(1)
    state = {f"model._orig_mod.encoder.module.{k}": v for k, v in src.state_dict().items()}
    state["model.heads.a.weight"] = torch.zeros(3, 6)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "run.ckpt")
    report = load_source_into(dst, tmp_path / "run.ckpt", prefix="model.encoder.")
    assert same(src, dst) and len(report.loaded) == 4


def test_rename_map() -> None:
    state = {"trunk.0.weight": torch.ones(1), "head.weight": torch.ones(1)}
    mapped, skipped = map_keys(state, rename={"trunk.": "blocks."}, skip=["head."])
    assert list(mapped) == ["blocks.0.weight"] and skipped == ["head.weight"]


def test_skip_takes_the_source_names_or_the_mapped_ones() -> None:
    """``skip`` matches a key as the source names it, after ``prefix``, or after ``rename``."""
    state = {"module.net.fc.weight": torch.ones(1), "module.net.conv.weight": torch.ones(1)}
    for skip in (["net.fc."], ["fc."], ["model.fc."], ["model.fc.weight"]):
        mapped, skipped = map_keys(state, prefix="net.", rename={"": "model."}, skip=skip)
        assert list(mapped) == ["model.conv.weight"] and skipped == ["model.fc.weight"], skip


def test_strict_mismatch_error_lists_everything(tmp_path: Path) -> None:
    src = MLPEncoder(4, [8, 5])  # last layer has another width
    state = dict(src.state_dict())
    del state["blocks.0.0.bias"]
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        load_source_into(encoder(), tmp_path / "bad.pt")
    text = str(info.value)
    assert "missing in source: 1 (blocks.0.0.bias)" in text
    assert "unexpected in source: 1 (extra.weight)" in text
    assert "shape mismatch: 2 (blocks.1.0.weight: source (5, 8) vs target (6, 8)" in text
    assert "bad.pt" in text


def test_skip_list_for_keys_expected_to_differ(tmp_path: Path) -> None:
    src, dst = MLPEncoder(4, [8, 5]), encoder()
    torch.save(src.state_dict(), tmp_path / "src.pt")
    before = dst.blocks[1][0].weight.detach().clone()
    report = load_source_into(dst, tmp_path / "src.pt", skip=["blocks.1."])
    assert torch.equal(dst.blocks[0][0].weight, src.blocks[0][0].weight)
    assert torch.equal(dst.blocks[1][0].weight, before)
    assert report.skipped == ["blocks.1.0.bias", "blocks.1.0.weight"]


def test_non_strict_reports_the_rest(tmp_path: Path) -> None:
    torch.save({"blocks.0.0.weight": torch.zeros(8, 4)}, tmp_path / "part.pt")
    dst = encoder()
    report = load_source_into(dst, tmp_path / "part.pt", strict=False)
    assert report.loaded == ["blocks.0.0.weight"] and len(report.missing) == 3
    assert torch.all(dst.blocks[0][0].weight == 0)


class _Payload:
    """Unpickling this object would run code (it calls os.system via __reduce__)."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, ("touch /tmp/lit_mtl_payload_ran",))


def test_pickled_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = Path("/tmp/lit_mtl_payload_ran")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=False"):
        read_state_dict(path)
    assert not marker.exists()
    with open(tmp_path / "evil_raw.pt", "wb") as f:
        pickle.dump(_Payload(), f)
    with pytest.raises((UnsafeCheckpointError, ValueError)):
        read_state_dict(tmp_path / "evil_raw.pt")
    assert not marker.exists()


def test_missing_truncated_corrupt_and_wrong_format(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        read_state_dict(tmp_path / "nope.pt")
    torch.save(encoder().state_dict(), tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"trunc\.pt"):
        read_state_dict(tmp_path / "trunc.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"text\.pt"):
        read_state_dict(tmp_path / "text.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds no state_dict"):
        read_state_dict(tmp_path / "list.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match=r"bad\.safetensors"):
        read_state_dict(tmp_path / "bad.safetensors")


def test_torchvision_resnet18_state_dict_into_encoder(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pt")
    enc = TorchvisionEncoder("resnet18")
    # the README's call, as written: the classifier the encoder removed is skipped and reported
    report = load_source_into(enc, tmp_path / "resnet18.pt", rename={"": "model."})
    assert torch.equal(enc.model.conv1.weight, resnet.conv1.weight)
    assert report.skipped == ["model.fc.bias", "model.fc.weight"]
    assert not report.unexpected and not report.missing
    module = MultiTaskModule(TorchvisionEncoder("resnet18"), [TaskSpec("y")], plots=False)
    inside = load_source_into(  # nested: the replaced classifier is found under encoder.
        module, tmp_path / "resnet18.pt", rename={"": "encoder.model."}, skip=["tasks."]
    )
    assert inside.skipped[:2] == ["encoder.model.fc.bias", "encoder.model.fc.weight"]
    assert torch.equal(module.encoder.model.conv1.weight, resnet.conv1.weight)
