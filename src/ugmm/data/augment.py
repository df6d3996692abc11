"""Batched, on-device image augmentation for the in-memory image DataModules."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F  # noqa: N812 - the usual alias

from ugmm.data.base import DataError


class RandomAffine:
    """An independent random rotation, scaling and translation of every image in a batch.

    One ``affine_grid`` + ``grid_sample`` call for the whole batch, on the batch's device, so it
    costs about a millisecond per MNIST batch (torchvision's ``RandomAffine`` draws one transform
    per call, i.e. per batch here). Pixels brought in from outside the image take ``background``
    exactly (standardised MNIST's background is ``-mean/std``, not 0), so the images keep the
    exact constant background the fused kernel's fast path looks for.

    Args:
        degrees: rotation angle drawn uniformly from ``[-degrees, degrees]``.
        translate: shift drawn uniformly from ``[-translate, translate]`` times the image size, per axis.
        scale: zoom factor drawn uniformly from ``[scale[0], scale[1]]``.
        background: the value of an empty pixel.

    Shape: ``(B, C, H, W)`` float -> the same.
    """

    def __init__(
        self,
        degrees: float = 0.0,
        translate: float = 0.0,
        scale: Sequence[float] = (1.0, 1.0),
        background: float = 0.0,
    ) -> None:
        lo, hi = (float(s) for s in scale)
        if not 0.0 <= float(degrees) <= 180.0:
            raise DataError(f"data.augment.degrees must be in [0, 180], got {degrees}")
        if not 0.0 <= float(translate) < 1.0:
            raise DataError(f"data.augment.translate must be in [0, 1), got {translate}")
        if not 0.0 < lo <= hi:
            raise DataError(f"data.augment.scale must be [low, high] with 0 < low <= high, got {list(scale)}")
        self.degrees, self.translate, self.scale = float(degrees), float(translate), (lo, hi)
        self.background = float(background)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x`` transformed; ``generator`` (a CPU one) draws the transforms, else torch's global generator."""
        b = x.shape[0]
        if generator is None:
            u = torch.rand(b, 4, device=x.device, dtype=x.dtype)
        else:  # 4 numbers per image drawn on the CPU: the same on every device, and its state is small
            u = torch.rand(b, 4, generator=generator, dtype=x.dtype).to(x.device, non_blocking=True)
        angle = (2 * u[:, 0] - 1) * math.radians(self.degrees)
        zoom = self.scale[0] + u[:, 1] * (self.scale[1] - self.scale[0])
        # affine_grid maps output coordinates in [-1, 1] to input coordinates: the inverse transform,
        # so rotate by -angle, divide by the zoom, and a shift of t image sizes is 2 t in those units
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        shift = (2 * u[:, 2:] - 1) * (2 * self.translate)
        theta = torch.stack([torch.stack([cos, sin, shift[:, 0]], 1), torch.stack([-sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # sample (x - background) with zero padding: outside pixels and flat regions stay exactly background
        moved = F.grid_sample(x - self.background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return moved.add_(self.background)

    def __repr__(self) -> str:
        return f"RandomAffine(degrees={self.degrees}, translate={self.translate}, scale={self.scale})"
