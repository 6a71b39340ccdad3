"""Weight averaging (EMA, SWA) while fine-tuning, on Lightning's ``WeightAveraging`` callback.

Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` keeps an
:class:`~torch.optim.swa_utils.AveragedModel` of the whole LightningModule, swaps the average in
for validation, writes it as the checkpoint's ``state_dict`` (the live weights under
``current_model_state``, so a resumed run continues both exactly) and copies it into the module
when training ends. Here the *model* is averaged, the encoder and the heads (parameters and
buffers such as BatchNorm statistics), and the weighting's state is not: GradNorm's task weights,
FAMO's logits, step counters and the like are the method's running state, not weights to
average, so validation, the checkpoint and the end of training keep the live values.

With an unfreeze schedule every model parameter is averaged from the first update on: a frozen
group does not change, so its average stays its source value until it unfreezes, and from then
on averages its fine-tuned values (EMA: with weight ``1 - decay`` per step; SWA: equally, from
``start_epoch`` on).

* :class:`EMA`: ``avg = decay * avg + (1 - decay) * w`` after every ``every_n_steps`` optimizer
  steps (Polyak averaging; the EMA of fine-tuned ViTs in timm and DeiT);
* :class:`SWA`: the running mean of the weights at the end of each epoch from ``start_epoch``
  on (Izmailov et al., UAI 2018, https://arxiv.org/abs/1803.05407).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

#: state_dict prefixes that are not averaged (the weighting's running state)
NOT_AVERAGED = ("weighting.",)


class ModelWeightAveraging(WeightAveraging):
    """Lightning's weight averaging, restricted to the model: entries whose names start with
    :data:`NOT_AVERAGED` keep their live values in validation, in the checkpoint's
    ``state_dict`` and at the end of training. Subclasses say when to update
    (``should_update``); ``avg_fn`` / ``multi_avg_fn`` say how (``AveragedModel``)."""

    def _pairs(self, pl_module: L.LightningModule) -> Iterator[tuple[Tensor, Tensor]]:
        """(average, live) tensors of every averaged parameter and buffer, matched by name."""
        assert self._average_model is not None
        average = self._average_model.module
        live_named = dict(itertools.chain(pl_module.named_parameters(), pl_module.named_buffers()))
        for name, tensor in itertools.chain(average.named_parameters(), average.named_buffers()):
            if name.startswith(NOT_AVERAGED) or name not in live_named:
                continue
            yield tensor, live_named[name]

    def _swap_models(self, pl_module: L.LightningModule) -> None:
        for average, live in self._pairs(pl_module):
            held = average.data.clone()
            average.data.copy_(live.data)
            live.data.copy_(held)

    def _copy_average_to_current(self, pl_module: L.LightningModule) -> None:
        for average, live in self._pairs(pl_module):
            live.data.copy_(average.data)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        current = checkpoint.get("current_model_state")
        if current is not None:  # the weighting's live state, not its average
            for name, value in current.items():
                if name.startswith(NOT_AVERAGED):
                    checkpoint["state_dict"][name] = value


class ExponentialAverage:
    """``decay * average + (1 - decay) * current`` (torch's ``get_ema_avg_fn``, as a picklable
    object: ``ddp_spawn`` sends the callbacks to its processes)."""

    def __init__(self, decay: float) -> None:
        self.decay = float(decay)

    @torch.no_grad()
    def __call__(self, average: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        return self.decay * average + (1 - self.decay) * current


class EMA(ModelWeightAveraging):
    """Exponential moving average of the model's weights (module docstring).

    Args:
        decay: weight of the previous average per update (0.999 and 0.9999 are common).
        every_n_steps: update after every this many optimizer steps.
        start_step: first optimizer step (0-based) to update at.
        device: where the average lives (default: the module's device).
    """

    def __init__(
        self,
        decay: float = 0.999,
        every_n_steps: int = 1,
        start_step: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1), got {decay}")
        if every_n_steps < 1 or start_step < 0:
            raise ValueError(
                f"EMA: every_n_steps >= 1 and start_step >= 0, got {every_n_steps}, {start_step}"
            )
        super().__init__(device=device, use_buffers=True, avg_fn=ExponentialAverage(decay))
        self.decay = float(decay)
        self.every_n_steps = int(every_n_steps)
        self.start_step = int(start_step)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None:
            return False
        return (
            step_idx >= self.start_step and (step_idx - self.start_step) % self.every_n_steps == 0
        )


class SWA(ModelWeightAveraging):
    """Stochastic weight averaging: the equal-weight running mean of the model's weights at the
    end of every epoch from ``start_epoch`` on (0-based). Lightning's separate
    ``StochasticWeightAveraging`` callback also replaces the LR scheduler; this one only
    averages, so it composes with any scheduler and with the unfreeze schedule.

    Args:
        start_epoch: the first epoch whose end weights enter the mean.
        device: where the average lives (default: the module's device).
    """

    def __init__(self, start_epoch: int = 0, device: torch.device | str | None = None) -> None:
        if start_epoch < 0:
            raise ValueError(f"SWA: start_epoch must be >= 0, got {start_epoch}")
        super().__init__(device=device, use_buffers=True)
        self.start_epoch = int(start_epoch)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return epoch_idx is not None and epoch_idx >= self.start_epoch
