"""The work of each workflow rule, as plain functions of (output paths, input paths, typed job).

The Snakemake scripts only unpack ``snakemake.*`` and call these; everything here can be called
(and is tested) without Snakemake. The work itself lives where its name says: data/, models/,
:mod:`.attribution` (the attribution loop), :mod:`.scoring` (a metric on Dask),
:mod:`.summary` (an experiment's summary), report/. Each function imports what its work needs
when it runs: every job is a fresh Python process, and one that selects images or renders a
table should not pay for importing the attribution and scoring stacks (Dask, Zarr, every
method and metric).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .. import repro
from ..parallel import allocator_requested, retain_freed_memory, set_torch_threads

if TYPE_CHECKING:
    from ..jobs import (ExplainJob, FigureJob, ImageStoreJob, PredictJob, ReferenceSetJob,
                        ScoreJob, SelectJob, SummaryJob, TrainJob)

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


def setup_job(threads: int | None) -> int:
    """A job process's set-up, first thing in each script: the allocator
    (:func:`~xaipipe.parallel.retain_freed_memory` unless the config's ``allocator`` is
    ``system``) and torch's threads: the rule's ``threads`` capped by the CPUs it was
    allocated; in reproducible mode (:mod:`xaipipe.repro`) the pinned kernels and a fixed
    thread count. Returns the thread count."""
    if allocator_requested() == "retain":
        retain_freed_memory()
    if repro.requested():
        repro.enable()
        missing = repro.check_environment()
        if missing:
            log.warning("reproducible mode without %s: set before python starts (the "
                        "workflow does)", " ".join(missing))
        log.info("reproducible mode: %s, %d torch thread",
                 " ".join(f"{k}={os.environ.get(k)}" for k in repro.ENV), repro.REPRO_THREADS)
        return repro.REPRO_THREADS
    return set_torch_threads(threads)


# -- data --------------------------------------------------------------------------------
def image_store(out, job: ImageStoreJob):
    from ..data.datasets import build_image_store
    build_image_store(job.dataset, job.source, job.variant, job.variant_params, out,
                      list(job.splits) if job.splits else None,
                      preprocess_params=job.preprocess)


def train_model(weights_out, info_out, images, job: TrainJob):
    from ..models.train import train_demo_model
    from ..utils import resolve_device
    result = train_demo_model(job.arch, images, weights_out, info_out,
                              device=resolve_device(job.device), log=log.info, **job.params)
    log.info("val accuracy %.4f in %.0f s", result["val_accuracy"], result["seconds"])
    return result


def predictions(out, images, model_files, job: PredictJob):
    from ..data.image_store import open_images
    from ..data.predictions import predict
    from ..models.spec import load_spec
    from ..utils import atomic_path
    model = load_spec(job.model, model_files, job.device)
    df = predict(model, open_images(images, job.split), job.batch_size,
                 next(model.parameters()).device)
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
    log.info("%d predictions, accuracy %.4f", len(df),
             float((df["pred"] == df["label"]).mean()) if len(df) else float("nan"))


def selection(out, predictions_path, job: SelectJob):
    import pandas as pd

    from ..data.filters import select
    from ..utils import atomic_path
    df = select(pd.read_parquet(predictions_path), job.filter, **job.params)
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
    log.info("filter %s keeps %d images", job.filter, len(df))


# -- attribution -------------------------------------------------------------------------
def explain_store(out, images, selections, model_files, job: ExplainJob, progress=True,
                  references=None):
    """``references``: the explain rule's ``references`` input (a path, or an empty list
    for methods that draw their own)."""
    from ..utils import as_list
    from .attribution import explain_to_store
    refs = as_list(references) if references is not None else []
    explain_to_store(out, images, as_list(selections), as_list(model_files), job,
                     progress=progress, references=refs[0] if refs else None)


def lpi_reference_set(out, images, model_files, job: ReferenceSetJob):
    """LPI's reference set of a model from the training split of ``images``."""
    from ..utils import as_list
    from .references import build_lpi_references
    build_lpi_references(out, images, as_list(model_files), job)


# -- metrics -----------------------------------------------------------------------------
def score(out, inputs: dict, job: ScoreJob, threads: int = 1):
    from .scoring import score_store
    return score_store(out, inputs, job, threads=threads)


def summary(out, scores, selections, job: SummaryJob, per_image=None):
    """The experiment's summary CSV and, with ``per_image``, its per-image scores (parquet,
    long form: :func:`xaipipe.pipeline.summary.per_image_frame`)."""
    from ..utils import as_list, atomic_path
    from .summary import per_image_frame, summarize_experiment
    df = summarize_experiment(as_list(scores), as_list(selections), job)
    if per_image is not None:
        frame = per_image_frame(as_list(scores), as_list(selections), job)
        with atomic_path(per_image) as tmp:
            frame.to_parquet(tmp, index=False)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    return df


# -- report ------------------------------------------------------------------------------
def table(outputs: dict, summary_csv, name: str, per_image=None):
    from ..report import read_summary
    from ..report.tables import TABLES, build_table
    build_table(TABLES.get(name), read_summary(summary_csv), outputs, per_image)


def figure(outputs: dict, summary_csv, stores, images, job: FigureJob, per_image=None):
    from ..report import read_summary
    from ..report.figures import FIGURES, FigureInputs
    from ..utils import as_list
    inputs = FigureInputs(summary=read_summary(summary_csv),
                          stores=dict(zip(job.methods, as_list(stores))), images=images,
                          split=job.split, n_images=job.n_images, experiment=job.experiment,
                          per_image=per_image)
    FIGURES.get(job.figure)(inputs, [outputs["png"], outputs["pdf"]])
