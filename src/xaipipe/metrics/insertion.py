"""Insertion (Petsiuk, Das, Saenko, RISE, BMVC 2018): reveal the most important pixels of x̃ on
the fill, in order; a good map makes the target score rise fast (higher AUC is better)."""
from __future__ import annotations

import numpy as np

from .base import Metric, MetricInputs, as_target, register_metric
from .perturbation import PERTURBATION_PARAMS, fractions, perturbation_curves


@register_metric
class Insertion(Metric):
    """Per image: ``curve`` (N, steps), ``auc``, ``auc_norm`` (NaN where ``norm_excluded``),
    ``norm_excluded``, ``score_full``. Needs the model and the images, and with ``fill: blur``
    the blur variant's images (``other_images``)."""
    name = "insertion"
    params = PERTURBATION_PARAMS
    scalars = ("auc", "auc_norm")
    needs = frozenset({"model", "images"})
    direction = "higher"
    excludes = {"auc_norm": "norm_excluded"}
    mode = "insertion"

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        if self.hparams.fill == "blur":
            self.needs = type(self).needs | {"other_images"}

    def other_variant(self):
        return "blur" if self.hparams.fill == "blur" else None

    def compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        p = self.hparams
        return perturbation_curves(inputs.model, inputs.images, inputs.maps, inputs.target,
                                   self.mode, steps=p.steps, fill=p.fill,
                                   fill_images=inputs.other_images, score=p.score,
                                   reduction=p.reduction, batch_size=inputs.batch_size,
                                   norm_min=p.norm_min, compat=p.compat,
                                   protocol=p.protocol)


def run_perturbation(cls, model, images, maps, target, fill_images, batch_size, params):
    """The plain-function form of :class:`Insertion`/:class:`Deletion`: the per-image columns
    plus the ``fractions`` grid of the curve."""
    metric = cls(**params)
    if metric.hparams.fill == "blur" and fill_images is None:
        raise ValueError(f"{cls.name} with fill 'blur' needs the blurred images "
                         "(fill_images=...)")
    n = images.shape[0]
    out = metric(MetricInputs(ids=np.arange(n), target=as_target(target, n, images.device),
                              maps=maps, model=model, images=images,
                              other_images=fill_images, batch_size=batch_size))
    out["fractions"] = fractions(metric.hparams.steps, metric.hparams.protocol)
    return out


def insertion(model, images, maps, target, *, fill_images=None, batch_size=256, **params):
    """Per-image insertion curves and AUCs; see :class:`Insertion` for ``params``.
    ``target``: (N,) classes, or one class for all images."""
    return run_perturbation(Insertion, model, images, maps, target, fill_images, batch_size,
                            params)
