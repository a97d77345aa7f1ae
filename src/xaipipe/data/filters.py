"""Predictions per variant and the image selections built from them (`metrics.md` §2.3-2.4).

- ``all``: every image
- ``correct``: top-1 prediction equals the label (the IDGI study's "predictions set")
- ``confident``: correct **and** label probability strictly above ``threshold`` (0.8: the
  "probas set"; the reference code uses >, not >=)
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..errors import ConfigError, DataError
from ..params import Param, check_params
from .store import ImageSet

FILTERS: dict[str, dict[str, Param]] = {
    "all": {},
    "correct": {},
    "confident": {"threshold": Param(0.8, float, min=0.0, max=1.0,
                                     doc="label probability must be strictly above this")},
}
PREDICTION_COLUMNS = ["image_id", "label", "pred", "prob_label", "prob_pred", "logit_label",
                      "top5"]


def check_filter(name: str, params: dict | None = None, where: str | None = None) -> dict:
    if name not in FILTERS:
        raise ConfigError(f"{where or 'filters'}: unknown filter {name!r}; "
                          f"allowed: {', '.join(FILTERS)}")
    return check_params(FILTERS[name], params or {}, where or f"filters.{name}")


@torch.no_grad()
def predict(model, images: ImageSet, batch_size: int = 256, device="cpu",
            progress: bool = True) -> pd.DataFrame:
    """One row per image: label, predicted class, label/pred probability, label logit, top-5."""
    rows = []
    n = len(images)
    for start in tqdm(range(0, n, batch_size), desc="predict", disable=not progress,
                      mininterval=2):
        pos = np.arange(start, min(n, start + batch_size))
        logits = model(images.tensor(pos, device)).float()
        prob = torch.softmax(logits, 1)
        labels = torch.as_tensor(images.labels[pos], device=logits.device)
        pred = prob.argmax(1)
        k = min(5, prob.shape[1])
        top = prob.topk(k, 1).indices.cpu().numpy()
        rows.append(pd.DataFrame({
            "image_id": images.index[pos],
            "label": images.labels[pos],
            "pred": pred.cpu().numpy(),
            "prob_label": prob.gather(1, labels[:, None]).squeeze(1).cpu().numpy(),
            "prob_pred": prob.max(1).values.cpu().numpy(),
            "logit_label": logits.gather(1, labels[:, None]).squeeze(1).cpu().numpy(),
            "top5": list(top),
        }))
    if not rows:
        return pd.DataFrame({c: [] for c in PREDICTION_COLUMNS})
    return pd.concat(rows, ignore_index=True)


def select(predictions: pd.DataFrame, name: str, **params) -> pd.DataFrame:
    """The rows of ``predictions`` that pass the filter ``name``."""
    p = check_filter(name, params)
    missing = {"image_id", "label", "pred", "prob_label"} - set(predictions.columns)
    if missing:
        raise DataError(f"predictions lack the columns {sorted(missing)}")
    if name == "all":
        keep = np.ones(len(predictions), bool)
    else:
        keep = (predictions["pred"] == predictions["label"]).to_numpy()
        if name == "confident":
            keep = keep & (predictions["prob_label"] > p["threshold"]).to_numpy()
    return predictions.loc[keep].reset_index(drop=True)
