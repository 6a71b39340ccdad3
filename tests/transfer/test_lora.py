"""LoRA adapters through peft: what trains, adapters-only checkpoints, merging, weightings."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_mtl import CNNEncoder, Conv1dEncoder, MLPEncoder, UPGrad
from lit_mtl.transfer import TransferModule, UnfreezeSchedule
from lit_mtl.transfer.lora import (
    adapter_state_dict,
    load_adapters,
    lora_module_names,
    merge_lora,
    save_adapters,
)

from conftest import assert_resumes_identically, fast_trainer, small_data

pytest.importorskip("peft")


def _source(tmp_path: Path, encoder: torch.nn.Module) -> str:
    torch.manual_seed(1)
    path = tmp_path / "source.pt"
    torch.save(encoder.state_dict(), path)
    return str(path)


def _module(source: str, encoder: torch.nn.Module, **kwargs) -> TransferModule:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    defaults = dict(
        lora={"target_modules": [r"blocks\.\d+\.0"], "r": 4, "alpha": 8},
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        plots=False,
    )
    defaults.update(kwargs)
    return TransferModule(encoder, small_data().task_specs, source=source, **defaults)


def test_only_the_adapters_and_heads_train(tmp_path: Path) -> None:
    """Even with a schedule that unfreezes everything: the source weights stay as loaded, the
    adapters (B starts at zero) and the heads move."""
    source = _source(tmp_path, MLPEncoder(8, [16, 16]))
    module = _module(source, MLPEncoder(8, [16, 16]), schedule=UnfreezeSchedule("no_freeze"))
    assert module.lora_modules == ["blocks.0.0", "blocks.1.0"]
    base = module.encoder.blocks[0][0].base_layer.weight.detach().clone()
    adapter = module.encoder.blocks[0][0].lora_B["default"].weight
    assert torch.equal(adapter, torch.zeros_like(adapter))  # LoRA starts at the source model
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    fast_trainer(max_epochs=2).fit(module, small_data())
    assert torch.equal(module.encoder.blocks[0][0].base_layer.weight, base)
    assert not torch.equal(adapter, torch.zeros_like(adapter))
    assert trainable == 4 * (8 + 16) + 4 * (16 + 16) + sum(  # r (in + out) per adapter
        p.numel() for p in module.tasks.parameters()
    )


@pytest.mark.parametrize(
    ("make", "patterns"),
    [
        (lambda: Conv1dEncoder(channels=(4, 8)), [r"stages\.\d\.0"]),
        (lambda: CNNEncoder(1, [4, 8]), ["0"]),  # a name's last component
    ],
    ids=["conv1d", "conv2d"],
)
def test_convolutions_take_adapters(make, patterns) -> None:  # type: ignore[no-untyped-def]
    encoder = make()
    names = lora_module_names(encoder, patterns)
    from lit_mtl.transfer.lora import inject_lora

    inject_lora(encoder, patterns, r=2)
    x = torch.randn(2, 1, 40) if isinstance(encoder, Conv1dEncoder) else torch.randn(2, 1, 8, 8)
    out = encoder(x)
    out.sum().backward()
    adapters = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert len(names) == 2 and len(adapters) == 4
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


def test_patterns_that_match_nothing_are_named() -> None:
    with pytest.raises(ValueError, match=r"match no Linear / Conv1d / Conv2d module of MLPEncoder"):
        lora_module_names(MLPEncoder(8, [16]), ["attn.qkv"])


def test_adapters_alone_round_trip_and_merge_to_plain_weights(tmp_path: Path) -> None:
    """The adapters-and-heads file is a fraction of the model, loads back into a module built
    the same way with equal outputs; merging gives plain layers with the same outputs."""
    source = _source(tmp_path, MLPEncoder(8, [64, 64]))
    trained = _module(source, MLPEncoder(8, [64, 64]))
    fast_trainer(max_epochs=1).fit(trained, small_data())
    trained.eval()
    x = torch.randn(5, 8)
    expected = trained(x)
    path = save_adapters(trained, tmp_path / "adapters.safetensors")
    full = sum(v.numel() for v in trained.state_dict().values())
    assert sum(v.numel() for v in adapter_state_dict(trained).values()) < full / 3
    fresh = _module(source, MLPEncoder(8, [64, 64]))
    fresh.eval()
    loaded = load_adapters(fresh, path)
    assert any("lora_A" in k for k in loaded) and any(k.startswith("tasks.") for k in loaded)
    for name, value in fresh(x).items():
        assert torch.allclose(value, expected[name], atol=1e-6), name
    merge_lora(fresh)
    assert not any("lora" in k for k in fresh.state_dict())
    for name, value in fresh(x).items():
        assert torch.allclose(value, expected[name], atol=1e-5), name
    plain = MLPEncoder(8, [64, 64])
    plain.load_state_dict(fresh.encoder.state_dict())  # plain weights: no peft needed to run
    other = _module(source, MLPEncoder(8, [64, 64]), lora={"target_modules": ["blocks.0.0"]})
    with pytest.raises(KeyError, match="do not match"):
        load_adapters(other, path)


def test_a_gradient_method_differentiates_the_adapters(tmp_path: Path) -> None:
    """UPGrad on the shared parameters: with LoRA they are the adapters (the frozen source
    weights are no target)."""
    L.seed_everything(0)
    source = _source(tmp_path, MLPEncoder(8, [16, 16]))
    module = _module(source, MLPEncoder(8, [16, 16]), weighting=UPGrad(target="shared"))
    targets = module.weighting.engine.params
    assert targets and all(p.requires_grad for p in targets)
    assert {id(p) for p in targets} == {
        id(p) for p in module.encoder.parameters() if p.requires_grad
    }
    fast_trainer(max_epochs=1).fit(module, small_data())
    assert torch.isfinite(module.weighting.last_weights).all()
    with pytest.raises(ValueError, match="lora and L2-SP"):
        _module(source, MLPEncoder(8, [16, 16]), l2sp_alpha=0.1)


def test_a_lora_fit_resumes_exactly(tmp_path: Path) -> None:
    """4 epochs in one run equal 2, a checkpoint and 2 more (adapters, heads, Adam state)."""
    source = _source(tmp_path, MLPEncoder(8, [16, 16]))
    assert_resumes_identically(
        tmp_path, small_data, lambda dm: _module(source, MLPEncoder(8, [16, 16]))
    )
