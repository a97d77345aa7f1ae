"""Pixel mask, the unregularised baseline of the ShearletX paper (Kolek et al., CVPR 2023;
``skmda37/ShearletX:code/pixelmask.py``): one mask value per pixel, shared across RGB.

Noise U[μ − σ, μ + σ] with μ, σ scalars over the whole image, drawn independently per
colour channel; x̃_s = clip(m ⊙ x̃ + (1 − m) ⊙ u_s); loss D + λ_1·mean|m| +
λ_TV·(Σ(Δ_h m)² + Σ(Δ_w m)²)/N_mask; explanation x_E = m ⊙ x̃. The framework (Adam, clamp,
StartGrad, histories) is :mod:`xaipipe.explain.masks.base`.

``compat="startgrad"``: the StartGrad repository's PixelRDE
(``BuelentUendes/StartGrad:src/vision/pixel_RDE.py``): x̃_s = m ⊙ x̃ + (1 − m) ⊙ u_s is **not
clipped**, the explanation is the luminance gray image 0.299R + 0.587G + 0.114B of m ⊙ x̃
(given to the model and stored as R = G = B, 3 channels as every map), and StartGrad's QTF is
scikit-learn's with n_quantiles = H·W and no subsample (the clean QTF up to float rounding,
but a tied minimum maps to 0 and a tied maximum to 1).
Its distortion (``preserve``), ``lp`` sparsity (``lp_p``) and noise are options of their own.

``rescaling_gradient=True`` (the repository's option of that name, for any init that takes a
gradient): StartGrad's pixel gradient is multiplied by the model's normalisation σ_c per
channel (the :class:`~xaipipe.models.Normalize` module inside the model; ImageNet's
(0.229, 0.224, 0.225), which the reference hard-codes, when the model has none), i.e. the
gradient with respect to the normalised input.
"""
import torch

from ...params import Param
from ..base import register_method
from .base import MaskMethod, gray, sparsity
from .params import COMMON_PARAMS
from .state import State


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
        "compat": Param("none", str, ("none", "startgrad"),
                        doc="'startgrad': the StartGrad repository's PixelRDE (no clip of the "
                            "obfuscated image, gray explanation, scikit-learn's QTF)"),
        "rescaling_gradient": Param(False, bool,
                                    doc="StartGrad: multiply the pixel gradient by the model's "
                                        "normalisation σ per channel"),
    }
    LOSS_TERMS = ("distortion", "sparsity", "tv")
    SEED_OMIT_DEFAULT = ("compat",)
    smoothgrad_samples = 250              # StartGrad: the smoothgrad ablation's pixel-mask copies

    def prepare(self, images):
        flat = images.flatten(1)
        mu = flat.mean(1).view(-1, 1, 1, 1)
        sd = flat.std(1).view(-1, 1, 1, 1)          # unbiased, as torch's default
        return State(images, [images], [mu], [sd])

    def clips_image(self):
        return self.hparams.compat != "startgrad"

    def compat_qtf(self, part, n):
        return (n, None) if self.hparams.compat == "startgrad" else None

    def gradient_scale(self, state):
        if not self.hparams.rescaling_gradient:
            return None
        from ...models import IMAGENET_STD, Normalize
        std = next((m.std for m in self.model.modules() if isinstance(m, Normalize)), None)
        if std is None:
            std = torch.tensor(IMAGENET_STD)
        c = state.images.shape[1]
        std = std.flatten().detach()
        if std.numel() != c:
            raise ValueError(f"pixel_mask rescaling_gradient: the model's normalisation has "
                             f"{std.numel()} channels, the images {c}")
        return std.view(1, c, 1, 1)

    @torch.no_grad()
    def explanation(self, state, masks):
        if self.hparams.compat != "startgrad":
            return super().explanation(state, masks)
        x_e = gray(masks[0] * state.images, "luminance")
        return x_e.expand(-1, state.images.shape[1], -1, -1).float().contiguous()

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
        return [p.lambda_1 * sparsity(m, p.lp_p), p.lambda_tv * tv]
