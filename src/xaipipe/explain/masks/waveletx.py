"""WaveletX (Kolek et al., CVPR 2023), ``skmda37/ShearletX:code/waveletx.py``.

A mask on the DWT coefficients (J = 5, db3, zero padding: yl and 3 orientations per level),
shared across RGB. Noise U[μ − σ, μ + σ] with one (μ, σ) over all entries of yl and one per
detail level, drawn independently per colour channel; x̃_s = clip(IDWT(m ⊙ y + (1 − m) ⊙ u_s)).
Loss (no distortion weight in the reference; ``lambda_d`` stays 1)

    (1/S) Σ_s (y_ref − p_c(x̃_s))² + λ_1·Σ‖m‖₁/N_mask + λ_2·mean|clip(IDWT(m ⊙ y_gray))|
        + λ_3·sqrt(mean(clip(IDWT(m ⊙ y_gray))²))

Defaults: the paper experiment (λ_1 = 2, λ_2 = 10, λ_3 = 0, lr 0.1, 300 steps, S = 16).

``compat="startgrad"``: the StartGrad repository's WaveletX
(``BuelentUendes/StartGrad:src/vision/waveletX.py``): the spatial terms read the **RGB**
reconstruction clip(IDWT(m ⊙ y)) (its ``compression="pixel"``) instead of the gray one, and
StartGrad's QTF is scikit-learn's with n_quantiles = subsample = min(10⁴, n) per block, the
subsample seeded per (image id, part, block) (the reference drew it from NumPy's global
state). Its per-level statistics, masks and clipping are the clean ones already; its
``preserve`` distortion and ``lp`` sparsity are options of their own.
"""
from ...params import Param
from ..base import register_method
from .base import MaskMethod, gray
from .params import COMMON_PARAMS
from .state import State


class _Wavelet(MaskMethod):
    LOSS_TERMS = ("distortion", "sparsity", "spatial_l1", "spatial_l2")
    noise_shared_across_colour = False
    SEED_OMIT_DEFAULT = ("compat",)

    def compat_qtf(self, part, n):
        if self.hparams.compat != "startgrad":
            return None
        return min(10_000, n), min(10_000, n)

    def prepare(self, images):
        from ...transforms import WaveletTransform     # imported when used: keeps plans light
        p = self.hparams
        tr = WaveletTransform(J=p.levels, wave=p.wave, mode="zero")
        yl, yh = tr.decompose(images)
        parts = [yl, *yh]
        ygl, ygh = tr.decompose(gray(images))
        stats = [q.flatten(1) for q in parts]
        mu = [s.mean(1).view(-1, *([1] * (q.ndim - 1))) for s, q in zip(stats, parts)]
        sd = [s.std(1).view(-1, *([1] * (q.ndim - 1))) for s, q in zip(stats, parts)]
        self.qtf_block_dims = (2,) * len(parts)
        return State(images, parts, mu, sd,
                     {"transform": tr, "gray": [ygl, *ygh], "size": images.shape[-2:]})

    def coefficients(self, state, images):
        yl, yh = state.extra["transform"].decompose(images)
        return [yl, *yh]

    def synthesize(self, state, parts):
        h, w = state.extra["size"]
        x = state.extra["transform"].reconstruct((parts[0], list(parts[1:])))
        return x[..., :h, :w]

    def regularizers(self, state, masks):
        p = self.hparams
        n_mask = sum(m[0].numel() for m in masks)
        sparsity = sum(m.abs().flatten(1).sum(1) for m in masks) / n_mask
        out = [p.lambda_1 * sparsity]
        l2, l3 = getattr(p, "lambda_2", 0.0), getattr(p, "lambda_3", 0.0)
        if l2 or l3:
            source = state.coeffs if p.compat == "startgrad" else state.extra["gray"]
            x = self.synthesize(state, [m * g for m, g in zip(masks, source)])
            x = x.clamp(0, 1).flatten(1)
            out += [l2 * x.abs().mean(1), l3 * (x ** 2).mean(1).clamp_min(1e-12).sqrt()]
        else:
            zero = masks[0].new_zeros(masks[0].shape[0])
            out += [zero, zero]
        return out


_DWT = {
    "levels": Param(5, int, min=1, doc="DWT levels J"),
    "wave": Param("db3", str, doc="pywt wavelet name"),
    "compat": Param("none", str, ("none", "startgrad"),
                    doc="'startgrad': the StartGrad repository's WaveletX (RGB spatial term, "
                        "scikit-learn's subsampled QTF)"),
}


@register_method
class WaveletX(_Wavelet):
    name = "waveletx"
    params = {
        **COMMON_PARAMS, **_DWT,
        "lambda_1": Param(2.0, float, min=0.0, doc="weight of Σ‖m‖₁/N_mask"),
        "lambda_2": Param(10.0, float, min=0.0, doc="weight of the gray reconstruction's mean|·|"),
        "lambda_3": Param(0.0, float, min=0.0, doc="weight of its root mean square"),
    }


@register_method
class CartoonX(_Wavelet):
    """CartoonX (Kolek et al., ECCV 2022; ``skmda37/ShearletX:code/cartoonx.py``): WaveletX
    without the spatial terms. Its own default λ_1 is not published; we keep WaveletX's
    λ_1 = 2 (assumed)."""
    name = "cartoonx"
    params = {
        **COMMON_PARAMS, **_DWT,
        "lambda_1": Param(2.0, float, min=0.0, doc="weight of Σ‖m‖₁/N_mask (assumed default)"),
    }
