"""Deletion (Petsiuk, Das, Saenko, RISE, BMVC 2018): replace the most important pixels by the
fill, in order; a good map makes the target score fall fast (lower AUC is better). q = 0 is
the intact image."""
from .base import register_metric
from .insertion import Insertion, run_perturbation


@register_metric
class Deletion(Insertion):
    name = "deletion"
    direction = "lower"
    mode = "deletion"


def deletion(model, images, maps, target, *, fill_images=None, batch_size=256, **params):
    """Per-image deletion curves and AUCs; see :class:`Deletion` for ``params``.
    ``target``: (N,) classes, or one class for all images."""
    return run_perturbation(Deletion, model, images, maps, target, fill_images, batch_size,
                            params)
