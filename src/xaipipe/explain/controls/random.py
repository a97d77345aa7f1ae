"""Random control map (as ``ypeiyu/attribution_recalibration``'s random baseline):
φ ~ U[0, 1) i.i.d. per element, drawn per image. The floor every method should beat.

``seed_by="content"`` (default) seeds each draw from (seed, image id, hash of the image's
pixels): the same image always gets the same map, whatever its batch, but a variant of it (its
JPEG version) gets an independent one, so the control's JPEG-stability MSE is that of two
unrelated maps rather than 0. ``seed_by="id"`` seeds from (seed, image id) only, the same map
for every variant of an image."""
import torch

from ...params import Param
from ...utils import generator
from ..base import Attribution, Method, content_ids, register_method


@register_method
class Random(Method):
    name = "random"
    params = {"seed_by": Param("content", str, ("content", "id"),
                               doc="draw from (seed, id, pixels) or (seed, id)")}

    def attribute(self, images, target, image_ids=None):
        if self.hparams.seed_by == "content":
            extra = [(int(c),) for c in content_ids(images)]
        else:
            extra = [()] * len(image_ids)
        maps = torch.stack([torch.rand(images.shape[1:], generator=generator(
            *self.seed_parts(int(i), *e))) for i, e in zip(image_ids, extra)])
        return Attribution(maps.to(images.device))
