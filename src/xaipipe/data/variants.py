"""Image variants, applied to the full-resolution decoded image (PIL, RGB) before any resize.

- ``original``: unchanged
- ``jpeg``: a JPEG round trip at ``quality`` (Pillow defaults otherwise, e.g. chroma
  subsampling), as the IDGI study's lossy set (``ShreeSinghi/TMLR-IDGI``: ``lossy.py``)
- ``blur``: ``PIL.ImageFilter.GaussianBlur(radius)`` (Pillow's radius is the Gaussian σ), as the
  IDGI study's blurred PIC references (``ShreeSinghi/TMLR-IDGI``: ``blur.py``); stored losslessly

A variant is a function registered in :data:`VARIANTS` with its declared ``params``.
"""
from __future__ import annotations

import io

from PIL import Image, ImageFilter

from ..params import Param, check_params
from ..registry import Registry

VARIANTS = Registry("variant")


def _variant(params: dict[str, Param]):
    def wrap(fn):
        fn.params = params
        return VARIANTS.register(fn)
    return wrap


@_variant({})
def original(image: Image.Image) -> Image.Image:
    return image


@_variant({"quality": Param(75, int, min=1, max=100, doc="JPEG quality")})
def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


@_variant({"radius": Param(20.0, float, min=0.0, doc="Gaussian σ in pixels (PIL radius)")})
def blur(image: Image.Image, radius: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=radius))


def check_variant(name: str, params: dict | None, where: str | None = None) -> dict:
    fn = VARIANTS.get(name, where)
    return check_params(fn.params, params or {}, where or f"variants.{name}")


def apply_variant(name: str, image: Image.Image, **params) -> Image.Image:
    p = check_variant(name, params)
    return VARIANTS.get(name)(image.convert("RGB"), **p)
