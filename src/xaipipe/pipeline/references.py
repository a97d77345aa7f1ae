"""References of the multi-reference methods in the workflow: Expected Gradients' pool (the
training split of the model's image store, read lazily: :class:`TrainingPool`) and the LPI
reference store: the reference set of one (model, training images) built once
(:func:`xaipipe.explain.lpi_references`, :func:`build_lpi_references`) and read by every LPI
job of that model (:func:`reference_params` gives either to a method).

A Zarr v3 group written atomically (complete or absent): ``references`` (C, R, 3, H, W)
uint8, the training images themselves, stored losslessly; ``density`` (C, R) float64;
``index`` (C, R) int64, the images' ids in the training split; ``centres`` (C, K) float64;
``counts`` (C,) int64. Attributes: the parameters (n_references, n_clusters, seed), the
model, the image store and split it was built from, and the versions of the packages.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..explain.paths.multiref import ReferencePool
from ..zarrio import GroupWriter, create, open_group, provenance

log = logging.getLogger("xaipipe")

ARRAYS = ("references", "density", "index", "centres", "counts")


class ReferenceWriter(GroupWriter):
    def __init__(self, path, attrs: dict):
        self.path, self.attrs = path, attrs

    def _group_attrs(self) -> dict:
        return {**self.attrs, **provenance(), "kind": "lpi_references"}

    def write(self, ref: dict) -> None:
        imgs = ref["references"]
        u8 = torch.round(imgs.clamp(0, 1) * 255).to(torch.uint8).numpy()
        arrays = {"references": (u8, ("cluster", "reference", "channel", "y", "x")),
                  "density": (ref["density"].double().numpy(), ("cluster", "reference")),
                  "index": (ref["index"].long().numpy(), ("cluster", "reference")),
                  "centres": (ref["centres"].double().numpy(), ("cluster", "class")),
                  "counts": (ref["counts"].long().numpy(), ("cluster",))}
        for name, (a, dims) in arrays.items():
            arr = create(self._group, name, a.shape, a.dtype, a.shape[0], dims)
            arr[...] = a

    def _complete(self) -> None:
        missing = [a for a in ARRAYS if a not in self._group]
        if missing:
            raise RuntimeError(f"{self.path}: reference store lacks {missing}")


def write_lpi_references(out, ref: dict, attrs: dict) -> None:
    """Write the reference set ``ref`` (:func:`~xaipipe.explain.lpi_references`; its images
    are training images read from a uint8 store, so the uint8 round trip is exact) to
    ``out``."""
    with ReferenceWriter(out, attrs) as w:
        w.write(ref)


def read_lpi_references(path, device="cpu") -> dict:
    """The reference set of a store written by :func:`write_lpi_references`: ``references``
    (C, R, 3, H, W) float32 in [0, 1] on ``device``, ``density``, ``index``, ``centres``,
    ``counts`` as tensors, and ``attrs``."""
    g = open_group(path)
    out = {"references": torch.from_numpy(np.asarray(g["references"][...])).to(device).float()
           .div_(255)}
    for name in ARRAYS[1:]:
        out[name] = torch.from_numpy(np.asarray(g[name][...]))
    out["attrs"] = dict(g.attrs)
    return out


class TrainingPool(ReferencePool):
    """A split of an image store as a pool of references: only the rows drawn are read."""

    def __init__(self, images, device="cpu"):
        self.images, self.device = images, device

    @property
    def shape(self) -> tuple:
        return (len(self.images), *self.images.images.shape[1:])

    def take(self, rows):
        return self.images.tensor(np.asarray(rows.cpu(), dtype=np.int64), self.device)


def reference_params(kind: str, path, device="cpu") -> dict:
    """The method parameters that carry references read from ``path``: ``kind`` ``"train"``
    (an image store: its training split as a :class:`TrainingPool`) or ``"lpi"`` (an LPI
    reference store: ``references``, ``density``, ``centres``)."""
    if kind == "train":
        from ..data.image_store import open_images
        return {"references": TrainingPool(open_images(path, "train"), device)}
    if kind == "lpi":
        ref = read_lpi_references(path, device)
        return {"references": ref["references"], "density": ref["density"],
                "centres": ref["centres"]}
    raise ValueError(f"unknown reference kind {kind!r}")


def build_lpi_references(out, images_path, model_files, job) -> dict:
    """Build LPI's reference set of ``job.model`` from the ``job.split`` split of the image
    store ``images_path`` and write it to ``out`` (``index``: the training images' ids)."""
    from ..data.image_store import open_images
    from ..explain.paths.lpi_references import lpi_references
    from ..models.spec import load_spec
    model = load_spec(job.model, model_files, job.device)
    train = open_images(images_path, job.split)
    log.info("LPI reference set: %d references x %d cluster(s) from %d %s images of %s",
             job.n_references, job.n_clusters, len(train), job.split, images_path)
    ref = lpi_references(model, train, job.n_references, job.n_clusters, job.seed,
                         job.batch_size, offset=job.offset)
    ref["index"] = torch.from_numpy(train.index[ref["index"].numpy()])
    write_lpi_references(out, ref, {
        "n_references": job.n_references, "n_clusters": job.n_clusters, "seed": job.seed,
        "offset": job.offset, "model_spec": job.model.load_args(), "images": str(images_path),
        "split": job.split, "n_training_images": len(train)})
    return ref
