"""MoleculeNetDataModule and its steps on tiny CSV files in MoleculeNet's format."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")

from lit_mtl import MLPEncoder, MultiTaskModule
from lit_mtl.data.molecules import (
    MoleculeNetDataModule,
    balancing_weights,
    morgan_fingerprints,
    read_smiles_table,
    scaffold_sets,
    split_indices,
)

from conftest import assert_resumes_identically

#: file order mixes the scaffolds: benzene rows 1 3 5 7 9, pyridine 2 6 8, cyclohexane 4,
#: no ring (scaffold "") 0
SMILES = [
    "CCO", "c1ccccc1", "c1ccncc1", "Cc1ccccc1", "C1CCCCC1",
    "Oc1ccccc1", "Cc1ccncc1", "Nc1ccccc1", "Oc1ccncc1", "CCc1ccccc1",
]  # fmt: skip
A = ["1", "0", "0", "", "1", "0", "0", "1", "", "0"]
B = ["0", "1", "", "0", "0", "1", "0", "0", "0", ""]


def write_table(path: Path, smiles: list[str] = SMILES, a: list[str] = A, b: list[str] = B) -> Path:
    lines = ["smiles,a,b", *(f"{s},{x},{y}" for s, x, y in zip(smiles, a, b, strict=True))]
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_table_reads_missing_cells_as_nan_and_gz_alike(tmp_path: Path) -> None:
    plain = read_smiles_table(write_table(tmp_path / "t.csv"))
    packed = read_smiles_table(write_table(tmp_path / "t.csv.gz"))
    assert plain.tasks == ["a", "b"] and plain.smiles == SMILES and plain.lines[0] == 2
    assert np.isnan(plain.labels[3, 0]) and np.isnan(plain.labels[2, 1])
    assert plain.labels[0].tolist() == [1.0, 0.0]
    np.testing.assert_array_equal(plain.labels, packed.labels)
    assert read_smiles_table(tmp_path / "t.csv", tasks=["b"]).labels.shape == (10, 1)


def test_table_errors_name_the_file_line_and_column(tmp_path: Path) -> None:
    bad = write_table(tmp_path / "bad.csv", a=["1", "0", "x", *A[3:]])
    with pytest.raises(ValueError, match=r"bad\.csv, line 4, column 'a': 'x' is not a number"):
        read_smiles_table(bad)
    with pytest.raises(KeyError, match=r"no SMILES column 'mol'"):
        read_smiles_table(tmp_path / "bad.csv", smiles_column="mol")
    with pytest.raises(KeyError, match=r"task column\(s\) \['c'\] not in the header"):
        read_smiles_table(write_table(tmp_path / "t.csv"), tasks=["c"])
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        read_smiles_table(tmp_path / "nope.csv")


def test_fingerprints_are_rdkits_ecfp4_bit_vectors() -> None:
    """Against RDKit's classic API, the one DeepChem's CircularFingerprint calls."""
    from rdkit import Chem, DataStructs
    from rdkit.Chem import AllChem

    bits, valid = morgan_fingerprints([*SMILES, "not a smiles"], radius=2, size=1024)
    assert valid.tolist() == [True] * 10 + [False] and not bits[-1].any()
    for row, smiles in zip(bits, SMILES, strict=False):
        vector = AllChem.GetMorganFingerprintAsBitVect(Chem.MolFromSmiles(smiles), 2, nBits=1024)
        expected = np.zeros(1024, dtype=np.uint8)
        DataStructs.ConvertToNumpyArray(vector, expected)
        np.testing.assert_array_equal(row, expected)


def test_scaffold_split_by_hand() -> None:
    """Sets sorted (size, first row) largest first: benzene (5), pyridine (3), cyclohexane,
    no ring. Cut-offs int(0.8 * 10) = 8, int(0.9 * 10) = 9: both big sets fill train (8 <= 8),
    cyclohexane goes to val, the last to test."""
    assert scaffold_sets(SMILES) == [[1, 3, 5, 7, 9], [2, 6, 8], [4], [0]]
    parts = split_indices(SMILES, "scaffold")
    assert parts["train"].tolist() == [1, 2, 3, 5, 6, 7, 8, 9]
    assert parts["val"].tolist() == [4] and parts["test"].tolist() == [0]


def test_index_and_random_splits_cover_the_rows_once() -> None:
    index = split_indices(SMILES, "index")
    assert index["train"].tolist() == list(range(8)) and index["test"].tolist() == [9]
    first, again = split_indices(SMILES, "random", seed=3), split_indices(SMILES, "random", seed=3)
    other = split_indices(SMILES, "random", seed=4)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["train"], other["train"])
    rows = np.concatenate([first["train"], first["val"], first["test"]])
    assert sorted(rows.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="fractions must be three numbers"):
        split_indices(SMILES, "index", fractions=(0.8, 0.3, 0.1))


def test_balancing_weights_by_hand() -> None:
    labels = np.array([[1, 0], [0, 0], [0, np.nan], [0, 0], [np.nan, 0]], dtype=float)
    # task 0: 1 positive, 3 negatives -> 3; task 1: no positive -> 1; missing -> 0
    expected = [[3, 1], [1, 1], [1, 0], [1, 1], [0, 1]]
    np.testing.assert_array_equal(balancing_weights(labels), expected)


def _module(tmp_path: Path, **kwargs) -> MoleculeNetDataModule:  # type: ignore[no-untyped-def]
    defaults = dict(fingerprint_size=64, cache_dir=str(tmp_path / "cache"), batch_size=4)
    return MoleculeNetDataModule(str(tmp_path / "t.csv"), **{**defaults, **kwargs})


def test_datamodule_batches_carry_masks_and_balancing_weights(tmp_path: Path) -> None:
    write_table(tmp_path / "t.csv")
    dm = _module(tmp_path, split="index")
    assert [(s.name, s.kind) for s in dm.task_specs] == [("a", "binary"), ("b", "binary")]
    dm.setup()
    x, _, masks, weights = next(iter(dm.test_dataloader()))  # row 9 only
    assert x.shape == (1, 64) and masks["a"].tolist() == [True] and not masks["b"].item()
    # a: 3 positives, 5 negatives over the whole file -> a negative weighs 1; b: missing -> 0
    assert weights["a"].tolist() == [1.0] and weights["b"].tolist() == [0.0]
    _, _, _, val_weights = next(iter(dm.val_dataloader()))  # row 8: a missing, b negative
    assert val_weights["a"].tolist() == [0.0] and val_weights["b"].tolist() == [1.0]
    _, first, _, first_weights = dm.datasets["train"][0]  # row 0: a positive (3 of 8 labelled)
    assert first["a"].item() == 1.0 and first_weights["a"].item() == pytest.approx(5 / 3)


def test_features_are_cached_by_content_and_featuriser(tmp_path: Path) -> None:
    write_table(tmp_path / "t.csv")
    first = _module(tmp_path)
    bits, _ = first.features()
    assert first.cache_status == "computed"
    second = _module(tmp_path)
    cached, _ = second.features()
    assert second.cache_status == "hit"
    np.testing.assert_array_equal(bits, cached)
    np.testing.assert_array_equal(bits, morgan_fingerprints(SMILES, size=64)[0])
    radius = _module(tmp_path, fingerprint_radius=1)
    radius.features()
    assert radius.cache_status == "computed"
    write_table(tmp_path / "t.csv", a=["0", *A[1:]])  # the file changed: its features recomputed
    changed = _module(tmp_path)
    changed.features()
    assert changed.cache_status == "computed"


def test_invalid_smiles_is_an_error_naming_its_line_or_skipped_and_counted(tmp_path: Path) -> None:
    write_table(tmp_path / "t.csv", smiles=[*SMILES[:4], "C1CC(", *SMILES[5:]])
    with pytest.raises(ValueError, match=r"t\.csv, line 6: RDKit cannot parse the SMILES 'C1CC\('"):
        _module(tmp_path).setup()
    dm = _module(tmp_path, invalid_smiles="skip", split="index")
    with pytest.warns(UserWarning, match=r"1 row\(s\) of .* left out"):
        dm.setup()
    assert dm.skipped_lines == [6]
    assert sum(len(ds) for ds in dm.datasets.values()) == 9


def test_kinds_and_arguments_are_checked(tmp_path: Path) -> None:
    write_table(tmp_path / "t.csv", a=["0.5", *A[1:]])
    with pytest.raises(ValueError, match=r"kind='binary' but a label is 0\.5"):
        _module(tmp_path, kind="binary")
    with pytest.raises(ValueError, match="balance=False for regression"):
        _module(tmp_path)
    dm = _module(tmp_path, balance=False)
    assert dm.task_specs[0].kind == "regression"
    with pytest.raises(ValueError, match="split must be one of"):
        _module(tmp_path, split="stratified")


def test_fit_resumes_identically(tmp_path: Path) -> None:
    write_table(tmp_path / "t.csv")

    def make_module(dm: MoleculeNetDataModule) -> MultiTaskModule:
        return MultiTaskModule(
            MLPEncoder(64, [8]),
            dm.task_specs,
            optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
            plots=False,
        )

    assert_resumes_identically(tmp_path, lambda: _module(tmp_path, split="random"), make_module)


def test_compare_takes_delta_m_over_the_tasks_aucs(tmp_path: Path) -> None:
    from lit_mtl.compare import ComparisonConfig, run_comparison

    write_table(
        tmp_path / "t.csv",
        [SMILES[i % 10] for i in range(40)],
        ["1", "0"] * 20,
        ["0", "1", "1", "0"] * 10,
    )
    raw = {
        "name": "molecules",
        "output_dir": str(tmp_path / "out"),
        "seeds": [0],
        "single_task": True,
        "metrics": ["auroc"],
        "methods": {"equal": {"class_path": "lit_mtl.EqualWeighting"}},
        "fit": {
            "trainer": {
                "max_epochs": 1,
                "accelerator": "cpu",
                "devices": 1,
                "enable_model_summary": False,
            },
            "model": {
                "class_path": "lit_mtl.MultiTaskModule",
                "init_args": {
                    "encoder": {
                        "class_path": "lit_mtl.MLPEncoder",
                        "init_args": {"in_features": 64, "hidden": [8]},
                    },
                    "ranking_metrics": True,
                },
            },
            "data": {
                "class_path": "lit_mtl.data.MoleculeNetDataModule",
                "init_args": {
                    "path": str(tmp_path / "t.csv"),
                    "fingerprint_size": 64,
                    "cache_dir": str(tmp_path / "cache"),
                    "split": "random",
                    "fractions": [0.5, 0.25, 0.25],
                    "batch_size": 8,
                },
            },
        },
    }
    summary = run_comparison(ComparisonConfig(**raw), log=lambda _: None)
    assert [r["method"] for r in summary["rows"]] == ["single-task", "equal"]
    assert summary["rows"][1]["metric_keys"] == ["a/auroc", "b/auroc"]
    assert all(0 <= summary["rows"][1][k][0] <= 1 for k in ("a/auroc", "b/auroc"))
    assert np.isfinite(summary["rows"][1]["delta_m"][0])


def test_columns_with_dots_or_slashes_become_valid_task_names(tmp_path: Path) -> None:
    """ToxCast's columns hold '.' (NVS_GPCR_hDRD4.4), which task names cannot (module keys)."""
    path = write_table(tmp_path / "t.csv")
    path.write_text(path.read_text().replace("smiles,a,b", "smiles,ASSAY.4,TOX/b", 1))
    dm = _module(tmp_path, split="index")
    assert dm.task_names == ["ASSAY_4", "TOX_b"]
    assert dm.task_of_column == {"ASSAY.4": "ASSAY_4", "TOX/b": "TOX_b"}
    dm.setup()
    _, targets, masks, weights = next(iter(dm.train_dataloader()))
    assert set(targets) == set(masks) == set(weights) == {"ASSAY_4", "TOX_b"}
    path.write_text(path.read_text().replace("ASSAY.4,TOX/b", "A.b,A/b", 1))
    with pytest.raises(ValueError, match=r"'A\.b' and 'A/b' would both be task 'A_b'"):
        _module(tmp_path, split="index")
