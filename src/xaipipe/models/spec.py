"""Loading a configured model (a :class:`~xaipipe.jobs.ModelSpec`) once per process."""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from ..utils import resolve_device


@functools.lru_cache(maxsize=4)
def _cached(args_json: str, device: str, weights_stamp: tuple | None = None):
    """``weights_stamp``: only part of the key (:func:`_file_stamp`), so that a rewritten
    weights file is another entry."""
    from .zoo import load_model
    args = json.loads(args_json)
    return load_model(args.pop("name"), device=device, **args)


def _file_stamp(weights) -> tuple | None:
    """(absolute path, size, mtime in ns, inode) of a weights file, None when ``weights`` names
    no existing file (an enum name, ``random``, a missing file: load_model says why)."""
    if not isinstance(weights, (str, os.PathLike)):
        return None
    path = os.path.abspath(os.fspath(weights))
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_size, st.st_mtime_ns, st.st_ino)


def load_spec(spec, model_files=(), device="auto"):
    """The model of ``spec`` in eval mode, its weights from ``model_files[0]`` when given (the
    job's ``model`` input), cached per (spec, weights file, device) in the process (Dask
    workers load each model once). The weights file is known by its absolute path, size and
    modification time (and inode): a file rewritten since (a retrained model, an atomic
    replace) is loaded again, never answered from the cache."""
    files = list(model_files or [])
    args = spec.load_args(str(Path(files[0]).resolve()) if files else None)
    return _cached(json.dumps(args, sort_keys=True), str(resolve_device(device)),
                   _file_stamp(args.get("weights")))
