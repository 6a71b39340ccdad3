"""A comparison's configuration: the YAML form and its validation (see :mod:`lit_mtl.compare`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_KEYS = {
    "name",
    "output_dir",
    "seeds",
    "single_task",
    "tracking",
    "metrics",
    "methods",
    "fit",
    "baseline",
    "delta_m_convention",
}


@dataclass
class ComparisonConfig:
    """A comparison: see the module docstring for the YAML form."""

    name: str
    fit: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    output_dir: str = ""
    single_task: bool = True
    tracking: str = "default"
    metrics: list[str] | None = None
    baseline: dict[str, float] | None = None
    delta_m_convention: str = "metrics"
    source: str = "<dict>"

    def __post_init__(self) -> None:
        where = f"comparison {self.source}"
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"{where}: 'name' must be a non-empty string")
        if not isinstance(self.methods, Mapping) or not self.methods:
            raise ValueError(f"{where}: 'methods' must map labels to weighting configs")
        for label, spec in self.methods.items():
            if not isinstance(spec, Mapping) or "class_path" not in spec:
                raise ValueError(f"{where}: methods.{label} needs a 'class_path'")
            if label.startswith("stl"):
                raise ValueError(f"{where}: method labels starting with 'stl' are reserved")
        if not self.seeds or not all(isinstance(s, int) for s in self.seeds):
            raise ValueError(f"{where}: 'seeds' must be a non-empty list of integers")
        for key in ("model", "data"):
            if not isinstance(self.fit.get(key), Mapping):
                raise ValueError(f"{where}: 'fit.{key}' is required (a class_path/init_args)")
        if self.tracking not in ("default", "wandb"):
            raise ValueError(f"{where}: tracking must be 'default' or 'wandb', got {self.tracking}")
        if self.delta_m_convention not in ("metrics", "tasks"):
            raise ValueError(
                f"{where}: delta_m_convention must be 'metrics' or 'tasks', got "
                f"{self.delta_m_convention!r}"
            )
        if self.baseline is not None:
            if not isinstance(self.baseline, Mapping) or not self.baseline:
                raise ValueError(f"{where}: 'baseline' must map 'task/metric' keys to numbers")
            for key, value in self.baseline.items():
                if "/" not in str(key) or not isinstance(value, int | float):
                    raise ValueError(
                        f"{where}: baseline.{key} must be a 'task/metric' key with a number, "
                        f"got {value!r}"
                    )
            self.baseline = {str(k): float(v) for k, v in self.baseline.items()}
        self.output_dir = self.output_dir or f"comparisons/{self.name}"


def load_comparison(path: str | Path) -> ComparisonConfig:
    """Read and validate a comparison YAML (errors name the file and the key)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"comparison config {path} does not exist")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"comparison {path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ValueError(f"comparison {path}: unknown key(s) {unknown}; known: {sorted(_KEYS)}")
    for key in ("name", "fit", "methods"):
        if key not in raw:
            raise ValueError(f"comparison {path}: missing key '{key}'")
    return ComparisonConfig(**raw, source=str(path))
