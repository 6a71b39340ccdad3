"""Array helpers of the small update rules: the same code on numpy arrays (the CPU: views of a
weighting's state, no copy, no dispatch cost) and on tensors (an accelerator: no host copy)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

Array = Any


def array_namespace(x: Array) -> ModuleType:
    """``numpy`` for a numpy array, ``torch`` for a tensor: the module whose functions the rules
    call (``where``, ``sign``, ``exp``, ``log``, ``sqrt`` exist in both)."""
    return np if isinstance(x, np.ndarray | np.generic) else torch


def as_array_like(value: Tensor, like: Any, wide: bool = False) -> Any:
    """``value`` (a tensor) as the same kind of array as ``like`` (a numpy array, or a tensor whose
    device it moves to); a CPU tensor becomes a numpy view without a copy. ``wide``: as float64
    (the small update rules compute in float64, as Python floats did).

    Examples:
        >>> as_array_like(torch.tensor([1.0, 2.0]), np.zeros(2), wide=True).dtype
        dtype('float64')
    """
    if isinstance(like, np.ndarray):
        array = value.detach().cpu().numpy()
        return array.astype(np.float64) if wide else array
    moved = value.detach().to(like.device)
    return moved.double() if wide else moved


def assign_where(state: dict[str, Any], condition: Any, **values: Any) -> None:
    """``state[name][...] = where(condition, value, state[name])`` for each name: an update that
    applies only when ``condition`` holds, without branching on it (no host read on a device).

    Examples:
        >>> state = {"w": np.ones(2)}
        >>> assign_where(state, np.array([True, False]), w=np.array([5.0, 5.0]))
        >>> state["w"].tolist()
        [5.0, 1.0]
    """
    for name, value in values.items():
        state[name][...] = array_namespace(value).where(condition, value, state[name])


def widened(array: Any) -> Any:
    """A float64 copy of a state array (numpy or torch) to compute on."""
    return array.astype(np.float64) if isinstance(array, np.ndarray) else array.double()
