"""Molecular property tables (MoleculeNet's Tox21, ToxCast, SIDER, ClinTox, MUV and any CSV like
them): one SMILES column, one column per task, an empty cell for a missing label.

The pipeline is the one MoleculeNet / DeepChem ran in 2017 (Wu et al., "MoleculeNet: a benchmark
for molecular machine learning", Chem. Sci. 2018), each step a pure function here:

* :func:`read_smiles_table`: the SMILES and a (N, T) float label matrix, NaN where a cell is empty;
* :func:`morgan_fingerprints`: ECFP bit vectors (radius 2, 1024 bits is DeepChem's
  ``CircularFingerprint(size=1024)``), with RDKit (``pip install 'lit-mtl[molecules]'``);
* :func:`split_indices`: DeepChem's ``index`` (file order), ``random`` (seeded permutation) and
  ``scaffold`` splitters (Bemis-Murcko scaffold sets, largest first, fill train, then valid, then
  test: a scaffold never straddles two splits);
* :func:`balancing_weights`: DeepChem's ``BalancingTransformer(transform_w=True)``: per task, over
  its labelled entries, a positive weighs n_negative / n_positive and a negative 1.

:class:`MoleculeNetDataModule` wires them together, caches the fingerprints on disk (keyed by the
file's content and the featuriser's arguments) and serves ``(x, targets, masks, weights)``
batches, resumable mid-epoch like every DataModule here.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_mtl._optional import require
from lit_mtl.data.loaders import SplitDataModule
from lit_mtl.tasks import TaskSpec

#: the MoleculeNet files as redistributed by chemprop (``<root>/<file>``)
MOLECULENET_FILES = {
    "tox21": "tox21.csv",
    "toxcast": "toxcast.csv.gz",
    "sider": "sider.csv",
    "clintox": "clintox.csv",
    "muv": "muv.csv.gz",
}
SPLITS = ("index", "random", "scaffold")
Split = Literal["index", "random", "scaffold"]


@dataclass(frozen=True)
class MoleculeTable:
    """A SMILES table as read: the SMILES, the labels (N, T; NaN = missing), the task names
    (the header's columns after the SMILES column) and each row's line in the file."""

    smiles: list[str]
    labels: np.ndarray
    tasks: list[str]
    lines: list[int]


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # closed by the caller


def read_smiles_table(
    path: str | os.PathLike[str], smiles_column: str = "smiles", tasks: Sequence[str] | None = None
) -> MoleculeTable:
    """Read a CSV (or ``.csv.gz``) with a SMILES column and one column per task.

    ``tasks``: the task columns to keep, in this order (default: every column but the SMILES
    one). An empty cell is a missing label (NaN); any other cell must be a number. Errors name
    the file, the line and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_smiles_table: {str(path)!r} does not exist")
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: the file is empty (a header row is needed)")
        header = [name.strip() for name in header]
        if smiles_column not in header:
            raise KeyError(f"{path}: no SMILES column {smiles_column!r} in the header {header}")
        smiles_at = header.index(smiles_column)
        available = [name for i, name in enumerate(header) if i != smiles_at]
        chosen = list(available if tasks is None else tasks)
        unknown = [name for name in chosen if name not in available]
        if unknown:
            raise KeyError(
                f"{path}: task column(s) {unknown} not in the header; columns: {available}"
            )
        if not chosen:
            raise ValueError(f"{path}: no task column besides {smiles_column!r}")
        columns = [header.index(name) for name in chosen]
        smiles, rows, lines = [], [], []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{path}, line {line}: {len(row)} cells, the header has {len(header)}"
                )
            values = []
            for name, at in zip(chosen, columns, strict=True):
                cell = row[at].strip()
                try:
                    values.append(float(cell) if cell else math.nan)
                except ValueError:
                    raise ValueError(
                        f"{path}, line {line}, column {name!r}: {cell!r} is not a number (an "
                        "empty cell marks a missing label)"
                    ) from None
            smiles.append(row[smiles_at].strip())
            rows.append(values)
            lines.append(line)
    if not smiles:
        raise ValueError(f"{path}: no rows after the header")
    labels = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(chosen))
    return MoleculeTable(smiles, labels, chosen, lines)


def _molecules(smiles: Sequence[str]) -> list[object | None]:
    chem = require("rdkit.Chem", "molecules", "Reading SMILES")
    RDLogger = require("rdkit.RDLogger", "molecules", "Reading SMILES")

    RDLogger.DisableLog("rdApp.*")  # a bad SMILES is reported by the caller, once
    try:
        return [chem.MolFromSmiles(s) if s else None for s in smiles]
    finally:
        RDLogger.EnableLog("rdApp.*")


