"""Dense tasks inside MultiTaskModule: the papers' losses, missing pixels and samples, every
weighting on a feature map, logged metrics, bf16 and 2-process DDP."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from test_weighting import METHODS

from lit_mtl import (
    DenseCNNEncoder,
    DepthMetrics,
    DilatedResNetEncoder,
    MLPEncoder,
    MultiTaskModule,
    NormalMetrics,
    ProceduralScenesDataModule,
    SegmentationMetrics,
    UPGrad,
)
from lit_mtl.tasks import Task, TaskSpec

from conftest import fast_trainer

SEG = TaskSpec("seg", "segmentation", 4, ignore_index=-1)
DEPTH = TaskSpec("depth", "depth", 1)
NORMAL = TaskSpec("normal", "normals", 3)


def _tensors(seed: int = 0, n: int = 3, h: int = 5, w: int = 6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 4, h, w, generator=g, requires_grad=True)
    seg = torch.randint(-1, 4, (n, h, w), generator=g)
    depth_p = torch.rand(n, 1, h, w, generator=g, requires_grad=True)
    depth_t = torch.rand(n, 1, h, w, generator=g)
    depth_t[:, :, :2] = 0
    normal_p = F.normalize(torch.randn(n, 3, h, w, generator=g), dim=1).requires_grad_()
    normal_t = F.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
    normal_t[..., :3] = 0
    return logits, seg, depth_p, depth_t, normal_p, normal_t


def test_losses_are_the_papers() -> None:
    """MTAN / Nash-MTL ``model_fit``: nll(log_softmax, ignore -1); sum(|p - t| * mask) / #mask;
    1 - sum(p . t * mask) / #mask, mask = target channels summing to non-zero."""
    logits, seg, dp, dt, np_, nt = _tensors()
    ours = [Task(SEG, 4).evaluate(logits, seg, fast=fast)[0] for fast in (False, True)]
    reference = F.nll_loss(F.log_softmax(logits, dim=1), seg, ignore_index=-1)
    assert all(torch.allclose(v, reference) for v in ours)
    mask = (dt.sum(dim=1) != 0).unsqueeze(1).float()
    reference = (torch.abs(dp - dt) * mask).sum() / torch.nonzero(mask).size(0)
    assert torch.allclose(Task(DEPTH, 4).evaluate(dp, dt)[0], reference)
    mask = (nt.sum(dim=1) != 0).float()
    reference = 1 - torch.sum((np_ * nt).sum(dim=1) * mask) / torch.nonzero(mask).size(0)
    assert torch.allclose(Task(NORMAL, 4).evaluate(np_, nt)[0], reference)


def test_missing_pixels_and_samples() -> None:
    logits, seg, dp, dt, np_, nt = _tensors()
    sample_mask = torch.tensor([True, False, True])
    for spec, pred, target in ((SEG, logits, seg), (DEPTH, dp, dt), (NORMAL, np_, nt)):
        task = Task(spec, 4)
        masked = task.evaluate(pred, target, sample_mask)[0]
        kept = task.evaluate(pred[[0, 2]], target[[0, 2]])[0]
        assert torch.allclose(masked, kept), spec.kind
        nothing = task.evaluate(pred, target, torch.zeros(3, dtype=torch.bool))
        assert nothing[0].item() == 0.0 and nothing[0].grad_fn is not None  # still in the graph
        assert nothing[1][0].item() == 0.0  # nothing counted
        # a batch whose only labels are invalid pixels counts nothing either
    assert Task(DEPTH, 4).evaluate(dp, torch.zeros_like(dt))[1][0].item() == 0


