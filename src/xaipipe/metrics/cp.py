"""CP scores, Conciseness–Preciseness (Kolek et al., CVPR 2023; ``skmda37/ShearletX``).

CP = retained class probability / retained information,

    RCP = p_c(x_E) / p_c(x̃),        CP_I = RCP / (I(x_E) / I(x̃)),

with x_E the final explanation image of a mask method (ShearletX, WaveletX, CartoonX, pixel or
smooth mask: the stored map, (N, 3, H, W) in [0, 1]) and three information measures:

- ``cp_l1_pixel``: I = Σ|x_E| over channels and positions, against Σ|x̃|;
- ``cp_l1``: the ℓ1 retained in the method's representation, Σ_ch Σ|m ⊙ c| / Σ_ch Σ|c|
  (shearlet/wavelet coefficients c, mask m). It does not depend on rescaling x_E; for the
  pixel and smooth masks it is the pixel ℓ1 ratio of m ⊙ x̃;
- ``cp_entropy``: I = H(v) with H(v) = −Σ q ln(q + 1e-7), q = |v|²/Σ|v|² jointly over all
  channels, bands and positions (:func:`entropy`); the retained information is the plain
  ratio H(m ⊙ c)/H(c), as the reference code. ``cp_entropy_exp`` (only with
  ``entropy_exp=True``) uses exp(H(x_E))/exp(H(x̃)) instead, the "effective number of
  coefficients" variant, labelled separately because the paper does not use it.

Sources: `skmda37/ShearletX:code/scatterplot.py` (the per-method blocks that divide x_E by its
max, take ``softmax(model(x_E)).max`` as fidelity and compute the ℓ1 and entropy statistics;
L183-190, L204-219, L263-281, L397-415) and `code/shearletx.py`
L219-239 (the representation statistics). No code is copied.

Clean form (the default):
- the numerator is the probability of the fixed class c = ``target`` (label or prediction
  on x̃, as the preset says), RCP = exp(log p_c(x_E) − log p_c(x̃)) from float64 log-softmax,
  so tiny probabilities do not underflow;
- every x_E is divided by its own per-image max (``normalize=True``) before scoring; an
  image whose x_E has no positive value is left as it is (nothing to rescale).

``compat=True`` (or ``"shearletx"``): the reference's numerator quirk,
softmax(M(x_E)).max() / softmax(M(x̃)).max(), the max probabilities whatever their classes.
The reference also leaves the smooth mask's x_E = mask·x̃ unscaled: under compat,
``normalize=True`` divides every map by its max except those of the methods in
:data:`UNSCALED_UNDER_COMPAT` (:func:`compat_normalize`; the metric knows the method from
``MetricInputs.method``, the store's ``method_name``). The functions, which get no method,
take ``normalize=False`` for such maps.

Undefined scores: where the retained information of a measure is zero or undefined (an empty
explanation; a black image; a one-hot x_E has entropy 0) the CP of that measure is NaN and
flagged in ``undefined_l1_pixel`` / ``undefined_l1`` / ``undefined_entropy`` (the summary
leaves those images out of that column, see ``excludes``). ``cp_entropy_exp`` shares the
entropy flag.
"""
from __future__ import annotations

import numpy as np
import torch

from ..maths.information import (cp_ratio, entropy, explanation_image, joint_entropy,
                                log_softmax, ratio)
from ..params import Param
from .base import NONFINITE_PARAM, Metric, MetricInputs, as_target, register_metric

#: extras a mask method exports (final values, (N,)); the first one present is used.
#: ``retained_*`` only counts when it is (N,), i.e. when the method kept no history.
EXTRAS_L1 = ("final_retained_l1", "retained_l1")
EXTRAS_ENTROPY = ("final_retained_entropy", "retained_entropy")
#: raw entropies H(m ⊙ c) and H(c), needed only by ``entropy_exp`` (written by :func:`cp_scores`)
EXTRAS_H_EXPL, EXTRAS_H_IMAGE = "final_entropy_explanation", "final_entropy_image"

COMPAT = ("shearletx",)
#: methods whose explanation the ShearletX reference scores without max-normalisation
#: (``scatterplot.py``: the smooth mask's mask·x̃; every other method's x_E is divided by its max)
UNSCALED_UNDER_COMPAT = frozenset({"smooth_mask"})


