"""Named baselines, all in pixel space (the model's normalisation is its first module)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ...maths.imageops import gaussian_blur
from ...utils import generator

BASELINES = ("black", "normzero", "uniform", "blurred", "image_noise")


def make_baseline(kind, images: torch.Tensor, model: nn.Module | None = None, *,
                  seed_parts: Callable[[int], tuple] | None = None, image_ids=None,
                  blur_sigma: float = 10.0) -> torch.Tensor:
    """A baseline per image, same shape as ``images``.

    - ``black``: pixel 0
    - ``normzero``: normalised 0, i.e. the model's mean colour
    - ``uniform``: U[0, 1] per pixel, drawn per image from ``seed_parts(image_id)``
    - ``image_noise``: μ̂ + σ̂·U[0, 1) per pixel, μ̂ and σ̂ the scalar mean and unbiased std
      of the image, drawn like ``uniform`` (the StartGrad faithfulness IG baseline,
      ``BuelentUendes/StartGrad:src/vision/saliency_methods.py``; uniform on [μ̂, μ̂ + σ̂), not
      centred on μ̂)
    - ``blurred``: Gaussian blur of the image with σ = ``blur_sigma`` pixels (reflect padding)
    - a tensor broadcastable to ``images`` is used as given
    """
    if isinstance(kind, torch.Tensor):
        return kind.to(images.device, images.dtype).expand_as(images)
    if kind == "black":
        return torch.zeros_like(images)
    if kind == "normzero":
        mean = getattr(getattr(model, "normalize", None), "mean", None)
        if mean is None:
            raise ValueError("baseline 'normzero' needs a model with a Normalize first module")
        return mean.to(images.dtype).expand_as(images).clone()
    if kind == "uniform":
        if seed_parts is None or image_ids is None:
            raise ValueError("baseline 'uniform'/'image_noise' needs seed_parts and image_ids")
        return torch.stack([
            torch.rand(images.shape[1:], generator=generator(*seed_parts(int(i), "baseline")))
            for i in image_ids]).to(images.device, images.dtype)
    if kind == "image_noise":
        u = make_baseline("uniform", images, seed_parts=seed_parts, image_ids=image_ids)
        flat = images.flatten(1)
        shape = (-1, *([1] * (images.ndim - 1)))
        return flat.mean(1).view(shape) + flat.std(1).view(shape) * u
    if kind == "blurred":
        return gaussian_blur(images, blur_sigma)
    raise ValueError(f"unknown baseline {kind!r}; allowed: {', '.join(BASELINES)} or a tensor")
