"""The saliency store (Zarr v3): one store per (dataset, model, method, variant), or per shard.

Layout (dimension names set, so ``xarray.open_zarr`` gives an ``index`` coordinate)::

    saliency  (N, C, H, W) float32 (or float16 + per-image ``scale``), chunked along N, Zstd
              (float16: byte-shuffled first, Blosc);
              (N, C, h, w) for a method's native low-resolution maps (GradCAM's h x w layer)
    index     (N,) int64   image ids
    target    (N,) int64   explained class
    scale     (N,) float32 only for float16: saliency = stored * scale (per-image max |value|)
    <extra>   (N, ...) method extras with their trailing dims (diagnostics, histories,
              curves), dims (index, <extra>_dim1, ...); float32, int64 or bool
    attrs     method, parameters, model, dataset, variant, dtype, provenance (versions of
              xaipipe, torch, torchvision, zarr, numpy; created); float16 stores also
              ``scale: "max_abs"`` (and ``keepbits`` when set); native-resolution stores
              ``image_size: [H, W]`` and
              ``upsample: {"mode": ..., "align_corners": ...}`` (``F.interpolate`` settings)

float16 divides each map by its own max |value| (0 -> 1) before rounding, so stored values lie
in [-1, 1]: the error is at most 2^-11 of the image's max (half precision) whatever the scale
of the gradients (plain float16 flushes values below 6e-8 to zero). ``keepbits`` k < 10 rounds
the mantissa further (error at most 2^-(k+1) of a value; :func:`round_mantissa`) for smaller
stores: on the demo's IG maps k = 8 gives 0.38x raw float32 against 0.44x. Native-resolution maps
are upsampled when read, exactly as the method upsamples them (:func:`open_saliency`), so
consumers see (N, C, H, W) maps either way.

Metadata is consolidated into the root ``zarr.json`` before the store is renamed into place.

A store is written under a temporary name and renamed when complete, so it is either complete
or absent; one writer per store. NaN/inf maps are refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError
from .shards import read_manifest
from .utils import nonfinite_rows
from .zarrio import (COMPRESSOR, SHUFFLED_ZSTD, GroupWriter, create, open_group, provenance,
                     versions)

DIMS = ("index", "channel", "y", "x")
RESERVED = ("saliency", "index", "target", "scale")     # array names that are not extras
UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic", "area", "nearest-exact")


class SaliencyWriter(GroupWriter):
    """Stream maps into a new store: ``with SaliencyWriter(path, n, attrs) as w: w.write(...)``.

    Arrays are created at the first write (the channel count comes from the method). Leaving
    the block with an exception removes everything written; a store with unwritten images is
    refused, so partial stores never appear at ``path``.
    """

    def __init__(self, path, n: int, attrs: dict | None = None, dtype: str = "float32",
                 chunk_n: int = 64, image_size=None, upsample: dict | None = None,
                 keepbits: int | None = None):
        """``image_size`` (H, W) with ``upsample`` (``F.interpolate`` keywords: ``mode``,
        ``align_corners``): the maps may be smaller than the images (a method's native
        resolution); readers upsample them to ``image_size`` with ``upsample``.
        ``keepbits`` (float16 only, 1-10): mantissa bits kept, the rest rounded off
        (:func:`round_mantissa`), so the compressor finds zeros there."""
        if dtype not in ("float32", "float16"):
            raise ValueError(f"saliency dtype must be float32 or float16, got {dtype!r}")
        if keepbits is not None and (dtype != "float16" or isinstance(keepbits, bool)
                                     or not 1 <= int(keepbits) <= 10):
            raise ValueError(f"{path}: keepbits={keepbits!r} needs dtype float16 and 1..10 "
                             f"mantissa bits (got dtype {dtype!r})")
        self.path, self.n, self.dtype, self.chunk_n = Path(path), int(n), dtype, chunk_n
        self.keepbits = None if keepbits is None or int(keepbits) == 10 else int(keepbits)
        self.attrs = {**(attrs or {}), "dtype": dtype, **provenance()}
        if dtype == "float16":
            self.attrs["scale"] = "max_abs"
            if self.keepbits is not None:
                self.attrs["keepbits"] = self.keepbits
        self.image_size = None
        if image_size is not None:
            self.image_size = tuple(int(v) for v in image_size)
            upsample = dict(upsample or {})
            if len(self.image_size) != 2 or upsample.get("mode") not in UPSAMPLE_MODES:
                raise ValueError(f"{self.path}: native-resolution maps need image_size (H, W) "
                                 f"and upsample={{'mode': one of {UPSAMPLE_MODES}, "
                                 f"'align_corners': ...}}; got {image_size!r}, {upsample!r}")
            self.attrs.update(image_size=list(self.image_size), upsample=upsample)
        self._group = None
        self._written = 0
        self._arrays: dict = {}

    def _group_attrs(self) -> dict:
        return json.loads(json.dumps(self.attrs, default=str))

    def _complete(self) -> None:
        if self._written != self.n:
            raise DataError(f"{self.path}: {self._written} of {self.n} images written")
        if self.n == 0:
            # An empty selection still yields a valid (empty) store.
            self._ensure_arrays((0, 1, 1, 1), {})

    def _ensure_arrays(self, shape, extras):
        if self._arrays:
            return
        g, n = self._group, self.n
        self._arrays["saliency"] = create(
            g, "saliency", (n, *shape[1:]), self.dtype, self.chunk_n, DIMS,
            SHUFFLED_ZSTD if self.dtype == "float16" else COMPRESSOR)
        self._arrays["index"] = create(g, "index", (n,), "int64", max(n, 1), DIMS[:1])
        self._arrays["target"] = create(g, "target", (n,), "int64", max(n, 1), DIMS[:1])
        if self.dtype == "float16":
            self._arrays["scale"] = create(g, "scale", (n,), "float32", max(n, 1), DIMS[:1])
        for k, v in extras.items():
            dims = ("index", *(f"{k}_dim{i}" for i in range(1, v.ndim)))
            chunk = max(n, 1) if v.ndim == 1 else self.chunk_n
            self._arrays[k] = create(g, k, (n, *v.shape[1:]), v.dtype, chunk, dims)

    def write(self, maps, image_ids, targets, extras: dict | None = None):
        """Append a batch (written in order). ``extras``: name -> (B, ...) per-image values,
        the same names, trailing dims and kinds in every batch."""
        maps = _np(maps).astype(np.float32, copy=False)
        ids, tg = _np(image_ids).astype(np.int64), _np(targets).astype(np.int64)
        extras = {k: _extra(self.path, k, v) for k, v in (extras or {}).items()}
        b = maps.shape[0]
        if maps.ndim != 4 or ids.shape != (b,) or tg.shape != (b,) or \
                any(v.shape[0] != b for v in extras.values()):
            shapes = {k: v.shape for k, v in extras.items()}
            raise DataError(f"{self.path}: bad batch shapes maps={maps.shape} ids={ids.shape} "
                            f"targets={tg.shape} extras={shapes}")
        self._ensure_arrays(maps.shape, extras)
        if b == 0:
            return
        bad = nonfinite_rows(maps)
        if bad.any():
            raise DataError(f"{self.path}: non-finite saliency for image ids {ids[bad].tolist()}")
        if maps.shape[1:] != self._arrays["saliency"].shape[1:]:
            raise DataError(f"{self.path}: batch maps {maps.shape[1:]} do not match "
                            f"{self._arrays['saliency'].shape[1:]}")
        self._check_extras(extras)
        sl = slice(self._written, self._written + b)
        if sl.stop > self.n:
            raise DataError(f"{self.path}: more than the declared {self.n} images written")
        if self.dtype == "float16":
            scale = np.abs(maps.reshape(b, -1)).max(1)
            scale[scale == 0] = 1.0
            self._arrays["scale"][sl] = scale
            maps = maps / scale[:, None, None, None]
        maps = maps.astype(self.dtype)
        if self.keepbits is not None:
            maps = round_mantissa(maps, self.keepbits)
        self._arrays["saliency"][sl] = maps
        self._arrays["index"][sl] = ids
        self._arrays["target"][sl] = tg
        for k, v in extras.items():
            self._arrays[k][sl] = v
        self._written = sl.stop

    def _check_extras(self, extras):
        known = {k: a for k, a in self._arrays.items() if k not in RESERVED}
        if set(extras) != set(known):
            raise DataError(f"{self.path}: batch extras {sorted(extras)} differ from the first "
                            f"batch's {sorted(known)}")
        for k, v in extras.items():
            if v.shape[1:] != known[k].shape[1:] or v.dtype != known[k].dtype:
                raise DataError(f"{self.path}: extra {k!r} is {v.dtype} {v.shape[1:]} per image; "
                                f"the first batch's was {known[k].dtype} {known[k].shape[1:]}")


def round_mantissa(a: np.ndarray, keepbits: int) -> np.ndarray:
    """float16 ``a`` with its 10 mantissa bits rounded to ``keepbits``, to nearest, ties to
    even (bit rounding, as numcodecs' BitRound does for float32): a carry moves into the
    exponent, so the result is the nearest float16 with that many mantissa bits. The cleared
    low bits are zeros the byte-shuffled Zstd compresses away; the relative error is at
    most 2^-(keepbits+1)."""
    if a.dtype != np.float16:
        raise TypeError(f"round_mantissa needs float16, got {a.dtype}")
    drop = 10 - int(keepbits)
    if drop <= 0:
        return a
    u = a.view(np.uint16).astype(np.uint32)
    lsb = (u >> drop) & 1
    u = (u + ((1 << (drop - 1)) - 1) + lsb) & ~np.uint32((1 << drop) - 1)
    return u.astype(np.uint16).view(np.float16)


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _extra(path, name, x) -> np.ndarray:
    """An extra as stored: floats as float32, integers as int64, bools as bool."""
    x = _np(x)
    if name in RESERVED:
        raise DataError(f"{path}: extra name {name!r} is reserved")
    if x.ndim == 0:
        raise DataError(f"{path}: extra {name!r} must have one value per image, got a scalar")
    for kind, dtype in (("b", np.bool_), ("iu", np.int64), ("f", np.float32)):
        if x.dtype.kind in kind:
            return x.astype(dtype, copy=False)
    raise DataError(f"{path}: extra {name!r} has dtype {x.dtype}; use float, int or bool")


def write_saliency(path, maps, image_ids, targets, attrs: dict | None = None,
                   extras: dict | None = None, dtype: str = "float32", chunk_n: int = 64,
                   image_size=None, upsample: dict | None = None,
                   keepbits: int | None = None) -> Path:
    """Write a complete store in one call (arguments as :class:`SaliencyWriter`)."""
    with SaliencyWriter(path, len(_np(image_ids)), attrs, dtype, chunk_n, image_size,
                        upsample, keepbits) as w:
        w.write(maps, image_ids, targets, extras)
    return Path(path)


@dataclass
class SaliencyStore:
    saliency: da.Array            # (N, C, H, W) float32 (float16 stores are rescaled and
                                  # native-resolution stores upsampled lazily)
    index: np.ndarray             # (N,) image ids
    target: np.ndarray            # (N,)
    attrs: dict
    extras: dict                  # name -> (N, ...) numpy, trailing dims as written


def shard_layout(attrs: dict) -> dict:
    """A store's attributes as stored (JSON) without those the shards of one store may differ
    in (when and by which versions each was written, its number and resume key): what must
    agree across the shards of one store, and between a finished shard and a rerun's."""
    skip = {"created", "shard", "shard_key", *versions()}
    return {k: v for k, v in json.loads(json.dumps(dict(attrs), default=str)).items()
            if k not in skip}


def open_saliency(paths, native: bool = False) -> SaliencyStore:
    """Open one store, or several shards of one (a list of paths, concatenated along N), as a
    dask array plus metadata. Attributes must agree across shards (except provenance: the
    first shard's is returned); so must the extras (names, trailing dims).

    The maps are float32 and chunked along N as stored: float16 stores are multiplied by
    their ``scale``; native-resolution stores are upsampled to ``image_size`` as the method
    does it, unless ``native`` (then the maps are returned at the resolution stored)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    # a sharded store (a folder of shard stores with a manifest, xaipipe.shards) is its shards
    paths = [q for p in paths for q in (read_manifest(p) or [p])]
    parts = []
    for p in paths:
        g = open_group(p)
        if "saliency" not in g:
            raise DataError(f"{p}: not a saliency store (no 'saliency' array)")
        arr = _decoded(p, g)
        size = g.attrs.get("image_size")
        if not native and size and tuple(arr.shape[2:]) != tuple(size):
            arr = _upsampled(arr, tuple(size), dict(g.attrs.get("upsample") or {}))
        extras = {k: np.asarray(g[k]) for k in g.array_keys()
                  if k not in RESERVED}
        parts.append((arr, np.asarray(g["index"]), np.asarray(g["target"]), dict(g.attrs), extras))
    first, layout = parts[0][3], shard_layout(parts[0][3])
    for (_, _, _, attrs, _), p in zip(parts[1:], paths[1:]):
        if shard_layout(attrs) != layout:
            raise DataError(f"shard {p} has attributes that differ from {paths[0]}")
    extra_keys = set(parts[0][4])
    for (_, _, _, _, ex), p in zip(parts[1:], paths[1:]):
        if {k: v.shape[1:] for k, v in ex.items()} != \
                {k: v.shape[1:] for k, v in parts[0][4].items()}:
            raise DataError(f"shard {p} has extras that differ from {paths[0]}")
    return SaliencyStore(
        saliency=da.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0],
        index=np.concatenate([p[1] for p in parts]),
        target=np.concatenate([p[2] for p in parts]),
        attrs=first,
        extras={k: np.concatenate([p[4][k] for p in parts]) for k in extra_keys},
    )


def _decoded(path, g) -> da.Array:
    """The stored maps as float32: float16 ones times their per-image ``scale``, lazily and
    in the chunks of the maps."""
    arr = da.from_zarr(g["saliency"])
    if "scale" not in g:
        return arr
    scale = np.asarray(g["scale"], dtype=np.float32)
    if scale.shape != arr.shape[:1]:
        raise DataError(f"{path}: 'scale' has shape {scale.shape}, the maps {arr.shape}")
    scale = da.from_array(scale, chunks=(arr.chunks[0],))
    return arr.astype(np.float32) * scale[:, None, None, None]


def _upsampled(arr: da.Array, size: tuple, upsample: dict) -> da.Array:
    """(N, C, h, w) -> (N, C, H, W) with ``F.interpolate(..., **upsample)``, chunk by chunk
    (each image on its own, so the result does not depend on the chunking)."""
    mode = upsample.get("mode", "bilinear")
    corners = upsample.get("align_corners") if mode in ("bilinear", "bicubic") else None
    c = arr.shape[1]

    def block(b):
        if b.shape[0] == 0:
            return np.zeros((0, c, *size), np.float32)
        t = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
        return F.interpolate(t, size=size, mode=mode, align_corners=corners).numpy()

    arr = arr.rechunk({1: -1, 2: -1, 3: -1})
    return arr.map_blocks(block, chunks=(arr.chunks[0], (c,), (size[0],), (size[1],)),
                          dtype=np.float32, meta=np.empty((0, 0, 0, 0), np.float32))
