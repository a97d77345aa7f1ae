"""Score a saliency store with a metric on Dask.

The runner gives a metric exactly what it declares in ``needs`` (:class:`MetricInputs`): the
maps, and where declared the model, the explained images, another variant's images or maps,
the ground-truth masks, the method's extras. Maps and images are read from Zarr as dask arrays
aligned by image id and chunked alike; each chunk is one task that loads the model once per
worker process (cached) and calls the metric on the whole chunk, so model calls are batched.
Each task carries what the process running it must apply (reproducible mode, torch's
threads): a worker of a scheduler started elsewhere does not share the job's environment.
The result is one row per image (scalars and curves), written atomically to parquet with the
provenance (metric and method parameters, versions) in its metadata.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..data.filters import requested_images
from ..data.image_store import open_images
from .. import repro, shards
from ..jobs import ModelSpec, signature
from ..models.spec import load_spec
from ..parallel import dask_client, job_threads
from ..store import open_saliency
from ..utils import as_list, atomic_path, autocast, resolve_device
from ..zarrio import versions
from ..metrics.base import MetricInputs, get_metric
from ..params import ParamSet

PROVENANCE_KEY = b"xaipipe"
log = logging.getLogger("xaipipe")


def _tensor(block, scale=None):
    if block is None:
        return None
    t = torch.from_numpy(np.ascontiguousarray(block))
    return t.float().div_(scale) if scale else t


def _dask_worker_address() -> str | None:
    """The address of the distributed worker running this task; None in the job's process."""
    import sys
    distributed = sys.modules.get("distributed")    # not imported: surely no worker here
    if distributed is None:
        return None
    try:
        return distributed.get_worker().address
    except ValueError:
        return None


def _apply_job_settings(reproducible: bool, torch_threads: int | None, device) -> None:
    """What the job asks of the process that runs one of its tasks (the job's own, a local
    worker, or a worker of a scheduler started elsewhere, whose environment is not the job's):
    reproducible mode (:mod:`xaipipe.repro`; a Dask worker started without its variables
    stops with an error saying how to start the workers), else ``torch_threads``."""
    if reproducible:
        worker = _dask_worker_address()
        if worker is not None:
            repro.enable_worker(device, where=f"Dask worker {worker} (pid {os.getpid()})")
        else:              # the job's process: setup_job enabled it and warned of what lacks
            repro.enable(device)
    elif torch_threads:
        torch.set_num_threads(torch_threads)


@dataclass(frozen=True)
class ScoreTask:
    """What every chunk of a score job shares, and what the process running a chunk must
    apply (a worker of a scheduler started elsewhere does not share the job's environment):
    the metric and its checked parameters, the model to load, the device and batch size,
    reproducible mode, torch's threads, the precision of the model calls, and the registered
    method that made the maps (``MetricInputs.method``)."""
    metric: str                      # registered name
    params: ParamSet                 # the metric's checked parameters
    model: ModelSpec | None          # None: the metric needs no model
    model_files: tuple
    device: str
    batch_size: int
    reproducible: bool
    torch_threads: int | None
    precision: str
    method: str | None
    #: the method that made the maps, for a metric that needs ``attribute``: (registered
    #: name, its parameters as JSON, seed, the references path or None), from the store
    explainer: tuple | None = None


@functools.lru_cache(maxsize=8)
def _references(kind: str, path: str, device: str, stamp: tuple | None) -> dict:
    """The reference parameters of ``path`` on ``device``, read once per process (every Dask
    chunk of a score job asks again); ``stamp`` (:func:`~xaipipe.models.spec._file_stamp` of
    the store folder) is part of the key, so a store rewritten since is read again."""
    from .references import reference_params
    return reference_params(kind, path, device)


def _attribute_fn(explainer: tuple, device):
    """``attribute(model, images, target, ids) -> maps``: the store's method, parameters and
    seed (and references, read once per process) on any model
    (:attr:`MetricInputs.attribute`)."""
    from ..explain.base import get_method
    from ..models.spec import _file_stamp
    name, params_json, seed, references = explainer
    cls = get_method(name)
    params = cls.check(json.loads(params_json), f"the store's method {name!r}")
    kind = getattr(cls, "needs_references", None)
    if kind:
        if not references:
            raise ValueError(f"method {name!r} needs references; the store names none")
        params = params.replace(**_references(kind, str(references), str(device),
                                              _file_stamp(references)))

    def attribute(model, images, target, ids):
        method = cls(model, params=params, seed=seed)
        return method.run(images, target, torch.as_tensor(np.asarray(ids, np.int64))).maps
    return attribute


