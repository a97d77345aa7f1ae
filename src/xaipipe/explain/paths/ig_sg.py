"""IG-SG: Integrated Gradients averaged over noisy copies of the input as baselines
(Sturmfels, Lundberg, Lee, *Visualizing the Impact of Feature Attribution Baselines*, Distill
2020), with attribution re-calibration (Yang, Akhtar, Wen, Shah, Mian, ICLR 2023;
``ypeiyu/attribution_recalibration`` @5b745d4, ``saliency_methods/IG_SG.py``, ``chew_input``).

References r_b = clip(x̃ + η_b, 0, 1) with η_b ~ N(0, σ² I) in pixel space, σ = ``noise`` ·
(max x̃ − min x̃) per image (0.15 by default), one draw per (image, b); coefficients
``linspace``; B = 10, k = 5; ``recalibrate="valid_ip"`` by default, the paper's default
estimator (``none`` is the vanilla estimator). The estimator and the shared parameters: see
:class:`~.multiref.MultiReferenceMethod`. ``references`` replaces the noisy draw.

``compat="ypeiyu"``, besides the sample pairing of :mod:`.multiref`:

- batch mixing: the code stacks the noise as [B, batch, …] and reads it back as [batch, B, …],
  so reference slot b of image n is a noisy copy of image n′ = (n·B + b) mod N (N the batch
  size), with that image's noise draw b′ = (n·B + b) div N;
- batch-level σ: σ = ``noise`` · (max − min) over the whole batch of pixel images.

Both make an image's map depend on its batch (a batch of one is the clean draw).
"""
import torch

from ...params import Param
from ...utils import generator
from ..base import register_method
from .multiref import MultiReferenceMethod, multiref_params


@register_method
class IGSG(MultiReferenceMethod):
    name = "ig_sg"
    params = {**multiref_params("linspace"),
              "noise": Param(0.15, float, min=0.0,
                             doc="noise std relative to the image's value range (compat "
                                 "ypeiyu: the batch's)")}

    def begin(self, images, image_ids):
        flat = images.flatten()
        self._batch_sigma = self.hparams.noise * (flat.max() - flat.min())

    def draw_references(self, images, image_ids, i):
        p = self.hparams
        n, big_b = images.shape[0], p.samples
        out = []
        for b in range(big_b):
            if p.compat is None:
                src, slot = i, b
                x = images[i]
                sigma = p.noise * (x.max() - x.min())
            else:
                flat = i * big_b + b
                src, slot = flat % n, flat // n
                sigma = self._batch_sigma
            eps = torch.randn(images.shape[1:], generator=generator(
                *self.seed_parts(int(image_ids[src]), "reference", slot)))
            out.append(images[src] + sigma * eps.to(images.device, images.dtype))
        return torch.stack(out).clamp(0, 1)
