"""IG-Uniform: Integrated Gradients averaged over uniform-noise baselines (Sturmfels, Lundberg,
Lee, *Visualizing the Impact of Feature Attribution Baselines*, Distill 2020), with attribution
re-calibration (Yang, Akhtar, Wen, Shah, Mian, ICLR 2023; ``ypeiyu/attribution_recalibration``
@5b745d4, ``saliency_methods/IG_Uniform.py``).

References r_b ~ U[0, 1]^{C×H×W} in pixel space, i.i.d. per image and per b (each drawn from
its own generator, seeded by the image id and b); coefficients ``linspace`` (j/(k−1)) by
default; B = 10, k = 5; ``recalibrate="valid_ip"`` by default, the paper's default estimator
(``recalibrate="none"`` is Sturmfels et al.'s vanilla estimator). The estimator, the
parameters shared with IG-SG, IG-SQ and Expected Gradients, the chunked evaluation and
``compat="ypeiyu"`` (the sample pairing: see :mod:`.multiref`) are those of
:class:`~.multiref.MultiReferenceMethod`. ``references`` replaces the uniform draw. The
reference code draws its noise for the whole batch and reshapes it as IG-SG does; for i.i.d.
noise that changes nothing in distribution, so compat keeps the per-image draws.
"""
import torch

from ...utils import generator
from ..base import register_method
from .multiref import MultiReferenceMethod, multiref_params


@register_method
class IGUniform(MultiReferenceMethod):
    name = "ig_uniform"
    params = multiref_params("linspace")

    def draw_references(self, images, image_ids, i):
        iid = int(image_ids[i])
        return torch.stack([
            torch.rand(images.shape[1:], generator=generator(*self.seed_parts(iid, "reference", b)))
            for b in range(self.hparams.samples)])