def _score_chunk(task: ScoreTask, ids, targets, extras, maps, images=None, other_images=None,
                 other_maps=None, masks=None) -> pd.DataFrame:
    """The per-image rows of one chunk: ``ids``/``targets``/``extras`` its images', the
    arrays its blocks of the maps and of what the metric needs (uint8 images)."""
    _apply_job_settings(task.reproducible, task.torch_threads,
                        resolve_device(task.device) if task.model is not None else "cpu")
    metric = get_metric(task.metric)(task.params)
    model = (load_spec(task.model, task.model_files, task.device) if task.model is not None
             else None)
    dev = next(model.parameters()).device if model is not None else torch.device("cpu")

    def on(t):
        return None if t is None else t.to(dev)
    inputs = MetricInputs(
        ids=np.asarray(ids), target=torch.as_tensor(np.asarray(targets)).long().to(dev),
        maps=on(_tensor(maps)), model=model, images=on(_tensor(images, 255)),
        other_images=on(_tensor(other_images, 255)), other_maps=on(_tensor(other_maps)),
        masks=on(_tensor(masks)), extras=extras, batch_size=task.batch_size,
        method=task.method,
        attribute=_attribute_fn(task.explainer, dev) if task.explainer else None)
    with autocast(dev, task.precision):
        out = metric(inputs)
    out.pop("fractions", None)
    cols = {"image_id": np.asarray(ids), "target": np.asarray(targets)}
    for k, v in out.items():
        v = np.asarray(v)
        cols[k] = list(v) if v.ndim > 1 else v
    return pd.DataFrame(cols)


def _workers(scheduler, threads, cuda: bool = False):
    """(Dask workers, torch threads per task) for a job with ``threads`` CPUs: one worker per
    CPU with one torch thread each, except in the job's own process (``synchronous``, or a
    local cluster of one), where torch gets them all; the workers of a scheduler started
    elsewhere (one Dask thread per core) use one torch thread too, whatever their own
    environment says (each task sets it). A model on CUDA (``cuda``) is run by the job's own
    process: local worker processes would each open a CUDA context and hold a copy of the
    model on the one GPU, for batches the GPU runs one at a time anyway."""
    if scheduler in ("synchronous",) or (scheduler in (None, "local") and
                                          (threads == 1 or cuda)):
        return 1, threads
    if scheduler in (None, "local", "threads"):
        return threads, 1
    return 1, 1


def _rows(arr, pos, chunks):
    """Rows ``pos`` of a zarr/dask array as a dask array chunked like ``chunks``."""
    if arr is None:
        return None
    a = arr if isinstance(arr, da.Array) else da.from_zarr(arr)
    # method "tasks" (Dask's choice without a distributed cluster) named: choosing it would
    # import `distributed` (0.4 s of every score job's start-up)
    return a[pos].rechunk((chunks,) + (-1,) * (a.ndim - 1), method="tasks")


def _blocks(a, n_chunks):
    return list(a.to_delayed().ravel()) if a is not None else [None] * n_chunks


