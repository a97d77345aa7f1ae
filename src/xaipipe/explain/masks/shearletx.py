"""ShearletX (Kolek et al., CVPR 2023), ``skmda37/ShearletX:code/shearletx.py``.

A mask on the digital shearlet coefficients (49 bands at 256×256 with 4 scales), one value per
(band, position), shared across RGB. Noise per band from the gray image's coefficients
(μ_k, σ_k), one tensor for all three channels. Loss

    λ_D·(1/S) Σ_s (y_ref − p_c(x̃_s))² + λ_1·‖m‖₁/(K·H·W) + λ_2·mean|clip(DSH⁻¹(m ⊙ c^gray))|

with x̃_s = clip(DSH⁻¹(m ⊙ c + (1 − m) ⊙ u_s)) (clean) or, with ``compat="shearletx"``,
DSH⁻¹(clip(m ⊙ c + (1 − m) ⊙ u_s)) (the reference clips the coefficients). Defaults are the
paper experiment's (λ_1 = 1, λ_2 = 2, lr 0.1, 300 steps, S = 16, uniform noise, ones); the
number of scales follows the image size (:func:`auto_scales`) unless given.

``compat="startgrad"``: the StartGrad repository's ShearletX
(``BuelentUendes/StartGrad:src/vision/shearletX.py``): the luminance gray image for the noise
statistics and the spatial term, coefficient clipping, the mask gradient divided by its L2
norm before each Adam step, and the ``ones``/``uniform``
masks of shape (1, H, W) broadcast over the bands while StartGrad's is (K, H, W) (the
discrepancy that confounds the repository's ShearletX speed-ups; clean: (K, H, W) for all).
``lp_p`` is its ``lp`` sparsity (p unpublished). StartGrad's QTF is then scikit-learn's
QuantileTransformer with n_quantiles = min(10⁴, H·W) per band and no subsample, as there.
"""
from ...params import Param
from ..base import register_method
from .base import MaskMethod, gray, sparsity
from .params import COMMON_PARAMS
from .state import State


def auto_scales(h: int, w: int) -> int:
    """Scales when none are given: 4 (49 bands) from 256 px on, the paper's setting; 3 from
    128 px (pyShearLab builds no 4-scale system at 224; the StartGrad
    repository's choice for 224-px ViTs); 2 from 64 px (the demo images); else 1."""
    s = min(h, w)
    return 4 if s >= 256 else 3 if s >= 128 else 2 if s >= 64 else 1


@register_method
class ShearletX(MaskMethod):
    name = "shearletx"
    params = {
        **COMMON_PARAMS,
        "lambda_1": Param(1.0, float, min=0.0, doc="weight of ‖m‖₁/(K·H·W)"),
        "lambda_2": Param(2.0, float, min=0.0, doc="weight of the gray reconstruction's mean|·|"),
        "scales": Param(None, int, min=1,
                        doc="shearlet scales; None: auto_scales(H, W), 4 (49 bands) at 256 px"),
        "compat": Param("none", str, ("none", "shearletx", "startgrad"),
                        doc="'shearletx': clip the coefficients, not the image (reference); "
                            "'startgrad': the StartGrad repository's ShearletX (see below)"),
        "lp_p": Param(None, (float, type(None)), min=0.0,
                      doc="sparsity mean((|m| + 1e-7)^p) instead of mean|m| (StartGrad's lp)"),
    }
    LOSS_TERMS = ("distortion", "sparsity", "spatial")
    noise_shared_across_colour = True
    linear_synthesis = True               # the dual-frame reconstruction

    def coefficient_clip(self):
        return self.hparams.compat in ("shearletx", "startgrad")

    def normalizes_gradient(self):
        return super().normalizes_gradient() or self.hparams.compat == "startgrad"

    def mask_shapes(self, state):
        """(1, K, H, W); with ``compat: startgrad`` the baselines' (1, 1, H, W), one value per
        position broadcast over the bands (the StartGrad repository's L502-530)."""
        shape = super().mask_shapes(state)
        if self.hparams.compat == "startgrad" and self.hparams.init != "startgrad":
            return [(1, 1, *sh[2:]) for sh in shape]
        return shape

    def compat_qtf(self, part, n):
        """``compat: startgrad``: scikit-learn's QTF with n_quantiles = min(10⁴, H·W) per band,
        no subsample (the repository's ShearletX)."""
        return (min(10_000, n), None) if self.hparams.compat == "startgrad" else None

    def startgrad_shapes(self, state):
        return super().mask_shapes(state)

    def prepare(self, images):
        from ...transforms import ShearletTransform     # imported when used: keeps plans light
        h, w = images.shape[-2:]
        tr = ShearletTransform(h, w, scales=self.hparams.scales or auto_scales(h, w))
        # float32 (K, H, W) planes one point holds at the peak of a step: the split form
        # (one noise channel: draws, product, half spectrum, packed analysis) about 4; the
        # direct form (C channels: obfuscated coefficients, spectra, gradients) about 6·C
        planes = 4 if self.split_synthesis() else 6 * images.shape[1]
        self.transform_point_bytes = 4 * planes * tr.n_bands * h * w
        c = tr.decompose(images)                              # (N, C, K, H, W)
        cg = tr.decompose(gray(images, "luminance" if self.hparams.compat == "startgrad"
                               else "mean"))                # (N, 1, K, H, W)
        mu = cg.mean((-2, -1), keepdim=True)
        sd = cg.std((-2, -1), keepdim=True)
        return State(images, [c], [mu], [sd], {"transform": tr, "gray": cg})

    def coefficients(self, state, images):
        return [state.extra["transform"].decompose(images)]

    def synthesize(self, state, parts):
        return state.extra["transform"].reconstruct(parts[0])

    def synthesize_product(self, state, w, r):
        """T⁻¹(w ⊙ r_b) with the transform's lean backward (one part, one colour)."""
        w0, r0 = w[0], r[0]
        if w0.shape[:2] != (1, 1) or r0.shape[1] != 1 or w0.shape[2:] != r0.shape[2:]:
            return super().synthesize_product(state, w, r)
        tr = state.extra["transform"]
        return tr.reconstruct_product(w0[0, 0], r0[:, 0]).unsqueeze(1)

    def regularizers(self, state, masks):
        p = self.hparams
        m = masks[0]
        spatial = state.extra["transform"].reconstruct(m * state.extra["gray"]).clamp(0, 1)
        return [p.lambda_1 * sparsity(m, p.lp_p),
                p.lambda_2 * spatial.abs().flatten(1).mean(1)]
