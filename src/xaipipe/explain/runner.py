"""The attribution loop of one saliency store: read the selected images batch by batch,
attribute them, stream the maps and extras into the store."""
from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from ..data.filters import requested_images
from ..data.store import open_images
from ..models.spec import load_spec
from ..store import SaliencyWriter
from .base import get_method

log = logging.getLogger("xaipipe")


def explain_to_store(out, images_path, selections, model_files, job, progress=True):
    cls = get_method(job.method)
    model = load_spec(job.model, model_files, job.device)
    dev = next(model.parameters()).device
    images = open_images(images_path, job.split)
    ids, targets = requested_images(selections, job.max_images, job.target)
    pos = images.positions(ids)
    algo = cls(model, seed=job.seed, memory_mb=job.memory_mb, **job.params)
    attrs = {**job.provenance, "method_name": job.method, "parameters": algo.hparams,
             "model_spec": job.model.load_args(), "target_kind": job.target,
             "seed": job.seed, "split": job.split}
    log.info("%s on %d images (%s), device %s", job.method, len(ids), images_path, dev)
    bs = job.batch_size
    with SaliencyWriter(out, len(ids), attrs, dtype=job.dtype, chunk_n=max(bs, 1)) as w, \
            tqdm(total=len(ids), desc=job.method, disable=not progress, mininterval=2) as bar:
        for s in range(0, len(ids), bs):
            sl = slice(s, s + bs)
            x = images.tensor(pos[sl], dev)
            res = algo.run(x, torch.as_tensor(targets[sl], device=dev),
                           torch.as_tensor(ids[sl]))
            w.write(res.maps, ids[sl], targets[sl], res.extras)
            bar.update(len(ids[sl]))
