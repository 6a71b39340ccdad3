"""The MoleculeNet reproduction's models train on a tiny table and its table reads the runs."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from conftest import write_smiles_table

pytest.importorskip("rdkit")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "moleculenet_reproduction", ROOT / "benchmarks/moleculenet_reproduction.py"
)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_both_models_train_and_the_table_compares_with_deepchem(tmp_path: Path) -> None:
    write_smiles_table(tmp_path / "tox21.csv", rows=60)
    args = argparse.Namespace(dataset="tox21", root=str(tmp_path), cache_dir=str(tmp_path / "c"))
    rows = [bench.run(model, "index", 0, args) for model in ("mt-nn", "logreg")]
    for row in rows:
        assert 0.0 <= row["valid"] <= 1.0 and 0.0 <= row["test"] <= 1.0
        assert row["tasks_valid"] == row["tasks_test"] == 2
    mt_nn = bench.build("mt-nn", bench.MoleculeNetDataModule(str(tmp_path / "tox21.csv")))
    linear = mt_nn.encoder.blocks[0][0]
    assert float(linear.bias.min()) == float(linear.bias.max()) == 1.0  # DeepChem's bias init
    table = bench.markdown(rows)
    assert f"| mt-nn | index | {rows[0]['valid']:.3f} ± 0.000 | 0.768 |" in table
    assert f"| logreg | index | {rows[1]['valid']:.3f} ± 0.000 | 0.705 |" in table
