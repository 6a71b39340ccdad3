"""Dense metrics against direct implementations of the formulas they claim (numpy, per pixel)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_mtl.functional.dense_metrics import ANGLE_BIN_DEGREES, exact_median
from lit_mtl.metrics.dense import DepthMetrics, NormalMetrics, SegmentationMetrics


def _batches(seed: int = 0, num: int = 3, n: int = 2, h: int = 6, w: int = 7):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        logits = torch.randn(n, 4, h, w, generator=g)
        seg = torch.randint(-1, 4, (n, h, w), generator=g)  # -1: ignored
        depth_t = torch.rand(n, 1, h, w, generator=g) + 0.5
        depth_t[torch.rand(n, 1, h, w, generator=g) < 0.3] = 0.0  # invalid
        depth_p = depth_t + 0.3 * torch.randn(n, 1, h, w, generator=g)
        normal_t = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
        normal_t[:, :, torch.rand(h, w, generator=g) < 0.25] = 0.0  # invalid
        normal_p = normal_t + 0.6 * torch.randn(n, 3, h, w, generator=g)
        out.append((logits, seg, depth_p, depth_t, normal_p, normal_t))
    return out


# ------------------------------------------------------------------ direct implementations
def _confusion(batches) -> np.ndarray:
    c = 4
    mat = np.zeros((c, c))
    for logits, seg, *_ in batches:
        pred = logits.argmax(1).numpy().ravel()
        t = seg.numpy().ravel()
        for ti, pi in zip(t, pred, strict=True):
            if ti >= 0:
                mat[ti, pi] += 1
    return mat


def _seg_reference(batches) -> dict[str, float]:
    h = _confusion(batches)
    union = h.sum(0) + h.sum(1) - np.diag(h)
    return {
        "miou": float(np.mean(np.diag(h)[union > 0] / union[union > 0])),
        "pix_acc": float(np.diag(h).sum() / h.sum()),
    }


def _depth_pixels(p, t):
    p, t = p.numpy().ravel(), t.numpy().ravel()
    valid = t != 0
    return np.abs(p[valid] - t[valid]), np.abs(p[valid] - t[valid]) / t[valid]


def _angles(p, t):
    p = torch.nn.functional.normalize(p, dim=1).numpy()
    t = t.numpy()
    valid = np.abs(t).sum(1) != 0
    cos = np.clip((p * t).sum(1)[valid], -1, 1)
    return np.degrees(np.arccos(cos))


def _normal_summary(err: np.ndarray) -> dict[str, float]:
    return {
        "angle_mean": err.mean(),
        "angle_median": np.median(err),
        "within_11_25": np.mean(err < 11.25),
        "within_22_5": np.mean(err < 22.5),
        "within_30": np.mean(err < 30),
    }


def _reference(batches, reduction: str) -> dict[str, float]:
    out = {f"seg/{k}": v for k, v in _seg_reference(batches).items()}
    if reduction == "pooled":
        pixels = [_depth_pixels(b[2], b[3]) for b in batches]
        out["depth/abs_err"] = np.concatenate([a for a, _ in pixels]).mean()
        out["depth/rel_err"] = np.concatenate([r for _, r in pixels]).mean()
        errors = np.concatenate([_angles(b[4], b[5]) for b in batches])
        out.update({f"normal/{k}": v for k, v in _normal_summary(errors).items()})
    else:  # the Nash-MTL code: each batch's value, then the mean over batches
        pixels = [_depth_pixels(b[2], b[3]) for b in batches]
        out["depth/abs_err"] = np.mean([a.mean() for a, _ in pixels])
        out["depth/rel_err"] = np.mean([r.mean() for _, r in pixels])
        rows = [_normal_summary(_angles(b[4], b[5])) for b in batches]
        out.update({f"normal/{k}": np.mean([r[k] for r in rows]) for k in rows[0]})
    return {k: float(v) for k, v in out.items()}


def _ours(batches, reduction: str) -> dict[str, float]:
    seg, depth, normal = (
        SegmentationMetrics(4, -1, reduction),
        DepthMetrics(reduction),
        NormalMetrics(reduction),
    )
    for logits, s, dp, dt, np_, nt in batches:
        seg.update(logits, s)
        depth.update(dp, dt)
        normal.update(np_, nt)
    out = {f"seg/{k}": float(v) for k, v in seg.compute().items()}
    out.update({f"depth/{k}": float(v) for k, v in depth.compute().items()})
    out.update({f"normal/{k}": float(v) for k, v in normal.compute().items()})
    return out


@pytest.mark.parametrize("reduction", ["pooled", "per_batch"])
def test_metrics_equal_the_direct_formulas(reduction: str) -> None:
    batches = _batches()
    ours, reference = _ours(batches, reduction), _reference(batches, reduction)
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        # the pooled median comes from 0.01-degree bins: within half a bin
        tol = (
            ANGLE_BIN_DEGREES / 2
            if key == "normal/angle_median" and reduction == "pooled"
            else 1e-5 * max(1.0, abs(value))
        )
        assert ours[key] == pytest.approx(value, abs=tol), key


def test_the_reductions_differ_where_the_papers_do() -> None:
    batches = _batches(seed=1)
    pooled, per_batch = _ours(batches, "pooled"), _ours(batches, "per_batch")
    assert pooled["seg/miou"] == per_batch["seg/miou"]  # one confusion matrix in both
    assert pooled["normal/angle_median"] != pytest.approx(
        per_batch["normal/angle_median"], abs=1e-3
    )


def test_exact_median_is_numpys() -> None:
    for n in (1, 2, 7, 10):
        values = torch.randn(n, generator=torch.Generator().manual_seed(n))
        assert float(exact_median(values)) == pytest.approx(float(np.median(values.numpy())))


def test_metrics_of_nothing_valid_are_empty_and_bad_labels_are_named() -> None:
    depth = DepthMetrics()
    depth.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert depth.compute() == {}
    seg = SegmentationMetrics(3, ignore_index=-1)
    with pytest.raises(ValueError, match=r"labels must be 0\.\.2 or ignore_index=-1"):
        seg.update(torch.zeros(1, 3, 1, 2), torch.tensor([[[0, 5]]]))


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    batches = _batches(seed=2, num=4)[rank::world]  # each rank sees its share of the batches
    # compute() syncs the states across ranks
    values = {reduction: _ours(batches, reduction) for reduction in ("pooled", "per_batch")}
    torch.save(values, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_metric_over_two_ranks_is_the_metric_over_the_union(tmp_path: Path) -> None:
    port = 29500 + (os.getpid() % 1000)
    # fork: the ranks start from this process's imports (spawn would import torch twice more)
    mp.start_processes(_rank, args=(2, port, str(tmp_path)), nprocs=2, start_method="fork")
    for rank in (0, 1):
        values = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for reduction in ("pooled", "per_batch"):
            union = _ours(_batches(seed=2, num=4), reduction)
            assert values[reduction] == pytest.approx(union, rel=1e-9, abs=1e-12), reduction
