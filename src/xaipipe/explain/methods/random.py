"""Random control map (`attribution-methods.md` §3.1): φ ~ U[0, 1) i.i.d. per element, drawn
per image from (seed, image id). The floor every method should beat."""
import torch

from ...utils import generator
from ..base import Attribution, Method, register_method


@register_method
class Random(Method):
    name = "random"
    params = {}

    def attribute(self, images, target, image_ids=None):
        maps = torch.stack([torch.rand(images.shape[1:], generator=generator(
            *self.seed_parts(int(i)))) for i in image_ids])
        return Attribution(maps.to(images.device))
