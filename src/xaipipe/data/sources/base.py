"""What every data set kind shares: the :class:`Source` base class and its registry
:data:`DATASETS` (each module of :mod:`xaipipe.data.sources` registers one kind), and how a
file becomes an RGB image (:func:`read_image`, :func:`to_rgb`).

Folder-based kinds decode every file completely (:func:`read_image`) and convert it with
:func:`to_rgb` (CMYK, grayscale, palette, 16-bit, alpha composited over ``background``).
A file that cannot be decoded raises :class:`UnreadableImage`.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, ImageColor

from ...errors import ConfigError, DataError
from ...params import Param, check_params
from ...registry import Registry

DATASETS = Registry("dataset kind", package="xaipipe.data.sources")
WHITE = (255, 255, 255)


class UnreadableImage(DataError):
    """A file that cannot be decoded as an image (names the file and the decoder's error)."""

    def __init__(self, file, error: str):
        self.file, self.error = str(file), error
        super().__init__(f"cannot read image {self.file!r}: {error}")


def parse_background(value, where: str = "background") -> tuple[int, int, int]:
    """An RGB triple from a colour name or ``#rrggbb`` (PIL ``ImageColor``), a grey level
    0-255, or a list of three levels."""
    try:
        if isinstance(value, str):
            rgb = ImageColor.getrgb(value)[:3]
        elif isinstance(value, int) and not isinstance(value, bool):
            rgb = (value,) * 3
        else:
            rgb = tuple(value)
            if len(rgb) != 3 or not all(isinstance(v, int) and not isinstance(v, bool)
                                        for v in rgb):
                raise ValueError
        if not all(0 <= v <= 255 for v in rgb):
            raise ValueError
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: {value!r} is not a colour; give a name ('white'), "
                          f"'#rrggbb', a grey level 0-255 or [r, g, b]") from None
    return tuple(int(v) for v in rgb)