def compat_normalize(normalize, compat, method: str | None):
    """``normalize`` as the metric applies it to maps of ``method``: under ``compat`` the
    reference's choice per method (False for :data:`UNSCALED_UNDER_COMPAT`), else as given."""
    if compat and normalize is True and method in UNSCALED_UNDER_COMPAT:
        return False
    return normalize


def _as_parts(coeffs, mask) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(coefficients, mask) pairs of each part of a representation; one tensor is one part.
    A mask with fewer dims than its coefficients gets leading singleton dims (NumPy rules)."""
    single = isinstance(coeffs, (torch.Tensor, np.ndarray))
    cs = [coeffs] if single else list(coeffs)
    if isinstance(mask, (torch.Tensor, np.ndarray)):
        if len(cs) != 1:
            raise ValueError(f"the representation has {len(cs)} parts: give a list of as many "
                             "masks, one per part")
        ms = [mask]
    else:
        ms = list(mask)
    if len(ms) != len(cs):
        raise ValueError(f"the representation has {len(cs)} parts but the mask {len(ms)}; give "
                         "one mask per part of coeffs")
    parts = []
    for i, (c, m) in enumerate(zip(cs, ms)):
        c, m = torch.as_tensor(c), torch.as_tensor(m)
        if c.ndim < 2:
            raise ValueError(f"coeffs part {i} must be (N, C, ...), got {tuple(c.shape)}")
        if m.ndim < c.ndim:
            m = m.reshape((1,) * (c.ndim - m.ndim) + tuple(m.shape))
        try:
            shape = torch.broadcast_shapes(m.shape, c.shape)
        except RuntimeError:
            shape = None
        if m.ndim != c.ndim or shape != c.shape:
            raise ValueError(f"mask part {i} of shape {tuple(m.shape)} does not broadcast "
                             f"against coeffs of shape {tuple(c.shape)}")
        parts.append((c, m.to(c.device)))
    n = {c.shape[0] for c, _ in parts}
    if len(n) != 1:
        raise ValueError(f"coeffs parts hold different numbers of images: {sorted(n)}")
    return parts


def retained_information(coeffs, mask, batch_size: int = 64) -> dict[str, np.ndarray]:
    """The representation statistics of the CP scores for images with coefficients ``coeffs``
    and mask ``mask``: one tensor (N, C, ...) or a list of parts (e.g. wavelet yl and the detail
    levels), the mask(s) broadcasting against them (a mask shared across colour has C = 1).

    Returns (N,) float64 arrays: ``retained_l1`` = Σ|m ⊙ c| / Σ|c| and ``retained_entropy`` =
    H(m ⊙ c)/H(c), both jointly over all parts, channels, bands and positions (NaN where the
    denominator is 0), and the raw entropies ``entropy_explanation`` = H(m ⊙ c) and
    ``entropy_image`` = H(c). Works per ``batch_size`` images without concatenating parts."""
    parts = _as_parts(coeffs, mask)
    n = parts[0][0].shape[0]
    cols = {k: np.zeros(n) for k in ("retained_l1", "retained_entropy",
                                     "entropy_explanation", "entropy_image")}
    for a in range(0, n, max(1, int(batch_size))):
        b = min(n, a + max(1, int(batch_size)))
        sub = [(c[a:b].double() if not c.is_complex() else c[a:b].abs().double(),
                m[a:b] if m.shape[0] != 1 else m) for c, m in parts]
        kept = [(c * m.double()).abs().flatten(1) for c, m in sub]
        full = [c.abs().flatten(1) for c, _ in sub]
        l1_k = sum(v.sum(1) for v in kept)
        l1_f = sum(v.sum(1) for v in full)
        h_k, h_f = joint_entropy(kept), joint_entropy(full)
        cols["retained_l1"][a:b] = ratio(l1_k, l1_f)
        cols["retained_entropy"][a:b] = ratio(h_k, h_f)
        cols["entropy_explanation"][a:b] = h_k.cpu().numpy()
        cols["entropy_image"][a:b] = h_f.cpu().numpy()
    return cols


def _extra(extras: dict, names: tuple[str, ...], n: int):
    """The first of ``names`` in ``extras`` that is a per-image scalar (N,), or None."""
    for k in names:
        v = extras.get(k)
        if v is not None and np.asarray(v).shape == (n,):
            return k, np.asarray(v, np.float64)
    return None, None


def _cp(rcp: np.ndarray, retained: np.ndarray):
    """(CP, undefined): :func:`~xaipipe.maths.information.cp_ratio` and where it is NaN
    because the retained information is not a positive finite number."""
    return cp_ratio(rcp, retained), ~(np.isfinite(retained) & (retained > 0))


@register_metric
class CPScores(Metric):
    """CP scores of mask explanations (see the module docstring; Kolek et al., CVPR 2023).

    Per image: ``cp_l1_pixel``, ``cp_l1``, ``cp_entropy`` (the summary scalars), their parts
    ``retained_probability``, ``retained_l1_pixel``, ``retained_l1``, ``retained_entropy``,
    the flags ``undefined_l1_pixel``/``undefined_l1``/``undefined_entropy``, and
    ``l1_from_extras``/``entropy_from_extras``; with ``entropy_exp`` also ``cp_entropy_exp``.

    Where the retained information comes from: the method's extras ``final_retained_l1`` and
    ``final_retained_entropy`` (N,) (or ``retained_l1``/``retained_entropy`` when those are
    (N,), i.e. no history was kept), computed by the mask method in its own representation.
    **Fallback**: a method without them (no extras at all, or other extras) is scored in pixel
    space: ``retained_l1`` = the pixel ℓ1 ratio Σ|x_E|/Σ|x̃| and ``retained_entropy`` =
    H(x_E)/H(x̃); the bool columns ``l1_from_extras``/``entropy_from_extras`` say which source
    each image used. ``entropy_exp`` needs the raw entropies (extras ``final_entropy_explanation``
    and ``final_entropy_image``, written by :func:`cp_scores` from ``coeffs``) when the ratio
    comes from extras; without them it raises. A NaN/Inf retained value in the extras (e.g.
    an image without coefficients) makes that measure undefined for the image (flagged, NaN).
    """
    name = "cp"
    params = {
        "normalize": Param(True, bool, doc="divide each x_E by its max before scoring ("
                                           "under compat not the smooth mask's, as the "
                                           "reference)"),
        "compat": Param(False, (bool, str, type(None)), COMPAT,
                        doc="true/'shearletx': numerator = max prob of x_E over max prob of x̃, "
                            "whatever the class (reference quirk); false: the target's"),
        "entropy_exp": Param(False, bool,
                             doc="also cp_entropy_exp = RCP / (exp H(x_E) / exp H(x̃))"),
        "on_nonfinite": NONFINITE_PARAM,
    }
    scalars = ("cp_l1_pixel", "cp_l1", "cp_entropy")
    needs = frozenset({"model", "images", "extras"})
    direction = "higher"
    excludes = {"cp_l1_pixel": "undefined_l1_pixel", "retained_l1_pixel": "undefined_l1_pixel",
                "cp_l1": "undefined_l1", "retained_l1": "undefined_l1",
                "cp_entropy": "undefined_entropy", "retained_entropy": "undefined_entropy",
                "cp_entropy_exp": "undefined_entropy"}

    def compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        p = self.hparams
        x = inputs.images
        n = x.shape[0]
        xe = explanation_image(inputs.maps, x,
                               compat_normalize(p.normalize, p.compat, inputs.method))
        bs = max(1, int(inputs.batch_size))
        lp_x, lp_e = log_softmax(inputs.model, x, bs), log_softmax(inputs.model, xe, bs)
        if p.compat:
            rcp = torch.exp(lp_e.amax(1) - lp_x.amax(1))
        else:
            t = inputs.target.to(lp_x.device).view(-1, 1)
            rcp = torch.exp(lp_e.gather(1, t) - lp_x.gather(1, t))[:, 0]
        rcp = rcp.cpu().numpy()

        l1_pix = ratio(xe.double().abs().flatten(1).sum(1), x.double().abs().flatten(1).sum(1))
        extras = inputs.extras or {}
        k_l1, l1 = _extra(extras, EXTRAS_L1, n)
        k_ent, ent = _extra(extras, EXTRAS_ENTROPY, n)
        if l1 is None:
            l1 = l1_pix
        h_e = h_x = None
        if ent is None:
            h_e, h_x = entropy(xe, (1, 2, 3)).cpu().numpy(), entropy(x, (1, 2, 3)).cpu().numpy()
            ent = ratio(torch.as_tensor(h_e), torch.as_tensor(h_x))
        elif p.entropy_exp:
            _, h_e = _extra(extras, (EXTRAS_H_EXPL,), n)
            _, h_x = _extra(extras, (EXTRAS_H_IMAGE,), n)
            if h_e is None or h_x is None:
                raise ValueError(
                    f"metric 'cp' with entropy_exp: the method's extras give the entropy ratio "
                    f"({k_ent}) but not the raw entropies ({EXTRAS_H_EXPL}, {EXTRAS_H_IMAGE}) "
                    "that exp(H) needs")
        cp_pix, und_pix = _cp(rcp, l1_pix)
        cp_l1, und_l1 = _cp(rcp, l1)
        cp_ent, und_ent = _cp(rcp, ent)
        out = {"cp_l1_pixel": cp_pix, "cp_l1": cp_l1, "cp_entropy": cp_ent,
               "retained_probability": rcp, "retained_l1_pixel": l1_pix,
               "retained_l1": l1, "retained_entropy": ent,
               "undefined_l1_pixel": und_pix, "undefined_l1": und_l1,
               "undefined_entropy": und_ent,
               "l1_from_extras": np.full(n, k_l1 is not None),
               "entropy_from_extras": np.full(n, k_ent is not None)}
        if p.entropy_exp:
            with np.errstate(over="ignore", invalid="ignore"):
                exp_ratio = np.exp(np.asarray(h_e) - np.asarray(h_x))
            cp_exp, und_exp = _cp(rcp, exp_ratio)
            out["undefined_entropy"] = und_ent = und_ent | und_exp
            out["cp_entropy"] = np.where(und_ent, np.nan, cp_ent)
            out["cp_entropy_exp"] = np.where(und_ent, np.nan, cp_exp)
        return out


def cp_scores(model, images, explanations, target, *, coeffs=None, mask=None,
              normalize: bool = True, compat=False, entropy_exp: bool = False,
              batch_size: int = 64, on_nonfinite: str = "raise") -> dict[str, np.ndarray]:
    """Per-image CP scores (Kolek et al.) of the explanation images ``explanations`` (x_E,
    (N, 3, H, W), or (N, 1, H, W) gray) of ``images`` (x̃, (N, 3, H, W) in [0, 1]) for the
    fixed class ``target`` ((N,) or one class for all), with ``model`` any module taking such
    images and returning logits (run in eval mode, without gradients, its training flags
    restored).

    ``coeffs`` and ``mask``: the representation coefficients of the images (N, C, ...) — or a
    list of parts — and the mask(s) broadcasting against them; then ``retained_l1`` and
    ``retained_entropy`` are taken jointly over all channels, bands and positions
    (:func:`retained_information`). Without them both are pixel-space (x_E against x̃).
    ``normalize``: divide each x_E by its max first. ``compat``: the reference's max-probability
    numerator. ``entropy_exp``: add ``cp_entropy_exp``.

    Returns the columns of :class:`CPScores` as (N,) numpy arrays: ``cp_l1_pixel``, ``cp_l1``,
    ``cp_entropy`` and the parts ``retained_probability``, ``retained_l1_pixel``,
    ``retained_l1``, ``retained_entropy``, with their flags."""
    images = torch.as_tensor(images)
    n = images.shape[0]
    extras = {}
    if (coeffs is None) != (mask is None):
        raise ValueError("cp_scores needs both coeffs and mask (the representation), or neither "
                         "(pixel-space information)")
    if coeffs is not None:
        info = retained_information(coeffs, mask, batch_size)
        if info["retained_l1"].shape[0] != n:
            raise ValueError(f"coeffs hold {info['retained_l1'].shape[0]} images, images {n}")
        extras = {EXTRAS_L1[0]: info["retained_l1"], EXTRAS_ENTROPY[0]: info["retained_entropy"],
                  EXTRAS_H_EXPL: info["entropy_explanation"], EXTRAS_H_IMAGE: info["entropy_image"]}
    metric = CPScores(normalize=normalize, compat=compat, entropy_exp=entropy_exp,
                      on_nonfinite=on_nonfinite)
    return metric(MetricInputs(ids=np.arange(n), target=as_target(target, n, images.device),
                               maps=torch.as_tensor(explanations), model=model, images=images,
                               extras=extras, batch_size=batch_size))
