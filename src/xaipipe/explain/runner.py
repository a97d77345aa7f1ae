"""The attribution loop of one saliency store: read the selected images batch by batch,
attribute them, stream the maps and extras into the store."""
from __future__ import annotations

import contextlib
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
    """Write the store ``out`` of one method run, or, for a one-path sweep (``job.sweep``),
    the stores ``out`` (a list aligned with ``job.sweep``), one per step count, from one
    evaluation of each image's path. Every store is complete or absent."""
    cls = get_method(job.method)
    model = load_spec(job.model, model_files, job.device)
    dev = next(model.parameters()).device
    images = open_images(images_path, job.split)
    ids, targets = requested_images(selections, job.max_images, job.target)
    pos = images.positions(ids)
    algo = cls(model, seed=job.seed, memory_mb=job.memory_mb, **job.params)
    sweep = list(job.sweep) if job.sweep else None
    outs = list(out) if sweep else [out]
    if sweep and len(outs) != len(sweep):
        raise ValueError(f"a sweep over {sweep} writes {len(sweep)} stores, got {len(outs)}")
    base = {**job.provenance, "method_name": job.method, "model_spec": job.model.load_args(),
            "target_kind": job.target, "seed": job.seed, "split": job.split}

    def attrs(n):
        if n is None:
            return {**base, "parameters": algo.hparams}
        return {**base, "method": f"{job.provenance['method']}@{n}", "sweep": sweep,
                "parameters": {**algo.hparams, "steps": n}}

    log.info("%s%s on %d images (%s), device %s", job.method,
             f" sweep {sweep}" if sweep else "", len(ids), images_path, dev)
    bs = job.batch_size
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(SaliencyWriter(o, len(ids), attrs(n), dtype=job.dtype,
                                                      chunk_n=max(bs, 1)))
                   for o, n in zip(outs, sweep or [None])]
        bar = stack.enter_context(tqdm(total=len(ids), desc=job.method,
                                       disable=not progress, mininterval=2))
        for s in range(0, len(ids), bs):
            sl = slice(s, s + bs)
            x = images.tensor(pos[sl], dev)
            t = torch.as_tensor(targets[sl], device=dev)
            if sweep:
                res = algo.run_sweep(x, t, torch.as_tensor(ids[sl]), sweep)
                for w, n in zip(writers, sweep):
                    w.write(res[n].maps, ids[sl], targets[sl], res[n].extras)
            else:
                res = algo.run(x, t, torch.as_tensor(ids[sl]))
                writers[0].write(res.maps, ids[sl], targets[sl], res.extras)
            bar.update(len(ids[sl]))
