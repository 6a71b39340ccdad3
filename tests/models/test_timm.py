"""timm backbones: pooled and map outputs, timm's layer groups and layer decay, local weights."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from lit_mtl import MultiTaskModule, TaskSpec, TimmEncoder
from lit_mtl.transfer import TransferModule, load_source_into

from conftest import fast_trainer

timm = pytest.importorskip("timm")

#: small versions of the two families the layer-decay check covers
VIT = dict(name="vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3)
CONVNEXT = dict(name="convnext_atto")


def test_pooled_and_map_outputs() -> None:
    x = torch.randn(2, 3, 32, 32)
    pooled = TimmEncoder(**VIT)
    assert pooled(x).shape == (2, pooled.out_features) == (2, 192)
    vit_map = TimmEncoder(**VIT, features="map")
    assert vit_map(x).shape == (2, 192, 4, 4)  # tokens on the 4 x 4 patch grid
    convnext_map = TimmEncoder(**CONVNEXT, features="map")
    assert convnext_map(torch.randn(1, 3, 64, 64)).shape == (1, 320, 2, 2)
    with pytest.raises(ValueError, match="nothing is downloaded here"):
        TimmEncoder("resnet18", pretrained=True)
    with pytest.raises(ValueError, match="unknown timm model 'resnet_nope'"):
        TimmEncoder("resnet_nope")


def test_a_dense_task_trains_on_a_vit_feature_map() -> None:
    module = MultiTaskModule(
        TimmEncoder(**VIT, features="map"),
        [TaskSpec("seg", "segmentation", 3), TaskSpec("label", "binary")],
        plots=False,
    )
    x = torch.randn(2, 3, 32, 32)
    targets = {"seg": torch.randint(0, 3, (2, 32, 32)), "label": torch.tensor([0.0, 1.0])}
    step = module._task_losses(x, targets, {}, train=True)
    torch.stack(step.losses).sum().backward()
    assert module.tasks["seg"](module.encoder(x), (32, 32)).shape == (2, 3, 32, 32)
    assert module.encoder.model.patch_embed.proj.weight.grad is not None


@pytest.mark.parametrize("config", [VIT, CONVNEXT], ids=["vit", "convnext"])
def test_layer_decay_equals_timms_helper(config: dict) -> None:
    """Every encoder parameter's lr factor under ``lr_decay=0.75`` equals the ``lr_scale`` timm's
    ``param_groups_layer_decay`` gives it (the heads: 1, as timm's head)."""
    from timm.optim import param_groups_layer_decay

    module = TransferModule(TimmEncoder(**config), [TaskSpec("y")], lr_decay=0.75, plots=False)
    callback = module.unfreeze_callback
    ours = {}
    for group in module.parameter_groups():
        for p in group["params"]:
            ours[id(p)] = callback.decay.get(group["name"], 1.0)
    theirs = {
        id(p): g["lr_scale"]
        for g in param_groups_layer_decay(module.encoder.model, layer_decay=0.75)
        for p in g["params"]
    }
    assert set(theirs) <= set(ours)
    for name, p in module.encoder.model.named_parameters():
        assert ours[id(p)] == pytest.approx(theirs[id(p)], rel=1e-12), name
    assert len(set(theirs.values())) > 3  # the decay does spread over the groups
    if config is VIT:
        assert list(module.groups)[:2] == ["stem", "blocks.0"]
        assert list(module.groups)[-1] == "blocks.2+norm"


def test_layer_decay_reaches_the_optimizer_step() -> None:
    """One SGD step: a stem parameter moves by lr x 0.75^k x its gradient (not by lr x
    gradient: a decay that silently has no effect fails here)."""
    torch.manual_seed(0)
    module = TransferModule(
        TimmEncoder(**VIT),
        [TaskSpec("y")],
        lr_decay=0.75,
        plots=False,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    )
    stem = module.encoder.model.patch_embed.proj.weight
    before = stem.detach().clone()
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32), torch.randn(4))
    loader = torch.utils.data.DataLoader(
        [(x, {"y": y}) for x, y in data], batch_size=4, collate_fn=None
    )
    fast_trainer(max_steps=1).fit(module, loader)
    k = len(module.groups) - 1  # the stem is the lowest of the groups
    expected = before - 0.1 * 0.75**k * stem.grad
    assert torch.allclose(stem.detach(), expected, atol=1e-7)


def test_weights_in_timms_formats_load_with_the_classifier_skipped(tmp_path: Path) -> None:
    """A timm model saved with its classifier (as timm saves it: a state_dict in .safetensors,
    or a Hugging Face style folder) loads into the encoder with rename={"": "model."}."""
    from safetensors.torch import save_file

    source = timm.create_model(
        VIT["name"],
        pretrained=False,
        num_classes=5,
        **{k: v for k, v in VIT.items() if k != "name"},
    )
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "vit.safetensors"))
    encoder = TimmEncoder(**VIT)
    report = load_source_into(encoder, tmp_path / "vit.safetensors", rename={"": "model."})
    assert report.skipped == ["model.head.bias", "model.head.weight"]
    assert torch.equal(encoder.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": VIT["name"], "num_classes": 5}))
    module = TransferModule(
        TimmEncoder(**VIT),
        [TaskSpec("y")],
        source=str(folder),
        source_rename={"": "model."},
        plots=False,
    )
    assert module.load_report is not None and not module.load_report.missing
    assert module.source_provenance["sha256"]  # the weight file's hash
    (folder / "config.json").write_text(json.dumps({"architecture": "convnext_atto"}))
    with pytest.raises(ValueError, match=r"holds a 'convnext_atto' \(config.json\)"):
        load_source_into(TimmEncoder(**VIT), folder, rename={"": "model."})
    (folder / "config.json").unlink()
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"holds none of \['model.safetensors'"):
        load_source_into(TimmEncoder(**VIT), folder, rename={"": "model."})
