"""The joint augmentation of the MTAN / CAGrad / Nash-MTL / FAMO NYUv2 code, as pure functions.

Random scale-crop: pick s from ``scales`` (1, 1.2, 1.5), crop an (H/s, W/s) window at a random
position and resize it back to (H, W): the image and the normals bilinearly (``align_corners=
True``, the normals not renormalised, as in their ``RandomScaleCrop``), labels and depth by
nearest neighbour, and depth divided by s (the camera moved closer by s). Horizontal flip with
probability 1/2: every map is mirrored and the normals' x component negated.

Draws come from a ``torch.Generator`` the caller seeds, so a DataModule can make them a function of
(seed, epoch, batch) and a resumed run sees the same augmentations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_mtl.tasks.kinds import get_kind


def scale_crop_flip(
    image: Tensor,
    targets: Mapping[str, Tensor],
    kinds: Mapping[str, str],
    generator: torch.Generator,
    scales: Sequence[float] = (1.0, 1.2, 1.5),
    flip: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One sample: ``image`` (C, H, W), dense ``targets`` by task name ((H, W) labels,
    (1, H, W) depth, (3, H, W) normals; other targets pass through), ``kinds`` by task name.

    >>> g = torch.Generator().manual_seed(0)
    >>> depth = {"d": torch.ones(1, 8, 8)}
    >>> img, out = scale_crop_flip(torch.zeros(3, 8, 8), depth, {"d": "depth"}, g)
    >>> img.shape, out["d"].shape
    (torch.Size([3, 8, 8]), torch.Size([1, 8, 8]))
    """
    height, width = image.shape[-2:]
    pick = int(torch.randint(len(scales), (1,), generator=generator))
    scale = float(scales[pick])
    h, w = int(height / scale), int(width / scale)
    top = int(torch.randint(height - h + 1, (1,), generator=generator))
    left = int(torch.randint(width - w + 1, (1,), generator=generator))
    mirror = flip and bool(torch.rand((), generator=generator) < 0.5)

    def crop(x: Tensor, mode: str) -> Tensor:
        x = x[..., top : top + h, left : left + w]
        if (h, w) != (height, width):
            batch = x[None] if x.dim() == 3 else x[None, None]
            if mode == "nearest":
                resized = F.interpolate(batch.float(), size=(height, width), mode="nearest")
            else:
                resized = F.interpolate(
                    batch.float(), size=(height, width), mode="bilinear", align_corners=True
                )
            x = resized[0] if x.dim() == 3 else resized[0, 0]
            x = x.to(batch.dtype)
        return x.flip(-1) if mirror else x

    out_image = crop(image, "bilinear")
    out: dict[str, Tensor] = {}
    for name, target in targets.items():
        kind = get_kind(kinds[name]) if name in kinds else None
        if kind is None or kind.resize_mode is None:
            out[name] = target  # not a map
            continue
        out[name] = kind.augmented_target(crop(target, kind.resize_mode), scale, mirror)
    return out_image, out


def augment_batch(
    images: Tensor,
    targets: Mapping[str, Tensor],
    kinds: Mapping[str, str],
    generator: torch.Generator,
    scales: Sequence[float] = (1.0, 1.2, 1.5),
    flip: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`scale_crop_flip` on every sample of a batch ((N, C, H, W) images, targets with a
    leading N), on the batch's device."""
    out_images = []
    out_targets: dict[str, list[Tensor]] = {name: [] for name in targets}
    for i in range(images.shape[0]):
        image, sample = scale_crop_flip(
            images[i], {k: v[i] for k, v in targets.items()}, kinds, generator, scales, flip
        )
        out_images.append(image)
        for name, value in sample.items():
            out_targets[name].append(value)
    return torch.stack(out_images), {k: torch.stack(v) for k, v in out_targets.items()}
