"""The gradient engines on representations of any shape, per-task representations and chunks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_mtl import step_context, task_views
from lit_mtl.engines import ParameterEngine, RepresentationEngine, StepContext, loss_scale_of


def _dense_problem(num_tasks: int = 3, seed: int = 0):  # type: ignore[no-untyped-def]
    """A conv encoder whose z is a feature map (N, 8, 4, 4), one 1x1-conv head per task."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU())
    heads = nn.ModuleList([nn.Conv2d(8, 1, 1) for _ in range(num_tasks)])
    x = torch.randn(5, 2, 4, 4)
    ys = [torch.randn(5, 1, 4, 4) for _ in range(num_tasks)]
    return encoder, heads, x, ys


def _manual_rows(losses: list[torch.Tensor], wrt: list[torch.Tensor]) -> torch.Tensor:
    """Row i: d L_i / d wrt[i] (or wrt[0] when one tensor is shared), flattened."""
    rows = []
    for i, loss in enumerate(losses):
        target = wrt[i] if len(wrt) > 1 else wrt[0]
        rows.append(torch.autograd.grad(loss, target, retain_graph=True)[0].reshape(-1))
    return torch.stack(rows)


def _assert_applies_sum_of_weighted_losses(
    model: nn.Module,
    jacobian,
    c: torch.Tensor,
    losses: list[torch.Tensor],  # type: ignore[no-untyped-def]
) -> None:
    """The engine's applied direction has the gradients of sum_i c_i L_i, for every parameter."""
    out = jacobian.apply(c, (c * torch.stack(losses)).sum())
    model.zero_grad()
    (c * torch.stack(losses)).sum().backward(retain_graph=True)
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    out.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, reference[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("with_heads", [False, True])
def test_feature_map_representation_gramian_and_applied_direction(with_heads: bool) -> None:
    encoder, heads, x, ys = _dense_problem()
    model = nn.ModuleDict({"encoder": encoder, "heads": heads})
    z = encoder(x)  # (N, 8, 4, 4)
    views = task_views(z, 3)
    losses = [((h(v) - y) ** 2).mean() for h, v, y in zip(heads, views, ys, strict=True)]
    ctx = step_context(
        losses, representation=z, task_representations=views, heads=heads if with_heads else None
    )
    jacobian = RepresentationEngine().jacobian(ctx, [True] * 3)
    rows = _manual_rows(losses, [z])
    exact = rows @ rows.T
    torch.testing.assert_close(jacobian.gramian(), exact, rtol=1e-5, atol=1e-7)
    _assert_applies_sum_of_weighted_losses(model, jacobian, torch.tensor([0.2, 1.5, 0.7]), losses)


def _per_task_problem():  # type: ignore[no-untyped-def]
    """Mixture-of-experts style: shared experts, one gated mixture z_i per task."""
    torch.manual_seed(1)
    experts = nn.ModuleList([nn.Linear(4, 6) for _ in range(3)])
    gates = nn.ModuleList([nn.Linear(4, 3) for _ in range(2)])
    towers = nn.ModuleList([nn.Linear(6, 1) for _ in range(2)])
    x = torch.randn(7, 4)
    ys = [torch.randn(7), torch.randn(7)]
    outs = torch.stack([e(x) for e in experts], dim=1)  # (N, E, 6)
    zs = [(g(x).softmax(-1).unsqueeze(-1) * outs).sum(1) for g in gates]  # (N, 6) each
    losses = [((t(z).squeeze(1) - y) ** 2).mean() for t, z, y in zip(towers, zs, ys, strict=True)]
    model = nn.ModuleDict({"experts": experts, "gates": gates, "towers": towers})
    return model, zs, towers, losses


def test_per_task_representations_gramian_and_applied_direction() -> None:
    model, zs, towers, losses = _per_task_problem()
    ctx = step_context(losses, task_representations=zs, heads=towers)
    assert ctx.per_task_representations
    jacobian = RepresentationEngine().jacobian(ctx, [True, True])
    rows = _manual_rows(losses, zs)  # row i: dL_i/dz_i
    exact = rows @ rows.T
    torch.testing.assert_close(jacobian.gramian(), exact, rtol=1e-5, atol=1e-7)
    _assert_applies_sum_of_weighted_losses(model, jacobian, torch.tensor([0.3, 2.0]), losses)


def test_parameter_engine_with_per_task_representations() -> None:
    model, zs, towers, losses = _per_task_problem()
    shared = list(model["experts"].parameters())
    ctx = step_context(losses, task_representations=zs, heads=towers, shared_parameters=shared)
    jacobian = ParameterEngine("shared").jacobian(ctx, [True, True])
    rows = torch.stack(
        [
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)])
            for loss in losses
        ]
    )
    exact = rows @ rows.T
    torch.testing.assert_close(jacobian.gramian(), exact, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [1, 2, 4])
