"""Data sets: where images come from, and how a variant store is built from them.

A data set *kind* is a :class:`~xaipipe.data.sources.base.Source` subclass with declared
parameters, one module of :mod:`xaipipe.data.sources` each, registered in :data:`DATASETS`:
- ``shapes``: the offline synthetic demo (:mod:`xaipipe.data.sources.shapes`), with object masks
- ``imagefolder``: ``root/<split>/<class>/*`` (the torchvision ImageFolder layout, e.g. an
  ImageNet copy with class sub-folders in sorted WordNet-id order;
  :mod:`xaipipe.data.sources.folder`)
- ``imagenet``: an ILSVRC2012 validation folder, flat or per class, with labels from TMLR's
  ``val_annotations.txt``, the devkit ground truth or Kaggle's ``LOC_val_solution.csv``, and
  boxes as masks (:mod:`xaipipe.data.sources.imagenet`)

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

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, DataError
from .preprocess import check_preprocess, preprocess
from .sources.base import DATASETS, Source, UnreadableImage, read_image, to_rgb
from .sources.shapes import SPLITS
from .image_store import ImageStoreWriter
from .variants import apply_variant


log = logging.getLogger("xaipipe")


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


__all__ = ["DATASETS", "SPLITS", "Source", "UnreadableImage", "build_image_store",
           "make_source", "read_image", "to_rgb"]
