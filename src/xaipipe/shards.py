"""Shards: the unit of storage and of resume inside one attribution or score job.

A job's images (its requested ids, sorted) are cut into shards of ``shard_size`` images. With
one shard the job writes its output as before (one store, one parquet file). With several,
each finished shard is written, complete or absent, into a staging folder beside the output::

    results/saliency/.../.original.zarr.shards/shard-00000.zarr   (one saliency store each)
    results/metrics/.../.original.parquet.shards/shard-00000.parquet

and the job ends by moving the folder (saliency: renamed to the output, a folder of shard
stores with ``shards.json``, read back as one dask array by ``open_saliency``) or the
concatenation (scores) into place. A job killed mid-way leaves its finished shards in the
staging folder; the rerun (``make resume``) finds them, checks that each was made by the same
job (``shard_key``: a hash of everything the result depends on, and the shard's image ids) and
recomputes only the missing ones. Snakemake never sees the staging folder, so its cleanup of
incomplete outputs does not touch it. Leftover temporary names of a killed writer are removed,
and so are shards beyond the manifest (a previous partial run's with another shard count).

A failure to write the staging folder, a shard in it, its manifest or the final move is an
:class:`~xaipipe.errors.OutputWriteError` naming the output (:func:`xaipipe.utils.write_error`),
not the hidden staging folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .errors import OutputWriteError
from .utils import write_error

MANIFEST = "shards.json"
PREFIX = "shard-"


def bounds(n: int, shard_size: int | None) -> list[tuple[int, int]]:
    """[(start, stop), ...] of ``n`` items in shards of ``shard_size`` (None/0: one shard)."""
    if not shard_size or n <= shard_size:
        return [(0, n)]
    return [(a, min(n, a + shard_size)) for a in range(0, n, shard_size)]


def shard_key(job_attrs: dict, ids) -> str:
    """What a shard's content depends on: the job's result-relevant attributes and its ids."""
    blob = json.dumps(job_attrs, sort_keys=True, default=str).encode()
    h = hashlib.sha256(blob)
    h.update(np.ascontiguousarray(np.asarray(ids, np.int64)).tobytes())
    return h.hexdigest()[:32]


def fingerprint(paths) -> list:
    """(path, size, mtime) of input files — a store folder by its ``zarr.json``, a
    ``save_pretrained`` model folder by its weights file — so that a retrained model or a
    rebuilt image store invalidates the finished shards."""
    out = []
    for p in paths:
        p = Path(p)
        marker = next((p / f for f in ("zarr.json", "model.safetensors", "pytorch_model.bin",
                                       "config.json") if (p / f).exists()),
                      p / MANIFEST)
        q = marker if p.is_dir() else p
        st = q.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def stage_path(out) -> Path:
    """Where the staging folder of output ``out`` lives."""
    out = Path(out)
    return out.with_name(f".{out.name}.shards")


def output_of(stage) -> Path:
    """The output whose staging folder is ``stage`` (the inverse of :func:`stage_path`)."""
    stage = Path(stage)
    return stage.with_name(stage.name[1:-len(".shards")])


def staging(out) -> Path:
    """The staging folder of output ``out`` (created, stale temporary names removed)."""
    stage = stage_path(out)
    try:
        stage.mkdir(parents=True, exist_ok=True)
        for p in stage.iterdir():
            if p.name.startswith(".") and ".tmp-" in p.name:      # a killed writer's leftovers
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    except OSError as e:
        raise write_error(e, out) from e
    return stage


@contextlib.contextmanager
def output_errors(outs):
    """Inside the block, an :class:`OSError` on a file in the staging folder of one of
    ``outs`` (the folder itself, a shard written into it) is re-raised as the
    :class:`~xaipipe.errors.OutputWriteError` of that output; other errors pass unchanged."""
    outs = [Path(o) for o in ([outs] if isinstance(outs, (str, os.PathLike)) else outs)]
    try:
        yield
    except OSError as e:
        out = _owner(e, outs)
        if out is None or (isinstance(e, OutputWriteError) and e.filename == str(out)):
            raise
        raise write_error(e, out) from e


def _owner(err: OSError, outs: list[Path]) -> Path | None:
    for name in (err.filename, err.filename2):
        if name is None or isinstance(name, int):
            continue
        f = Path(os.fsdecode(name)).absolute()
        for o in outs:
            stage = stage_path(o).absolute()
            if f in (stage, o.absolute()) or stage in f.parents:
                return o
    return None


def shard_name(k: int, ext: str) -> str:
    return f"{PREFIX}{k:05d}{ext}"


def write_manifest(stage: Path, names: list[str], counts: list[int]) -> None:
    """Write ``shards.json`` listing ``names`` (with their image ``counts``); shards in
    ``stage`` that it does not list (left by a partial run with another shard count) are
    removed, so they neither linger in the output nor get read."""
    stage = Path(stage)
    try:
        for p in stage.iterdir():
            if p.name.startswith(PREFIX) and p.name not in names:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        (stage / MANIFEST).write_text(json.dumps({"shards": names, "counts": counts},
                                                 indent=1))
    except OSError as e:
        raise write_error(e, output_of(stage)) from e


def read_manifest(folder) -> list[Path] | None:
    """The shard stores of a sharded output folder, in order; None if ``folder`` is not one."""
    m = Path(folder) / MANIFEST
    if not m.is_file():
        return None
    return [Path(folder) / n for n in json.loads(m.read_text())["shards"]]


def finish(stage: Path, out) -> None:
    """Move the complete staging folder into place as ``out`` (a rename: atomic)."""
    out = Path(out)
    try:
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        stage.rename(out)
    except OSError as e:
        raise write_error(e, out) from e


def discard(out) -> None:
    """Remove the staging folder of ``out``, if any (a partial sharded run's, once ``out`` was
    written another way)."""
    stage = stage_path(out)
    if stage.is_dir():
        shutil.rmtree(stage, ignore_errors=True)
