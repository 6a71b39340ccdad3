"""The dense task kinds: segmentation, depth, normals, dense regression.

A dense task predicts a map at the target's resolution from a feature map ``(N, C, h, w)`` (the
prediction is resized bilinearly to the target's ``(H, W)`` when the head's output differs), with
the losses of the MTAN / CAGrad / Nash-MTL / FAMO code:

* ``segmentation``: target (N, H, W) class indices, pixel cross-entropy; missing pixels carry
  the spec's ``ignore_index`` (-1 in the NYUv2 / CityScapes files, -100 by default);
* ``depth``: target (N, 1, H, W) or (N, H, W), L1 over valid pixels (finite, not 0);
* ``normals``: target (N, 3, H, W) unit vectors, the prediction is L2-normalised and the loss is
  1 - cosine over valid pixels (finite, not the zero vector);
* ``dense_regression``: target (N, d, H, W), MSE over the non-NaN entries.

Their metrics and the two reductions in use (``pooled``, ``per_batch``) are in
:mod:`lit_mtl.functional.dense_metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_mtl.functional.dense_metrics import (
    depth_metrics,
    depth_statistics,
    depth_valid,
    normal_metrics,
    normal_statistics,
    normal_statistics_size,
    normal_valid,
    segmentation_metrics,
    segmentation_statistics,
)
from lit_mtl.tasks.heads import DenseHead
from lit_mtl.tasks.kinds import TaskKind, register_kind
from lit_mtl.tasks.vector_kinds import ClassIndices, SquaredError

if TYPE_CHECKING:
    from lit_mtl.tasks.spec import TaskSpec


class DenseKind(TaskKind):
    """A kind whose prediction and target are maps; the default head is a
    :class:`~lit_mtl.tasks.DenseHead`."""

    dense = True
    resize_mode = "bilinear"
    #: the target layout named in errors
    layout = "(N, d, H, W)"

    def default_head(self, in_features: int, num_outputs: int) -> nn.Module:
        return DenseHead(in_features, num_outputs)

    def check_target(self, spec: TaskSpec, target: Tensor, n: int, where: str) -> None:
        if not target.is_floating_point():
            raise TypeError(
                f"{where}: {self.name} targets must be floating point, got dtype {target.dtype}"
            )
        ok = target.dim() == 4 and target.shape[1] == spec.num_outputs
        self._check_layout(target, ok, n, where, self.layout.replace("d", str(spec.num_outputs)))

    @staticmethod
    def _check_layout(target: Tensor, ok: bool, n: int, where: str, layout: str) -> None:
        if not ok or target.shape[0] != n:
            raise ValueError(
                f"{where}: target shape {tuple(target.shape)} does not match the expected "
                f"{layout} for a batch of {n} samples"
            )

    def align_target(self, spec: TaskSpec, pred: Tensor, target: Tensor) -> Tensor:
        """An error naming the task when the prediction's spatial size is not the target's."""
        spatial = tuple(target.shape[-2:])
        if tuple(pred.shape[-2:]) != spatial:
            raise ValueError(
                f"task {spec.name!r} ({self.name}): prediction of size {tuple(pred.shape[-2:])} "
                f"for a target of size {spatial}; the head must output at the target's "
                "resolution (MultiTaskModule resizes to the target's size)"
            )
        return target


@register_kind
class SegmentationKind(ClassIndices, DenseKind):
    """``"segmentation"``: C classes per pixel, targets (N, H, W) class indices; ``miou`` and
    ``pix_acc`` from one confusion matrix."""

    name = "segmentation"
    resize_mode = "nearest"
    uses_dense_reduction = True
    metric_directions: ClassVar[Mapping[str, bool]] = {"miou": True, "pix_acc": True}
    percent_metrics = frozenset({"miou", "pix_acc"})

    def check_target(self, spec: TaskSpec, target: Tensor, n: int, where: str) -> None:
        if target.is_floating_point() or target.dtype == torch.bool:
            raise TypeError(
                f"{where}: segmentation targets must be an integer tensor of class indices "
                f"(use {spec.ignore_index} for a missing pixel), got dtype {target.dtype}"
            )
        self._check_layout(target, target.dim() == 3, n, where, "(N, H, W)")

    def class_statistics(
        self, spec: TaskSpec, pred: Tensor, safe_target: Tensor, present: Tensor
    ) -> Tensor:
        return segmentation_statistics(pred, safe_target, present)

    def statistics_size(self, num_outputs: int, reduction: str) -> int:
        return 1 + 3 * num_outputs

    def metrics_of(self, num_outputs: int, stats: Tensor, reduction: str) -> dict[str, Tensor]:
        return segmentation_metrics(stats, num_outputs)


class _Geometry(DenseKind):
    """Depth and normals: one masked pass, exact and free of host reads (invalid pixels are the
    rule in these targets, not the exception), so no fast path."""

    has_fast_path = False
    uses_dense_reduction = True


@register_kind
class DepthKind(_Geometry):
    """``"depth"``: targets (N, 1, H, W) or (N, H, W), L1 over the valid pixels (finite, not 0);
    ``abs_err`` and ``rel_err``."""

    name = "depth"
    fixed_outputs = 1
    resize_mode = "nearest"
    uncertainty_form = "laplace"
    metric_directions: ClassVar[Mapping[str, bool]] = {"abs_err": False, "rel_err": False}

    def check_target(self, spec: TaskSpec, target: Tensor, n: int, where: str) -> None:
        if not target.is_floating_point():
            raise TypeError(
                f"{where}: depth targets must be floating point, got dtype {target.dtype}"
            )
        ok = (target.dim() == 4 and target.shape[1] == 1) or target.dim() == 3
        self._check_layout(target, ok, n, where, "(N, 1, H, W) or (N, H, W)")

    def align_target(self, spec: TaskSpec, pred: Tensor, target: Tensor) -> Tensor:
        if target.dim() == 3:
            target = target.unsqueeze(1)
        return super().align_target(spec, pred, target)

    def labelled(self, spec: TaskSpec, target: Tensor) -> Tensor:
        return depth_valid(target)

    def per_element_loss(
        self, spec: TaskSpec, pred: Tensor, target: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        p = pred.float()
        safe_target = torch.where(present, target.float(), p.detach())
        return (p - safe_target).abs(), safe_target

    def statistics(
        self,
        spec: TaskSpec,
        pred: Tensor,
        safe_target: Tensor,
        present: Tensor,
        count: Tensor,
        per_element: Tensor,
        reduction: str,
    ) -> Tensor:
        return depth_statistics(pred, safe_target, present, reduction)

    def statistics_size(self, num_outputs: int, reduction: str) -> int:
        return 3

    def metrics_of(self, num_outputs: int, stats: Tensor, reduction: str) -> dict[str, Tensor]:
        return depth_metrics(stats)

    def augmented_target(self, target: Tensor, scale: float, mirrored: bool) -> Tensor:
        return target / scale  # the camera moved closer by the scale


@register_kind
class NormalsKind(_Geometry):
    """``"normals"``: targets (N, 3, H, W) unit vectors; the prediction is L2-normalised, the
    loss 1 - cosine over the valid pixels (finite, not the zero vector); angle metrics."""

    name = "normals"
    fixed_outputs = 3
    uncertainty_form = "von_mises_fisher"
    layout = "(N, 3, H, W)"
    metric_directions: ClassVar[Mapping[str, bool]] = {
        "angle_mean": False,
        "angle_median": False,
        "within_11_25": True,
        "within_22_5": True,
        "within_30": True,
    }
    percent_metrics = frozenset({"within_11_25", "within_22_5", "within_30"})

    def shape_prediction(self, spec: TaskSpec, out: Tensor) -> Tensor:
        return F.normalize(out, dim=1)  # unit normals, as the papers' models

    def labelled(self, spec: TaskSpec, target: Tensor) -> Tensor:
        return normal_valid(target)  # (N, H, W): one flag per pixel

    def per_element_loss(
        self, spec: TaskSpec, pred: Tensor, target: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        p = pred.float()
        safe_target = torch.where(present[:, None], target.float(), 0.0)
        cosine = (p * safe_target).sum(dim=1)  # (N, H, W); p is unit length
        return 1.0 - cosine, safe_target

    def statistics(
        self,
        spec: TaskSpec,
        pred: Tensor,
        safe_target: Tensor,
        present: Tensor,
        count: Tensor,
        per_element: Tensor,
        reduction: str,
    ) -> Tensor:
        return normal_statistics(pred, safe_target, present, reduction)

    def statistics_size(self, num_outputs: int, reduction: str) -> int:
        return normal_statistics_size(reduction)

    def metrics_of(self, num_outputs: int, stats: Tensor, reduction: str) -> dict[str, Tensor]:
        return normal_metrics(stats, reduction)

    def augmented_target(self, target: Tensor, scale: float, mirrored: bool) -> Tensor:
        if not mirrored:
            return target
        target = target.clone()
        target[0] = -target[0]  # the x component of a mirrored normal
        return target


@register_kind
class DenseRegressionKind(SquaredError, DenseKind):
    """``"dense_regression"``: d real channels per pixel, targets (N, d, H, W), MSE over the
    non-NaN entries."""

    name = "dense_regression"