def morgan_fingerprints(
    smiles: Sequence[str], radius: int = 2, size: int = 1024, chirality: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Morgan / ECFP bit vectors (N, size) as uint8, and a boolean (N,) that is False where RDKit
    cannot parse the SMILES (its row is all zeros). Radius 2 and 1024 bits is DeepChem's
    ``CircularFingerprint(size=1024)`` (ECFP4)."""
    if radius < 0 or size < 1:
        raise ValueError(
            f"morgan_fingerprints: radius must be >= 0 and size >= 1, got {radius}, {size}"
        )
    require("rdkit", "molecules", "Morgan fingerprints")
    from rdkit.Chem import rdFingerprintGenerator

    generator = rdFingerprintGenerator.GetMorganGenerator(
        radius=radius, fpSize=size, includeChirality=chirality
    )
    molecules = _molecules(smiles)
    bits = np.zeros((len(smiles), size), dtype=np.uint8)
    valid = np.array([m is not None for m in molecules], dtype=bool)
    for i, molecule in enumerate(molecules):
        if molecule is not None:
            bits[i] = generator.GetFingerprintAsNumPy(molecule)
    return bits, valid


def scaffold_sets(smiles: Sequence[str]) -> list[list[int]]:
    """Row indices grouped by Bemis-Murcko scaffold (without chirality), in DeepChem's
    ``ScaffoldSplitter`` order: sorted by (set size, first index), largest first. Every SMILES
    must parse."""
    require("rdkit", "molecules", "Scaffold splits")
    from rdkit.Chem.Scaffolds import MurckoScaffold

    groups: dict[str, list[int]] = {}
    for i, molecule in enumerate(_molecules(smiles)):
        if molecule is None:
            raise ValueError(f"scaffold_sets: SMILES {i} ({smiles[i]!r}) cannot be parsed")
        scaffold = MurckoScaffold.MurckoScaffoldSmiles(mol=molecule, includeChirality=False)
        groups.setdefault(scaffold, []).append(i)
    return sorted(groups.values(), key=lambda rows: (len(rows), rows[0]), reverse=True)


def split_indices(
    smiles: Sequence[str],
    split: Split,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Train / val / test row indices by DeepChem's splitters (``index``, ``random``,
    ``scaffold``). The cut-offs are DeepChem's: ``int(f_train n)`` and
    ``int((f_train + f_val) n)``; the scaffold split moves a whole scaffold set to valid once
    train would exceed its cut-off, and to test once valid would."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"fractions must be three numbers >= 0 summing to 1, got {list(fractions)}"
        )
    n = len(smiles)
    train_cut = int(fractions[0] * n)
    valid_cut = int((fractions[0] + fractions[1]) * n)
    if split == "scaffold":
        parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for rows in scaffold_sets(smiles):
            if len(parts["train"]) + len(rows) > train_cut:
                if len(parts["train"]) + len(parts["val"]) + len(rows) > valid_cut:
                    parts["test"] += rows
                else:
                    parts["val"] += rows
            else:
                parts["train"] += rows
        return {k: np.asarray(sorted(v), dtype=np.int64) for k, v in parts.items()}
    order = (
        np.arange(n) if split == "index" else np.random.default_rng(seed).permutation(n)
    ).astype(np.int64)
    return {
        "train": order[:train_cut],
        "val": order[train_cut:valid_cut],
        "test": order[valid_cut:],
    }


def balancing_weights(labels: np.ndarray) -> np.ndarray:
    """DeepChem's ``BalancingTransformer`` weights (N, T) for binary labels (NaN = missing): per
    task, over its labelled entries, a positive weighs n_negative / n_positive, a negative 1; a
    task without positives (or without negatives) weighs 1 everywhere; a missing entry 0.

    >>> balancing_weights(np.array([[1.0], [0.0], [0.0], [np.nan]])).ravel().tolist()
    [2.0, 1.0, 1.0, 0.0]
    """
    labelled = ~np.isnan(labels)
    positives = (labels == 1).sum(axis=0)
    negatives = (labels == 0).sum(axis=0)
    ratio = np.where((positives > 0) & (negatives > 0), negatives / np.maximum(positives, 1), 1.0)
    weights = np.where(labels == 1, ratio[None, :], 1.0)
    return np.where(labelled, weights, 0.0)


class _MoleculeDataset(Dataset):
    """Rows of the fingerprint matrix with their targets, masks and sample weights by task."""

    def __init__(
        self, x: Tensor, labels: Tensor, weights: Tensor | None, tasks: Sequence[str]
    ) -> None:
        self.x, self.labels, self.weights, self.tasks = x, labels, weights, list(tasks)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int):
        y = self.labels[i]
        targets = {t: y[j] for j, t in enumerate(self.tasks)}
        masks = {t: ~torch.isnan(y[j]) for j, t in enumerate(self.tasks)}
        if self.weights is None:
            return self.x[i], targets, masks
        return self.x[i], targets, masks, {t: self.weights[i, j] for j, t in enumerate(self.tasks)}


def column_task_names(columns: Sequence[str]) -> list[str]:
    """Task names for a table's label columns: the column name with ``.`` and ``/`` (which task
    names cannot hold: they are log keys and module names) replaced by ``_``; two columns that
    would get the same name are an error naming both.

    Examples:
        >>> column_task_names(["NR-AR", "NVS_GPCR_hDRD4.4", "TOX21_p53/BLA"])
        ['NR-AR', 'NVS_GPCR_hDRD4_4', 'TOX21_p53_BLA']
    """
    names = [column.replace(".", "_").replace("/", "_") for column in columns]
    seen: dict[str, str] = {}
    for column, name in zip(columns, names, strict=True):
        if name in seen:
            raise ValueError(
                f"the columns {seen[name]!r} and {column!r} would both be task {name!r}; "
                "rename one of them or leave one out with tasks="
            )
        seen[name] = column
    return names


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class MoleculeNetDataModule(SplitDataModule):
    """Multi-task molecular property prediction from a SMILES table, MoleculeNet's protocol.

    Args:
        path: a CSV or CSV.gz file (a header; ``smiles_column``; one column per task; an empty
            cell marks a missing label), or a MoleculeNet name (``tox21``, ``toxcast``,
            ``sider``, ``clintox``, ``muv``) looked up under ``root``.
        root: the folder of the MoleculeNet files (``MOLECULENET_FILES``).
        tasks: the task columns to use (default: all), e.g. a subset of ToxCast's 617. A
            column's task is named after it, with ``.`` and ``/`` replaced by ``_``
            (:attr:`task_of_column`).
        kind: ``"binary"`` (0/1 labels, the MoleculeNet classification sets) or
            ``"regression"``; ``"auto"``: binary when every label is 0 or 1.
        split: ``"index"`` (file order), ``"random"`` (seeded by ``split_seed``) or
            ``"scaffold"`` (Bemis-Murcko scaffold sets, largest to train), as DeepChem's
            splitters; ``fractions`` train / val / test (80/10/10).
        fingerprint_radius: the Morgan fingerprint's radius (2: ECFP4, DeepChem's default).
        fingerprint_size: its number of bits (1024).
        chirality: whether the atom invariants include chirality.
        balance: per-sample loss weights of DeepChem's ``BalancingTransformer`` (binary
            tasks), counted over the whole file's labelled entries as DeepChem did in 2017.
        invalid_smiles: ``"error"`` (an unparsable SMILES is an error naming its line) or
            ``"skip"`` (such rows are left out; their count and lines are in
            :attr:`skipped_lines` and a warning says how many).
        cache_dir: where the fingerprints are cached (default ``$LIT_MTL_CACHE`` or
            ``~/.cache/lit_mtl``), keyed by the file's sha256 and the featuriser's arguments;
            :attr:`cache_status` says ``"computed"`` or ``"hit"``.
        batch_size: samples per batch of every loader.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers``.
        seed: the training order is a function of ``seed`` and the epoch.
    """

    def __init__(
        self,
        path: str = "tox21",
        root: str = "data/moleculenet",
        tasks: list[str] | None = None,
        smiles_column: str = "smiles",
        kind: Literal["auto", "binary", "regression"] = "auto",
        split: Split = "scaffold",
        fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        fingerprint_radius: int = 2,
        fingerprint_size: int = 1024,
        chirality: bool = False,
        balance: bool = True,
        invalid_smiles: Literal["error", "skip"] = "error",
        cache_dir: str | None = None,
        batch_size: int = 50,
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
        if kind not in ("auto", "binary", "regression"):
            raise ValueError(f"kind must be 'auto', 'binary' or 'regression', got {kind!r}")
        if invalid_smiles not in ("error", "skip"):
            raise ValueError(f"invalid_smiles must be 'error' or 'skip', got {invalid_smiles!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.file = (
            Path(root) / MOLECULENET_FILES[path] if path in MOLECULENET_FILES else Path(path)
        )
        self.table = read_smiles_table(self.file, smiles_column, tasks)
        labels = self.table.labels
        labelled = labels[~np.isnan(labels)]
        binary = bool(np.isin(labelled, (0.0, 1.0)).all())
        if kind == "binary" and not binary:
            bad = labelled[~np.isin(labelled, (0.0, 1.0))][0]
            raise ValueError(f"{self.file}: kind='binary' but a label is {bad} (labels are 0 or 1)")
        self.kind = "binary" if kind == "binary" or (kind == "auto" and binary) else "regression"
        if balance and self.kind != "binary":
            raise ValueError(
                "balance=True weights binary labels; pass balance=False for regression"
            )
        #: the task name of each label column (``.`` and ``/`` replaced by ``_``)
        self.task_of_column = dict(
            zip(self.table.tasks, column_task_names(self.table.tasks), strict=True)
        )
        self.task_specs = [TaskSpec(self.task_of_column[c], self.kind) for c in self.table.tasks]
        self.split, self.fractions, self.split_seed = split, tuple(fractions), int(split_seed)
        self.fingerprint: dict[str, Any] = {
            "radius": int(fingerprint_radius),
            "size": int(fingerprint_size),
            "chirality": bool(chirality),
        }
        self.balance, self.invalid_smiles = bool(balance), invalid_smiles
        self.cache_dir = Path(
            cache_dir or os.environ.get("LIT_MTL_CACHE") or Path.home() / ".cache" / "lit_mtl"
        )
        self.cache_status = ""
        self.skipped_lines: list[int] = []
        self.split_rows: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ features
    def cache_path(self) -> Path:
        """The fingerprint cache of this file's content, the featuriser's arguments and the
        RDKit version."""
        require("rdkit", "molecules", "MoleculeNetDataModule")
        from rdkit import __version__ as rdkit_version

        f = self.fingerprint
        key = hashlib.sha256(
            f"{_file_sha256(self.file)}|morgan|{f['radius']}|{f['size']}|{f['chirality']}|"
            f"rdkit {rdkit_version}".encode()
        ).hexdigest()[:20]
        return self.cache_dir / "molecules" / f"{self.file.name}-morgan-{key}.npz"

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """The fingerprints (N, size) and the parse mask (N,), from the cache or computed (and
        cached)."""
        path = self.cache_path()
        if path.is_file():
            stored = np.load(path)
            bits = np.unpackbits(stored["bits"], axis=1, count=self.fingerprint["size"])
            self.cache_status = "hit"
            return bits, stored["valid"]
        bits, valid = morgan_fingerprints(self.table.smiles, **self.fingerprint)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez_compressed(partial, bits=np.packbits(bits, axis=1), valid=valid)
        os.replace(partial, path)  # readers never see half a file
        self.cache_status = "computed"
        return bits, valid

    # ------------------------------------------------------------------ splits
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        bits, valid = self.features()
        if not valid.all():
            bad = [self.table.lines[i] for i in np.flatnonzero(~valid)]
            if self.invalid_smiles == "error":
                first = int(np.flatnonzero(~valid)[0])
                raise ValueError(
                    f"{self.file}, line {bad[0]}: RDKit cannot parse the SMILES "
                    f"{self.table.smiles[first]!r} ({len(bad)} such row(s)); pass "
                    "invalid_smiles='skip' to leave them out"
                )
            self.skipped_lines = bad
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"{type(self).__name__}: {len(bad)} row(s) of {self.file} left out, RDKit "
                f"cannot parse their SMILES (lines {bad[:10]}{' ...' if len(bad) > 10 else ''})"
            )
        kept = np.flatnonzero(valid)
        labels = self.table.labels[kept]
        smiles = [self.table.smiles[i] for i in kept]
        weights = balancing_weights(labels) if self.balance else None
        x = torch.from_numpy(bits[kept].astype(np.float32))
        y = torch.from_numpy(labels.astype(np.float32))
        w = None if weights is None else torch.from_numpy(weights.astype(np.float32))
        self.split_rows = split_indices(smiles, self.split, self.fractions, self.split_seed)
        self.datasets = {
            name: _MoleculeDataset(
                x[rows], y[rows], None if w is None else w[rows], self.task_names
            )
            for name, rows in self.split_rows.items()
        }
