"""The functional Adam step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_mtl.functional.optim import adam_step


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("tensor_step", [False, True])
def test_adam_step_matches_torch_adam(weight_decay: float, tensor_step: bool) -> None:
    torch.manual_seed(0)
    start = torch.randn(5, dtype=torch.float64)
    grads = [torch.randn(5, dtype=torch.float64) for _ in range(6)]
    reference = nn.Parameter(start.clone())
    opt = torch.optim.Adam([reference], lr=0.05, weight_decay=weight_decay)
    param, exp_avg, exp_avg_sq = start.clone(), torch.zeros(5).double(), torch.zeros(5).double()
    for step, g in enumerate(grads, start=1):
        reference.grad = g.clone()
        opt.step()
        number = torch.tensor(float(step), dtype=torch.float64) if tensor_step else step
        param, exp_avg, exp_avg_sq = adam_step(
            param, g, exp_avg, exp_avg_sq, number, lr=0.05, weight_decay=weight_decay
        )
    torch.testing.assert_close(param, reference.detach())
    state = opt.state[reference]
    torch.testing.assert_close(exp_avg, state["exp_avg"])
    torch.testing.assert_close(exp_avg_sq, state["exp_avg_sq"])
