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
incomplete outputs does not touch it. Leftover temporary names of a killed writer are removed.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

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
    """(path, size, mtime) of input files — a store folder by its ``zarr.json`` — so that a
    retrained model or a rebuilt image store invalidates the finished shards."""
    out = []
    for p in paths:
        p = Path(p)
        q = (p / "zarr.json" if (p / "zarr.json").exists() else p / MANIFEST) if p.is_dir() \
            else p
        st = q.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def stage_path(out) -> Path:
    """Where the staging folder of output ``out`` lives."""
    out = Path(out)
    return out.with_name(f".{out.name}.shards")


def staging(out) -> Path:
    """The staging folder of output ``out`` (created, stale temporary names removed)."""
    stage = stage_path(out)
    stage.mkdir(parents=True, exist_ok=True)
    for p in stage.iterdir():
        if p.name.startswith(".") and ".tmp-" in p.name:      # a killed writer's leftovers
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return stage


def shard_name(k: int, ext: str) -> str:
    return f"{PREFIX}{k:05d}{ext}"


def write_manifest(stage: Path, names: list[str], counts: list[int]) -> None:
    (stage / MANIFEST).write_text(json.dumps({"shards": names, "counts": counts}, indent=1))


def read_manifest(folder) -> list[Path] | None:
    """The shard stores of a sharded output folder, in order; None if ``folder`` is not one."""
    m = Path(folder) / MANIFEST
    if not m.is_file():
        return None
    return [Path(folder) / n for n in json.loads(m.read_text())["shards"]]


def finish(stage: Path, out) -> None:
    """Move the complete staging folder into place as ``out`` (a rename: atomic)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    stage.rename(out)