def to_rgb(img: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """A decoded image of any PIL mode as 8-bit RGB, converted as the data mean it.

    - ``RGB``: unchanged; ``L``, ``1``, ``CMYK``, ``YCbCr`` ...: PIL's ``convert("RGB")``
    - 16-bit grey (``I;16``, ``I;16B``, ``I;16L``; and ``I`` with values <= 65535, which is how
      older Pillows decode 16-bit PNGs): scaled by 255/65535 and rounded, instead of
      ``convert`` clipping everything above 255 to white; ``I`` with larger values is scaled
      by its maximum
    - with alpha (``RGBA``, ``LA``, ``PA``, ``P`` with a transparency entry, ...):
      composited over ``background`` instead of dropping the alpha channel
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode != "I" or a.max(initial=0) <= 65535 else float(a.max())
        grey = np.rint(np.clip(a, 0, top) * (255.0 / top)).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")    # a palette's transparency becomes alpha (none: 255)
    if "A" in img.getbands() or mode in ("RGBa", "La"):
        rgba = img.convert("RGBA")
        under = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(under, rgba).convert("RGB")
    return img.convert("RGB")


def read_image(path, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Decode ``path`` completely (a truncated JPEG fails only here, not on open) and
    convert it with :func:`to_rgb`; :class:`UnreadableImage` if that fails."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im, background)
    except Exception as e:  # noqa: BLE001 -- any decoder error means: unreadable
        msg = str(e) or type(e).__name__
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            msg = "empty file (0 bytes)"
        raise UnreadableImage(path, msg) from e


class Source:
    name: ClassVar[str] = ""            # the kind, as registered
    params: ClassVar[dict[str, Param]] = {}
    has_masks: ClassVar[bool] = False

    def __init__(self, name: str, **params):
        self.dataset = name
        self.p = check_params(self.params, params, f"datasets.{name}")

    def check_files(self) -> None:
        """Raise :class:`DataError` naming the key and path if the data are not there."""

    def split_sizes(self) -> dict[str, int]:
        raise NotImplementedError

    def split_names(self) -> list[str]:
        """The splits this data set has, without listing any files (config checks)."""
        if "splits" in self.p:
            return list(self.p["splits"])
        return [s for s, n in self.split_sizes().items() if n]

    def classes(self) -> list[str]:
        raise NotImplementedError

    def item(self, split: str, i: int) -> tuple[Image.Image, int, object]:
        """(full-resolution RGB image, label, target) of image ``i`` of ``split``; the target
        is None, a bool mask (H, W) at the stored resolution, or an object with
        ``to_mask(image_size, preprocess_params)`` (boxes in the decoded image's coordinates,
        mapped through the preprocessing). :class:`UnreadableImage` for a file that cannot
        be decoded."""
        raise NotImplementedError

    def location(self, split: str) -> str:
        """Where ``split``'s images come from, for messages."""
        return f"datasets.{self.dataset} split {split!r}"


SUBSET_FORMS = ({"images", "seed"}, {"classes", "per_class", "seed"}, {"positions"})
_SUBSET_KEYS = {"images", "classes", "per_class", "seed", "positions"}


def check_subset(spec, where: str, splits=None) -> dict | None:
    """``subset``: None; one draw for every split, {images, seed}, {classes, per_class, seed}
    or {positions: file} (a listed selection, :func:`read_positions`); or a draw per split,
    {split: draw or None} (e.g. ``{train: {images: 10000, seed: 0}}``: a seeded pool of
    training images, every validation image). Non-negative integers
    (a seed) or positive ones; integers written as text (``--config`` gives text) are read as
    such. ``splits``: the data set's split names, to check the per-split keys. Returns the
    checked dict."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: a mapping, got {spec!r}")
    if splits is not None and spec and set(spec) <= set(splits) and \
            not set(spec) & _SUBSET_KEYS:
        return {s: check_subset(v, f"{where}.{s}") for s, v in spec.items()}
    if set(spec) not in SUBSET_FORMS:
        per = f"; or per split ({', '.join(splits)}): {{split: draw}}" if splits else ""
        raise ConfigError(f"{where}: give {{images: N, seed: S}}, {{classes: K, per_class: "
                          f"M, seed: S}} or {{positions: file}}{per}, got keys {sorted(spec)}")
    if set(spec) == {"positions"}:
        if not isinstance(spec["positions"], str) or not spec["positions"].strip():
            raise ConfigError(f"{where}.positions: a file listing 0-based positions, got "
                              f"{spec['positions']!r}")
        return {"positions": spec["positions"]}
    out = {}
    for k, v in spec.items():
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "seed" else 1):
            raise ConfigError(f"{where}.{k}: a {'non-negative' if k == 'seed' else 'positive'} "
                              f"integer, got {v!r}")
        out[k] = v
    return out


def read_positions(path, n_files: int, where: str) -> list[int]:
    """The 0-based positions listed in ``path`` (GradMask's ``imgs_idx.yaml``): a YAML / JSON
    list of integers, a mapping holding exactly one such list, or integers separated by
    white space or commas; each in [0, n_files), no repeats. Returned sorted (images keep
    their path order). A :class:`DataError` names the file and the problem."""
    import yaml
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{where}.positions: cannot read {str(path)!r}: {e}") from e
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{where}.positions: {str(path)!r} holds a mapping; it must hold "
                            "exactly one list of positions")
        data = lists[0]
    if isinstance(data, (str, int)):
        data = str(data).replace(",", " ").split()
    if not isinstance(data, list) or not data:
        raise DataError(f"{where}.positions: {str(path)!r} lists no positions")
    out = []
    for v in data:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n_files:
            raise DataError(f"{where}.positions: {str(path)!r}: {v!r} is not a position in "
                            f"[0, {n_files}) of the split's sorted file list")
        out.append(v)
    if len(set(out)) != len(out):
        raise DataError(f"{where}.positions: {str(path)!r} lists a position twice")
    return sorted(out)


def subset_of(spec: dict | None, split: str) -> dict | None:
    """The draw of ``split`` in a checked ``subset`` (the same for every split, or its own)."""
    if not spec:
        return None
    if set(spec) in SUBSET_FORMS:
        return spec
    return spec.get(split)


