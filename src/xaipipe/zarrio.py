"""Zarr v3 helpers shared by the image store and the saliency store."""
from __future__ import annotations

import datetime as _dt
import warnings
from pathlib import Path

import numpy as np
import zarr

from . import __version__
from .errors import DataError

COMPRESSOR = zarr.codecs.ZstdCodec(level=3)
# Snakemake drops a `.snakemake_timestamp` file into directory() outputs; it is not ours.
warnings.filterwarnings("ignore", message=r"Object at \.snakemake_timestamp")


def provenance() -> dict:
    return {"xaipipe_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def new_group(path, attrs: dict | None = None) -> zarr.Group:
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    if attrs:
        g.attrs.update(attrs)
    return g


def create(group: zarr.Group, name: str, shape, dtype, chunk_n: int, dims) -> zarr.Array:
    """An array chunked along its first axis only, Zstd-compressed, with dimension names."""
    chunks = (max(1, min(int(chunk_n), int(shape[0]) or 1)), *shape[1:])
    return group.create_array(name, shape=tuple(shape), chunks=chunks, dtype=dtype,
                              compressors=COMPRESSOR, dimension_names=list(dims),
                              fill_value=0)


def put(group: zarr.Group, name: str, data: np.ndarray, dims, chunk_n: int | None = None):
    data = np.asarray(data)
    arr = create(group, name, data.shape, data.dtype, chunk_n or max(1, data.shape[0]), dims)
    arr[...] = data
    return arr


def open_group(path) -> zarr.Group:
    p = Path(path)
    if not p.exists():
        raise DataError(f"zarr store {str(p)!r} does not exist")
    try:
        return zarr.open_group(str(p), mode="r")
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot open zarr store {str(p)!r}: {e}") from e
