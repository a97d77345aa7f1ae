"""Zarr v3 helpers shared by the image store and the saliency store.

Stores are written with consolidated metadata (all array and group metadata inlined in the
root ``zarr.json``), so ``xarray.open_zarr`` opens them in one read and without warnings, and
a stray file in a store directory (Snakemake's ``.snakemake_timestamp``) is never listed.
"""
from __future__ import annotations

import datetime as _dt
import functools
import importlib
import importlib.util
import re
import sys
import warnings
from pathlib import Path

import zarr

from . import __version__
from .errors import DataError

COMPRESSOR = zarr.codecs.ZstdCodec(level=3)
# Zstd after a byte shuffle (Blosc): the high bytes of half floats (sign, exponent) compress well
# once grouped, the low ones (mantissa) hardly at all; 7-30% smaller float16 saliency stores.
SHUFFLED_ZSTD = zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
# Snakemake drops a `.snakemake_timestamp` file into directory() outputs; it is not ours.
warnings.filterwarnings("ignore", message=r"Object at \.snakemake_timestamp")
_PACKAGES = ("torch", "torchvision", "zarr", "numpy")


def versions() -> dict:
    """``{"xaipipe_version": ..., "torch_version": ..., ...}``: the software that writes an
    output (torchvision, zarr, numpy too). Modules' own ``__version__``, so torch's build tag
    (``2.x+cu130``) is kept; None for a package that is not installed."""
    return dict(_versions())


@functools.cache
def _versions() -> tuple:
    out = [("xaipipe_version", __version__)]
    for pkg in _PACKAGES:
        out.append((f"{pkg}_version", _module_version(pkg)))
    return tuple(out)


def _module_version(pkg: str) -> str | None:
    """``pkg.__version__`` without importing ``pkg`` when it is not imported yet: torchvision
    writes it to ``torchvision/version.py`` (with the build tag that the wheel's metadata
    lacks), and importing torchvision itself costs ~2.6 s (models/demo.py)."""
    if pkg not in sys.modules:
        spec = importlib.util.find_spec(pkg)
        if spec is None:
            return None
        for folder in spec.submodule_search_locations or ():
            f = Path(folder) / "version.py"
            if f.is_file():
                m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read_text(), re.M)
                if m:
                    return m.group(1)
    try:
        return importlib.import_module(pkg).__version__
    except ImportError:
        return None


def provenance() -> dict:
    """:func:`versions` plus the UTC creation time (``created``)."""
    return {**versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def new_group(path, attrs: dict | None = None) -> zarr.Group:
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    if attrs:
        g.attrs.update(attrs)
    return g


def consolidate(path) -> None:
    """Inline all metadata into the root ``zarr.json`` (call once the store is complete).

    zarr 3 warns that consolidated metadata is not (yet) part of the v3 spec; zarr-python and
    xarray read it, so that one warning is silenced here, and only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(str(path))


def create(group: zarr.Group, name: str, shape, dtype, chunk_n: int, dims,
           compressor=COMPRESSOR) -> zarr.Array:
    """An array chunked along its first axis only, Zstd-compressed (``compressor``), with
    dimension names."""
    chunks = (max(1, min(int(chunk_n), int(shape[0]) or 1)), *shape[1:])
    return group.create_array(name, shape=tuple(shape), chunks=chunks, dtype=dtype,
                              compressors=compressor, dimension_names=list(dims),
                              fill_value=0)


class GroupWriter:
    """The atomic life of a store being written: ``with`` opens a new Zarr group in a
    temporary folder beside ``self.path`` (:func:`~xaipipe.utils.atomic_path`; an error on that
    first write names the output), and a block that ends without an error checks the store
    (:meth:`_complete`, which raises if something is missing), consolidates its metadata and
    renames it into place; otherwise nothing is left behind. Subclasses set ``self.path``
    before entering and give the root attributes (:meth:`_group_attrs`); ``self._group`` is
    the open group."""

    def _group_attrs(self) -> dict:
        raise NotImplementedError

    def _complete(self) -> None:
        """Raise if the store is not complete; called before it is consolidated."""

    def __enter__(self):
        from .utils import atomic_path
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        try:
            self._group = new_group(self._tmp, self._group_attrs())
        except BaseException as e:              # the first write failed: name the output
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._complete()
                consolidate(self._tmp)
            except Exception as e:
                self._ctx.__exit__(type(e), e, e.__traceback__)
                raise
        return self._ctx.__exit__(exc_type, exc, tb)


def open_group(path) -> zarr.Group:
    """Open a store read-only; its consolidated metadata is used when present (zarr's
    ``use_consolidated=None``), so older stores without it still open."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"zarr store {str(p)!r} does not exist")
    try:
        return zarr.open_group(str(p), mode="r", use_consolidated=None)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot open zarr store {str(p)!r}: {e}") from e
