"""Pointing Game (Zhang et al., Excitation Backprop; TorchRay ``benchmark/pointing_game.py``).

The point P of an image is the arg-max of its map, reduced over channels (``abs_sum`` for
signed maps) and, when coarser than the ground-truth mask, upsampled bilinearly to the mask's
H×W (``align_corners=False``); ties go to the first pixel in row-major order. A **hit** occurs
iff some ground-truth pixel lies at squared distance < τ² from P (strict, as TorchRay), with
τ = tolerance · min(H, W) / reference_size (15 px at 224 px; ``reference_size: null`` takes
the tolerance in pixels as given). An image with an empty mask has no ground truth: its
``hit`` is NaN and ``mask_empty`` is True, and the summary leaves it out.

Summary: ``hit`` is the mean of the per-class accuracies hits/(hits + misses) over the classes
(``target``) that have evaluated images (TorchRay), with a bootstrap interval that resamples
images; ``hit_global`` is hits/(hits + misses) over all images.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..maths.imageops import REDUCTIONS, reduce_channels
from ..params import Param
from .statistics import bootstrap_index_blocks, column_seed
from .base import Metric, MetricInputs, register_metric, summary_row


def points(maps: torch.Tensor, size: tuple[int, int], reduction: str = "abs_sum") -> torch.Tensor:
    """(N, C, h, w) maps -> (N, 2) long (y, x) arg-max at ``size`` (first in row-major order)."""
    red = reduce_channels(maps.float(), reduction)
    if tuple(red.shape[-2:]) != tuple(size):
        red = F.interpolate(red[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = red.flatten(1)
    index = torch.arange(flat.shape[1], device=flat.device).expand_as(flat)
    top = flat == flat.amax(1, keepdim=True)
    first = torch.where(top, index, flat.shape[1]).amin(1)   # explicit first maximum
    return torch.stack([first // size[1], first % size[1]], 1)


def tolerance_px(tolerance: float, size: tuple[int, int], reference_size: int | None) -> float:
    """τ in pixels at ``size``: tolerance · min(H, W) / reference_size."""
    if reference_size is None:
        return float(tolerance)
    return float(tolerance) * min(size) / reference_size


def boxes_to_masks(boxes, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) bool: the union of each image's boxes, (K, 4) rows (xmin, ymin, xmax, ymax) in
    pixels, 0-based and inclusive, clipped to the image (an image without boxes: empty)."""
    h, w = size
    out = torch.zeros((len(boxes), h, w), dtype=torch.bool)
    for i, b in enumerate(boxes):
        for x0, y0, x1, y1 in np.asarray(b, np.float64).reshape(-1, 4):
            x0, y0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
            x1, y1 = min(int(np.floor(x1)), w - 1), min(int(np.floor(y1)), h - 1)
            if x1 >= x0 and y1 >= y0:
                out[i, y0:y1 + 1, x0:x1 + 1] = True
    return out


def pointing_game(maps: torch.Tensor, masks, tolerance: float = 15,
                  reference_size: int | None = 224, reduction: str = "abs_sum",
                  size: tuple[int, int] | None = None) -> dict:
    """Per-image Pointing Game: ``hit`` (N,) float 1/0 (NaN where the mask is empty),
    ``mask_empty`` (N,) bool, and the point ``point_y``, ``point_x`` at mask resolution.
    ``masks``: (N, H, W) bool ground-truth regions, or a list of per-image boxes (K, 4)
    (xmin, ymin, xmax, ymax; 0-based, inclusive) in the pixels of ``size`` (default: the
    maps' H × W), rasterised by :func:`boxes_to_masks`."""
    if isinstance(masks, (list, tuple)):
        masks = boxes_to_masks(masks, tuple(size or torch.as_tensor(maps).shape[-2:]))
    masks = torch.as_tensor(masks)
    n = masks.shape[0] if masks.ndim else 0
    metric = PointingGame(tolerance=tolerance, reference_size=reference_size,
                          reduction=reduction)
    return metric(MetricInputs(ids=np.arange(n), target=torch.zeros(n, dtype=torch.long),
                               maps=torch.as_tensor(maps), masks=masks))