@pytest.mark.parametrize("views", [True, False])
def test_chunked_gramian_equals_the_full_one(chunk_size: int, views: bool) -> None:
    encoder, heads, x, ys = _dense_problem(num_tasks=5)
    z = encoder(x)
    inputs = task_views(z, 5) if views else [z] * 5
    losses = [((h(v) - y) ** 2).mean() for h, v, y in zip(heads, inputs, ys, strict=True)]
    flags = [True, True, False, True, True]  # an absent task: its row and column are 0
    ctx = step_context(losses, representation=z, task_representations=inputs if views else None)
    full = RepresentationEngine().jacobian(ctx, flags).gramian()
    chunked = RepresentationEngine(chunk_size=chunk_size).jacobian(ctx, flags)
    assert chunked.injection is None  # applied by the ordinary backward
    torch.testing.assert_close(chunked.gramian(), full, rtol=1e-5, atol=1e-7)
    assert float(full[2].abs().sum()) == 0.0


def test_step_context_validates_its_inputs() -> None:
    one = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(ValueError, match="present has 3 entries for 2 task losses"):
        step_context([one, one], present=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="task_representations has 1 entries"):
        step_context([one, one], task_representations=[torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="must all have one shape"):
        step_context([one, one], task_representations=[torch.zeros(2, 3), torch.zeros(2, 4)])
    with pytest.raises(ValueError, match=r"losses\[1\] must be a scalar"):
        step_context([one, torch.ones(2)])
    with pytest.raises(ValueError, match="3 heads for 2 task losses"):
        step_context([one, one], heads=[nn.Linear(1, 1)] * 3)
    ctx = step_context([one, one * 2])
    assert isinstance(ctx, StepContext) and ctx.stacked.tolist() == [1.0, 2.0]
    with pytest.raises(AttributeError):
        ctx.present = torch.zeros(2)  # type: ignore[misc]  # immutable


def test_loss_scale_of_reads_an_enabled_scaler_only() -> None:
    assert loss_scale_of(None) is None
    assert loss_scale_of(torch.amp.GradScaler("cpu", enabled=False)) is None
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    assert float(loss_scale_of(scaler)) == 2.0**10  # type: ignore[arg-type]


def test_one_tensor_given_as_every_tasks_representation() -> None:
    """task_representations=[z, z, z] (no views, no shared z): T backwards w.r.t. z."""
    encoder, heads, x, ys = _dense_problem()
    z = encoder(x)
    losses = [((h(z) - y) ** 2).mean() for h, y in zip(heads, ys, strict=True)]
    ctx = step_context(losses, task_representations=[z, z, z])
    rows = _manual_rows(losses, [z])
    for engine in (RepresentationEngine(), RepresentationEngine(chunk_size=2)):
        gramian = engine.jacobian(ctx, [True] * 3).gramian()
        torch.testing.assert_close(gramian, rows @ rows.T, rtol=1e-5, atol=1e-7)
