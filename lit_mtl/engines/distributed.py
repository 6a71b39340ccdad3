"""Cross-rank reductions used by the weightings so that every DDP rank computes identical weights.

All are no-ops when ``torch.distributed`` is not initialised or the world has one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over ranks (returns a new tensor; the input is untouched)."""
    if world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_columns(tensor: Tensor) -> Tensor:
    """Every rank's (R, n_rank) tensor concatenated along its columns in rank order (n_rank may
    differ between ranks; R may not): two all-gathers, the sizes then the zero-padded data."""
    n = world_size()
    if n == 1:
        return tensor
    size = torch.tensor([tensor.shape[1]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(n)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = tensor.new_zeros((tensor.shape[0], max(counts)))
    padded[:, : tensor.shape[1]] = tensor
    gathered = [torch.zeros_like(padded) for _ in range(n)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[:, :c] for g, c in zip(gathered, counts, strict=True)], dim=1)


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean over ranks."""
    n = world_size()
    return tensor if n == 1 else all_reduce_sum(tensor) / n


def all_reduce_max(tensor: Tensor) -> Tensor:
    """Elementwise max over ranks."""
    if world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def masked_mean_over_ranks(values: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
    """Per-task mean over the ranks where the task is present, and the global presence mask.

    ``values`` and ``present`` are (T,); one all-reduce of a (2T,) vector.
    """
    if world_size() == 1:
        return values.detach().float() * present, present
    packed = torch.cat([values.detach().float() * present, present.float()])
    packed = all_reduce_sum(packed)
    t = values.shape[0]
    counts = packed[t:]
    return packed[:t] / counts.clamp(min=1), counts > 0
