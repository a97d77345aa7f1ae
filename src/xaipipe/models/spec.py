"""Loading a configured model (a :class:`~xaipipe.config.jobs.ModelSpec`) once per process."""
from __future__ import annotations

import functools
import json
from pathlib import Path

from ..utils import resolve_device


@functools.lru_cache(maxsize=4)
def _cached(args_json: str, device: str):
    from .zoo import load_model
    args = json.loads(args_json)
    return load_model(args.pop("name"), device=device, **args)


def load_spec(spec, model_files=(), device="auto"):
    """The model of ``spec`` in eval mode, its weights from ``model_files[0]`` when given (the
    job's ``model`` input), cached per (spec, device) in the process (Dask workers load each
    model once)."""
    files = list(model_files or [])
    args = spec.load_args(str(Path(files[0]).resolve()) if files else None)
    return _cached(json.dumps(args, sort_keys=True), str(resolve_device(device)))