def _pointing_game(maps, masks, tolerance, reference_size, reduction) -> dict:
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    masks = masks.to(maps.device).bool()
    size = tuple(masks.shape[-2:])
    p = points(maps, size, reduction)                             # (N, 2)
    tau = tolerance_px(tolerance, size, reference_size)
    ys = torch.arange(size[0], device=maps.device, dtype=torch.float64)
    xs = torch.arange(size[1], device=maps.device, dtype=torch.float64)
    d2 = ((ys[None, :, None] - p[:, 0, None, None]) ** 2
          + (xs[None, None, :] - p[:, 1, None, None]) ** 2)      # (N, H, W)
    hit = (masks & (d2 < tau ** 2)).flatten(1).any(1).cpu().numpy()
    empty = ~masks.flatten(1).any(1).cpu().numpy()
    return {"hit": np.where(empty, np.nan, hit.astype(np.float64)), "mask_empty": empty,
            "point_y": p[:, 0].cpu().numpy(), "point_x": p[:, 1].cpu().numpy()}


@register_metric
class PointingGame(Metric):
    """Needs only the maps and the ground-truth masks (no model)."""
    name = "pointing_game"
    params = {
        "tolerance": Param(15.0, float, min=0.0, doc="τ in pixels at reference_size"),
        "reference_size": Param(224, (int, type(None)), min=1,
                                doc="side at which tolerance is given; τ scales with "
                                    "min(H, W); null: tolerance in pixels as given"),
        "reduction": Param("abs_sum", str, REDUCTIONS, doc="channel reduction of the map"),
    }
    scalars = ("hit",)
    needs = frozenset({"masks"})
    direction = "higher"
    excludes = {"hit": "mask_empty"}

    def compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        p = self.hparams
        return _pointing_game(inputs.maps, inputs.masks, p.tolerance, p.reference_size,
                              p.reduction)

    @classmethod
    def aggregate(cls, df: pd.DataFrame, *, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0) -> list[dict]:
        """``hit``: the mean of the per-class accuracies (class = ``target``; classes without
        evaluated images left out) with a percentile bootstrap interval over images;
        ``hit_global``: hits/(hits + misses) with its interval."""
        hit = df["hit"].to_numpy(np.float64) if "hit" in df else np.zeros(0)
        if "target" not in df and hit.size:
            raise ValueError("pointing_game.aggregate needs the 'target' column (the class)")
        cls_ids = df["target"].to_numpy() if "target" in df else np.zeros(0, np.int64)
        ok = np.isfinite(hit)
        mean, lo, hi = class_mean_ci(hit[ok], cls_ids[ok], n_boot, level,
                                     column_seed(seed, "hit"))
        row = {"score": "hit", "n": int(ok.sum()), "mean": mean, "ci_low": lo, "ci_high": hi,
               "direction": cls.direction, "excluded": int(hit.size - ok.sum())}
        glob = summary_row(cls, "hit_global", hit, n_boot=n_boot, level=level,
                           seed=column_seed(seed, "hit_global"))
        return [row, glob]


def class_mean(hit: np.ndarray, classes: np.ndarray) -> float:
    """Mean over the classes present of the per-class mean of ``hit``."""
    if hit.size == 0:
        return np.nan
    _, codes = np.unique(classes, return_inverse=True)
    sums = np.bincount(codes, weights=hit)
    counts = np.bincount(codes)
    return float((sums / counts).mean())


def class_mean_ci(hit: np.ndarray, classes: np.ndarray, n_boot: int = 1000,
                  level: float = 0.95, seed: int = 0):
    """(class mean, low, high): :func:`class_mean` and its percentile bootstrap interval,
    resampling images (a class absent from a resample is left out of that resample's mean)."""
    hit = np.asarray(hit, np.float64)
    if hit.size == 0:
        return np.nan, np.nan, np.nan
    _, codes = np.unique(classes, return_inverse=True)
    k = int(codes.max()) + 1
    means = np.empty(n_boot, np.float64)
    for start, idx in bootstrap_index_blocks(hit.size, n_boot, np.random.default_rng(seed)):
        b = len(idx)                                  # resamples in this block
        flat = (np.arange(b)[:, None] * k + codes[idx]).ravel()
        sums = np.bincount(flat, weights=hit[idx].ravel(), minlength=b * k).reshape(b, k)
        counts = np.bincount(flat, minlength=b * k).reshape(b, k)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[start:start + b] = np.nanmean(np.where(counts > 0, sums / counts, np.nan),
                                                axis=1)
    a = (1 - level) / 2
    return (class_mean(hit, classes), float(np.quantile(means, a)),
            float(np.quantile(means, 1 - a)))
