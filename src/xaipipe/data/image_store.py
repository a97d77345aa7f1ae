"""The image store (Zarr v3): ``results/data/{dataset}/{variant}.zarr``.

Layout (arrays chunked along N only, Zstd-compressed, with the dimension names shown, so
``xarray.open_zarr(path, group=split)`` opens a split with an ``index`` coordinate)::

    /                   root group, no arrays; attributes: dataset, kind, variant,
                        variant_params, classes (names; label i is classes[i]),
                        source_params, the provenance (``xaipipe_version``,
                        ``torch_version``, ``torchvision_version``, ``zarr_version``,
                        ``numpy_version``, ``created``), and for folder-based data sets
                        ``skipped`` (list of {split, index, file, error}: unreadable
                        files left out) and ``n_skipped``
    /{split}/           one group per split written (``train``, ``val``), no attributes
        images  (N, 3, H, W) uint8  (index, channel, y, x)  RGB, preprocessed, variant applied
        labels  (N,)         int64  (index,)                class of each image
        index   (N,)         int64  (index,)                image ids: the position in the
                                                            split's sorted file list, stable
                                                            across variants; an unreadable
                                                            file leaves a gap (no row)
        masks   (N, H, W)    bool   (index, y, x)           ground-truth object masks; only
                                                            where the data set has them

H and W are the same for every image of a split. Metadata is consolidated into the root
``zarr.json``; the store is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import zarr

from ..errors import DataError
from ..zarrio import GroupWriter, create, open_group, provenance

IMG_DIMS = ("index", "channel", "y", "x")


class ImageStoreWriter(GroupWriter):
    """``with ImageStoreWriter(path, attrs) as w: w.add_split("val", n, h, w, masks=True); w.write(...)``

    ``add_split`` preallocates ``n`` rows; a writer that ends up with fewer good rows (images
    skipped as unreadable) calls :meth:`trim`, which shrinks the split's arrays to the rows
    written, so rows are written compactly and no pre-scan of the files is needed."""

    def __init__(self, path, attrs: dict, chunk_n: int = 256):
        self.path, self.attrs, self.chunk_n = path, attrs, chunk_n
        self._group: zarr.Group | None = None
        self._pos: dict[str, int] = {}
        self._n: dict[str, int] = {}

    def _group_attrs(self) -> dict:
        return {**self.attrs, **provenance()}

    def _complete(self) -> None:
        short = {s: (self._pos[s], n) for s, n in self._n.items() if self._pos[s] != n}
        if short:
            raise DataError(f"{self.path}: incomplete splits (written, expected): {short}")

    def add_split(self, split: str, n: int, height: int, width: int, masks: bool) -> None:
        g = self._group.create_group(split)
        create(g, "images", (n, 3, height, width), "uint8", self.chunk_n, IMG_DIMS)
        create(g, "labels", (n,), "int64", max(n, 1), IMG_DIMS[:1])
        create(g, "index", (n,), "int64", max(n, 1), IMG_DIMS[:1])
        if masks:
            create(g, "masks", (n, height, width), "bool", self.chunk_n, ("index", "y", "x"))
        self._pos[split], self._n[split] = 0, n

    def write(self, split: str, images, labels, index, masks=None) -> None:
        g = self._group[split]
        b = len(labels)
        sl = slice(self._pos[split], self._pos[split] + b)
        g["images"][sl] = images
        g["labels"][sl] = labels
        g["index"][sl] = index
        if masks is not None:
            g["masks"][sl] = masks
        self._pos[split] = sl.stop

    def trim(self, split: str) -> int:
        """Shrink ``split``'s arrays to the rows written so far (their number, returned)."""
        g, n = self._group[split], self._pos[split]
        if n != self._n[split]:
            for key in ("images", "labels", "index", "masks"):
                if key in g:
                    g[key].resize((n, *g[key].shape[1:]))
            self._n[split] = n
        return n

    def update_attrs(self, attrs: dict) -> None:
        """Add root attributes before the store is closed (e.g. what was skipped)."""
        self._group.attrs.update(attrs)


@dataclass
class ImageSet:
    """One split of an image store, read lazily."""
    path: str
    split: str
    images: zarr.Array            # (N, 3, H, W) uint8
    labels: np.ndarray
    index: np.ndarray
    masks: zarr.Array | None
    attrs: dict

    def __len__(self) -> int:
        return len(self.index)

    def positions(self, image_ids) -> np.ndarray:
        """Row positions of the given image ids (error naming the store if one is missing)."""
        lookup = {int(i): p for p, i in enumerate(self.index)}
        try:
            return np.array([lookup[int(i)] for i in image_ids], dtype=np.int64)
        except KeyError as e:
            raise DataError(f"{self.path}/{self.split}: no image with id {e.args[0]}") from None

    def read(self, positions) -> np.ndarray:
        """uint8 images (n, 3, H, W) at row positions, in the order given."""
        return _take(self.images, positions)

    def read_masks(self, positions) -> np.ndarray | None:
        """Ground-truth masks (n, H, W) at row positions, or None if the data set has none."""
        return None if self.masks is None else _take(self.masks, positions)

    def tensor(self, positions, device="cpu") -> torch.Tensor:
        """float32 images in [0, 1]."""
        return torch.from_numpy(self.read(positions)).to(device).float().div_(255)

    @property
    def classes(self) -> list[str]:
        return list(self.attrs.get("classes", []))


def _take(arr: zarr.Array, positions) -> np.ndarray:
    """Rows of a zarr array in the order given (read in sorted order, chunk by chunk)."""
    positions = np.asarray(positions, dtype=np.int64)
    out = np.empty((len(positions), *arr.shape[1:]), arr.dtype)
    if positions.size:
        order = np.argsort(positions, kind="stable")
        out[order] = arr.oindex[positions[order]]
    return out


def open_images(path, split: str = "val") -> ImageSet:
    root = open_group(path)
    if split not in root:
        raise DataError(f"image store {str(path)!r} has no split {split!r}; "
                        f"it has: {sorted(root.group_keys())}")
    g = root[split]
    for key in ("images", "labels", "index"):
        if key not in g:
            raise DataError(f"image store {str(path)!r}/{split} lacks the array {key!r}")
    return ImageSet(str(path), split, g["images"], np.asarray(g["labels"]),
                    np.asarray(g["index"]), g["masks"] if "masks" in g else None, dict(root.attrs))
