"""Synthetic impressions with known click and conversion rates: the ESMM setting, checkable.

Ma et al., "Entire Space Multi-Task Model: An Effective Approach for Estimating Post-Click
Conversion Rate" (SIGIR 2018, https://arxiv.org/abs/1804.07931): a conversion can only follow a
click, so p(click and convert | x) = p(click | x) p(convert | click, x). ESMM trains the CTR head
on clicks and the product pCTR x pCVR on click-and-convert labels, both over every impression,
and never trains the CVR head on the clicked subset alone.

Here an impression has a categorical feature g in {0, ..., G-1} (the input is its one-hot code),
and the rates are known by construction: ``click ~ Bernoulli(ctr[g])`` and, on a click,
``conversion ~ Bernoulli(cvr[g])`` (no conversion without a click). A model that recovers
``cvr[g]`` from its CVR head has learnt the conditional rate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_mtl.data.loaders import SplitDataModule
from lit_mtl.data.synthetic import MultiTaskTensorDataset
from lit_mtl.tasks import IGNORE_INDEX, TaskSpec


class ClickConversionDataModule(SplitDataModule):
    """Impressions (one-hot group, ``in_features = num_groups``) with tasks:

    * ``click`` (binary): clicked, on every impression;
    * ``conversion`` (binary, ``parent="click"``): converted, counted on clicked impressions;
    * ``click_conversion`` (binary, ``product_of=("click", "conversion")``): clicked and
      converted, on every impression (ESMM's CTCVR).

    Args:
        num_groups: G.
        ctr_range: the true rates ``ctr[g]``, ``cvr[g]`` are drawn uniformly from
            these ranges (seeded by ``rate_seed``); :meth:`true_rates` returns them.
        cvr_range: as ``ctr_range``.
        train_conversion: whether the training split labels ``conversion`` (on clicks). False
            (default, ESMM): its training labels are missing, so the CVR head learns only
            through ``click_conversion``; the val and test splits always label it on clicks.
        num_train: impressions per split (groups uniform).
        num_val: impressions per split (groups uniform).
        num_test: impressions per split (groups uniform).
        batch_size: samples per batch of every loader.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers``.
        seed: draws the impressions and the shuffling.
        rate_seed: the seed of the true rates.

    >>> dm = ClickConversionDataModule(num_groups=3, num_train=10, num_val=4, num_test=4)
    >>> [s.name for s in dm.task_specs], tuple(dm.true_rates()["cvr"].shape)
    (['click', 'conversion', 'click_conversion'], (3,))
    """

    def __init__(
        self,
        num_groups: int = 8,
        ctr_range: tuple[float, float] = (0.1, 0.6),
        cvr_range: tuple[float, float] = (0.05, 0.5),
        train_conversion: bool = False,
        num_train: int = 20000,
        num_val: int = 5000,
        num_test: int = 5000,
        batch_size: int = 512,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        rate_seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            seed=seed,
        )
        if num_groups < 1:
            raise ValueError(
                f"ClickConversionDataModule: num_groups must be >= 1, got {num_groups}"
            )
        for name, (low, high) in (("ctr_range", ctr_range), ("cvr_range", cvr_range)):
            if not 0.0 < low <= high < 1.0:
                raise ValueError(
                    f"ClickConversionDataModule: {name} must satisfy 0 < low <= high < 1, got "
                    f"{(low, high)}"
                )
        for value, name in ((num_train, "num_train"), (num_val, "num_val"), (num_test, "num_test")):
            if value < 1:
                raise ValueError(f"ClickConversionDataModule: {name} must be >= 1, got {value}")
        self.save_hyperparameters()
        self.in_features = int(num_groups)
        self.task_specs = [
            TaskSpec("click", "binary"),
            TaskSpec("conversion", "binary", parent="click"),
            TaskSpec("click_conversion", "binary", product_of=("click", "conversion")),
        ]

    def true_rates(self) -> dict[str, Tensor]:
        """``{"ctr": (G,), "cvr": (G,)}``: p(click | g) and p(convert | click, g)."""
        hp = self.arguments
        generator = torch.Generator().manual_seed(int(hp.rate_seed))
        out = {}
        for name, (low, high) in (("ctr", hp.ctr_range), ("cvr", hp.cvr_range)):
            u = torch.rand(self.in_features, generator=generator, dtype=torch.float64)
            out[name] = (low + (high - low) * u).float()
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.arguments
        rates = self.true_rates()
        generator = torch.Generator().manual_seed(int(hp.seed))
        for split, n in (("train", hp.num_train), ("val", hp.num_val), ("test", hp.num_test)):
            group = torch.randint(self.in_features, (int(n),), generator=generator)
            click = (torch.rand(int(n), generator=generator) < rates["ctr"][group]).float()
            converts = torch.rand(int(n), generator=generator) < rates["cvr"][group]
            conversion = click * converts.float()
            labelled_conversion = conversion.clone()
            if split == "train" and not hp.train_conversion:
                labelled_conversion.fill_(IGNORE_INDEX)  # ESMM: no direct CVR supervision
            x = torch.nn.functional.one_hot(group, self.in_features).float()
            self.datasets[split] = MultiTaskTensorDataset(
                x,
                {
                    "click": click,
                    "conversion": labelled_conversion,
                    "click_conversion": conversion,
                },
            )