def score_store(out, inputs: dict, job, *, threads: int = 1) -> pd.DataFrame:
    """Per-image scores of ``inputs["saliency"]`` by ``job.metric``, written to ``out``.

    ``inputs``: saliency, selections, and what the metric needs: images, other_images,
    other_maps, model (the rule's named inputs)."""
    inputs = {k: ([os.path.abspath(p) for p in v] if isinstance(v, (list, tuple))
                  else os.path.abspath(v)) for k, v in inputs.items()}
    metric = get_metric(job.metric)(job.params)
    sal = open_saliency(inputs["saliency"])
    wanted, _ = requested_images(as_list(inputs["selections"]), job.max_images)
    keep = np.isin(sal.index, wanted)
    other = None
    if "other_maps" in metric.needs:
        other = open_saliency(inputs["other_maps"])
        keep &= np.isin(sal.index, other.index)
    pos = np.flatnonzero(keep)
    ids, targets = sal.index[pos], sal.target[pos]
    chunk = max(1, sal.saliency.chunks[0][0] if sal.saliency.chunks[0] else 1)
    arrays = {"maps": _rows(sal.saliency, pos, chunk)}
    split = job.split
    if "images" in inputs:
        imgs = open_images(inputs["images"], split)
        ipos = imgs.positions(ids)
        if "images" in metric.needs:
            arrays["images"] = _rows(imgs.images, ipos, chunk)
        if "masks" in metric.needs:
            if imgs.masks is None:
                raise ValueError(f"metric {job.metric!r} needs masks; {inputs['images']} has none")
            arrays["masks"] = _rows(imgs.masks, ipos, chunk)
    if "other_images" in metric.needs:
        oi = open_images(inputs["other_images"], split)
        arrays["other_images"] = _rows(oi.images, oi.positions(ids), chunk)
    if other is not None:
        opos = pd.Index(other.index).get_indexer(ids)
        arrays["other_maps"] = _rows(other.saliency, opos, chunk)
    n_chunks = len(arrays["maps"].chunks[0]) if len(ids) else 0
    bounds = np.cumsum((0,) + arrays["maps"].chunks[0]) if len(ids) else [0]
    blocks = {k: _blocks(arrays.get(k), n_chunks)
              for k in ("maps", "images", "other_images", "other_maps", "masks")}
    extras = {k: v[pos] for k, v in sal.extras.items()} if "extras" in metric.needs else {}
    model_files = as_list(inputs.get("model"))
    cuda = job.model is not None and resolve_device(job.device).type == "cuda"
    workers, torch_threads = _workers(job.scheduler, job_threads(threads), cuda)
    explainer = None
    if "attribute" in metric.needs:
        # the references: the rule's input (absolute), else the path the store recorded
        refs = as_list(inputs.get("references")) or as_list(sal.attrs.get("references"))
        explainer = (sal.attrs.get("method_name"),
                     json.dumps(sal.attrs.get("parameters") or {}, sort_keys=True),
                     int(sal.attrs.get("seed", 0)), refs[0] if refs else None)
    score_task = ScoreTask(job.metric, metric.hparams, job.model, tuple(model_files),
                           job.device, job.batch_size, repro.requested(), torch_threads,
                           job.precision, sal.attrs.get("method_name"), explainer)
    chunk = dask.delayed(_score_chunk, pure=True)
    tasks = [chunk(score_task, ids[a:b], targets[a:b], {k: v[a:b] for k, v in extras.items()},
                   **{k: blocks[k][i] for k in ("maps", "images", "other_images",
                                                "other_maps", "masks")})
             for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
    # shards: consecutive chunks of about shard_size rows (one shard: the whole store)
    size = getattr(job, "shard_size", None)
    groups = [0] * len(tasks) if not size or len(ids) <= size else \
        [int(a) // size for a in bounds[:-1]]
    n_shards = len(set(groups))
    with dask_client(job.scheduler, workers, dashboard=job.dashboard):
        if n_shards <= 1:
            parts = list(dask.compute(*tasks))
        else:
            parts = _score_shards(out, tasks, groups,
                                  [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
                                  job, inputs)
    df = (pd.concat(parts, ignore_index=True) if parts
          else pd.DataFrame({"image_id": np.zeros(0, np.int64), "target": np.zeros(0, np.int64)}))
    write_scores(out, df, {**job.provenance, "metric_name": job.metric,
                           "metric_params": metric.hparams.as_dict(), "split": split,
                           "saliency_attrs": {k: sal.attrs.get(k) for k in
                                              ("parameters", "target_kind", "seed", "dtype")}})
    if n_shards > 1:
        shutil.rmtree(shards.stage_path(out))
    return df


def _score_shards(out, tasks, groups, chunk_ids, job, inputs) -> list[pd.DataFrame]:
    """Score shard by shard (``groups[i]``: the shard of task ``i``, whose image ids are
    ``chunk_ids[i]``) into the staging folder of ``out`` (:mod:`xaipipe.shards`), reusing the
    shards a killed run finished; returns the shards' frames as read back."""
    stage = shards.staging(out)
    job_key = {"job": signature(job), "inputs": shards.fingerprint(
        [v for k in sorted(inputs) for v in as_list(inputs[k])])}
    reused, frames = 0, []
    for k, g in enumerate(sorted(set(groups))):
        mine = [i for i, gi in enumerate(groups) if gi == g]
        key = shards.shard_key(job_key, np.concatenate([chunk_ids[i] for i in mine]))
        path = stage / shards.shard_name(k, ".parquet")
        if path.is_file() and read_provenance(path).get("shard_key") == key:
            reused += 1
        else:
            df = pd.concat(dask.compute(*[tasks[i] for i in mine]), ignore_index=True)
            write_scores(path, df, {"shard": k, "shard_key": key})
        frames.append(pd.read_parquet(path))
    if reused:
        log.info("reused %d of %d finished score shards", reused, len(frames))
    return frames


def write_scores(out, df: pd.DataFrame, provenance: dict) -> None:
    """Per-image scores to parquet, with the provenance (and versions) as JSON metadata."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[PROVENANCE_KEY] = json.dumps({**provenance, **versions()}, default=str).encode()
    with atomic_path(out) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp)


def read_provenance(path) -> dict:
    """The provenance recorded in a score file by :func:`write_scores`."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(PROVENANCE_KEY, b"{}"))
