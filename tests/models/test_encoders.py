"""Encoders: output width, ordered layer groups, torchvision backbones without downloads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_mtl import CNNEncoder, Conv1dEncoder, MLPEncoder, TorchvisionEncoder


@pytest.mark.parametrize(
    ("encoder", "x", "groups"),
    [
        (MLPEncoder(10, [32, 16]), torch.randn(4, 10), ["block0", "block1"]),
        (MLPEncoder(12, [8], batch_norm=True, dropout=0.1), torch.randn(4, 3, 4), ["block0"]),
        (CNNEncoder(1, [8, 16]), torch.randn(4, 1, 28, 28), ["stage0", "stage1"]),
        (Conv1dEncoder(1, [8, 16, 16]), torch.randn(4, 40), ["stage0", "stage1", "stage2"]),
    ],
)
def test_shapes_and_layer_groups(encoder: nn.Module, x: torch.Tensor, groups: list[str]) -> None:
    z = encoder(x)
    assert z.shape == (4, encoder.out_features)
    assert list(encoder.layer_groups()) == groups
    grouped = {
        id(p) for mods in encoder.layer_groups().values() for m in mods for p in m.parameters()
    }
    assert grouped == {id(p) for p in encoder.parameters()}  # every parameter in one group


def test_last_shared_layer_is_last_weighted_layer() -> None:
    enc = MLPEncoder(10, [32, 16], batch_norm=True)
    last = enc.last_shared_layer()
    assert isinstance(last, nn.Linear) and last.out_features == 16


def test_resnet18_without_classifier_and_weights() -> None:
    enc = TorchvisionEncoder("resnet18")
    assert enc.out_features == 512
    assert list(enc.layer_groups()) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    z = enc(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, 512)
    gray = TorchvisionEncoder("resnet18", in_channels=1)
    assert gray(torch.randn(2, 1, 32, 32)).shape == (2, 512)


def test_other_torchvision_family() -> None:
    enc = TorchvisionEncoder("mobilenet_v3_small")
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, enc.out_features)
    assert len(enc.layer_groups()) >= 1


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet1000'"):
        TorchvisionEncoder("resnet1000")
    with pytest.raises(ValueError, match="unknown activation"):
        MLPEncoder(3, [4], activation="swishy")
    with pytest.raises(ValueError, match="expects 10 input features"):
        MLPEncoder(10, [4])(torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"expects images \(N, 3, H, W\)"):
        CNNEncoder(3)(torch.randn(2, 1, 8, 8))


def test_mlp_initialisation_as_tensorflow_truncated_normal() -> None:
    torch.manual_seed(0)
    encoder = MLPEncoder(300, [400, 50], weight_init_std=0.02, bias_init=1.0)
    for block in encoder.blocks:
        linear = block[0]
        assert linear.weight.abs().max() <= 0.04  # truncated at two standard deviations
        # the std of N(0, s) truncated at +-2 s is 0.880 s
        assert linear.weight.std().item() == pytest.approx(0.880 * 0.02, rel=0.05)
        assert torch.equal(linear.bias, torch.ones_like(linear.bias))
    with pytest.raises(ValueError, match="weight_init_std must be > 0"):
        MLPEncoder(3, [4], weight_init_std=0.0)
