"""Two-digit overlays (MultiMNIST, Sener & Koltun 2018): pure tensor functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def overlay(left: Tensor, right: Tensor, offset: int) -> Tensor:
    """Place ``left`` at [0:s, 0:s] and ``right`` at [offset:offset+s, ...] of an (s + offset)^2
    canvas, overlap = elementwise max, and resize back to s x s (bilinear).

    MultiMNIST: s = 28, offset = 6 (a 36x36 canvas). ``left``/``right``: (N, s, s) floats.
    """
    n, s, _ = left.shape
    canvas = torch.zeros(n, s + offset, s + offset, dtype=left.dtype)
    canvas[:, :s, :s] = left
    canvas[:, offset:, offset:] = torch.maximum(canvas[:, offset:, offset:], right)
    resized = F.interpolate(
        canvas.unsqueeze(1).float(), size=(s, s), mode="bilinear", align_corners=False
    )
    return resized.squeeze(1).to(left.dtype)


def overlay_pairs(
    images: Tensor, labels: Tensor, generator: torch.Generator, offset: int, copies: int = 1
) -> tuple[Tensor, Tensor]:
    """Pair every image (``copies`` times) with a random other image; returns (x, (N, 2) labels).

    The left digit is the image itself, the right one a partner drawn with ``generator``.
    """
    n = images.shape[0]
    lefts = torch.arange(n).repeat(copies)
    rights = torch.randint(0, n, (n * copies,), generator=generator)
    same = rights == lefts
    rights[same] = (rights[same] + 1) % n
    x = overlay(images[lefts].float(), images[rights].float(), offset)
    return x, torch.stack([labels[lefts], labels[rights]], dim=1)
