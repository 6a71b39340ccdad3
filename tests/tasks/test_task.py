"""Task: masked losses, metric inputs and clear errors for bad targets."""

from __future__ import annotations

import math

import pytest
import torch

from lit_mtl.tasks import IGNORE_INDEX, Task, TaskSpec, as_task_spec


def make(kind: str, num_outputs: int = 1) -> Task:
    torch.manual_seed(0)
    return Task(TaskSpec("t", kind, num_outputs), in_features=4)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        TaskSpec("a", "ranking")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="binary task has num_outputs=1"):
        TaskSpec("a", "binary", 2)
    with pytest.raises(ValueError, match="must not contain"):
        TaskSpec("a/b")
    with pytest.raises(ValueError, match="unknown keys"):
        as_task_spec({"name": "a", "classes": 3})
    assert as_task_spec({"name": "a", "kind": "multiclass", "num_outputs": 3}) == TaskSpec(
        "a", "multiclass", 3
    )


def test_regression_loss_ignores_nan_targets() -> None:
    task = make("regression")
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0])
    target = torch.tensor([1.5, float("nan"), 2.0, float("nan")])
    # (0.5^2 + 1^2) / 2 labelled samples
    assert task.loss(pred, target).item() == pytest.approx((0.25 + 1.0) / 2)


def test_multiclass_loss_ignores_ignore_index_and_mask() -> None:
    task = make("multiclass", 3)
    pred = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    target = torch.tensor([0, IGNORE_INDEX, 1])
    expected = (-torch.log_softmax(pred[0], 0)[0] - torch.log_softmax(pred[2], 0)[1]).item() / 2
    assert task.loss(pred, target).item() == pytest.approx(expected)
    mask = torch.tensor([True, True, False])  # also drop the third sample
    assert task.loss(pred, target, mask).item() == pytest.approx(
        -torch.log_softmax(pred[0], 0)[0].item()
    )


@pytest.mark.parametrize(
    ("kind", "num_outputs", "target"),
    [
        ("regression", 1, torch.full((4,), float("nan"))),
        ("regression", 2, torch.full((4, 2), float("nan"))),
        ("binary", 1, torch.full((4,), float(IGNORE_INDEX))),
        ("multiclass", 3, torch.full((4,), IGNORE_INDEX)),
        ("multilabel", 3, torch.full((4, 3), IGNORE_INDEX)),
    ],
)
def test_unlabelled_batch_gives_zero_loss_and_zero_grad(
    kind: str, num_outputs: int, target: torch.Tensor
) -> None:
    task = make(kind, num_outputs)
    z = torch.randn(4, 4)
    pred = task(z)
    loss = task.loss(pred, target)
    assert loss.item() == 0.0 and not math.isnan(loss.item())
    loss.backward()
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in task.parameters())
    assert task.evaluate(pred.detach(), target)[1][0].item() == 0  # no labelled entry counted


def test_binary_and_multilabel_losses() -> None:
    task = make("binary")
    pred = torch.tensor([0.0, 2.0, -1.0])
    target = torch.tensor([1.0, 0.0, float("nan")])
    expected = (math.log(2) + math.log1p(math.exp(2.0))) / 2
    assert task.loss(pred, target).item() == pytest.approx(expected, rel=1e-5)
    ml = make("multilabel", 2)
    pred = torch.zeros(2, 2)
    target = torch.tensor([[1, IGNORE_INDEX], [0, 1]])
    assert ml.loss(pred, target).item() == pytest.approx(math.log(2), rel=1e-5)


def test_statistics_count_only_labelled_entries() -> None:
    task = make("regression")
    pred = torch.arange(4.0)
    target = torch.tensor([0.5, float("nan"), 1.0, float("nan")])
    _, stats = task.evaluate(pred, target)
    assert stats.tolist() == [2.0, 0.25 + 1.0, 0.5 + 1.0]  # count, squared, absolute errors


CASES = [  # kind, num_outputs, a fully labelled target of 6 samples
    ("regression", 1, torch.randn(6)),
    ("regression", 3, torch.randn(6, 3)),
    ("binary", 1, torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])),
    ("binary", 1, torch.tensor([0, 1, 1, 0, 1, 0])),
    ("multiclass", 4, torch.tensor([0, 3, 1, 1, 2, 3])),
    ("multilabel", 3, torch.randint(0, 2, (6, 3))),
]


