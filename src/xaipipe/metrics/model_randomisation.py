"""The model-randomisation sanity check as a metric (Adebayo, Gilmer, Muelly, Goodfellow,
Hardt, Kim, *Sanity Checks for Saliency Maps*, NeurIPS 2018), in the cascading form of the
attribution re-calibration experiments (``ypeiyu/attribution_recalibration`` @5b745d4,
``utils/utils.py`` and ``Evaluator.sanity_inspection``; the cascade itself:
:mod:`xaipipe.models.randomise`).

Per image: the stored map (from the trained model) is compared with the map the same method
(its parameters and seed, :attr:`MetricInputs.attribute`, built by the runner from the store)
gives on each stage of the cascade, the layers re-initialised from the output down
(``layers``; None: :func:`~xaipipe.models.randomise.default_cascade`, the reference's 17
modules for Inception-v3). A method passes when the similarity falls as the cascade reaches
the lower layers; lower is better. Columns: ``similarity`` (N, L) per stage, ``similarity_mean``
over the stages where it is defined, ``similarity_last`` (every listed layer
re-initialised) and ``similarity@<layer>`` per stage, in cascade order; a similarity is NaN
where either map is constant (Spearman is undefined; Grad-CAM on a randomised model can be 0
everywhere), and ``similarity_undefined`` flags the images with one (the summary keeps them all; figure
``randomisation_curves`` draws the per-stage rows).

Costly: L method runs per image. The preset scores it on its first 20 images (filter
``first``, per metric), as the reference's 20 images per stage.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..models.randomise import (DEFAULT_KINDS, KINDS, SIMILARITIES, cascade, default_cascade,
                                randomisation_similarity)
from ..params import Param
from .base import Metric, MetricInputs, register_metric, summary_row
from .statistics import column_seed


@register_metric
class ModelRandomisation(Metric):
    """Model randomisation: the similarity of each image's map with the same method's map on
    every stage of a cascading re-initialisation of the model (module docstring). Needs the
    model, the images and the method (``attribute``)."""
    name = "model_randomisation"
    params = {
        "layers": Param(None, (list, tuple, type(None)),
                        doc="the cascade, from the output down (module names of the network); "
                            "null: the reference's for inception_v3, else the top-level "
                            "layers, Sequentials opened one level"),
        "measure": Param("spearman_abs", str, SIMILARITIES,
                         doc="spearman_abs (rank correlation of Σ_c |φ|), spearman (of Σ_c φ) "
                             "or ssim (of min-max normalised Σ_c |φ|)"),
        "kinds": Param(DEFAULT_KINDS, (list, tuple),
                       doc=f"tensors re-sampled in a layer, of {', '.join(KINDS)}"),
        "seed": Param(0, int, doc="seed of the re-sampled tensors"),
    }
    scalars = ("similarity_mean", "similarity_last")
    needs = frozenset({"model", "images", "attribute"})
    direction = "lower"

    def stages(self, model) -> tuple[str, ...]:
        return tuple(self.hparams.layers or default_cascade(model))

    def compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        p = self.hparams
        stages = self.stages(inputs.model)
        if not stages:
            raise ValueError("model_randomisation: the cascade has no layers")
        if inputs.attribute is None:
            raise ValueError("model_randomisation needs the method that made the maps "
                             "(MetricInputs.attribute)")
        original = inputs.maps.detach().cpu()
        sims = []
        with torch.enable_grad():
            for _, model in cascade(inputs.model, stages, p.seed, p.kinds,
                                    include_original=False):
                model.eval()
                maps = inputs.attribute(model, inputs.images, inputs.target, inputs.ids)
                sims.append(randomisation_similarity(original, maps.detach().cpu(), p.measure))
                del model
        sim = np.stack(sims, 1)
        undefined = np.isnan(sim)
        with np.errstate(invalid="ignore"):
            mean = np.where(undefined.all(1), np.nan,
                            np.nansum(sim, 1) / np.maximum((~undefined).sum(1), 1))
        out = {"similarity_mean": mean, "similarity_last": sim[:, -1],
               "similarity_undefined": undefined.any(1)}
        for j, name in enumerate(stages):
            out[f"similarity@{name}"] = sim[:, j]
        return out

    def excluded_by(self, column: str) -> str | None:
        """Every similarity column is NaN where a map is constant (a rank correlation is then
        undefined: Grad-CAM's ReLU can leave nothing on a randomised model), flagged in
        ``similarity_undefined``."""
        return "similarity_undefined" if column.startswith("similarity") else None

    @classmethod
    def aggregate(cls, df: pd.DataFrame, *, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0) -> list[dict]:
        """The mean over images (bootstrap CI) of ``similarity_mean``, ``similarity_last``
        and, per stage in cascade order, ``similarity@<layer>``."""
        cols = [*cls.scalars, *(c for c in df.columns if str(c).startswith("similarity@"))]
        return [summary_row(cls, c, df[c] if c in df else np.zeros(0), n_boot=n_boot,
                            level=level, seed=column_seed(seed, c)) for c in cols]


def model_randomisation(model, images: torch.Tensor, maps: torch.Tensor, target, attribute,
                        image_ids=None, **params) -> dict[str, np.ndarray]:
    """The per-image columns of :class:`ModelRandomisation` for ``maps`` (the method's maps
    of ``images`` on ``model``) and ``attribute(model, images, target, ids) -> maps``, the
    method to rerun on every stage (e.g. ``lambda m, x, t, ids: explain("saliency", m, x, t,
    image_ids=ids)``)."""
    from .base import as_target
    n = images.shape[0]
    ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
    inputs = MetricInputs(ids=ids, target=as_target(target, n, images.device), maps=maps,
                          model=model, images=images, attribute=attribute)
    return ModelRandomisation(**params)(inputs)
