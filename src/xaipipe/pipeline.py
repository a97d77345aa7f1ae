"""The work of each workflow stage, as plain functions of paths and settings.

The Snakemake scripts only unpack ``snakemake.*`` and call these; everything here can be called
(and is tested) without Snakemake.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .data.datasets import build_image_store
from .data.filters import predict, select
from .data.store import open_images
from .errors import DataError
from .explain.base import get_method
from .metrics.aggregate import summarize, write_tables
from .metrics.base import get_metric
from .metrics.runner import model_from_spec, score_store
from .models.train import train_demo_model
from .report.figures import auc_bars, saliency_grid
from .store import SaliencyWriter, open_saliency
from .utils import atomic_path, resolve_device

log = logging.getLogger("xaipipe")


@contextlib.contextmanager
def log_to(path):
    """Send stdout, stderr (progress bars) and the ``xaipipe`` logger to ``path``."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as fh, contextlib.redirect_stdout(fh), \
            contextlib.redirect_stderr(fh):
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            yield
        except BaseException:
            import traceback
            traceback.print_exc(file=fh)
            raise
        finally:
            log.removeHandler(handler)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


# -- data --------------------------------------------------------------------------------
def image_store(out, name, cfg, variant, variant_params, splits=None):
    build_image_store(name, cfg, variant, variant_params, out, splits)


def train_model(weights_out, info_out, arch, data_path, device="auto", **train):
    result = train_demo_model(arch, data_path, weights_out, info_out,
                              device=resolve_device(device), log=log.info, **train)
    log.info("val accuracy %.4f in %.0f s", result["val_accuracy"], result["seconds"])
    return result


def predictions(out, model_spec, images_path, split="val", device="auto", batch_size=256):
    model = model_from_spec(model_spec, device)
    df = predict(model, open_images(images_path, split), batch_size,
                 next(model.parameters()).device)
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
    log.info("%d predictions, accuracy %.4f", len(df),
             float((df["pred"] == df["label"]).mean()) if len(df) else float("nan"))


def selection(out, predictions_path, name, params=None):
    df = select(pd.read_parquet(predictions_path), name, **(params or {}))
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
    log.info("filter %s keeps %d images", name, len(df))


# -- attribution -------------------------------------------------------------------------
def explain_targets(selection_path, target: str, max_images: int | None):
    """Image ids (sorted) and explained classes of a selection, capped at ``max_images``."""
    sel = pd.read_parquet(selection_path).sort_values("image_id")
    if max_images:
        sel = sel.iloc[:max_images]
    col = {"label": "label", "pred": "pred"}[target]
    return (np.array(sel["image_id"], dtype=np.int64), np.array(sel[col], dtype=np.int64))


def explain_store(out, method, params, model_spec, images_path, selection_path, split="val",
                  target="label", max_images=None, seed=0, device="auto", batch_size=32,
                  memory_mb=None, dtype="float32", attrs=None, progress=True):
    """Attribution maps of the selected images into one saliency store."""
    cls = get_method(method)
    model = model_from_spec(model_spec, device)
    dev = next(model.parameters()).device
    images = open_images(images_path, split)
    ids, targets = explain_targets(selection_path, target, max_images)
    pos = images.positions(ids)
    algo = cls(model, seed=seed, memory_mb=memory_mb, **params)
    attrs = {**(attrs or {}), "method_name": method, "parameters": algo.hparams,
             "model_spec": model_spec, "target_kind": target, "seed": seed, "split": split}
    log.info("%s on %d images (%s), device %s", method, len(ids), images_path, dev)
    with SaliencyWriter(out, len(ids), attrs, dtype=dtype, chunk_n=max(batch_size, 1)) as w, \
            tqdm(total=len(ids), desc=f"{method}", disable=not progress, mininterval=2) as bar:
        for s in range(0, len(ids), batch_size):
            sl = slice(s, s + batch_size)
            x = images.tensor(pos[sl], dev)
            t = torch.as_tensor(targets[sl], device=dev)
            model.eval()
            res = algo.attribute(x, t, torch.as_tensor(ids[sl]))
            w.write(res.maps, ids[sl], targets[sl], res.extras)
            bar.update(len(ids[sl]))


# -- metrics -----------------------------------------------------------------------------
def score(out, threads=1, **job):
    score_store(out_path=out, threads=threads, **job)


def aggregate(csv_out, md_out, entries, n_boot=1000, level=0.95, seed=0):
    """``entries``: (keys, parquet path, registered metric name)."""
    rows = [(keys, pd.read_parquet(path), get_metric(name).scalars)
            for keys, path, name in entries]
    summary = summarize(rows, n_boot=n_boot, level=level, seed=seed)
    write_tables(summary, csv_out, md_out)
    return summary


# -- report ------------------------------------------------------------------------------
def figures(outputs: dict, summary_csv, stores: dict, images_path, split="val", n_images=6):
    """``stores``: method -> saliency store path (one variant)."""
    summary = pd.read_csv(summary_csv)
    auc_bars(summary, [outputs["bars_png"], outputs["bars_pdf"]])
    opened = {m: open_saliency(p) for m, p in stores.items()}
    common = None
    for s in opened.values():
        common = set(s.index.tolist()) if common is None else common & set(s.index.tolist())
    ids = np.array(sorted(common or []))[:n_images]
    if len(ids) == 0:
        raise DataError("figures: the saliency stores share no image")
    images = open_images(images_path, split)
    pos = images.positions(ids)
    maps = {m: s.saliency[pd.Index(s.index).get_indexer(ids)].compute()
            for m, s in opened.items()}
    masks = images.read_masks(pos)
    names = images.classes
    labels = images.labels[pos]
    titles = [f"#{i} {names[y] if names else y}" for i, y in zip(ids, labels)]
    saliency_grid(images.read(pos), maps, [outputs["grid_png"], outputs["grid_pdf"]],
                  masks=masks, titles=titles)
