"""Exact ROC-AUC and average precision: scikit-learn's values, ties included; undefined is None."""

from __future__ import annotations

import pytest
import torch

from lit_mtl.functional.ranking_metrics import average_precision, roc_auc

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("tied", [False, True], ids=["distinct", "tied"])
def test_equal_to_scikit_learn(tied: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    for n in (2, 5, 17, 200):
        scores = torch.randn(n, generator=generator)
        if tied:  # a handful of distinct values: many ties across the classes
            scores = scores.mul(2).round()
        labels = torch.arange(n) % 2 == 0  # both classes present
        labels = labels[torch.randperm(n, generator=generator)]
        y, s = labels.numpy(), scores.numpy()
        assert roc_auc(scores, labels) == pytest.approx(sklearn_metrics.roc_auc_score(y, s), 1e-12)
        assert average_precision(scores, labels) == pytest.approx(
            sklearn_metrics.average_precision_score(y, s), 1e-12
        )


def test_by_hand_and_undefined() -> None:
    scores, labels = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])
    # pairs (pos, neg): (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, both) yes -> 3 / 4
    assert roc_auc(scores, labels) == 0.75
    # thresholds 0.8 (P 1, R 1/2), 0.4 (P 1/2), 0.35 (P 2/3, R 1): 1/2 * 1 + 1/2 * 2/3
    assert average_precision(scores, labels) == pytest.approx(5 / 6)
    assert roc_auc(torch.tensor([1.0, 1.0]), torch.tensor([0, 1])) == 0.5  # a tie counts 1/2
    assert (
        roc_auc(scores, torch.ones(4)) is None and average_precision(scores, torch.zeros(4)) is None
    )
    with pytest.raises(ValueError, match="1-D and of one shape"):
        roc_auc(scores, labels[:3])
