"""A model's predictions on every image of a variant: the input of the filters."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .image_store import ImageSet

PREDICTION_COLUMNS = ["image_id", "label", "pred", "prob_label", "prob_pred", "logit_label",
                      "top5"]


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
