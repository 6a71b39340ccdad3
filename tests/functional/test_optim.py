"""The functional Adam step and the host views of a module's buffers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lit_mtl.functional.optim import adam_step, host_arrays


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_step_matches_torch_adam(weight_decay: float) -> None:
    torch.manual_seed(0)
    start = torch.randn(5, dtype=torch.float64)
    grads = [torch.randn(5, dtype=torch.float64) for _ in range(6)]
    reference = nn.Parameter(start.clone())
    opt = torch.optim.Adam([reference], lr=0.05, weight_decay=weight_decay)
    param, exp_avg, exp_avg_sq = start.tolist(), [0.0] * 5, [0.0] * 5
    for step, g in enumerate(grads, start=1):
        reference.grad = g.clone()
        opt.step()
        param, exp_avg, exp_avg_sq = adam_step(
            param, g.tolist(), exp_avg, exp_avg_sq, step, lr=0.05, weight_decay=weight_decay
        )
    torch.testing.assert_close(torch.tensor(param, dtype=torch.float64), reference.detach())
    state = opt.state[reference]
    torch.testing.assert_close(torch.tensor(exp_avg, dtype=torch.float64), state["exp_avg"])
    torch.testing.assert_close(torch.tensor(exp_avg_sq, dtype=torch.float64), state["exp_avg_sq"])


class _WithBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("values", torch.zeros(3))
        self.register_buffer("count", torch.zeros(()))


def test_host_arrays_alias_cpu_buffers_and_follow_replaced_buffers() -> None:
    module = _WithBuffers()
    with host_arrays(module, ("values", "count")) as state:
        state["values"][1] = 2.0
        state["count"] += 1
    assert module.values.tolist() == [0.0, 2.0, 0.0] and float(module.count) == 1.0
    module.double()  # new buffer tensors: the cached views must not be reused
    with host_arrays(module, ("values",)) as state:
        state["values"][0] = 5.0
    assert module.values.dtype == torch.float64 and module.values.tolist() == [5.0, 2.0, 0.0]
    module.load_state_dict({"values": torch.ones(3, dtype=torch.float64), "count": torch.zeros(())})
    with host_arrays(module, ("values",)) as state:
        assert state["values"].tolist() == [1.0, 1.0, 1.0]


def test_host_arrays_write_back_half_precision_buffers() -> None:
    module = _WithBuffers().to(torch.bfloat16)
    with host_arrays(module, ("values", "count")) as state:
        assert state["values"].dtype == np.float32
        state["values"][:] = [1.0, 2.0, 3.0]
        state["count"] += 2
    assert module.values.dtype == torch.bfloat16
    assert module.values.tolist() == [1.0, 2.0, 3.0] and float(module.count) == 2.0


def test_host_arrays_names_a_missing_buffer() -> None:
    with pytest.raises(KeyError, match="nope"):
        with host_arrays(_WithBuffers(), ("nope",)):
            pass
