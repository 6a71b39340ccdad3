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


def test_the_five_models_train_and_the_table_compares_with_deepchem(tmp_path: Path) -> None:
    write_smiles_table(tmp_path / "tox21.csv", rows=60)
    args = argparse.Namespace(dataset="tox21", root=str(tmp_path), cache_dir=str(tmp_path / "c"))
    models = ("mt-nn", "logreg", "rf", "logreg-dc", "st-nn")
    rows = [bench.run(model, "index", 0, args) for model in models]
    for row in rows:
        assert all(0.0 <= row[s] <= 1.0 for s in ("train", "valid", "test")), row
    assert rows[0]["tasks_valid"] == rows[0]["tasks_test"] == 2
    assert rows[2]["train"] > 0.9  # 500 trees fit their training split
    mt_nn = bench.build("mt-nn", bench.MoleculeNetDataModule(str(tmp_path / "tox21.csv")))
    linear = mt_nn.encoder.blocks[0][0]
    assert float(linear.bias.min()) == float(linear.bias.max()) == 1.0  # DeepChem's bias init
    table = bench.markdown("tox21", rows)
    published = [(0.854, 0.768), (0.902, 0.705), (0.999, 0.736), (0.902, 0.705)]
    for row, (train, valid) in zip(rows, published, strict=False):
        assert (
            f"| {row['model']} | index | 1 | {row['train']:.3f} | {train:.3f} | "
            f"{row['valid']:.3f} ± 0.000 | {valid:.3f} |"
        ) in table
    single = rows[4]  # one network per task: both tasks scored, no published row
    assert single["tasks_valid"] == 2
    assert f"| st-nn | index | 1 | {single['train']:.3f} | - |" in table


def test_every_published_dataset_has_the_two_reproduced_models() -> None:
    for dataset, models in bench.PUBLISHED.items():
        assert {"mt-nn", "logreg"} <= set(models), dataset
        for splits in models.values():
            assert set(splits) == set(bench.SPLITS), dataset


def test_deepchem_logreg_cost_is_the_tf_broadcast_of_its_code() -> None:
    """lr.py multiplies a task's (B, 1) cross-entropy by its (B,) weights: a (B, B) product,
    each example weighted by the batch's total weight (torch broadcasts as TensorFlow does)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    ce, weights = torch.rand(7, 3, generator=generator), torch.rand(7, 3, generator=generator)
    as_written = sum(
        torch.multiply(ce[:, t].reshape(7, 1), weights[:, t]).sum() / 50 for t in range(3)
    )
    torch.testing.assert_close(bench.deepchem_logreg_cost(ce, weights), as_written)
    # not the weighted cost it was meant to be
    assert not torch.isclose(bench.deepchem_logreg_cost(ce, weights), (ce * weights).sum() / 50)
