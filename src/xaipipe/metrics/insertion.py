"""Insertion (`metrics.md` §3.1): reveal the most important pixels of x̃ on the fill, in order;
a good map makes the target score rise fast (higher AUC is better)."""
from .base import Metric, register_metric
from .perturbation import PERTURBATION_PARAMS, perturbation_curves


@register_metric
class Insertion(Metric):
    name = "insertion"
    params = PERTURBATION_PARAMS
    scalars = ("auc", "auc_norm")
    mode = "insertion"

    def fill_variant(self):
        return "blur" if self.hparams["fill"] == "blur" else None

    def compute(self, model, images, maps, target, fill=None, batch_size=256):
        p = self.hparams
        return perturbation_curves(model, images, maps, target, self.mode, steps=p["steps"],
                                   fill=p["fill"], fill_images=fill, score=p["score"],
                                   reduction=p["reduction"], batch_size=batch_size)


def insertion(model, images, maps, target, *, fill_images=None, batch_size=256, **params):
    """Per-image insertion curves and AUCs; see :class:`Insertion` for ``params``."""
    return Insertion(**params).compute(model, images, maps, target, fill_images, batch_size)