@pytest.mark.parametrize(("kind", "num_outputs", "target"), CASES)
def test_unmasked_path_equals_masked_path(
    kind: str, num_outputs: int, target: torch.Tensor
) -> None:
    torch.manual_seed(0)
    task = make(kind, num_outputs)
    pred = task(torch.randn(6, 4))
    assert task.fast_path_exact(task.probe(target).tolist(), target) is True
    fast_loss, fast_stats = task.evaluate(pred, target, fast=True)
    loss, stats = task.evaluate(pred, target)
    assert fast_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.allclose(fast_stats, stats, rtol=1e-6)
    assert fast_stats.shape == (task.statistics_size,)
    (g_fast,) = torch.autograd.grad(fast_loss, pred)
    (g,) = torch.autograd.grad(loss, pred)
    assert torch.allclose(g_fast, g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("kind", "num_outputs", "target"),
    [
        ("regression", 1, torch.tensor([1.0, float("nan")])),
        ("binary", 1, torch.tensor([1.0, float("nan")])),
        ("binary", 1, torch.tensor([1, IGNORE_INDEX])),
        ("multiclass", 3, torch.tensor([IGNORE_INDEX, IGNORE_INDEX])),
        ("multiclass", 3, torch.tensor([2, IGNORE_INDEX])),
        ("multilabel", 2, torch.tensor([[1, IGNORE_INDEX], [0, 1]])),
        ("regression", 1, torch.zeros(0)),
    ],
)
def test_missing_labels_are_exact_on_the_fast_path_or_sent_back(
    kind: str, num_outputs: int, target: torch.Tensor
) -> None:
    """The fast path is either exact (multiclass: cross-entropy ignores -100) or flagged: by the
    probe or by a non-finite loss; the module then redoes the task on the masked path."""
    task = make(kind, num_outputs)
    pred = task(torch.randn(target.shape[0], 4))
    fast_loss, fast_stats = task.evaluate(pred, target, fast=True)
    exact = task.fast_path_exact(task.probe(target).tolist(), target)
    if exact and math.isfinite(fast_loss.item()):
        loss, stats = task.evaluate(pred, target)
        assert fast_loss.item() == pytest.approx(loss.item(), rel=1e-6)
        assert torch.allclose(fast_stats, stats)
    else:
        assert kind != "multiclass" or target.eq(IGNORE_INDEX).all()


@pytest.mark.parametrize(
    ("kind", "num_outputs", "target", "match"),
    [
        ("multiclass", 3, torch.tensor([0, 3]), r"label 3 in the batch; labels must be class"),
        ("multiclass", 3, torch.tensor([0, -5]), r"label -5 in the batch"),
        ("multiclass", 3, torch.tensor([IGNORE_INDEX, 7]), r"label 7"),
        ("binary", 1, torch.tensor([0.0, 2.0]), r"label 2 in the batch; labels must be 0 or 1"),
        ("binary", 1, torch.tensor([0.0, 0.5]), r"label 0.5 in the batch"),
        ("binary", 1, torch.tensor([float("nan"), 0.5]), r"label 0.5 in the batch"),
        ("multilabel", 2, torch.tensor([[0, 1], [2, 0]]), r"label 2"),
    ],
)
def test_invalid_label_values_name_the_task_and_the_value(
    kind: str, num_outputs: int, target: torch.Tensor, match: str
) -> None:
    task = make(kind, num_outputs)
    pred = task(torch.randn(target.shape[0], 4))
    with pytest.raises(ValueError, match=match) as info:
        fast = task.fast_path_exact(task.probe(target).tolist(), target)
        task.evaluate(pred, target, fast=fast)
    assert "task 't'" in str(info.value)


@pytest.mark.parametrize(
    ("kind", "num_outputs", "target", "error", "match"),
    [
        ("multiclass", 3, torch.zeros(4, 3), TypeError, "integer tensor of class indices"),
        ("multiclass", 3, torch.zeros(5, dtype=torch.long), ValueError, r"shape \(5,\)"),
        ("regression", 2, torch.zeros(4), ValueError, r"expected \(4, 2\)"),
        ("regression", 1, torch.zeros(4, dtype=torch.long), TypeError, "floating point"),
        ("multilabel", 3, torch.zeros(4, 2), ValueError, r"expected \(4, 3\)"),
    ],
)
def test_bad_target_errors_name_the_task(
    kind: str, num_outputs: int, target: torch.Tensor, error: type, match: str
) -> None:
    task = make(kind, num_outputs)
    with pytest.raises(error, match=match) as info:
        task.check_target(target, 4)
    assert "task 't'" in str(info.value)


def test_baseline_loss_is_log_c() -> None:
    assert make("multiclass", 10).baseline_loss() == pytest.approx(math.log(10))
    assert make("regression").baseline_loss() is None


