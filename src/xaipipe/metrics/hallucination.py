"""Hallucination Score of explanation images (Kolek et al., CVPR 2023; ``skmda37/ShearletX``).

HS measures the edges an explanation image x_E adds that the original image x̃ does not have:

    HS(x̃, x_E) = #{pixels : E(x_E) = 1 and D₃ₓ₃(E(x̃)) = 0} / #{pixels : E(x̃) = 1}

with E(·) = 1[CoShREM edge measure > ``threshold`` (0.1)] and D₃ₓ₃ the dilation by a 3×3
all-ones kernel (:func:`dilate3x3`: equals a 3×3 max-pool, stride 1, where the border does not
contribute, i.e. ``kornia.morphology.dilation`` of binary maps). Lower is better; HS ≥ 0.
An image without edges (E(x̃) ≡ 0) has no HS: NaN, flagged in ``no_edges`` and left out of the
summary (``excludes``).

Sources (no code copied): ``skmda37/ShearletX:code/scatterplot.py`` L169-181 and L199-202 (the
binarisation at 0.1, ``kornia.morphology.dilation`` with ``torch.ones(3, 3)``, the count ratio,
x_E divided by its max), ``code/shearlet_edge_detector.py`` (``get_shearlet_based_edges``:
``np.int8(255 * (x.sum(0) / 3))`` of a gray image that the caller already divided by 3,
``EdgeSystem(*shape).detect(gray, min_contrast)`` with ``min_contrast=3`` from the script's
``__main__``), ``code/imagenet/data.py`` (images resized to 256×256). The edge measure is
:mod:`xaipipe.metrics.coshrem` (CoShREM, ``rgcda/PyCoShREM``).

Inputs: the images x̃ (N, 3, H, W) in [0, 1] and the explanation images x_E (N, 3, H, W), or
(N, 1, H, W) gray (broadcast to 3 channels), as torch tensors or numpy arrays. Both are resized
to ``size`` × ``size`` (bilinear, antialiased, ``align_corners=False``; the reference works at
256×256, and the CoShREM system scales with the image side, so a fixed size makes scores
comparable across models) unless already that size; ``size=None`` keeps the native size (then
images and explanations must have the same H×W).

- **clean** (default): x_E is scaled so that its max equals its image's max
  (``normalize=True``, i.e. ``"image"``; an x_E without a positive value, e.g. all zeros, is
  left as it is) at its native size, before both are resized the same way; the detector sees
  gray = mean over RGB × 255 as float64 in [0, 255]. The reference divides x_E "by its
  max" (``normalize="max"``); the two agree for an image whose max is 1, as
  nearly every [0, 1] ImageNet image's is, but CoShREM's ``min_contrast`` is an absolute
  intensity, so for a darker image (a dim photograph, a crop without a bright pixel) dividing
  by the max brightens x_E past x̃ and finds edges x̃ does not have: HS(x̃, x̃) was 0.04-0.06
  for an image of max 0.8 and 0.47 at max 0.5. Scaling to the image's max keeps the score's
  first property, HS(x̃, x̃) = 0, for every image (a decision: ``docs/decisions.md``).
- **compat** (``compat=True`` or ``"shearletx"``): the reference pipeline's input, in float32
  as there: (R+G+B)/3 divided by 3 again, × 255, cast to int8 by truncation, so the detector sees
  integers in [0, 85] (``min_contrast`` = 3 is absolute, so the edge maps differ from the clean
  ones), and ``normalize=True`` divides x_E by its max as the reference does. The reference
  divides ShearletX, WaveletX and pixel-mask explanations by their max but scores the smooth
  mask's mask·x̃ unscaled: the metric does the same, knowing the method from
  ``MetricInputs.method`` (:func:`xaipipe.metrics.cp.compat_normalize`); the function
  :func:`hallucination_score` gets no method, so a caller scoring smooth masks in compat
  passes ``normalize=False``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..params import Param
from .base import NONFINITE_PARAM, Metric, MetricInputs, register_metric
from .coshrem import EdgeDetector
from ..maths.information import max_normalised
from .cp import compat_normalize

__all__ = ["HallucinationScore", "dilate3x3", "edge_maps", "hallucination_score"]

COMPAT = ("shearletx",)
THRESHOLD = 0.1          # binarisation of the edge measure (the reference's)
MIN_CONTRAST = 3.0       # CoShREM's absolute contrast cut-off of the reference script
SIZE = 256               # side the reference scores at (ShearletX ``imagenet/data.py``)


def dilate3x3(edges) -> torch.Tensor:
    """Binary dilation of ``edges`` ((..., H, W), nonzero = edge) by the 3×3 all-ones kernel:
    a pixel is set when any of its 8 neighbours or itself is set; outside the image counts as
    unset. Returns a bool tensor of the same shape."""
    b = torch.as_tensor(edges) != 0
    h, w = b.shape[-2:]
    padded = F.pad(b.to(torch.uint8), (1, 1, 1, 1))
    out = torch.zeros_like(b)
    for dy in range(3):
        for dx in range(3):
            out |= padded[..., dy:dy + h, dx:dx + w].bool()
    return out


def _as_images(x, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"hallucination score: {what} must be (N, 3, H, W) (or (N, 1, H, W) "
                         f"gray), got shape {tuple(x.shape)}")
    return x


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    x = x.float()
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


NORMALIZE = ("image", "max")


def normalise_explanations(images: torch.Tensor, explanations: torch.Tensor, normalize,
                           compat) -> torch.Tensor:
    """x_E as the edge detector should see it: ``normalize`` True (``"image"`` clean,
    ``"max"`` under compat), ``"image"`` (max equal to the image's), ``"max"`` (max 1) or
    False (unchanged)."""
    if normalize is True:
        normalize = "max" if compat else "image"
    if not normalize:
        return explanations
    if normalize not in NORMALIZE:
        raise ValueError(f"hallucination score: normalize={normalize!r}; allowed: True, False, "
                         f"{', '.join(map(repr, NORMALIZE))}")
    to = images.float().flatten(1).amax(1).view(-1, 1, 1, 1) if normalize == "image" else None
    return max_normalised(explanations.float(), to)


def detector_input(x: torch.Tensor, compat: bool) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> the gray image (N, H, W) float64 the edge detector sees:
    mean over RGB × 255 (clean), or the reference's int8 of 255·((R+G+B)/3)/3 (compat)."""
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    if compat:
        gray = x.float().sum(1) / 3                # scatterplot.py: the caller's gray
        return (255 * (gray / 3)).to(torch.int8).to(torch.float64)   # truncation, [0, 85]
    return x.double().mean(1) * 255


def edge_maps(gray, *, threshold: float = THRESHOLD,
              min_contrast: float = MIN_CONTRAST) -> torch.Tensor:
    """E(·): the CoShREM edge measure of ``gray`` ((N, H, W) in [0, 255]) above ``threshold``,
    (N, H, W) bool."""
    gray = torch.as_tensor(gray)
    det = EdgeDetector(int(gray.shape[-2]), int(gray.shape[-1]))
    return det.detect(gray, min_contrast=min_contrast) > threshold


def _hallucination(images, explanations, *, compat, threshold: float, size: int | None,
                   normalize: bool, min_contrast: float,
                   method: str | None = None) -> dict[str, np.ndarray]:
    x = _as_images(images, "images")
    xe = _as_images(explanations, "explanations").to(x.device)
    if x.shape[0] != xe.shape[0]:
        raise ValueError(f"hallucination score: {x.shape[0]} images but {xe.shape[0]} "
                         "explanations")
    xe = normalise_explanations(x, xe, compat_normalize(normalize, compat, method), compat)
    x, xe = _resize(x, size), _resize(xe, size)
    if x.shape[-2:] != xe.shape[-2:]:
        raise ValueError(f"hallucination score: images {tuple(x.shape[-2:])} and explanations "
                         f"{tuple(xe.shape[-2:])} differ in size; give size= to resize both")
    n = x.shape[0]
    gray = torch.cat([detector_input(x, bool(compat)), detector_input(xe, bool(compat))])
    edges = edge_maps(gray, threshold=threshold, min_contrast=min_contrast)
    e_x, e_xe = edges[:n], edges[n:]
    new = e_xe & ~dilate3x3(e_x)
    n_edges = e_x.flatten(1).sum(1).cpu().numpy().astype(np.int64)
    n_new = new.flatten(1).sum(1).cpu().numpy().astype(np.int64)
    no_edges = n_edges == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        hs = np.where(no_edges, np.nan, n_new / np.maximum(n_edges, 1))
    return {"hs": hs.astype(np.float64), "no_edges": no_edges, "n_edges": n_edges,
            "n_hallucinated": n_new}


def hallucination_score(images, explanations, *, compat=False, threshold: float = THRESHOLD,
                        size: int | None = SIZE, normalize: bool | str = True,
                        min_contrast: float = MIN_CONTRAST,
                        on_nonfinite: str = "raise") -> np.ndarray:
    """Per-image Hallucination Score (Kolek et al.) of the explanation images
    ``explanations`` (x_E, (N, 3, H, W) or (N, 1, H, W)) of ``images`` (x̃, (N, 3, H, W) in
    [0, 1]): an (N,) float64 array, NaN where x̃ has no edges (see the module docstring for
    ``compat``, ``size`` and ``normalize``). No model is needed."""
    images = torch.as_tensor(images)
    n = images.shape[0] if images.ndim else 0
    metric = HallucinationScore(threshold=threshold, compat=compat, size=size,
                                normalize=normalize, min_contrast=min_contrast,
                                on_nonfinite=on_nonfinite)
    cols = metric(MetricInputs(ids=np.arange(n), target=torch.zeros(n, dtype=torch.long),
                               maps=torch.as_tensor(explanations), images=images))
    return cols["hs"]


@register_metric
class HallucinationScore(Metric):
    """The maps are the explanation images x_E of mask methods (ShearletX, WaveletX, CartoonX,
    pixel and smooth masks), scored against the images; no model is run. Columns: ``hs``
    (NaN where the image has no edges), ``no_edges`` (bool), ``n_edges`` = #E(x̃) and
    ``n_hallucinated`` = #{E(x_E) and not D(E(x̃))}."""
    name = "hallucination_score"
    params = {
        "threshold": Param(THRESHOLD, float, min=0.0, max=1.0,
                           doc="E = edge measure > threshold"),
        "compat": Param(False, (bool, str, type(None)), COMPAT,
                        doc="true/'shearletx': the reference's detector input, int8 of "
                            "255·gray/3 (gray = (R+G+B)/3); false: mean RGB × 255 as float"),
        "size": Param(SIZE, (int, type(None)), min=8,
                      doc="side both images are resized to (bilinear, antialiased) before "
                          "edge detection; null: native size"),
        "normalize": Param(True, (bool, str), NORMALIZE,
                           doc="scale each x_E: true = 'image' (its max becomes the image's "
                               "max; under compat 'max'), 'max' (divided by its max, the "
                               "reference's), false (as it is); under compat true leaves "
                               "the smooth mask's as it is, as the reference"),
        "min_contrast": Param(MIN_CONTRAST, float, min=0.0,
                              doc="CoShREM's absolute contrast cut-off (intensities 0-255)"),
        "on_nonfinite": NONFINITE_PARAM,
    }
    scalars = ("hs",)
    needs = frozenset({"images"})
    direction = "lower"
    excludes = {"hs": "no_edges"}

    def compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        p = self.hparams
        return _hallucination(inputs.images, inputs.maps, compat=p.compat,
                              threshold=p.threshold, size=p.size,
                              normalize=p.normalize, min_contrast=p.min_contrast,
                              method=inputs.method)
