"""Data sets: where images come from, and how a variant store is built from them.

A data set *kind* is a :class:`Source` subclass with declared parameters, registered in
:data:`DATASETS`:
- ``shapes``: the offline synthetic demo (:mod:`xaipipe.data.shapes`), with object masks
- ``imagefolder``: ``root/<split>/<class>/*`` (the torchvision ImageFolder layout, e.g. an
  ImageNet copy with class sub-folders in sorted WordNet-id order)
- ``imagenet``: an ILSVRC2012 validation folder, flat or per class, with labels from TMLR's
  ``val_annotations.txt``, the devkit ground truth or Kaggle's ``LOC_val_solution.csv``, and
  boxes as masks (:mod:`xaipipe.data.imagenet`)

Folder-based kinds decode every file completely (:func:`read_image`) and convert it with
:func:`to_rgb` (CMYK, grayscale, palette, 16-bit, alpha composited over ``background``).
A file that cannot be decoded is skipped and reported (``unreadable: skip``, the store's
``skipped`` attribute and the log), or stops the build (``unreadable: error``).

Building a store (:func:`build_image_store`) decodes each image, applies the variant to the
full-resolution image, then the preprocessing (:mod:`xaipipe.data.preprocess`, a catalog entry
of its own), and writes uint8 arrays in chunks. Rows are written compactly (good images only)
with the image id (``index``) = position in the split's sorted file list, so ids do not depend
on which files were skipped.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, ImageColor
from tqdm import tqdm

from ..errors import ConfigError, DataError
from ..params import Param, check_params
from ..registry import Registry
from .preprocess import check_preprocess, preprocess
from .shapes import SPLITS, ShapesConfig, render
from .store import ImageStoreWriter
from .variants import apply_variant


DATASETS = Registry("dataset kind")
log = logging.getLogger("xaipipe")
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


@DATASETS.register
class ShapesSource(Source):
    name = "shapes"
    has_masks = True
    params = {
        "kind": Param("shapes", str),
        "image_size": Param(64, int, min=32, doc="side of the square images"),
        "num_classes": Param(10, int, min=2, max=10),
        "train": Param(8000, int, min=0, doc="number of training images"),
        "val": Param(1000, int, min=0, doc="number of validation images"),
        "seed": Param(0, int),
    }

    def __init__(self, name, **params):
        super().__init__(name, **params)
        self.cfg = ShapesConfig(image_size=self.p["image_size"],
                                num_classes=self.p["num_classes"], seed=self.p["seed"])

    def split_sizes(self):
        return {s: self.p[s] for s in ("train", "val")}

    def classes(self):
        return list(self.cfg.classes)

    def item(self, split, i):
        img, mask, label = render(self.cfg, split, i)
        return Image.fromarray(img, "RGB"), label, mask


@DATASETS.register
class FolderSource(Source):
    name = "imagefolder"
    params = {
        "kind": Param("imagefolder", str),
        "root": Param(None, str, doc="folder with one sub-folder per split"),
        "splits": Param({"val": "val"}, dict, doc="split name -> sub-folder of root"),
        "limit": Param(None, int, min=1, doc="use only the first N images (sorted) per split"),
        "subset": Param(None, dict,
                        doc="a seeded random subset per split: {images: N, seed: S} or "
                            "{classes: K, per_class: M, seed: S}; kept in path order"),
        "background": Param("white", (str, int, list),
                            doc="colour that transparent pixels are composited over"),
        "unreadable": Param("skip", str, ("skip", "error"),
                            doc="a file that cannot be decoded: skip it (reported) or stop"),
    }
    EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

    def __init__(self, name, **params):
        super().__init__(name, **params)
        if not self.p["root"]:
            raise ConfigError(f"datasets.{name}.root: required for kind {self.name!r}")
        self.root = Path(self.p["root"]).expanduser()
        self.p["subset"] = _check_subset(self.p["subset"], f"datasets.{name}.subset")
        self.background = parse_background(self.p["background"], f"datasets.{name}.background")
        self._files: dict[str, list[tuple[Path, int]]] = {}

    def check_files(self):
        if not self.root.is_dir():
            raise ConfigError(f"datasets.{self.dataset}.root: folder {str(self.root)!r} does "
                              f"not exist")
        for split, sub in self.p["splits"].items():
            if not (self.root / sub).is_dir():
                raise ConfigError(f"datasets.{self.dataset}.splits.{split}: folder "
                                  f"{str(self.root / sub)!r} does not exist")

    def folder_classes(self) -> list[str]:
        """Sorted sub-folder names of the first split folder that exists."""
        for sub in self.p["splits"].values():
            d = self.root / sub
            if d.is_dir():
                return sorted(c.name for c in d.iterdir() if c.is_dir())
        raise DataError(f"datasets.{self.dataset}: none of the split folders "
                        f"{[str(self.root / s) for s in self.p['splits'].values()]} exists")

    def classes(self):
        return self.folder_classes()

    def split_dir(self, split: str) -> Path:
        if split not in self.p["splits"]:
            raise ConfigError(f"datasets.{self.dataset}.splits: no split {split!r}")
        d = self.root / self.p["splits"][split]
        if not d.is_dir():
            raise DataError(f"datasets.{self.dataset}: split folder {str(d)!r} does not exist")
        return d

    def location(self, split):
        return f"folder {str(self.root / self.p['splits'].get(split, split))!r}"

    def is_image(self, f: Path) -> bool:
        return f.suffix.lower() in self.EXTENSIONS and f.is_file()

    def class_files(self, d: Path, classes: list[str]) -> list[tuple[Path, int]]:
        """``(file, class index)`` of ``d/<class>/*`` for the given classes, sorted by path."""
        index = {c: i for i, c in enumerate(classes)}
        return sorted((f, index[f.parent.name]) for f in d.glob("*/*")
                      if f.parent.name in index and self.is_image(f))

    def files(self, split):
        if split not in self._files:
            files = self.class_files(self.split_dir(split), self.classes())
            if self.p["limit"]:
                files = files[: self.p["limit"]]
            self._files[split] = self.subset(files, split)
        return self._files[split]

    def subset(self, files: list[tuple], split: str) -> list[tuple]:
        """``files`` (tuples whose second entry is the class index, in path order) reduced to
        the ``subset`` parameter's seeded random draw, in their original order:
        ``{images: N, seed: S}`` draws N files without replacement; ``{classes: K,
        per_class: M, seed: S}`` draws K of the classes present, then M files of each
        (the ShearletX paper's 20 classes × 5 images). ``numpy.random.default_rng(S)``; the
        draw depends only on the listed files, so it is the same on every machine."""
        spec = self.p.get("subset")
        if not spec:
            return files
        where = f"datasets.{self.dataset}.subset"
        rng = np.random.default_rng(int(spec["seed"]))
        if "images" in spec:
            n = int(spec["images"])
            if n > len(files):
                raise DataError(f"{where}: {n} images asked, split {split!r} has {len(files)}")
            keep = np.sort(rng.choice(len(files), n, replace=False))
            return [files[i] for i in keep]
        by_class: dict[int, list[int]] = {}
        for i, f in enumerate(files):
            by_class.setdefault(int(f[1]), []).append(i)
        k, m = int(spec["classes"]), int(spec["per_class"])
        present = sorted(by_class)
        if k > len(present):
            raise DataError(f"{where}: {k} classes asked, split {split!r} has {len(present)}")
        chosen = sorted(int(c) for c in rng.choice(present, k, replace=False))
        keep = []
        for c in chosen:
            if m > len(by_class[c]):
                raise DataError(f"{where}: {m} images per class asked, class {c} of split "
                                f"{split!r} has {len(by_class[c])}")
            keep += [by_class[c][i] for i in rng.choice(len(by_class[c]), m, replace=False)]
        return [files[i] for i in sorted(keep)]

    def split_sizes(self):
        return {s: len(self.files(s)) for s in self.p["splits"]}

    def item(self, split, i):
        path, label = self.files(split)[i][:2]
        return read_image(path, self.background), label, None


