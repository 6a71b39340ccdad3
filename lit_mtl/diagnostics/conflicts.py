"""What the tasks do to each other: task-gradient conflicts and expert use.

* **Gradient conflict**: the pairwise cosines of the task gradients, cos_ij = G_ij /
  sqrt(G_ii G_jj) from the T x T Gramian G = J J^T (:func:`gradient_cosines`), and the share of
  task pairs with a negative cosine (:func:`conflict_share`). The Gramian methods already hold G
  (``weighting.last_gramian``); for the others :class:`~lit_mtl.MultiTaskModule` computes the
  per-task gradients w.r.t. the shared parameters on request (``gradient_conflicts_every``).
* **Expert use**: for mixture-of-experts encoders, per task, the mean gate weight of each expert
  over the epoch and the mean entropy of its gate (:class:`GateUsage`); an entropy near 0 means the
  gate picks one expert per sample (polarised), log E means uniform mixing.

Both are logged under stable names and drawn at fit end by :class:`~lit_mtl.callbacks.TrainingPlots`
(``gradient_conflict.png``, ``expert_use.png``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lit_mtl.engines.distributed import all_reduce_sum
from lit_mtl.engines.representation import gradients_of


def gradient_cosines(gramian: Tensor) -> Tensor:
    """(T, T) cosines of the task gradients from their Gramian (0 where a gradient is 0).

    >>> g = torch.tensor([[4.0, -2.0], [-2.0, 1.0]])  # g1 = (2, 0), g2 = (-1, 0)
    >>> gradient_cosines(g).tolist()
    [[1.0, -1.0], [-1.0, 1.0]]
    """
    g = gramian.double()
    norms = g.diagonal().clamp(min=0).sqrt()
    outer = norms[:, None] * norms[None, :]
    return torch.where(outer > 0, g / outer.clamp(min=1e-300), torch.zeros_like(g)).clamp(-1, 1)


def task_gramian(
    losses: Sequence[Tensor],
    parameters: Sequence[Tensor],
    mean_over_ranks: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """G = J J^T (T, T) of the task gradients w.r.t. ``parameters`` (J: one row per task), J
    averaged over DDP ranks by ``mean_over_ranks`` first; what the cosines are computed from
    when the weighting holds no Gramian of its own."""
    t = len(losses)
    per_param = gradients_of(losses, [True] * t, parameters)
    jacobian = torch.cat([g.reshape(t, -1) for g in per_param], dim=1).float()
    if mean_over_ranks is not None:
        jacobian = mean_over_ranks(jacobian)
    return jacobian @ jacobian.T


def conflict_share(cosines: Tensor) -> float:
    """Share of task pairs i < j whose gradients conflict (cosine < 0); 0 for one task."""
    t = cosines.shape[0]
    if t < 2:
        return 0.0
    i, j = torch.triu_indices(t, t, offset=1)
    return float((cosines[i, j] < 0).double().mean())


def pair_names(task_names: Sequence[str]) -> list[str]:
    """``"a~b"`` for every pair i < j, in the order of :func:`torch.triu_indices`."""
    names = list(task_names)
    return [f"{names[i]}~{names[j]}" for i in range(len(names)) for j in range(i + 1, len(names))]


class GateUsage(nn.Module):
    """Epoch sums of the gate weights of T tasks: :meth:`update` with each task's (N, E_k) gate
    weights per step, :meth:`compute` for the epoch's mean weight per expert and mean gate
    entropy per task, over all DDP ranks (every rank must call it: one all-reduce)."""

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__()
        self.task_names = list(task_names)
        self.weight_sums: list[Tensor] = []
        self.entropy_sums = torch.zeros(len(self.task_names), dtype=torch.float64)
        self.samples = torch.zeros((), dtype=torch.float64)

    def reset(self) -> None:
        self.weight_sums = []
        self.entropy_sums = torch.zeros(len(self.task_names), dtype=torch.float64)
        self.samples = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def update(self, gate_weights: Sequence[Tensor]) -> None:
        if len(gate_weights) != len(self.task_names):
            raise ValueError(
                f"GateUsage: {len(gate_weights)} gates for {len(self.task_names)} tasks"
            )
        device = gate_weights[0].device
        if not self.weight_sums:
            self.weight_sums = [w.new_zeros(w.shape[1], dtype=torch.float64) for w in gate_weights]
            # new memory, not .to(): a CPU state arrives shared by all ddp_spawn processes
            self.entropy_sums = torch.zeros(len(gate_weights), dtype=torch.float64, device=device)
            self.samples = torch.zeros((), dtype=torch.float64, device=device)
        entropies = []
        for k, w in enumerate(gate_weights):
            w = w.double()
            self.weight_sums[k].add_(w.sum(dim=0))
            entropies.append(-(w * w.clamp(min=1e-12).log()).sum())
        self.entropy_sums.add_(torch.stack(entropies))
        self.samples.add_(gate_weights[0].shape[0])

    def compute(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{task: (mean gate weight per expert (E_k,), mean gate entropy)}``; ``{}`` before
        any update (on every rank: the ranks must agree on whether they saw a batch)."""
        if not self.weight_sums:
            return {}
        sizes = [w.numel() for w in self.weight_sums]
        packed = torch.cat([*self.weight_sums, self.entropy_sums, self.samples.reshape(1)])
        packed = all_reduce_sum(packed)
        samples = packed[-1].clamp(min=1)
        out: dict[str, tuple[Tensor, Tensor]] = {}
        offset = 0
        entropies = packed[sum(sizes) : sum(sizes) + len(sizes)] / samples
        for k, (name, size) in enumerate(zip(self.task_names, sizes, strict=True)):
            out[name] = (packed[offset : offset + size] / samples, entropies[k])
            offset += size
        return out
