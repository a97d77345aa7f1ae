"""Score a saliency store with a metric on Dask.

The maps and the images are read from their Zarr stores as dask arrays, aligned by image id
and chunked alike; each chunk becomes one task that loads the model once per worker process
(cached) and calls the metric on the whole chunk, so model calls are batched. The result is
one row per image, written atomically to parquet.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os

import dask
import dask.array as da
import numpy as np
import pandas as pd
import torch

from ..data.store import open_images
from ..store import open_saliency
from ..utils import atomic_path, resolve_device
from .base import get_metric


@functools.lru_cache(maxsize=4)
def _cached_model(spec_json: str, device: str):
    from ..models import load_model
    spec = json.loads(spec_json)
    return load_model(spec.pop("name"), device=device, **spec)


def model_from_spec(spec: dict, device="auto"):
    """A model from a JSON-able spec ``{"name": ..., "weights": ..., **kw}``, cached per process."""
    return _cached_model(json.dumps(spec, sort_keys=True), str(resolve_device(device)))


@contextlib.contextmanager
def dask_client(scheduler: str | None = "local", threads: int = 1):
    """``local``: a LocalCluster (one worker, ``threads`` threads, in-process); ``threads`` or
    ``synchronous``: dask's local schedulers without distributed; anything else: the address
    of a running scheduler (e.g. a dask-jobqueue SLURMCluster)."""
    threads = max(1, int(threads))
    if scheduler in (None, "local"):
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=1, threads_per_worker=threads, processes=False,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
    elif scheduler in ("threads", "synchronous"):
        with dask.config.set(scheduler=scheduler, num_workers=threads):
            yield None
    else:
        from distributed import Client
        with Client(scheduler) as client:
            yield client


def _score_chunk(metric_name, metric_params, model_spec, device, batch_size, maps, images,
                 targets, ids, fill):
    metric = get_metric(metric_name)(**metric_params)
    model = model_from_spec(model_spec, device)
    dev = next(model.parameters()).device
    x = torch.from_numpy(np.asarray(images)).to(dev).float().div_(255)
    f = None if fill is None else torch.from_numpy(np.asarray(fill)).to(dev).float().div_(255)
    out = metric.compute(model, x, torch.from_numpy(np.asarray(maps)).to(dev),
                         torch.from_numpy(np.asarray(targets)).to(dev), f, batch_size)
    out.pop("fractions", None)
    cols = {"image_id": np.asarray(ids), "target": np.asarray(targets)}
    for k, v in out.items():
        v = np.asarray(v)
        cols[k] = list(v) if v.ndim > 1 else v
    return pd.DataFrame(cols)


def score_store(metric_name: str, metric_params: dict, saliency_path, images_path,
                model_spec: dict, out_path, *, split: str = "val", fill_path=None,
                device="auto", batch_size: int = 256, scheduler: str | None = "local",
                threads: int = 1) -> pd.DataFrame:
    """Per-image scores of the maps in ``saliency_path``; written to ``out_path`` (parquet)."""
    metric = get_metric(metric_name)(**metric_params)
    sal = open_saliency(saliency_path)
    images = open_images(images_path, split)
    pos = images.positions(sal.index)
    chunks = sal.saliency.chunks[0]
    img_da = da.from_zarr(images.images)[pos].rechunk((chunks, -1, -1, -1))
    fill_da = None
    if metric.fill_variant():
        if fill_path is None:
            raise ValueError(f"metric {metric_name!r} needs the {metric.fill_variant()!r} "
                             f"variant images (fill_path)")
        fill_set = open_images(fill_path, split)
        fill_da = da.from_zarr(fill_set.images)[fill_set.positions(sal.index)].rechunk(
            (chunks, -1, -1, -1))
    bounds = np.cumsum((0,) + chunks)
    maps_blocks = sal.saliency.to_delayed().ravel()
    img_blocks = img_da.to_delayed().ravel()
    fill_blocks = fill_da.to_delayed().ravel() if fill_da is not None else [None] * len(chunks)
    task = dask.delayed(_score_chunk, pure=True)
    tasks = [task(metric_name, metric.hparams, model_spec, str(device), batch_size, m, im,
                  sal.target[a:b], sal.index[a:b], fl)
             for m, im, fl, a, b in zip(maps_blocks, img_blocks, fill_blocks, bounds[:-1],
                                        bounds[1:]) if b > a]
    if threads > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // threads))
    with dask_client(scheduler, threads):
        parts = dask.compute(*tasks)
    df = (pd.concat(parts, ignore_index=True) if parts
          else pd.DataFrame({"image_id": np.zeros(0, np.int64), "target": np.zeros(0, np.int64)}))
    for key in ("dataset", "model", "method", "variant"):
        df.attrs[key] = sal.attrs.get(key)
    with atomic_path(out_path) as tmp:
        df.to_parquet(tmp, index=False)
    return df