def _check_subset(spec, where: str) -> dict | None:
    """``subset``: None, {images, seed} or {classes, per_class, seed}, non-negative integers
    (a seed) or positive ones; integers written as text (``--config`` gives text) are read
    as such. Returns the checked dict."""
    if spec is None:
        return None
    forms = ({"images", "seed"}, {"classes", "per_class", "seed"})
    if set(spec) not in forms:
        raise ConfigError(f"{where}: give {{images: N, seed: S}} or {{classes: K, per_class: "
                          f"M, seed: S}}, got keys {sorted(spec)}")
    out = {}
    for k, v in spec.items():
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "seed" else 1):
            raise ConfigError(f"{where}.{k}: a {'non-negative' if k == 'seed' else 'positive'} "
                              f"integer, got {v!r}")
        out[k] = v
    return out


def make_source(name: str, cfg: dict | None) -> Source:
    cfg = cfg or {}
    kind = cfg.get("kind", "shapes")
    return DATASETS.get(kind, f"datasets.{name}.kind")(name, **cfg)


def build_image_store(name: str, cfg: dict, variant: str, variant_params: dict, out,
                      splits: list[str] | None = None, chunk: int = 256,
                      progress: bool = True, preprocess_params: dict | None = None) -> None:
    """Write ``out`` (``{variant}.zarr``) with the given splits of data set ``name``, each image
    through the variant (full resolution), then the preprocessing."""
    src = make_source(name, cfg)
    pp = check_preprocess(preprocess_params)
    sizes = src.split_sizes()
    splits = list(sizes) if splits is None else splits
    for s in splits:
        if s not in sizes:
            raise ConfigError(f"datasets.{name}: no split {s!r}; it has {sorted(sizes)}")
    attrs = {"dataset": name, "kind": src.name, "variant": variant,
             "variant_params": variant_params, "preprocess": pp, "classes": src.classes(),
             "source_params": {k: v for k, v in src.p.items()}}
    skipped: list[dict] = []
    with ImageStoreWriter(out, attrs, chunk_n=chunk) as w:
        for split in splits:
            skipped += _write_split(w, src, split, sizes[split], variant, variant_params, pp,
                                    chunk, progress)
        if skipped:
            log.warning("skipped %d unreadable images: %s", len(skipped),
                        "; ".join(f"{s['file']} ({s['error']})" for s in skipped))
            if src.p.get("unreadable", "skip") == "error":
                raise DataError(f"datasets.{name}: {len(skipped)} unreadable image(s): "
                                + "; ".join(f"{s['file']} ({s['error']})" for s in skipped)
                                + " (set unreadable: skip to leave them out)")
        w.update_attrs({"skipped": skipped, "n_skipped": len(skipped)})


