"""Tensor image operations shared by methods, metrics and data preparation."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..utils import full_precision


def gaussian_kernel1d(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius round(4σ) by default (kernel 2·round(4σ)+1)."""
    if radius is None:
        radius = int(round(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-channel separable Gaussian blur of (N, C, H, W) with reflect padding
    (torchvision ``gaussian_blur`` semantics: kernel 2·round(4σ)+1; the radius is capped at
    side−1 so any σ works). σ ≤ 0 returns the input.

    Computed as B_H · X · B_Wᵀ with the (side × side) matrices of the padded 1-D convolution
    (:func:`blur_matrix`, cached): for large σ this is far cheaper than a convolution with a
    kernel of hundreds of taps, and it is the same linear map."""
    return separable_blur(images, sigma, "reflect")


@full_precision
def separable_blur(images: torch.Tensor, sigma: float, mode: str) -> torch.Tensor:
    """B_H · X · B_Wᵀ with the cached :func:`blur_matrix` of ``mode``; σ ≤ 0: the input."""
    if sigma <= 0:
        return images
    h, w = images.shape[-2:]
    bh = blur_matrix(h, float(sigma), mode, images.device, images.dtype)
    bw = blur_matrix(w, float(sigma), mode, images.device, images.dtype)
    return bh @ images @ bw.T


@functools.lru_cache(maxsize=512)
def blur_matrix(side: int, sigma: float, mode: str, device, dtype) -> torch.Tensor:
    """(side, side) matrix of the 1-D Gaussian blur along one axis, built in float64 by
    blurring the identity: ``reflect`` (radius min(round(4σ), side−1), torchvision) or
    ``zero`` (radius int(4σ + 0.5), zero padding: scipy ``gaussian_filter(mode="constant")``)."""
    eye = torch.eye(side, dtype=torch.float64)
    if mode == "reflect":
        radius = min(int(round(4 * sigma)), side - 1)
    elif mode == "zero":
        radius = int(4.0 * sigma + 0.5)
    else:
        raise ValueError(f"unknown blur padding {mode!r}")
    if radius < 1:
        return eye.to(device, dtype)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    rows = eye[:, None, :]                                     # (side, 1, side): one row each
    rows = F.pad(rows, (radius, radius), mode="reflect" if mode == "reflect" else "constant")
    out = F.conv1d(rows, k.view(1, 1, -1))[:, 0, :]            # out[i] = blur of e_i
    return out.T.contiguous().to(device, dtype)                # (B x)[o] = Σ_i out[i, o] x_i


def reduce_channels(maps: torch.Tensor, reduction: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) by a named reduction (``docs/metrics.md``):
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


def gaussian_blur_zero(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-channel Gaussian blur of (N, C, H, W) with zero padding, as scipy
    ``ndimage.gaussian_filter(mode="constant", truncate=4.0)``: radius int(4σ + 0.5), the
    kernel normalised over it, any radius (it may exceed the image). σ ≤ 0 returns the input
    (PAIR's ``blur_ig.gaussian_blur``)."""
    return separable_blur(images, sigma, "zero")
