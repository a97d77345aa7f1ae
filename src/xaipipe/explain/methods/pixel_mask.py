"""Pixel mask, the unregularised baseline of the ShearletX paper (`mask-methods.md` §7,
`skmda37/ShearletX:code/pixelmask.py`): one mask value per pixel, shared across RGB.

Noise U[μ − σ, μ + σ] with μ, σ scalars over the whole image, drawn independently per
colour channel; x̃_s = clip(m ⊙ x̃ + (1 − m) ⊙ u_s); loss D + λ_1·mean|m| +
λ_TV·(Σ(Δ_h m)² + Σ(Δ_w m)²)/N_mask; explanation x_E = m ⊙ x̃. The framework (Adam, clamp,
StartGrad, histories) is :mod:`xaipipe.explain.masks`.
"""
from ...params import Param
from ..base import register_method
from ..masks import COMMON_PARAMS, MaskMethod, State, sparsity


@register_method
class PixelMask(MaskMethod):
    name = "pixel_mask"
    params = {
        **COMMON_PARAMS,
        "startgrad_score": Param("prob", str, ("prob", "nll", "logit"),
                                 doc="StartGrad score (the pixel mask's `softmax_layer`: p_c)"),
        "lambda_1": Param(1.0, float, min=0.0, doc="weight of mean|m|"),
        "lambda_tv": Param(0.0, float, min=0.0, doc="weight of the squared-difference TV"),
        "lp_p": Param(None, (float, type(None)), min=0.0,
                      doc="sparsity mean((|m| + 1e-7)^p) instead of mean|m| (StartGrad's lp)"),
    }
    LOSS_TERMS = ("distortion", "sparsity", "tv")
    smoothgrad_samples = 250              # §9.1: the smoothgrad ablation's pixel-mask copies

    def prepare(self, images):
        flat = images.flatten(1)
        mu = flat.mean(1).view(-1, 1, 1, 1)
        sd = flat.std(1).view(-1, 1, 1, 1)          # unbiased, as torch's default
        return State(images, [images], [mu], [sd])

    def export_mask(self, masks):
        return masks[0].detach().float()          # its own layout: (N, 1, H, W)

    def coefficients(self, state, images):
        return [images]

    def synthesize(self, state, parts):
        return parts[0]

    def regularizers(self, state, masks):
        p = self.hparams
        m = masks[0]
        n_mask = m[0].numel()
        tv = (((m[..., 1:, :] - m[..., :-1, :]) ** 2).flatten(1).sum(1)
              + ((m[..., :, 1:] - m[..., :, :-1]) ** 2).flatten(1).sum(1)) / n_mask
        return [p["lambda_1"] * sparsity(m, p["lp_p"]), p["lambda_tv"] * tv]