def _write_split(w: ImageStoreWriter, src: Source, split: str, n: int, variant: str,
                 variant_params: dict, pp: dict, chunk: int, progress: bool) -> list[dict]:
    """Write the readable images of one split compactly (id = position in the split) and
    return the skipped ones as ``{split, index, file, error}``."""
    skipped, batch, shape = [], [], None

    def flush():
        imgs, labels, ids, masks = zip(*batch)
        w.write(split, np.stack(imgs), np.array(labels, np.int64), np.array(ids, np.int64),
                np.stack(masks) if src.has_masks else None)
        batch.clear()

    bar = tqdm(total=n, desc=f"{src.dataset}/{variant}/{split}", disable=not progress,
               mininterval=2)
    for i in range(n):
        bar.update(1)
        try:
            img, label, target = src.item(split, i)
        except UnreadableImage as e:
            skipped.append({"split": split, "index": i, "file": e.file, "error": e.error})
            continue
        arr = preprocess(apply_variant(variant, img, **variant_params), **pp)
        if shape is None:
            shape = arr.shape
            w.add_split(split, n, *shape[1:], masks=src.has_masks)
        elif arr.shape != shape:
            raise DataError(f"datasets.{src.dataset}: image {i} of {split} has shape "
                            f"{arr.shape}, expected {shape}")
        mask = None
        if src.has_masks:
            mask = target.to_mask(img.size, pp) if hasattr(target, "to_mask") else target
            mask = np.zeros(shape[1:], bool) if mask is None else np.asarray(mask, bool)
            if mask.shape != shape[1:]:
                raise DataError(f"datasets.{src.dataset}: mask of image {i} of {split} has "
                                f"shape {mask.shape}, expected {shape[1:]}")
        batch.append((arr, label, i, mask))
        if len(batch) == chunk:
            flush()
    bar.close()
    if batch:
        flush()
    if shape is None:
        if n:
            raise DataError(f"datasets.{src.dataset}: all {n} images of split {split!r} in "
                            f"{src.location(split)} are unreadable, e.g. {skipped[0]['file']!r}:"
                            f" {skipped[0]['error']}")
        w.add_split(split, 0, 1, 1, masks=src.has_masks)
    w.trim(split)
    return skipped


from . import imagenet  # noqa: E402,F401 -- registers the `imagenet` kind

__all__ = ["DATASETS", "SPLITS", "Source", "UnreadableImage", "build_image_store",
           "make_source", "read_image", "to_rgb"]
