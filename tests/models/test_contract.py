"""Every encoder and architecture keeps the encoder contract (lit_mtl.models.base), and a plain
module gets its defaults."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import lit_mtl.models as models
from lit_mtl.models import Encoder, encoder_hooks
from lit_mtl.tasks import TaskSpec

TASKS = ["a", "b"]
VECTOR = torch.randn(3, 6)
IMAGE = torch.randn(2, 3, 32, 32)

#: a tiny instance of every encoder in lit_mtl.models, and its input
ENCODERS: dict[str, tuple[Callable[[], Encoder], Tensor]] = {
    "MLPEncoder": (lambda: models.MLPEncoder(6, [8, 4]), VECTOR),
    "CNNEncoder": (lambda: models.CNNEncoder(3, [4, 4]), IMAGE),
    "Conv1dEncoder": (lambda: models.Conv1dEncoder(1, [4, 4]), torch.randn(2, 1, 20)),
    "DenseCNNEncoder": (lambda: models.DenseCNNEncoder(3, [4, 4, 4]), IMAGE),
    "TorchvisionEncoder": (lambda: models.TorchvisionEncoder("resnet18"), IMAGE),
    "DilatedResNetEncoder": (lambda: models.DilatedResNetEncoder("resnet18"), IMAGE),
    "SegNetEncoder": (lambda: models.SegNetEncoder(3, [4, 4, 4, 4, 4]), IMAGE),
    "SegNetMTAN": (lambda: models.SegNetMTAN(3, [4, 4, 4, 4, 4]), IMAGE),
    "TimmEncoder": (lambda: models.TimmEncoder("resnet18"), IMAGE),
    "MMoE": (lambda: models.MMoE(6, num_experts=3, expert_widths=[4]), VECTOR),
    "OMoE": (lambda: models.OMoE(6, num_experts=3, expert_widths=[4]), VECTOR),
    "PLE": (
        lambda: models.PLE(
            6, levels=2, num_shared_experts=1, num_task_experts=1, expert_widths=[4]
        ),
        VECTOR,
    ),
    "CGC": (
        lambda: models.CGC(6, num_shared_experts=2, num_task_experts=1, expert_widths=[4]),
        VECTOR,
    ),
    "CrossStitch": (lambda: models.CrossStitch(6, widths=[4, 4]), VECTOR),
}


def test_every_encoder_of_the_package_is_in_the_contract_test() -> None:
    exported = {
        name
        for name in models.__all__
        if isinstance(getattr(models, name), type)
        and issubclass(getattr(models, name), Encoder)
        and getattr(models, name) is not Encoder
    }
    assert exported == set(ENCODERS)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_encoder_keeps_the_contract(name: str) -> None:
    if name == "TimmEncoder" and importlib.util.find_spec("timm") is None:
        pytest.skip("timm is an optional extra")
    torch.manual_seed(0)
    build, x = ENCODERS[name]
    encoder = build()
    encoder.bind_tasks(TASKS)
    assert encoder_hooks(encoder) is encoder
    encoder.eval()
    with torch.no_grad():
        out = encoder(x)
    zs = [out] * len(TASKS) if isinstance(out, Tensor) else list(out)
    assert len(zs) == len(TASKS)
    for z in zs:
        assert z.shape[0] == x.shape[0] and z.shape[1] == encoder.out_features
    params = {id(p) for p in encoder.parameters()}
    grouped = [
        id(p) for mods in encoder.layer_groups().values() for m in mods for p in m.parameters()
    ]
    assert set(grouped) == params  # every parameter in a group
    shared = encoder.shared_parameters()
    assert shared and {id(p) for p in shared} <= params
    if not encoder.declares_shared_parameters:
        assert {id(p) for p in shared} == {id(p) for p in encoder.parameters() if p.requires_grad}
    try:
        layer = encoder.last_shared_layer()
    except ValueError as error:  # the architectures say why they have none
        assert "target=" in str(error)
    else:
        assert isinstance(layer.weight, nn.Parameter) and id(layer.weight) in params
    for spec in (TaskSpec("a", "multiclass", 3), TaskSpec("b")):
        head = encoder.make_head(spec)
        if head is not None:
            assert head(zs[0]).shape[:2] == (x.shape[0], spec.num_outputs)
    gates = encoder.gate_weights()
    assert len(gates) == (len(TASKS) if encoder.gated else 0)
    for task, weights in enumerate(gates):
        assert len(encoder.expert_labels(task)) == weights.shape[1]
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(x.shape[0]))
    if not encoder.gated:
        assert encoder.expert_labels(0) == []  # no experts to name
    assert all(isinstance(key, str) for key in encoder.replaced_source_keys())


def test_a_plain_module_gets_the_defaults_and_a_duck_typed_hook_is_an_error() -> None:
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    hooks = encoder_hooks(plain)
    assert hooks.last_shared_layer() is plain[2]
    assert len(hooks.shared_parameters()) == 4 and hooks.make_head(TaskSpec("t")) is None
    assert hooks.gate_weights() == [] and not hooks.declares_shared_parameters
    assert hooks.expert_labels(0) == [] and hooks.replaced_source_keys() == []
    assert hooks.bind_tasks(["t"]) is None and hooks.architecture is None
    with pytest.raises(ValueError, match="has no layer_groups"):
        hooks.layer_groups()

    class DuckTyped(nn.Linear):
        def shared_parameters(self) -> list[nn.Parameter]:
            return [self.weight]

    with pytest.raises(TypeError, match=r"defines \['shared_parameters'\] but is not"):
        encoder_hooks(DuckTyped(4, 2))


def test_the_old_import_paths_still_work_with_a_deprecation_warning() -> None:
    import lit_mtl.architectures
    import lit_mtl.encoders

    with pytest.warns(DeprecationWarning, match=r"lit_mtl.architectures.Tower moved"):
        assert lit_mtl.architectures.Tower is models.Tower
    with pytest.warns(DeprecationWarning, match=r"lit_mtl.encoders.MLPEncoder moved"):
        assert lit_mtl.encoders.MLPEncoder is models.MLPEncoder
