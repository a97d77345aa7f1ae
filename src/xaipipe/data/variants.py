"""Image variants, applied to the full-resolution decoded image (PIL, RGB) before any resize.

- ``original``: unchanged
- ``jpeg``: a JPEG round trip at ``quality`` (Pillow defaults otherwise, e.g. chroma
  subsampling), as the IDGI study's lossy set (`metrics.md` §2.5)
- ``blur``: ``PIL.ImageFilter.GaussianBlur(radius)`` (Pillow's radius is the Gaussian σ), as the
  IDGI study's blurred PIC references (`metrics.md` §2.6); stored losslessly
"""
from __future__ import annotations

import io

from PIL import Image, ImageFilter

from ..errors import ConfigError
from ..params import Param, check_params

VARIANTS: dict[str, dict[str, Param]] = {
    "original": {},
    "jpeg": {"quality": Param(75, int, min=1, max=100, doc="JPEG quality")},
    "blur": {"radius": Param(20.0, float, min=0.0, doc="Gaussian σ in pixels (PIL radius)")},
}


def check_variant(name: str, params: dict | None, where: str | None = None) -> dict:
    if name not in VARIANTS:
        raise ConfigError(f"{where or 'variants'}: unknown variant {name!r}; "
                          f"allowed: {', '.join(VARIANTS)}")
    return check_params(VARIANTS[name], params or {}, where or f"variants.{name}")


def apply_variant(name: str, image: Image.Image, **params) -> Image.Image:
    p = check_variant(name, params)
    image = image.convert("RGB")
    if name == "original":
        return image
    if name == "jpeg":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=p["quality"])
        buf.seek(0)
        return Image.open(buf).convert("RGB")
    return image.filter(ImageFilter.GaussianBlur(radius=p["radius"]))