def test_sample_weights_give_the_weighted_mean_of_the_labelled_losses() -> None:
    """Hand computation: MSE terms 1, 4, 9 (the third missing) with weights 2, 1, 5: (2*1 +
    1*4) / 3 = 2; binary and depth take the same weighted mean; zero weights give 0."""
    task = Task(TaskSpec("r"), 4)
    pred = torch.tensor([1.0, 2.0, 3.0])
    target = torch.tensor([0.0, 0.0, float("nan")])
    loss, stats = task.evaluate(pred, target, weight=torch.tensor([2.0, 1.0, 5.0]))
    assert loss.item() == pytest.approx(2.0)
    assert stats[0].item() == 2  # the metrics stay unweighted: 2 labelled entries
    zero, _ = task.evaluate(pred, target, weight=torch.zeros(3))
    assert zero.item() == 0.0
    binary = Task(TaskSpec("b", "binary"), 4)
    logits, labels = torch.tensor([0.5, -1.0]), torch.tensor([1.0, 0.0])
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    weighted, _ = binary.evaluate(logits, labels, weight=torch.tensor([3.0, 1.0]))
    assert weighted.item() == pytest.approx(((3 * per[0] + per[1]) / 4).item())
    depth = Task(TaskSpec("d", "depth"), 4)
    d_pred = torch.ones(2, 1, 2, 2)
    d_target = torch.full((2, 1, 2, 2), 3.0)
    d_target[1] = 2.0
    d_loss, _ = depth.evaluate(d_pred, d_target, weight=torch.tensor([1.0, 3.0]))
    assert d_loss.item() == pytest.approx((4 * 2 * 1 + 4 * 1 * 3) / (4 * 1 + 4 * 3))
    with pytest.raises(ValueError, match=r"task 'r': sample weights must be a \(N,\) tensor"):
        task.evaluate(pred, target, weight=torch.ones(2))
    with pytest.raises(ValueError, match="finite and >= 0"):
        task.evaluate(pred, target, weight=torch.tensor([1.0, -1.0, 1.0]))


def test_weighted_losses_divided_by_the_batch_size() -> None:
    """``weighted_denominator="batch"``: the same MSE terms 1, 4 (9 missing) with weights 2, 1,
    5 give (2*1 + 1*4) / 3 samples = 2 (here equal to sum w = 3 by construction) and with
    weights 4, 1, 5: (4 + 4) / 3 against (4 + 4) / 5 for "weights"."""
    pred = torch.tensor([1.0, 2.0, 3.0])
    target = torch.tensor([0.0, 0.0, float("nan")])
    batch = Task(TaskSpec("r"), 4, weighted_denominator="batch")
    weights = Task(TaskSpec("r"), 4)
    w = torch.tensor([4.0, 1.0, 5.0])
    assert batch.evaluate(pred, target, weight=w)[0].item() == pytest.approx(8 / 3)
    assert weights.evaluate(pred, target, weight=w)[0].item() == pytest.approx(8 / 5)
    depth = Task(TaskSpec("d", "depth"), 4, weighted_denominator="batch")
    d_target = torch.full((2, 1, 2, 2), 3.0)
    d_loss, _ = depth.evaluate(torch.ones(2, 1, 2, 2), d_target, weight=torch.tensor([1.0, 3.0]))
    assert d_loss.item() == pytest.approx((4 * 2 * 1 + 4 * 2 * 3) / 8)  # 8 pixels
    with pytest.raises(ValueError, match="weighted_loss_denominator must be one of"):
        Task(TaskSpec("r"), 4, weighted_denominator="labelled")


def test_product_logit_is_the_logit_of_the_product_of_probabilities() -> None:
    from lit_mtl.tasks import product_logit

    a = torch.tensor([-30.0, -2.0, 0.0, 3.0, 40.0])
    b = torch.tensor([1.0, 0.5, 0.0, -4.0, 40.0])
    p = torch.sigmoid(product_logit([a, b]))
    assert torch.allclose(p, torch.sigmoid(a) * torch.sigmoid(b), atol=1e-6)
    assert torch.isfinite(product_logit([a, b])).all()  # p = 1 in float32 stays finite


def test_task_relations_are_checked_in_the_spec() -> None:
    with pytest.raises(ValueError, match="parent must name another task"):
        TaskSpec("a", "binary", parent="a")
    with pytest.raises(ValueError, match="product_of must list at least two other tasks"):
        TaskSpec("a", "binary", product_of=("b",))
    with pytest.raises(ValueError, match="a product_of task is binary"):
        TaskSpec("a", "regression", product_of=("b", "c"))
    spec = TaskSpec("ab", "binary", product_of=["a", "b"])  # type: ignore[arg-type]
    assert spec.to_dict() == {
        "name": "ab",
        "kind": "binary",
        "num_outputs": 1,
        "product_of": ["a", "b"],
    }
    assert as_task_spec(spec.to_dict()) == spec
