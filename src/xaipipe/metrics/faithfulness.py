"""StartGrad faithfulness: randomisation in the mask's domain (Uendes et al., ICLR 2025;
`BuelentUendes/StartGrad:experiments/vision/main_vision.py` L594-703 and
`utils/vision/helper.py` L257-580 @318bc36, read, not copied).

The units of a representation (shearlet or wavelet coefficient positions of a mask method,
pixels for a pixel map) are ranked by a score, most important first. For the fractions
p ∈ {0, 1/(steps−1), …, 1} (21 points by default) the top ⌊p·M⌋ of the M units are

- *keep*: kept, every other unit replaced by noise u;
- *remove*: replaced by noise, the rest kept;

the image is synthesised from the coefficients (clipped to [0, 1]) and scored with
d(p) = (p_c(x̃) − p_c(x̃_p))², c the explained class. Faithfulness = AUC(d_remove) −
AUC(d_keep) (trapezoid over p ∈ [0, 1]); higher is better (removing the top units hurts,
keeping them alone does not). d_keep(1) = 0 and d_remove(0) = 0 always.

Clean form (the default):
- a stable descending sort over all units jointly (ties: lower flat index first); a unit
  is a position shared by the colour channels (masks are shared across RGB);
- u ~ U[μ − σ, μ + σ] with the statistics the representation's method uses (ShearletX: per
  band from the gray image, one draw for the three channels; WaveletX: per coefficient array;
  pixels: over the whole image, per channel), drawn **once** per image, seeded by (seed, image
  id), and used for every fraction and both curves (common random numbers: the curves differ
  only by the ranking, and two maps of the same image are compared on the same noise);
- the synthesised image is clipped to [0, 1] (as the mask methods' obfuscations).

``compat="startgrad"``: the reference's choices: the units whose score is ≥ the k-th largest
on the keep curve, > it on the remove curve (ties stay together: an all-ones mask scores 0;
at p = 0 the keep curve keeps the units tied with the maximum), ranked per coefficient array for
WaveletX (the top p of each level), μ and σ over each array's coefficients of all channels,
fresh noise for every fraction and curve (one tensor per channel), pixel images not clipped.

Where it runs:
- the mask methods record it during their optimisation with ``faithfulness_at: [0, 5, 10,
  50, 100, 300]`` (iteration 0 is the initial mask), ranking their own mask in their own domain
  (:meth:`xaipipe.explain.masks.base.MaskMethod.attribute`), as extras ``faithfulness`` and
  ``faithfulness_step`` (N, T);
- the metric ``faithfulness`` passes those through, and scores any other map (IG, GradCAM, the
  baselines of the paper's faithfulness table) in the pixel domain: channel ``max`` (the
  reference's reduction; its min–max scaling does not change the order), bilinear upsampling of
  coarse maps, pixel noise as above.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from ..maths.faithfulness import COMPAT, faithfulness_curves
from ..maths.objectives import objective
from ..params import Param
from ..utils import derive_seed
from .base import Metric, MetricInputs, as_target, register_metric
from .perturbation import rankable

FAITHFULNESS_PARAMS = {
    "steps": Param(21, int, min=2, doc="fractions p, evenly spaced over [0, 1]"),
    "seed": Param(0, int, doc="seed of the noise (with the image id)"),
    "compat": Param(None, (str, type(None)), COMPAT,
                    doc="startgrad: the reference's ties, per-array ranking and fresh noise"),
}


def pixel_faithfulness(model, images, maps, target, ids, *, steps=21, seed=0, compat=None,
                       batch_size=64) -> dict[str, torch.Tensor]:
    """Faithfulness of pixel maps (N, C, h, w): the ranking is the channel max (upsampled to
    the image size if coarser), the noise U[μ ± σ] over each whole image, per channel."""
    scores = rankable(maps, "max", images.shape[-2:])[:, None]          # (N, 1, H, W)
    flat = images.flatten(1)
    mu = flat.mean(1).view(-1, 1, 1, 1)
    sd = flat.std(1).view(-1, 1, 1, 1)
    p_ref = objective(model(images).float(), target, "prob").double().cpu()
    seeds = [derive_seed(seed, int(i), "faithfulness", "pixel") for i in ids]
    return faithfulness_curves(model, target, p_ref, [images], [scores], [mu], [sd],
                               lambda parts: parts[0], seeds, steps=steps, compat=compat,
                               clip=compat is None, batch_size=batch_size)


@register_metric
class Faithfulness(Metric):
    """Per image ``faithfulness`` (at the last recorded iteration for a mask method),
    ``auc_keep``/``auc_remove`` and the curves ``keep``/``remove`` (pixel maps), or the
    per-iteration ``faithfulness_curve`` and ``faithfulness_step`` (N, T) of a mask method's
    extras."""
    name = "faithfulness"
    params = FAITHFULNESS_PARAMS
    scalars = ("faithfulness",)
    needs = frozenset({"model", "images", "extras"})
    direction = "higher"

    def compute(self, inputs: MetricInputs) -> dict:
        ex = inputs.extras
        if "faithfulness" in ex:
            f = np.asarray(ex["faithfulness"], np.float64)
            if f.ndim != 2 or "faithfulness_step" not in ex:
                raise DataError("metric 'faithfulness': the store's extra 'faithfulness' must "
                                "be (N, T) with 'faithfulness_step' beside it (a mask method "
                                f"run with faithfulness_at), got shape {f.shape}")
            return {"faithfulness": f[:, -1], "faithfulness_curve": f,
                    "faithfulness_step": np.asarray(ex["faithfulness_step"], np.int64)}
        p = self.hparams
        with torch.no_grad():
            out = pixel_faithfulness(inputs.model, inputs.images, inputs.maps, inputs.target,
                                     inputs.ids, steps=p.steps, seed=p.seed,
                                     compat=p.compat, batch_size=inputs.batch_size)
        return {k: v.numpy() for k, v in out.items()}


def faithfulness(model, images, maps, target, *, ids=None, batch_size=64, **params) -> dict:
    """Pixel-domain faithfulness of ``maps`` (N, C, h, w) for ``images`` (N, 3, H, W) in
    [0, 1]; see :class:`Faithfulness` for ``params``. Returns numpy arrays."""
    n = images.shape[0]
    ids = np.arange(n) if ids is None else np.asarray(ids)
    return Faithfulness(**params)(MetricInputs(
        ids=ids, target=as_target(target, n, images.device), maps=maps, model=model,
        images=images, batch_size=batch_size))
