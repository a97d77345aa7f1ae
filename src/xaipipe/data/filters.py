"""Image selections from a model's predictions on one variant, as the TMLR study of IDGI
(Singhi & Kumari; ``ShreeSinghi/TMLR-IDGI``: ``class_filterer.py``, ``proba_filterer.py``).

- ``all``: every image
- ``correct``: top-1 prediction equals the label (the IDGI study's "predictions set")
- ``confident``: correct **and** label probability strictly above ``threshold`` (0.8: the
  "probas set"; the reference code uses >, not >=)
- ``first``: the first ``images`` images by id (a small fixed set for an expensive metric:
  the model-randomisation check's 20 images, with a per-metric ``filter``)

A filter is a function ``keep(predictions, **params) -> bool array`` registered in
:data:`FILTERS` with its declared ``params``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataError
from ..params import Param, check_params
from ..registry import Registry

FILTERS = Registry("filter")


def _filter(params: dict[str, Param], name: str | None = None):
    def wrap(fn):
        fn.params = params
        return FILTERS.register(fn, name=name)
    return wrap


@_filter({}, name="all")
def every(predictions: pd.DataFrame) -> np.ndarray:
    return np.ones(len(predictions), bool)


@_filter({})
def correct(predictions: pd.DataFrame) -> np.ndarray:
    return (predictions["pred"] == predictions["label"]).to_numpy()


@_filter({"threshold": Param(0.8, float, min=0.0, max=1.0,
                             doc="label probability must be strictly above this")})
def confident(predictions: pd.DataFrame, threshold: float) -> np.ndarray:
    return correct(predictions) & (predictions["prob_label"] > threshold).to_numpy()


@_filter({"images": Param(20, int, min=1, doc="how many images, the first by id")})
def first(predictions: pd.DataFrame, images: int) -> np.ndarray:
    ids = predictions["image_id"].to_numpy()
    return np.isin(ids, np.sort(ids)[:images])


def check_filter(name: str, params: dict | None = None, where: str | None = None) -> dict:
    fn = FILTERS.get(name, where)
    return check_params(fn.params, params or {}, where or f"filters.{name}")


def select(predictions: pd.DataFrame, name: str, **params) -> pd.DataFrame:
    """The rows of ``predictions`` that pass the filter ``name``."""
    p = check_filter(name, params)
    missing = {"image_id", "label", "pred", "prob_label"} - set(predictions.columns)
    if missing:
        raise DataError(f"predictions lack the columns {sorted(missing)}")
    keep = FILTERS.get(name)(predictions, **p)
    return predictions.loc[keep].reset_index(drop=True)


def selected_ids(selection: pd.DataFrame, max_images: int | None = None) -> pd.DataFrame:
    """The first ``max_images`` rows of a selection, by image id."""
    sel = selection.sort_values("image_id", kind="stable")
    return sel.iloc[:max_images] if max_images else sel


def requested_images(selections, max_images, target: str = "label"):
    """Image ids (sorted) and explained classes (``label`` or ``pred``) of the union of the
    selection files, each capped at its ``max_images`` (first N by id)."""
    if target not in ("label", "pred"):
        raise ValueError(f"target must be label or pred, got {target!r}")
    parts = [selected_ids(pd.read_parquet(p), mx) for p, mx in zip(selections, max_images)]
    sel = pd.concat(parts) if parts else pd.DataFrame({"image_id": [], target: []})
    sel = sel.drop_duplicates("image_id").sort_values("image_id")
    return np.array(sel["image_id"], np.int64), np.array(sel[target], np.int64)
