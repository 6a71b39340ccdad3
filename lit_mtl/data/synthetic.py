"""Synthetic multi-task data, including the GradNorm toy (Chen et al. 2018, Sec. 4).

Regression task i:      y_i = sigma_i * tanh((B + eps_i) x) + noise_std_i * N(0, I)
Classification task j:  y_j = argmax_c tanh((B + eps_j) x)_c  (optionally with label noise)

with x ~ U(-1, 1)^in_features normalised to unit length, B ~ N(0, shared_std^2) shared by all tasks
and eps_i ~ N(0, task_std^2) per task, elementwise. ``shared_std`` large relative to ``task_std``
makes the tasks related; ``shared_std=0`` makes them unrelated. The GradNorm paper's toy uses
shared_std = 10, task_std = 3.5, in_features = 250, out_features = 100.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_mtl._moved import moved_names
from lit_mtl.data.loaders import SplitDataModule
from lit_mtl.tasks import IGNORE_INDEX, TaskSpec

# a name this module re-exported before each name had one path
__getattr__ = moved_names(__name__, "lit_mtl.data.loaders", ["EpochSeededSampler"])


class MultiTaskTensorDataset(Dataset):
    """In-memory dataset yielding ``(x, {task: target})`` pairs."""

    def __init__(self, inputs: Tensor, targets: dict[str, Tensor]) -> None:
        n = inputs.shape[0]
        for name, t in targets.items():
            if t.shape[0] != n:
                raise ValueError(f"target {name!r} has {t.shape[0]} rows, inputs have {n}")
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.inputs[i], {name: t[i] for name, t in self.targets.items()}


def make_synthetic_tasks(
    num_samples: int,
    generator: torch.Generator,
    *,
    in_features: int,
    out_features: int,
    regression_scales: Sequence[float],
    regression_noise: Sequence[float],
    num_classification_tasks: int,
    num_classes: int,
    shared_std: float,
    task_std: float,
    label_noise: float = 0.0,
    functions: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor], tuple[Tensor, Tensor]]:
    """Draw inputs and targets. Returns (x, targets, (B, eps)) so other splits reuse the functions.

    ``functions`` (B, eps) of shapes (D, in) and (T, D, in), D = max(out_features, num_classes),
    are drawn from ``generator`` when not given.
    """
    num_reg = len(regression_scales)
    num_tasks = num_reg + num_classification_tasks
    width = max(out_features, num_classes if num_classification_tasks else 1)
    if functions is None:
        shared = torch.randn(width, in_features, generator=generator) * shared_std
        per_task = torch.randn(num_tasks, width, in_features, generator=generator) * task_std
        functions = (shared, per_task)
    shared, per_task = functions
    x = torch.rand(num_samples, in_features, generator=generator) * 2 - 1
    x = x / x.norm(dim=1, keepdim=True)  # unit length, as in GradNorm's reference toy code
    targets: dict[str, Tensor] = {}
    for i in range(num_reg):
        w = (shared + per_task[i])[:out_features]  # (out, in)
        clean = regression_scales[i] * torch.tanh(x @ w.T)  # (N, out)
        noise = torch.randn(clean.shape, generator=generator) * regression_noise[i]
        y = clean + noise
        targets[f"reg{i}"] = y.squeeze(1) if out_features == 1 else y
    for j in range(num_classification_tasks):
        w = (shared + per_task[num_reg + j])[:num_classes]  # (C, in)
        labels = torch.tanh(x @ w.T).argmax(dim=1)  # (N,)
        if label_noise > 0:
            flip = torch.rand(num_samples, generator=generator) < label_noise
            random_labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
            labels = torch.where(flip, random_labels, labels)
        targets[f"cls{j}"] = labels
    return x, targets, functions


class SyntheticDataModule(SplitDataModule):
    """Seeded synthetic multi-task data: regression tasks (GradNorm toy form) and classification.

    Args:
        in_features: input width.
        out_features: output width of every regression task.
        regression_scales: sigma_i per regression task (its count = number of regression tasks).
        regression_noise: noise standard deviation per regression task (same length).
        num_classification_tasks: number of classification tasks (named ``cls0``, ...).
        num_classes: classes per classification task.
        shared_std: std of the shared matrix B (relatedness; 0 = unrelated tasks).
        task_std: std of each task's eps_i.
        label_noise: probability of replacing a class label by a uniformly random one.
        missing_fraction: per task name, fraction of training labels marked missing (NaN or -100),
            e.g. ``{"reg1": 0.5}``.
        num_train: split sizes.
        num_val: split sizes.
        num_test: split sizes.
        batch_size: samples per batch of every loader.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers``.
        seed: seed of the local generator (functions, inputs, noise, splits).

    Task names: ``reg0`` ... then ``cls0`` ...; :attr:`task_specs` is available right after
    ``__init__`` (the CLI links it into the model).
    """

    def __init__(
        self,
        in_features: int = 16,
        out_features: int = 1,
        regression_scales: Sequence[float] = (1.0, 1.0),
        regression_noise: Sequence[float] = (0.1, 0.1),
        num_classification_tasks: int = 1,
        num_classes: int = 3,
        shared_std: float = 1.0,
        task_std: float = 0.5,
        label_noise: float = 0.0,
        missing_fraction: dict[str, float] | None = None,
        num_train: int = 2048,
        num_val: int = 512,
        num_test: int = 512,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            seed=seed,
        )
        if len(regression_scales) != len(regression_noise):
            raise ValueError(
                f"regression_scales has {len(regression_scales)} entries but regression_noise has "
                f"{len(regression_noise)}: give one scale and one noise std per regression task"
            )
        if any(s < 0 for s in regression_noise):
            raise ValueError(f"regression_noise must be >= 0, got {list(regression_noise)}")
        if len(regression_scales) + num_classification_tasks < 1:
            raise ValueError("SyntheticDataModule needs at least one task")
        if num_classification_tasks and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0 <= label_noise <= 1:
            raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
        for n, name in ((num_train, "num_train"), (num_val, "num_val"), (num_test, "num_test")):
            if n < 1:
                raise ValueError(f"{name} must be >= 1, got {n}")
        self.save_hyperparameters()
        self.in_features = in_features
        self.out_features = out_features
        self.regression_scales = [float(s) for s in regression_scales]
        self.regression_noise = [float(s) for s in regression_noise]
        self.num_classification_tasks = num_classification_tasks
        self.num_classes = num_classes
        self.task_specs: list[TaskSpec] = [
            TaskSpec(f"reg{i}", "regression", out_features) for i in range(len(regression_scales))
        ] + [
            TaskSpec(f"cls{j}", "multiclass", num_classes) for j in range(num_classification_tasks)
        ]
        names = {s.name for s in self.task_specs}
        self.missing_fraction = dict(missing_fraction or {})
        for name, frac in self.missing_fraction.items():
            if name not in names:
                raise KeyError(
                    f"missing_fraction names unknown task {name!r}; tasks: {sorted(names)}"
                )
            if not 0 <= frac <= 1:
                raise ValueError(f"missing_fraction[{name!r}] must be in [0, 1], got {frac}")

    def _generate(self) -> None:
        hp = self.arguments
        gen = torch.Generator().manual_seed(int(hp.seed))
        kwargs: dict[str, Any] = dict(
            in_features=self.in_features,
            out_features=self.out_features,
            regression_scales=self.regression_scales,
            regression_noise=self.regression_noise,
            num_classification_tasks=self.num_classification_tasks,
            num_classes=self.num_classes,
            shared_std=float(hp.shared_std),
            task_std=float(hp.task_std),
            label_noise=float(hp.label_noise),
        )
        functions = None
        for split, n in (("train", hp.num_train), ("val", hp.num_val), ("test", hp.num_test)):
            x, targets, functions = make_synthetic_tasks(int(n), gen, functions=functions, **kwargs)
            if split == "train":
                for name, frac in self.missing_fraction.items():
                    drop = torch.rand(int(n), generator=gen) < frac
                    t = targets[name]
                    fill = float("nan") if t.is_floating_point() else IGNORE_INDEX
                    shape = (-1,) + (1,) * (t.dim() - 1)
                    targets[name] = torch.where(drop.view(shape), torch.full_like(t, fill), t)
            self.datasets[split] = MultiTaskTensorDataset(x, targets)

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self._generate()
