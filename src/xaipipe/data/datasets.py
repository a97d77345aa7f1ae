"""Data sets: where images come from, and how a variant store is built from them.

A data set *kind* is a :class:`Source` subclass with declared parameters, registered in
:data:`DATASETS`:
- ``shapes``: the offline synthetic demo (:mod:`xaipipe.data.shapes`), with object masks
- ``imagefolder``: ``root/<split>/<class>/*`` (the torchvision ImageFolder layout, e.g. an
  ImageNet copy with class sub-folders in sorted WordNet-id order)

Building a store (:func:`build_image_store`) decodes each image, applies the variant to the
full-resolution image, then the preprocessing (:mod:`xaipipe.data.preprocess`, a catalog entry
of its own), and writes uint8 arrays in chunks.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import ConfigError, DataError
from ..params import Param, check_params
from ..registry import Registry
from .preprocess import check_preprocess, preprocess
from .shapes import SPLITS, ShapesConfig, render
from .store import ImageStoreWriter
from .variants import apply_variant


DATASETS = Registry("dataset kind")


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

    def item(self, split: str, i: int) -> tuple[Image.Image, int, np.ndarray | None]:
        """(full-resolution RGB image, label, mask or None) of image ``i`` of ``split``."""
        raise NotImplementedError


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
    }
    EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

    def __init__(self, name, **params):
        super().__init__(name, **params)
        if not self.p["root"]:
            raise ConfigError(f"datasets.{name}.root: required for kind 'imagefolder'")
        self.root = Path(self.p["root"]).expanduser()
        self._files: dict[str, list[tuple[Path, int]]] = {}

    def check_files(self):
        if not self.root.is_dir():
            raise ConfigError(f"datasets.{self.dataset}.root: folder {str(self.root)!r} does "
                              f"not exist")
        for split, sub in self.p["splits"].items():
            if not (self.root / sub).is_dir():
                raise ConfigError(f"datasets.{self.dataset}.splits.{split}: folder "
                                  f"{str(self.root / sub)!r} does not exist")

    def classes(self):
        for sub in self.p["splits"].values():
            d = self.root / sub
            if d.is_dir():
                return sorted(c.name for c in d.iterdir() if c.is_dir())
        raise DataError(f"datasets.{self.dataset}: none of the split folders "
                        f"{[str(self.root / s) for s in self.p['splits'].values()]} exists")

    def files(self, split):
        if split not in self._files:
            if split not in self.p["splits"]:
                raise ConfigError(f"datasets.{self.dataset}.splits: no split {split!r}")
            d = self.root / self.p["splits"][split]
            if not d.is_dir():
                raise DataError(f"datasets.{self.dataset}: split folder {str(d)!r} does not exist")
            index = {c: i for i, c in enumerate(self.classes())}
            files = sorted((f, index[f.parent.name]) for f in d.glob("*/*")
                           if f.suffix.lower() in self.EXTENSIONS and f.parent.name in index)
            if self.p["limit"]:
                files = files[: self.p["limit"]]
            self._files[split] = files
        return self._files[split]

    def split_sizes(self):
        return {s: len(self.files(s)) for s in self.p["splits"]}

    def item(self, split, i):
        path, label = self.files(split)[i]
        try:
            with Image.open(path) as im:
                return im.convert("RGB"), label, None
        except Exception as e:  # noqa: BLE001
            raise DataError(f"cannot read image {str(path)!r}: {e}") from e


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
    with ImageStoreWriter(out, attrs, chunk_n=chunk) as w:
        for split in splits:
            n = sizes[split]
            first = preprocess(apply_variant(variant, src.item(split, 0)[0], **variant_params), **pp) \
                if n else np.zeros((3, 1, 1), np.uint8)
            h, wd = first.shape[1:]
            w.add_split(split, n, h, wd, masks=src.has_masks)
            bar = tqdm(total=n, desc=f"{name}/{variant}/{split}", disable=not progress,
                       mininterval=2)
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                imgs, labels, masks = [], [], []
                for i in range(start, stop):
                    img, label, mask = src.item(split, i)
                    arr = preprocess(apply_variant(variant, img, **variant_params), **pp)
                    if arr.shape != first.shape:
                        raise DataError(f"datasets.{name}: image {i} of {split} has shape "
                                        f"{arr.shape}, expected {first.shape}")
                    imgs.append(arr)
                    labels.append(label)
                    masks.append(mask)
                w.write(split, np.stack(imgs), np.array(labels, np.int64),
                        np.arange(start, stop, dtype=np.int64),
                        np.stack(masks) if src.has_masks else None)
                bar.update(stop - start)
            bar.close()


__all__ = ["DATASETS", "SPLITS", "Source", "build_image_store", "make_source"]