def test_bad_dense_targets_are_named() -> None:
    task = Task(SEG, 4)
    with pytest.raises(
        ValueError,
        match=r"label 7 in the batch; labels must be class indices "
        r"0..3, with -1",
    ):
        logits = torch.zeros(1, 4, 1, 2)
        target = torch.tensor([[[0, 7]]])
        task.evaluate(logits, target, fast=True)
        task.fast_path_exact(task.probe(target).tolist(), target)
    with pytest.raises(TypeError, match="segmentation targets must be an integer tensor"):
        task.check_target(torch.zeros(1, 2, 2), 1)
    with pytest.raises(ValueError, match=r"expected \(N, 3, H, W\)"):
        Task(NORMAL, 4).check_target(torch.zeros(1, 2, 2, 2), 1)
    with pytest.raises(ValueError, match=r"prediction of size .* for a target of size"):
        Task(DEPTH, 4).evaluate(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 3, 3))
    module = MultiTaskModule(MLPEncoder(4, [8]), [DEPTH], plots=False)
    with pytest.raises(ValueError, match="a dense task needs an encoder that keeps a feature map"):
        module(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="a depth task has num_outputs=1"):
        TaskSpec("d", "depth", 2)
    with pytest.raises(ValueError, match="ignore_index=2 must be an integer outside"):
        TaskSpec("s", "segmentation", 4, ignore_index=2)


def test_predictions_come_at_the_target_size_from_a_stride_8_encoder() -> None:
    encoder = DilatedResNetEncoder("resnet18")
    module = MultiTaskModule(encoder, [SEG, DEPTH, TaskSpec("kind", "multiclass", 3)], plots=False)
    module.eval()
    out = module(torch.zeros(2, 3, 32, 40))
    assert out["seg"].shape == (2, 4, 32, 40) and out["depth"].shape == (2, 1, 32, 40)
    assert out["kind"].shape == (2, 3)  # image-level head on the pooled map
    assert type(module.tasks["seg"].head).__name__ == "DeepLabHead"


def scenes(**overrides) -> ProceduralScenesDataModule:  # type: ignore[no-untyped-def]
    kwargs = dict(image_size=16, num_train=16, num_val=8, num_test=8, batch_size=8, seed=0)
    kwargs.update(overrides)
    return ProceduralScenesDataModule(**kwargs)


def dense_module(dm: ProceduralScenesDataModule, weighting=None, **kw) -> MultiTaskModule:  # type: ignore[no-untyped-def]
    return MultiTaskModule(
        DenseCNNEncoder(3, (8, 8)),
        dm.task_specs,
        weighting,
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
        plots=False,
        **kw,
    )


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_on_a_feature_map(name: str) -> None:
    L.seed_everything(0)
    dm = scenes()
    module = dense_module(dm, METHODS[name]())
    trainer = fast_trainer(max_epochs=1, limit_val_batches=1)
    trainer.fit(module, dm)
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())
    metrics = trainer.callback_metrics
    for task in ("segmentation", "depth", "normal"):
        assert torch.isfinite(metrics[f"train/{task}/weight"])
    assert {"val/segmentation/miou", "val/depth/abs_err", "val/normal/angle_median"} <= set(metrics)


@pytest.mark.parametrize("reduction", ["pooled", "per_batch"])
def test_logged_metrics_equal_the_metric_objects(reduction: str) -> None:
    L.seed_everything(0)
    dm = scenes(num_val=12, batch_size=5)  # uneven last batch: per-batch != pooled
    module = dense_module(dm, dense_reduction=reduction)
    logged = fast_trainer().validate(module, dm, verbose=False)[0]
    metrics = {
        "segmentation": SegmentationMetrics(4, reduction=reduction),
        "depth": DepthMetrics(reduction),
        "normal": NormalMetrics(reduction),
    }
    module.eval()
    with torch.no_grad():
        for x, targets in dm.val_dataloader():
            preds = module(x)
            for name, metric in metrics.items():
                metric.update(preds[name], targets[name])
    for name, metric in metrics.items():
        for key, value in metric.compute().items():
            assert logged[f"val/{name}/{key}"] == pytest.approx(float(value), rel=1e-4), key


