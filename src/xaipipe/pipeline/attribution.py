"""The attribution loop of one saliency store: read the selected images batch by batch,
attribute them, stream the maps and extras into the store."""
from __future__ import annotations

import contextlib
import logging

import torch
from tqdm import tqdm

from ..data.filters import requested_images
from ..data.image_store import open_images
from ..models.spec import load_spec
from .. import shards
from ..jobs import signature
from ..store import SaliencyWriter, shard_layout
from ..zarrio import open_group
from ..explain.base import get_method

log = logging.getLogger("xaipipe")


def explain_to_store(out, images_path, selections, model_files, job, progress=True,
                     references=None):
    """Write the store ``out`` of one method run, or, for a one-path sweep (``job.sweep``),
    the stores ``out`` (a list aligned with ``job.sweep``), one per step count, from one
    evaluation of each image's path. Every store is complete or absent. With more images than
    ``job.shard_size``, each store is a folder of shard stores (:mod:`xaipipe.shards`) and a
    rerun after a kill recomputes only unfinished shards. A finished shard is reused only if
    it was made by the same job (its ``shard_key``) and written with the layout this run
    writes (its attributes, as :func:`~xaipipe.store.open_saliency` compares them across
    shards: dtype, keepbits, native resolution with ``image_size`` and ``upsample``, ...);
    otherwise it is recomputed (logged, with the attributes that differ). Settings that leave
    the attributes alone (batch size, memory budget, device) keep the finished shards.
    ``references``: the path a method with ``needs_references`` takes its references from
    (:func:`~.references.reference_params`: an image store's training split, an LPI reference
    set). Returns ``{"shards", "reused"}``."""
    cls = get_method(job.method)
    model = load_spec(job.model, model_files, job.device)
    dev = next(model.parameters()).device
    images = open_images(images_path, job.split)
    ids, targets = requested_images(selections, job.max_images, job.target)
    pos = images.positions(ids)
    params, extra = job.params, {}
    if getattr(cls, "needs_references", None):
        if not references:
            raise ValueError(f"method {job.method!r} needs references "
                             f"({cls.needs_references}); none were given")
        from .references import reference_params
        params = params.replace(**reference_params(cls.needs_references, references, dev))
        extra = {"references": str(references)}
    algo = cls(model, seed=job.seed, memory_mb=job.memory_mb,
               precision=job.precision, params=params)
    # Methods with a coarser native map (GradCAM) store it as computed; readers upsample it.
    upsample = getattr(cls, "native_upsample", None)
    if upsample and getattr(job, "native_resolution", True):
        algo.native_resolution = True
    else:
        upsample = None
    sweep = list(job.sweep) if job.sweep else None
    outs = list(out) if sweep else [out]
    if sweep and len(outs) != len(sweep):
        raise ValueError(f"a sweep over {sweep} writes {len(sweep)} stores, got {len(outs)}")
    base = {**job.provenance, "method_name": job.method, "model_spec": job.model.load_args(),
            "target_kind": job.target, "seed": job.seed, "split": job.split, **extra}

    # the configured parameters (plain data; references read from files are named in extra)
    configured = cls.check(job.params).as_dict()

    def attrs(n):
        if n is None:
            return {**base, "parameters": configured}
        return {**base, "method": f"{job.provenance['method']}@{n}", "sweep": sweep,
                "parameters": {**configured, "steps": n}}

    parts = shards.bounds(len(ids), getattr(job, "shard_size", None))
    log.info("%s%s on %d images (%s) in %d shard(s), device %s", job.method,
             f" sweep {sweep}" if sweep else "", len(ids), images_path, len(parts), dev)
    bs = job.batch_size
    bar = tqdm(total=len(ids), desc=job.method, disable=not progress, mininterval=2)

    def writers_of(paths, a, b, extra_attrs):
        """The (unopened) writers of images ``a:b`` into ``paths`` (one per step count)."""
        return [SaliencyWriter(o, b - a, {**attrs(n), **extra_attrs}, dtype=job.dtype,
                               keepbits=job.keepbits, chunk_n=max(bs, 1),
                               image_size=images.images.shape[-2:] if upsample else None,
                               upsample=upsample)
                for o, n in zip(paths, sweep or [None])]

    def write(paths, a, b, extra_attrs):
        """Attribute images ``a:b`` into the stores ``paths`` (one per step count)."""
        with contextlib.ExitStack() as stack:
            writers = [stack.enter_context(w) for w in writers_of(paths, a, b, extra_attrs)]
            for s in range(a, b, bs):
                sl = slice(s, min(b, s + bs))
                x = images.tensor(pos[sl], dev)
                t = torch.as_tensor(targets[sl], device=dev)
                if sweep:
                    res = algo.run_sweep(x, t, torch.as_tensor(ids[sl]), sweep)
                    for w, n in zip(writers, sweep):
                        w.write(res[n].maps, ids[sl], targets[sl], res[n].extras)
                else:
                    res = algo.run(x, t, torch.as_tensor(ids[sl]))
                    writers[0].write(res.maps, ids[sl], targets[sl], res.extras)
                bar.update(sl.stop - sl.start)

    with bar:
        if len(parts) == 1:
            write(outs, 0, len(ids), {})
            for o in outs:                     # a previous partial run's shards are stale
                shards.discard(o)
            return {"shards": 1, "reused": 0}
        # several shards: each finished one is kept in a staging folder until all are done, so
        # a killed job's rerun recomputes only the shards that were not finished
        # (errors writing there name the output, not the hidden staging folder)
        with shards.output_errors(outs):
            stages = [shards.staging(o) for o in outs]
            job_key = {"job": signature(job), "inputs": shards.fingerprint(
                [images_path, *model_files])}
            reused = 0
            for k, (a, b) in enumerate(parts):
                key = shards.shard_key({**job_key, "targets": targets[a:b].tolist()},
                                       ids[a:b])
                paths = [st / shards.shard_name(k, ".zarr") for st in stages]
                extra = {"shard": k, "shard_key": key}
                if all(_shard_done(w.path, key, w.attrs)
                       for w in writers_of(paths, a, b, extra)):
                    reused += 1
                    bar.update(b - a)
                    continue
                write(paths, a, b, extra)
            if reused:
                log.info("reused %d of %d finished shards", reused, len(parts))
            for st, o in zip(stages, outs):
                shards.write_manifest(
                    st, [shards.shard_name(k, ".zarr") for k in range(len(parts))],
                    [b - a for a, b in parts])
                shards.finish(st, o)
        return {"shards": len(parts), "reused": reused}


def _shard_done(path, key, attrs) -> bool:
    """A finished shard store of this job (complete by construction: written atomically)
    with the layout this run writes (``attrs``: what its writer would store)."""
    if not (path / "zarr.json").is_file():
        return False
    have = dict(open_group(path).attrs)
    if have.get("shard_key") != key:
        log.info("recomputing finished shard %s: made by another job (settings, inputs or "
                 "images)", path.name)
        return False
    have, want = shard_layout(have), shard_layout(attrs)
    if have != want:
        diff = sorted(k for k in {*have, *want} if have.get(k) != want.get(k))
        log.info("recomputing finished shard %s: written with other %s than this run's",
                 path.name, ", ".join(diff))
        return False
    return True
