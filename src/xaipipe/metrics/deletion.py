"""Deletion (`metrics.md` §3.1): replace the most important pixels by the fill, in order; a good
map makes the target score fall fast (lower AUC is better). q = 0 is the intact image."""
from .base import register_metric
from .insertion import Insertion


@register_metric
class Deletion(Insertion):
    name = "deletion"
    mode = "deletion"


def deletion(model, images, maps, target, *, fill_images=None, batch_size=256, **params):
    """Per-image deletion curves and AUCs; see :class:`Deletion` for ``params``."""
    return Deletion(**params).compute(model, images, maps, target, fill_images, batch_size)
