"""Model architectures built on the meta device: no memory, no weights, no initialisation.
The config checks ask such a model what it contains (a layer a method names) before any job
runs, for every model of an experiment, in a fraction of a second each."""
from __future__ import annotations

import contextlib
import json

import torch
import torch.nn.init as init
from torch import nn

from .zoo import load_model

_META_MODELS: dict = {}


def meta_model(arch: str, weights: str = "random", **kwargs) -> nn.Module:
    """Architecture ``arch`` (a name of :func:`~xaipipe.models.load_model`, with its
    constructor ``kwargs``) on the meta device, cached per (arch, kwargs); ``weights``: only
    for models whose architecture is in their weights folder (``hf_vit``)."""
    key = json.dumps([arch, weights, kwargs], sort_keys=True)
    if key not in _META_MODELS:
        with torch.device("meta"), _no_init():
            _META_MODELS[key] = load_model(arch, weights=weights, device="meta", **kwargs)
    return _META_MODELS[key]


@contextlib.contextmanager
def _no_init():
    """Skip the weight initialisers while building on the meta device: there are no values
    to fill, and the initialisers dominate the build time (1.2 s per ImageNet model)."""
    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_")
             and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}
    try:
        for n in names:
            setattr(init, n, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)
