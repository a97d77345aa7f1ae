"""IG-SQ: the squared form of IG-SG (the SmoothGrad-squared construction of Hooker, Erhan,
Kindermans, Kim, *A Benchmark for Interpretability Methods in Deep Neural Networks*, NeurIPS
2019, applied to IG-SG's per-reference attributions), with attribution re-calibration (Yang,
Akhtar, Wen, Shah, Mian, ICLR 2023; ``ypeiyu/attribution_recalibration`` @5b745d4,
``saliency_methods/IG_SQ.py``).

References and coefficients as IG-SG (:mod:`.ig_sg`, whose ``noise``, batch mixing and
batch-level σ under compat it shares). Estimators:

- ``none``: φ = (1/B) Σ_b ((x̃ − r_b) ⊙ ḡ_b)², each reference's attribution squared, so φ ≥ 0;
- ``valid_ref`` / ``valid_ip`` (default, the paper's): the kept products (≥ 0) squared,
  divided by their count.

``compat="ypeiyu"`` (``IntGradSQ.shap_values``, vanilla branch): the code squares the mean
gradient, not the product, and does so in the normalised space the code works in: with ḡ_b the
pixel-space mean gradient and σ_c the channel's normalisation std, φ = (1/B) Σ_b σ_c (x̃ − r_b) ⊙
ḡ_b², which takes the sign of x̃ − r_b (and pairs r_b with other references' gradients, as the
shared pairing does). The re-calibrated branches square the product there too.
"""
from ..base import register_method
from .ig_sg import IGSG


@register_method
class IGSQ(IGSG):
    name = "ig_sq"
    squared = True

    def group_term(self, x, r, gbar):
        if self.hparams.compat is None:
            return super().group_term(x, r, gbar)
        std = getattr(getattr(self.model, "normalize", None), "std", None)
        if std is None:
            raise ValueError("ig_sq with compat='ypeiyu' squares the gradient in the "
                             "normalised space: it needs a model with a Normalize first module")
        return std.to(x.dtype).view(1, -1, 1, 1) * (x - r) * gbar * gbar
