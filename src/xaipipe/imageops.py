"""Tensor image operations shared by methods, metrics and data preparation."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius round(4σ) by default (kernel 2·round(4σ)+1)."""
    if radius is None:
        radius = int(round(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-channel separable Gaussian blur of (N, C, H, W) with reflect padding
    (torchvision ``gaussian_blur`` semantics; the radius is capped at side−1 so any σ works).
    σ ≤ 0 returns the input."""
    if sigma <= 0:
        return images
    n, c, h, w = images.shape
    out = images
    for dim, side in ((3, w), (2, h)):
        radius = min(int(round(4 * sigma)), side - 1)
        if radius < 1:
            continue
        k = gaussian_kernel1d(sigma, radius).to(images.device, images.dtype)
        shape = (1, 1, 1, -1) if dim == 3 else (1, 1, -1, 1)
        pad = (radius, radius, 0, 0) if dim == 3 else (0, 0, radius, radius)
        x = F.pad(out.reshape(n * c, 1, h, w), pad, mode="reflect")
        out = F.conv2d(x, k.view(shape)).reshape(n, c, h, w)
    return out


def reduce_channels(maps: torch.Tensor, reduction: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) by a named reduction (`attribution-methods.md` §1.3):
    ``sum`` (signed), ``abs_sum``, ``abs_of_sum``, ``max`` (signed), ``max_abs``, ``mean``."""
    if reduction == "sum":
        return maps.sum(1)
    if reduction == "abs_sum":
        return maps.abs().sum(1)
    if reduction == "abs_of_sum":
        return maps.sum(1).abs()
    if reduction == "max":
        return maps.amax(1)
    if reduction == "max_abs":
        return maps.abs().amax(1)
    if reduction == "mean":
        return maps.mean(1)
    raise ValueError(f"unknown reduction {reduction!r}; allowed: {', '.join(REDUCTIONS)}")


REDUCTIONS = ("sum", "abs_sum", "abs_of_sum", "max", "max_abs", "mean")