def test_bf16_dense_fit_is_finite() -> None:
    L.seed_everything(0)
    dm = scenes()
    module = dense_module(dm, UPGrad(target="representation"))
    trainer = fast_trainer(max_epochs=1, precision="bf16-mixed", limit_val_batches=1)
    trainer.fit(module, dm)
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert torch.isfinite(trainer.callback_metrics["val/normal/angle_mean"])


class _SavePerRank(L.Callback):
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        torch.save((state, metrics), self.directory / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_dense_ranks_stay_identical(tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = scenes(num_train=32, num_val=16, batch_size=4)
    module = dense_module(dm, UPGrad(target="representation"))
    trainer = fast_trainer(
        max_epochs=2, devices=2, strategy="ddp_fork", callbacks=[_SavePerRank(tmp_path)]
    )
    trainer.fit(module, dm)
    (state0, metrics0), (state1, metrics1) = (
        torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)
    )
    for key in state0:
        assert torch.equal(state0[key], state1[key]), key
    assert metrics0 == metrics1 and "val/normal/angle_median" in metrics0


def test_scenes_are_learned_far_beyond_uninformed_predictors() -> None:
    """A few epochs on the procedural scenes: each task clearly beats the predictor that
    ignores the image (majority class, mean depth, mean normal)."""
    L.seed_everything(0)
    dm = ProceduralScenesDataModule(
        image_size=32, num_train=384, num_val=64, num_test=128, batch_size=32, seed=1
    )
    module = MultiTaskModule(
        DenseCNNEncoder(3, (16, 32, 32)),
        dm.task_specs,
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
        plots=False,
    )
    trainer = fast_trainer(max_epochs=4, limit_val_batches=0)
    trainer.fit(module, dm)
    learned = trainer.test(module, dm, verbose=False)[0]
    uninformed = dm.uninformed_metrics()
    assert learned["test/segmentation/miou"] > uninformed["segmentation/miou"] + 0.3
    assert learned["test/depth/abs_err"] < 0.5 * uninformed["depth/abs_err"]
    assert learned["test/normal/angle_mean"] < 0.6 * uninformed["normal/angle_mean"]


def test_segnet_mtan_is_the_papers_size_with_attention_per_task() -> None:
    """MTAN (CVPR 2019) reports 44.229 M parameters for SegNet-MTAN on NYUv2's three tasks."""
    from lit_mtl import SegNetMTAN

    specs = [
        TaskSpec("segmentation", "segmentation", 13, ignore_index=-1),
        TaskSpec("depth", "depth"),
        TaskSpec("normal", "normals", 3),
    ]
    module = MultiTaskModule(SegNetMTAN(), specs, plots=False)
    assert sum(p.numel() for p in module.parameters()) / 1e6 == pytest.approx(44.229, abs=5e-4)
    small = SegNetMTAN(3, (4, 4, 8, 8, 8))
    small.bind_tasks(["a", "b"])
    first, _second = small(torch.randn(2, 3, 32, 32))
    first.sum().backward()  # task a's output never reaches task b's attention modules
    assert all(p.grad is None for p in small.encoder_att[1].parameters())
    assert all(p.grad is not None for p in small.encoder_att[0].parameters())
    shared = {id(p) for p in small.shared_parameters()}
    assert not shared & {id(p) for p in small.encoder_att.parameters()}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_with_mtan(name: str) -> None:
    from lit_mtl import SegNetMTAN

    L.seed_everything(0)
    dm = scenes(image_size=32, num_train=8, num_val=4, batch_size=4)
    module = MultiTaskModule(
        SegNetMTAN(3, (4, 4, 4, 4, 4)), dm.task_specs, METHODS[name](), plots=False
    )
    if name == "gradnorm":  # W: the SegNet's last convolution, not a task's attention
        assert module.weighting.engine.gradients.params[0] is module.encoder.up[0][-1][0].weight
    trainer = fast_trainer(max_epochs=1, limit_val_batches=1)
    trainer.fit(module, dm)
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())
