"""Training where each task brings its own dataset: how the per-task loaders are combined.

A DataModule whose split is a mapping ``{task: dataset}`` (instead of one dataset whose samples
carry every task's target) trains multi-input: every batch is a mapping ``{task: (x, targets)}``
and :class:`~lit_mtl.MultiTaskModule` runs the encoder on each task's own inputs. The per-task
training loaders are combined by ``combine``:

* every task every step, with Lightning's :class:`~lightning.pytorch.utilities.CombinedLoader`
  modes: ``"max_size_cycle"`` (the epoch lasts as long as the longest loader; shorter ones start
  over), ``"min_size"`` (it stops with the shortest), ``"max_size"`` (as long as the longest;
  exhausted tasks are absent from the remaining steps);
* one task per step, drawn with probability ``p_k ∝ n_k^(1/temperature)`` (``n_k``: task k's
  training samples), for ``sum_k len(loader_k)`` steps per epoch (:class:`TaskSamplingLoader`):
  ``"proportional"`` (temperature 1), ``"temperature"`` (the given temperature; Arivazhagan et
  al. 2019 use 5 for multilingual translation), ``"uniform"`` (temperature infinity).

Evaluation runs every task on its own split, one loader after the other (Lightning's
``"sequential"`` mode), each batch wrapped as ``{task: (x, targets)}``.

Everything is a function of (seed, epoch): the per-task orders (:class:`EpochSeededSampler`), the
task draws, and what a run resumed mid-epoch skips (:func:`resume_skips`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data._utils.collate import default_collate

CombineMode = Literal[
    "max_size_cycle", "min_size", "max_size", "proportional", "temperature", "uniform"
]
COMBINE_MODES: tuple[str, ...] = get_args(CombineMode)
#: the modes that draw one task per step
SAMPLING_MODES = ("proportional", "temperature", "uniform")


def check_combine(combine: str, temperature: float, owner: str) -> None:
    """A clear error for an unknown ``combine`` or a temperature that is not > 0."""
    if combine not in COMBINE_MODES:
        raise ValueError(f"{owner}: combine must be one of {COMBINE_MODES}, got {combine!r}")
    if not float(temperature) > 0:
        raise ValueError(f"{owner}: temperature must be > 0, got {temperature!r}")


def task_sampling_probabilities(
    sizes: Sequence[int], mode: str, temperature: float = 1.0
) -> Tensor:
    """``p_k ∝ n_k^(1/t)`` with t = 1 (``proportional``), ``temperature``, or infinity
    (``uniform``: p_k = 1/T).

    >>> task_sampling_probabilities([300, 100], "proportional").tolist()
    [0.75, 0.25]
    >>> task_sampling_probabilities([300, 100], "uniform").tolist()
    [0.5, 0.5]
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"mode must be one of {SAMPLING_MODES}, got {mode!r}")
    n = torch.tensor([float(s) for s in sizes], dtype=torch.float64)
    if (n <= 0).any():
        raise ValueError(f"every task needs at least one sample, got sizes {list(sizes)}")
    t = {"proportional": 1.0, "uniform": math.inf}.get(mode, float(temperature))
    weights = torch.ones_like(n) if math.isinf(t) else n ** (1.0 / t)
    return weights / weights.sum()


def resume_skips(mode: str, lengths: Sequence[int], consumed: int) -> list[int]:
    """Batches each task's loader skips so that a run resumed after ``consumed`` training steps
    of an epoch continues as the uninterrupted one (Lightning's modes; every loader restarts
    with the same order within an epoch, so a cycled loader skips ``consumed mod length``).

    >>> resume_skips("max_size_cycle", [10, 4], 9), resume_skips("max_size", [10, 4], 9)
    ([9, 1], [9, 4])
    """
    if mode == "max_size_cycle":
        return [consumed % n if n else 0 for n in lengths]
    if mode == "min_size":
        return [consumed for _ in lengths]
    if mode == "max_size":
        return [min(consumed, n) for n in lengths]
    raise ValueError(f"resume_skips: no rule for mode {mode!r}")


class TaskBatchCollate:
    """Collate a task's samples and label the batch with the task: ``{task: batch}`` (the
    multi-input batch form, for one task). Picklable, so it works with worker processes."""

    def __init__(self, task: str) -> None:
        self.task = task

    def __call__(self, samples: list[Any]) -> dict[str, Any]:
        return {self.task: default_collate(samples)}


class TaskSamplingLoader:
    """One task per step: step s of an epoch trains task ``k_s ~ p`` on the next batch of task
    k_s's loader (which starts over when exhausted). The draws are a function of (seed, epoch),
    identical on every DDP rank (all ranks train the same task at a step); the loaders' samplers
    shard the data across ranks.

    Args:
        loaders: one DataLoader per task, whose sampler has ``set_epoch`` (and ``skip``).
        probabilities: (T,) task probabilities (:func:`task_sampling_probabilities`).
        seed: seed of the draws.

    Lightning calls ``sampler.set_epoch`` on a training loader at each epoch start: here
    ``sampler`` is the loader itself, which forwards the epoch to the task loaders' samplers.
    """

    def __init__(self, loaders: Mapping[str, DataLoader], probabilities: Tensor, seed: int) -> None:
        if len(loaders) != probabilities.numel():
            raise ValueError("TaskSamplingLoader: one probability per task loader")
        self.loaders = dict(loaders)
        self.names = list(self.loaders)
        self.probabilities = probabilities.double()
        self.seed = int(seed)
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, steps already trained in it)
        self.sampler = self  # what Lightning calls set_epoch on

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for loader in self.loaders.values():
            sampler: Any = getattr(loader, "sampler", None)  # any sampler with set_epoch
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders.values())

    def draws(self) -> list[int]:
        """The epoch's task index for every step."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 + self.epoch)
        return torch.multinomial(
            self.probabilities, len(self), replacement=True, generator=generator
        ).tolist()

    def skip(self, epoch: int, steps: int) -> None:
        """The next iteration, if it is of ``epoch``, starts after its first ``steps`` steps."""
        self._skip = (int(epoch), int(steps))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        draws = self.draws()
        skip, self._skip = self._skip, None
        start = skip[1] if skip is not None and skip[0] == self.epoch else 0
        lengths = [len(loader) for loader in self.loaders.values()]
        for k, loader in enumerate(self.loaders.values()):  # resume: each loader's position
            done = sum(1 for d in draws[:start] if d == k) % max(lengths[k], 1)
            sampler: Any = getattr(loader, "sampler", None)  # EpochSeededSampler skips
            if done and callable(getattr(sampler, "skip", None)):
                sampler.skip(self.epoch, done * int(loader.batch_size or 1))
        iterators: list[Iterator[Any] | None] = [None] * len(self.names)
        for k in draws[start:]:
            if iterators[k] is None:
                iterators[k] = iter(self.loaders[self.names[k]])
            try:
                batch = next(iterators[k])  # type: ignore[arg-type]
            except StopIteration:  # this task's loader starts over
                iterators[k] = iter(self.loaders[self.names[k]])
                batch = next(iterators[k])  # type: ignore[arg-type]
            yield {self.names[k]: batch}
