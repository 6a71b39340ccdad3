"""The synthetic two-task regression data of the MMoE paper, with the task correlation set by p.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts"
(KDD 2018), Sec. 3.2: draw orthogonal unit vectors u1, u2 in R^d; w1 = c u1,
w2 = c (p u1 + sqrt(1 - p^2) u2); x ~ N(0, I_d);

    y_k = w_k^T x + sum_{i=1..m} sin(alpha_i w_k^T x + beta_i) + eps_k,   eps_k ~ N(0, sigma^2)

with the same alpha_i, beta_i for both tasks, so p (the cosine of w1 and w2) sets how related the
tasks are (the labels' Pearson correlation falls with p; it is not p itself because of the
sinusoids). The paper leaves d, c, m, alpha, beta and sigma open; the defaults here follow the
public re-implementation in deep_recommenders (``mixture_of_experts._synthetic_data``): d = 100,
c = 0.3, m = 5, alpha_i and beta_i ~ N(0, 1), sigma = 0.01. The paper's "eps ~ N(0, 0.01)" is
read as a standard deviation of 0.01, as there.

With those defaults the labels are close to linear in x (a least-squares linear fit explains most
of their variance), so task relatedness hardly matters. :data:`GOOGLE_RESEARCH_CONSTANTS` are the
constants of the re-implementation in the google-research repository (its synthetic
multi-task generator, ``generate_task_pairs``): c = 1, m = 10, alpha_i = i,
beta_i = (i - 1)^2 for i = 1..m, under which the sinusoids carry most of the label variance;
pass them as ``MMoESyntheticDataModule(p, **GOOGLE_RESEARCH_CONSTANTS)``.

Everything is drawn from one local generator: the functions (u1, u2, alpha, beta) from
``function_seed`` (fixed across repeats unless changed, as in the paper, where repeats vary the
model's initialisation and the sample), the samples and noise from ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lit_mtl.data.loaders import SplitDataModule
from lit_mtl.data.synthetic import MultiTaskTensorDataset
from lit_mtl.data.task_loaders import CombineMode, check_combine
from lit_mtl.tasks import TaskSpec

GOOGLE_RESEARCH_CONSTANTS: dict[str, Any] = {
    "scale": 1.0,
    "num_sinusoids": 10,
    "alpha": [float(i) for i in range(1, 11)],
    "beta": [float(i * i) for i in range(10)],
}
"""c, m, alpha, beta of the google-research re-implementation (module docstring)."""


def make_mmoe_synthetic(
    num_samples: int,
    p: float,
    generator: torch.Generator,
    functions: dict[str, Tensor],
    noise_std: float = 0.01,
) -> tuple[Tensor, Tensor, Tensor]:
    """``num_samples`` inputs (N, d) and the two labels (N,), (N,) for correlation ``p`` with the
    given ``functions`` (:func:`mmoe_functions`)."""
    u1, u2, alpha, beta = functions["u1"], functions["u2"], functions["alpha"], functions["beta"]
    c = float(functions["c"])
    w1 = c * u1
    w2 = c * (p * u1 + math.sqrt(max(0.0, 1.0 - p * p)) * u2)
    x = torch.randn(num_samples, u1.shape[0], generator=generator, dtype=torch.float64)
    labels = []
    for w in (w1, w2):
        projection = x @ w  # (N,)
        waves = torch.sin(alpha[:, None] * projection[None] + beta[:, None]).sum(dim=0)
        noise = noise_std * torch.randn(num_samples, generator=generator, dtype=torch.float64)
        labels.append(projection + waves + noise)
    return x.float(), labels[0].float(), labels[1].float()


def mmoe_functions(
    in_features: int,
    scale: float,
    num_sinusoids: int,
    generator: torch.Generator,
    alpha: Sequence[float] | None = None,
    beta: Sequence[float] | None = None,
) -> dict[str, Tensor]:
    """u1, u2 (orthogonal unit vectors, Gram-Schmidt on Gaussian draws) and the sinusoids'
    alpha, beta: the given values, or drawn from N(0, 1) where ``None``."""
    a = torch.randn(in_features, generator=generator, dtype=torch.float64)
    b = torch.randn(in_features, generator=generator, dtype=torch.float64)
    u1 = a / a.norm()
    b = b - (b @ u1) * u1
    u2 = b / b.norm()
    drawn_alpha = torch.randn(num_sinusoids, generator=generator, dtype=torch.float64)
    drawn_beta = torch.randn(num_sinusoids, generator=generator, dtype=torch.float64)
    alphas = drawn_alpha if alpha is None else _fixed(alpha, num_sinusoids, "alpha")
    betas = drawn_beta if beta is None else _fixed(beta, num_sinusoids, "beta")
    return {"u1": u1, "u2": u2, "alpha": alphas, "beta": betas, "c": torch.tensor(float(scale))}


def _fixed(values: Sequence[float], num_sinusoids: int, name: str) -> Tensor:
    out = torch.as_tensor([float(v) for v in values], dtype=torch.float64)
    if out.numel() != num_sinusoids:
        raise ValueError(
            f"MMoESyntheticDataModule: {name} has {out.numel()} values, num_sinusoids is "
            f"{num_sinusoids}"
        )
    return out


class MMoESyntheticDataModule(SplitDataModule):
    """MMoE's synthetic data (module docstring): tasks ``task1`` and ``task2``, regression.

    Args:
        p: the cosine between the two tasks' weight vectors, in [-1, 1] (the paper: 0.5, 0.9, 1).
        in_features: d.
        scale: c.
        num_sinusoids: m.
        alpha: the sinusoids' multipliers and phases (m values each); ``None``: drawn
            from N(0, 1) with ``function_seed``.
        beta: as ``alpha``.
        noise_std: standard deviation of eps_k.
        num_train: split sizes.
        num_val: split sizes.
        num_test: split sizes.
        per_task_inputs: each task brings its own samples (:meth:`per_task_datasets`; the same
            functions, independent inputs): multi-input training.
        combine: how the per-task training loaders are combined
            (:mod:`lit_mtl.data.task_loaders`; with ``per_task_inputs``).
        temperature: as ``combine``.
        batch_size: samples per batch of every loader.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers``.
        seed: seed of the samples and the noise (and of the shuffling).
        function_seed: seed of u1, u2, alpha, beta.

    Examples:
        >>> dm = MMoESyntheticDataModule(p=0.5, num_train=8, num_val=4, num_test=4)
        >>> dm.setup(); x, y = dm.datasets["train"][0]
        >>> tuple(x.shape), sorted(y)
        ((100,), ['task1', 'task2'])
    """

    def __init__(
        self,
        p: float = 0.9,
        in_features: int = 100,
        scale: float = 0.3,
        num_sinusoids: int = 5,
        alpha: Sequence[float] | None = None,
        beta: Sequence[float] | None = None,
        noise_std: float = 0.01,
        num_train: int = 10000,
        num_val: int = 1000,
        num_test: int = 1000,
        per_task_inputs: bool = False,
        combine: CombineMode = "max_size_cycle",
        temperature: float = 1.0,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        function_seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            seed=seed,
            combine=combine,
            temperature=temperature,
        )
        if not -1.0 <= p <= 1.0:
            raise ValueError(f"MMoESyntheticDataModule: p must be in [-1, 1], got {p}")
        for value, name in ((num_train, "num_train"), (num_val, "num_val"), (num_test, "num_test")):
            if value < 1:
                raise ValueError(f"MMoESyntheticDataModule: {name} must be >= 1, got {value}")
        if in_features < 2 or num_sinusoids < 0 or noise_std < 0:
            raise ValueError(
                "MMoESyntheticDataModule: in_features >= 2, num_sinusoids >= 0 and noise_std >= 0 "
                f"required, got {in_features}, {num_sinusoids}, {noise_std}"
            )
        check_combine(combine, temperature, "MMoESyntheticDataModule")
        for values, name in ((alpha, "alpha"), (beta, "beta")):
            if values is not None:
                _fixed(values, num_sinusoids, name)
        self.save_hyperparameters()
        self.p = float(p)
        self.per_task_inputs = bool(per_task_inputs)
        self.in_features = int(in_features)
        self.task_specs = [TaskSpec("task1", "regression"), TaskSpec("task2", "regression")]

    def _functions(self) -> dict[str, Tensor]:
        hp = self.arguments
        return mmoe_functions(
            self.in_features,
            float(hp.scale),
            int(hp.num_sinusoids),
            torch.Generator().manual_seed(int(hp.function_seed)),
            hp.alpha,
            hp.beta,
        )

    def per_task_datasets(self, split: str = "train") -> dict[str, MultiTaskTensorDataset]:
        """One dataset per task, each with its own inputs (the same functions, independent
        samples of the split's size, seeded by (seed, task)): ``{task: dataset yielding
        (x, {task: y})}``, for training where each task brings its own data."""
        hp = self.arguments
        sizes = {"train": hp.num_train, "val": hp.num_val, "test": hp.num_test}
        if split not in sizes:
            raise ValueError(f"split must be one of {sorted(sizes)}, got {split!r}")
        functions = self._functions()
        out = {}
        for k, name in enumerate(self.task_names):
            split_index = ("train", "val", "test").index(split)
            seed = (int(hp.seed) * 1_000_003 + k + 1) * 3 + split_index
            generator = torch.Generator().manual_seed(seed)
            x, y1, y2 = make_mmoe_synthetic(
                int(sizes[split]), self.p, generator, functions, float(hp.noise_std)
            )
            out[name] = MultiTaskTensorDataset(x, {name: (y1, y2)[k]})
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.per_task_inputs:
            for split in ("train", "val", "test"):
                self.datasets[split] = self.per_task_datasets(split)
            return
        hp = self.arguments
        functions = self._functions()
        generator = torch.Generator().manual_seed(int(hp.seed))
        for split, n in (("train", hp.num_train), ("val", hp.num_val), ("test", hp.num_test)):
            x, y1, y2 = make_mmoe_synthetic(
                int(n), self.p, generator, functions, float(hp.noise_std)
            )
            self.datasets[split] = MultiTaskTensorDataset(x, {"task1": y1, "task2": y2})
