"""Exact ranking metrics of a binary task: ROC-AUC and average precision (PRC-AUC).

Both are read from the sorted scores, with tied scores grouped as one threshold, as
scikit-learn's ``roc_auc_score`` and ``average_precision_score`` compute them (no binning):

* ROC-AUC = P(score of a random positive > score of a random negative) + 1/2 P(tie), the
  Mann-Whitney U statistic over n_pos n_neg: (sum of the positives' mid-ranks - n_pos (n_pos +
  1) / 2) / (n_pos n_neg);
* average precision = sum over thresholds t (descending) of (R_t - R_{t-1}) P_t, with P_t and
  R_t the precision and recall of predicting positive every score >= t.

Either is undefined (``None`` here, never NaN) when the entries have no positive or no negative.
MoleculeNet reports the mean over tasks of each task's ROC-AUC over its labelled entries.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _checked(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if scores.shape != labels.shape or scores.dim() != 1:
        raise ValueError(
            f"scores and labels must be 1-D and of one shape, got {tuple(scores.shape)} and "
            f"{tuple(labels.shape)}"
        )
    return scores.detach().double(), labels.detach().bool()


def roc_auc(scores: Tensor, labels: Tensor) -> float | None:
    """ROC-AUC of ``scores`` (any monotone score: logits or probabilities) against 0/1
    ``labels``, ties counted one half; ``None`` without a positive or without a negative.

    >>> roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    0.75
    """
    scores, labels = _checked(scores, labels)
    positives = int(labels.sum())
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        return None
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    # mid-rank of each distinct value (1-based): the ranks before it plus (count + 1) / 2
    before = torch.cumsum(counts, 0) - counts
    mid_rank = before.double() + (counts.double() + 1) / 2
    rank_sum = float(mid_rank[inverse][labels].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def average_precision(scores: Tensor, labels: Tensor) -> float | None:
    """Average precision (scikit-learn's step-wise PRC area) of ``scores`` against 0/1
    ``labels``; ``None`` without a positive or without a negative.

    >>> average_precision(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    0.8333333333333333
    """
    scores, labels = _checked(scores, labels)
    positives = int(labels.sum())
    if positives == 0 or positives == labels.numel():
        return None
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores, sorted_labels = scores[order], labels[order].double()
    true_positives = torch.cumsum(sorted_labels, 0)
    predicted = torch.arange(1, labels.numel() + 1, dtype=torch.float64)
    # one threshold per distinct score: the last position of each run of ties
    last = torch.ones_like(sorted_scores, dtype=torch.bool)
    last[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    tp, n = true_positives[last], predicted[last]
    precision, recall = tp / n, tp / positives
    steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((steps * precision).sum())
