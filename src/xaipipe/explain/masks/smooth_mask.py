"""Smooth mask: extremal perturbations (Fong, Patrick, Vedaldi, ICCV 2019).

Written here from the paper's formulas and TorchRay's documentation
(``facebookresearch/TorchRay:torchray/attribution/extremal_perturbation.py``: ``Perturbation``,
``MaskGenerator``, ``contrastive_reward``, ``extremal_perturbation``; the blur is
``torchray/utils.py:imsmooth``); TorchRay is not imported. With its defaults the method is
what ``skmda37/ShearletX:code/smoothmask.py`` runs: TorchRay with
``reward_func=contrastive_reward``, one area per call, everything else at TorchRay's defaults.

Algorithm, per image x̃ ∈ [0,1]^{3×H×W} with target c (all images of a batch are optimised
together, but every term below is per image and SGD is elementwise, so an image's result does
not depend on its batch):

- **Blur pyramid** (:func:`blur_pyramid`): L = ``levels`` images, level l = x̃ blurred with
  σ_l = ``max_blur``·(1 − l/(L−1)); l = L−1 is x̃ itself, l = 0 the most blurred. The blur is
  TorchRay's ``imsmooth``: a separable Gaussian with taps i ∈ [−⌈4σ⌉, ⌈4σ⌉],
  f_i ∝ exp(−i²/(√2·σ + ε_f32)²), normalised to sum 1, zero padding.
- **Perturbation** (:func:`perturb`): a mask value v ∈ [0,1] picks level v·(L−1), linearly
  interpolated between its two neighbouring levels.
- **Mask generator** (:class:`SmoothMaskGenerator`, ``mask_step`` s = 7, ``mask_sigma``
  σ = 21, ``coldness`` 20): parameters m̄ on a ⌈H/s⌉×⌈W/s⌉ grid; parameter (i, j) sits at
  image pixel (s·i, s·j). The full mask has a margin of σ px on every side (pixel (u, v) of the
  full mask is image pixel (u − σ, v − σ)); each full-mask pixel takes the (2r+1)² parameters
  of the window around its grid cell (r = 1 + ⌈σ/s⌉; parameters outside the grid count as 0),
  weights each by k(d/σ) with k(z) = exp(−2·max(z − ½, 0)²) and d its distance in pixels, and
  pools them with a softmax of coldness 20: Σ_k v_k·softmax(20·v)_k. The result is clamped to
  [0, 1] and the margin cropped to H×W.
- **Reward** (``reward``): ``contrastive`` z_c − max_{c′≠c} z_{c′} on the logits of the
  perturbed image (TorchRay ``contrastive_reward``, variant ``preserve``); ``logit`` z_c
  (TorchRay's ``simple_reward``, its default when no ``reward_func`` is given);
  ``preserve_prob`` p_c = softmax(z)_c.
- **Area constraint** (:func:`area_penalty`): sort the *full* mask (margin included), compare
  with the reference vector of ⌊n·(1 − a)⌋ zeros followed by ones (n = full-mask size, the
  floor taken of the float product as TorchRay's ``int(max_area * (1 - a))``):
  λ_t·mean((sorted − reference)²), λ_0 = ``lambda0`` (300), λ_{t+1} = ``lambda_growth``·λ_t.
- **Optimisation**: maximise Σ_images (reward − penalty) by SGD on m̄ (lr 0.01, momentum 0.9,
  dampening 0.9, torch's SGD update: b_1 = g_1, b_t = μ·b_{t−1} + (1 − d)·g_t,
  m̄ ← m̄ − lr·b_t), then m̄ ← clamp(m̄, 0, 1); ``steps`` (800) iterations. ``jitter``: the
  perturbed image is flipped horizontally on even iterations t = 0, 2, ….
- **Returned mask** (TorchRay semantics): the cropped mask *evaluated in the last iteration*,
  i.e. generated from the parameters after ``steps − 1`` updates (the last update is taken but
  not rendered, exactly as TorchRay returns ``mask_`` of its last loop pass). ``steps=0``
  returns the initial mask.

Output: ``maps`` is the explanation x_E = mask ⊙ x̃ (N, 3, H, W) (``compat="shearletx"``:
mask ⊙ x̃², the HEAD ``skmda37/ShearletX:code/scatterplot.py`` L263 multiplies the masked image
by x̃ again; the paper-era script 16fee04 and the clean default use mask ⊙ x̃ once).

Extras (leading dim N), named as in the shared mask framework (:mod:`xaipipe.explain.masks.base`):
``final_retained_l1`` Σ|m ⊙ x̃|/Σ|x̃| (the ℓ1 kept in the representation, here pixels);
``final_retained_pixel`` Σ|x_E|/Σ|x̃| (the same number unless ``compat="shearletx"``);
``final_retained_entropy`` H(x_E)/H(x̃) with H(v) = −Σ q·ln(q + 1e−7), q = |v|²/Σ|v|² over all
channels and positions, and its two entropies ``final_entropy_explanation`` H(x_E) and
``final_entropy_image`` H(x̃) (CP's ``entropy_exp``); ``area`` the mean of the returned (cropped, H×W) mask; ``area_full`` the
mean of the full mask with its margin, the quantity the area constraint acts on; ``mask`` (N, 1,
H, W) with ``return_mask=True`` or ``steps=0``. With ``history_every=k`` (as StartGrad),
entries at iterations t = 0, k, 2k, … < ``steps`` (T = ⌈steps/k⌉; entry 0 is the initial mask,
before any update), each from the forward pass of that iteration (so on even t the jittered,
flipped image): ``retained_probability`` p_c(perturbed)/p_c(x̃), ``retained_l1`` Σ|m ⊙ x̃|/Σ|x̃|
(summed over RGB), ``retained_entropy`` H(m ⊙ x̃)/H(x̃), ``retained_pixel`` Σ|x_E(m)|/Σ|x̃|
(equal to ``retained_l1`` for this pixel-space mask unless ``compat="shearletx"``),
``cp_l1``, ``cp_pixel`` and ``cp_entropy`` (retained probability over ``retained_l1`` /
``retained_pixel`` / ``retained_entropy``), the clean explanation's CP at the same iteration
(``clean_retained_probability``, ``clean_cp_l1_pixel``, ``clean_cp_l1``, ``clean_cp_entropy``;
:func:`xaipipe.explain.masks.history.clean_cp`), and ``loss_terms`` (N, T, K) in the order of :data:`LOSS_TERMS` (the loss minimised is −reward +
area_penalty).

Initialisation (``init``): ``ones`` (TorchRay); ``uniform`` U(0,1) per parameter, drawn per
image from ``generator(*seed_parts(image_id, "init"))`` (the seed leaves out the parameters that
do not shape the optimisation: ``steps``, ``history_every``, ``return_mask``, ``compat``);
``startgrad`` (Uendes et al., ICLR 2025): a = |∂s/∂x̃| of the StartGrad score s
(``startgrad_score``: prob, nll, logit; the gradient is taken of
:func:`~xaipipe.explain.masks.startgrad.ranking_score`, one score for prob and nll, whose gradients
differ by the factor p_c > 0 only, so their masks are identical) at the clean image, max over
RGB, then *area-averaged onto the parameter grid*: parameter (i, j) gets the mean of a over the
s×s cell centred on its pixel (s·i, s·j), clipped to the image (``avg_pool2d`` with kernel and
stride s, padding ⌊s/2⌋, padding not counted), and finally the exact quantile transform
(:func:`xaipipe.explain.masks.startgrad.quantile_transform`) over the whole grid of each image, so the
initial parameters have mean exactly 0.5.

Notes:
- The pooling coldness is the parameter ``coldness`` (TorchRay's ``MaskGenerator.coldness``,
  fixed at 20 there). TorchRay's own ``smooth`` argument, a Gaussian smoothing of the returned
  mask, is 0 by default and in every call of the sources; it is not offered here.
- TorchRay's ``contrastive_reward`` broadcasts (K,) − (K, 1) to K×K when one call holds K > 1
  areas; the ShearletX code makes one call per area, which is what this method computes.
- Matching TorchRay: with the same model and input the pieces agree bitwise and whole runs to
  ~1e-6 (800 steps at 64 px: 3e-7). Late in a run λ_t has grown ×16; where that makes SGD
  unstable (tiny images: the 5×5 grid of a 32 px image) rounding differences of 1e-7, such as
  those between batch sizes of the model's convolutions, grow to 1e-2 within the last ~100
  steps, in TorchRay as here. Results are batch invariant up to such rounding, not bitwise.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from ...params import Param
from ...utils import full_precision, generator
from ..base import Attribution, Method, estimate_point_bytes, default_memory_mb, \
    register_method
from ...maths.information import CLEAN_HISTORY, entropy, target_log_prob   # H: float64
from .history import clean_cp
from .startgrad import SCORES, quantile_transform, ranking_score

#: order of the last axis of ``extras["loss_terms"]`` (N, T, K); loss = −reward + area_penalty
LOSS_TERMS = ("reward", "area_penalty")
REWARDS = ("contrastive", "logit", "preserve_prob")

_EPS_F32 = 1.19209290e-07          # float32 machine epsilon, TorchRay's imsmooth guard


# -- blur pyramid and perturbation -------------------------------------------------------------
@full_precision
def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """TorchRay ``imsmooth`` semantics (``torchray/utils.py``): separable Gaussian, taps
    i = −⌈4σ⌉..⌈4σ⌉ with weights exp(−(i/(√2·σ + ε))²) normalised to sum 1 (ε = float32
    epsilon, so σ = 0 is the identity), zero ("constant 0") padding, vertical pass first."""
    sigma = float(sigma)
    width = math.ceil(4 * sigma)
    denom = torch.tensor(math.sqrt(2), dtype=torch.float32) * torch.tensor(
        sigma, dtype=torch.float32) + torch.tensor(_EPS_F32, dtype=torch.float32)
    taps = torch.arange(-width, width + 1, dtype=torch.float32) / denom
    taps = torch.exp(-taps * taps)
    taps = (taps / taps.sum()).to(x.device, x.dtype)
    c = x.shape[1]
    x = F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(width, 0), groups=c)
    return F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, width), groups=c)


def blur_sigmas(levels: int, max_blur: float) -> list[float]:
    """σ_l = max_blur·(1 − l/(L−1)), l = 0..L−1, computed in float32 as TorchRay does
    (``(1 − linspace(0, 1, L))·max_blur``)."""
    t = torch.linspace(0, 1, levels, dtype=torch.float32)
    return [float((1 - v) * max_blur) for v in t]


def blur_pyramid(images: torch.Tensor, levels: int = 8, max_blur: float = 20.0) -> torch.Tensor:
    """(N, L, C, H, W): level l is ``images`` blurred with σ_l (:func:`blur_sigmas`);
    level L−1 (σ = 0) is the image itself, level 0 the most blurred."""
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    with torch.no_grad():
        return torch.stack([gaussian_blur(images, s) for s in blur_sigmas(levels, max_blur)], 1)


def perturb(pyramid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The perturbed images (N, C, H, W) for masks (N, 1, H, W) in [0, 1]: mask value v reads
    level w = v·(L−1), linearly interpolated between levels ⌊w⌋ and min(⌊w⌋ + 1, L−1)."""
    n, levels, c, h, w = pyramid.shape
    pos = mask * (levels - 1)
    lo = pos.detach().floor().clamp(0, levels - 1)
    frac = pos - lo
    lo = lo.long().unsqueeze(1).expand(n, 1, c, h, w)
    hi = (lo + 1).clamp(max=levels - 1)
    y0 = torch.gather(pyramid, 1, lo).squeeze(1)
    y1 = torch.gather(pyramid, 1, hi).squeeze(1)
    return (1 - frac) * y0 + frac * y1


# -- mask generator ----------------------------------------------------------------------------
class SmoothMaskGenerator:
    """Smooth-max mask generator (TorchRay ``MaskGenerator``, softmax pooling; Fong et al.).

    Geometry for an H×W image, step s, sigma σ (margin = σ):
    ``shape_in`` = (⌈H/s⌉, ⌈W/s⌉) parameters; padding p = 1 + ⌈2σ/s⌉; radius r = 1 + ⌈σ/s⌉;
    window K = 2r + 1; the full mask has ``shape_out`` = s·(n_in + 2p − K + 1) − s + 1 pixels per
    axis (295 at H = 256). Full-mask row u reads parameter rows ⌊u/s⌋ + k − p, k = 0..K−1
    (0 outside the grid); parameter row i is centred at full-mask row σ + s·i. The weights
    k(d/σ) depend only on the geometry and are built once per (H, W, s, σ).
    """

    def __init__(self, shape: tuple[int, int], step: int = 7, sigma: float = 21.0,
                 coldness: float = 20.0, clamp: bool = True):
        self.shape = (int(shape[0]), int(shape[1]))
        self.step, self.sigma, self.coldness, self.clamp = int(step), float(sigma), \
            float(coldness), clamp
        self.margin = self.sigma
        self.padding = 1 + math.ceil((self.margin + self.sigma) / self.step)
        self.radius = 1 + math.ceil(self.sigma / self.step)
        self.window = 2 * self.radius + 1
        self.shape_in = tuple(math.ceil(z / self.step) for z in self.shape)
        self.shape_mid = tuple(z + 2 * self.padding - self.window + 1 for z in self.shape_in)
        self.shape_out = tuple(self.step * z - self.step + 1 for z in self.shape_mid)
        self.weight = _generator_weights(self.shape, self.step, self.sigma)   # (K², Ho, Wo)
        self._cache: dict = {}

    def _on(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weights, row index ⌊u/s⌋, column index ⌊v/s⌋) on ``device``, cached."""
        key = (str(device), dtype)
        if key not in self._cache:
            rows, cols = (torch.div(torch.arange(n), self.step, rounding_mode="floor")
                          .to(device) for n in self.shape_out)
            self._cache[key] = (self.weight.to(device, dtype), rows, cols)
        return self._cache[key]

    def __call__(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cropped (N, 1, H, W), full (N, 1, Ho, Wo)) masks from parameters (N, 1, h, w)."""
        n = params.shape[0]
        weight, rows, cols = self._on(params.device, params.dtype)
        win = F.unfold(params, self.window, padding=self.padding)       # (N, K², mid_h·mid_w)
        win = win.view(n, -1, *self.shape_mid)
        # full-mask pixel (u, v) reads the window of cell (⌊u/s⌋, ⌊v/s⌋)
        vals = weight * win.index_select(2, rows).index_select(3, cols)  # (N, K², Ho, Wo)
        if math.isinf(self.coldness):
            full = vals.amax(1, keepdim=True)
        else:
            full = (vals * torch.softmax(self.coldness * vals, dim=1)).sum(1, keepdim=True)
        if self.clamp:
            full = full.clamp(0, 1)
        m = round(self.margin)
        return full[:, :, m:m + self.shape[0], m:m + self.shape[1]], full


@lru_cache(maxsize=16)
def _generator_weights(shape, step, sigma) -> torch.Tensor:
    """k(d/σ) for every full-mask pixel and window slot, float32 on the CPU (as TorchRay
    builds them: distances in float32)."""
    padding = 1 + math.ceil(2 * sigma / step)
    window = 2 * (1 + math.ceil(sigma / step)) + 1
    mid = [math.ceil(z / step) + 2 * padding - window + 1 for z in shape]
    out = [step * z - step + 1 for z in mid]
    axes = []
    for n_out in out:
        u = torch.arange(n_out, dtype=torch.float32)
        base = torch.div(torch.arange(n_out), step, rounding_mode="floor").float()
        k = torch.arange(window, dtype=torch.float32)
        idx = base[None, :] + k[:, None] - padding                   # (K, n_out) param index
        axes.append(u[None, :] - (sigma + step * idx))               # offset to its centre
    dy, dx = axes
    d = torch.sqrt(dy[:, None, :, None] ** 2 + dx[None, :, None, :] ** 2)   # (K, K, Ho, Wo)
    w = torch.exp(-2 * (d / sigma - 0.5).clamp(min=0) ** 2)
    return w.reshape(window * window, *out)


# -- objective pieces --------------------------------------------------------------------------
def contrastive_reward(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) z_c − max_{c′≠c} z_{c′} (TorchRay ``contrastive_reward``, variant ``preserve``;
    TorchRay fills z_c with −100 before the max, which differs only when every other logit is
    below −100)."""
    if logits.shape[1] < 2:
        raise ValueError("the contrastive reward needs a model with at least 2 classes")
    z_c = logits.gather(1, target.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, target.view(-1, 1), float("-inf"))
    return z_c - others.amax(1)


def reward(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """(N,) reward of the perturbed images: ``contrastive``, ``logit`` or ``preserve_prob``."""
    if kind == "contrastive":
        return contrastive_reward(logits, target)
    if kind == "logit":
        return logits.gather(1, target.view(-1, 1)).squeeze(1)
    if kind == "preserve_prob":
        return torch.softmax(logits, 1).gather(1, target.view(-1, 1)).squeeze(1)
    raise ValueError(f"reward: {kind!r} is not allowed; allowed: {', '.join(REWARDS)}")


def area_reference(n: int, area: float) -> torch.Tensor:
    """(n,) float32: ⌊n·(1 − area)⌋ zeros, then ones (TorchRay ``int(max_area * (1 - a))``)."""
    ref = torch.ones(n, dtype=torch.float32)
    ref[:int(n * (1 - area))] = 0
    return ref


def area_penalty(full_mask: torch.Tensor, reference: torch.Tensor, lam: float) -> torch.Tensor:
    """(N,) λ·mean((sort(full mask) − reference)²), the full mask flattened per image."""
    srt = full_mask.reshape(full_mask.shape[0], -1).sort(dim=1).values
    return ((srt - reference.to(srt.device, srt.dtype)) ** 2).mean(1) * lam


def _l1_ratio(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N,) float32 Σ|v| / Σ|x| per image (float64 sums)."""
    return (v.detach().double().abs().flatten(1).sum(1)
            / x.double().abs().flatten(1).sum(1).clamp_min(1e-300)).float()


def parameter_grid_average(a: torch.Tensor, step: int) -> torch.Tensor:
    """(N, 1, ⌈H/s⌉, ⌈W/s⌉): the mean of a pixel map (N, 1, H, W) over the s×s cell centred on
    each parameter's pixel (s·i, s·j), clipped to the image (padding not counted)."""
    h_in, w_in = (math.ceil(z / step) for z in a.shape[-2:])
    pooled = F.avg_pool2d(a, step, stride=step, padding=step // 2, count_include_pad=False)
    return pooled[..., :h_in, :w_in]


@register_method
class SmoothMask(Method):
    name = "smooth_mask"
    channels = "input"
    params = {
        "area": Param(0.1, float, min=0.0, max=1.0, doc="target area a (fraction of the full "
                      "mask kept); presets run 0.05, 0.1, 0.2 separately"),
        "steps": Param(800, int, min=0, doc="SGD iterations"),
        "lr": Param(0.01, float, min=0.0, doc="SGD learning rate"),
        "momentum": Param(0.9, float, min=0.0, max=1.0, doc="SGD momentum"),
        "dampening": Param(0.9, float, min=0.0, max=1.0, doc="SGD dampening"),
        "levels": Param(8, int, min=2, doc="blur-pyramid levels L"),
        "max_blur": Param(20.0, float, min=0.0, doc="σ of the most blurred level"),
        "mask_step": Param(7, int, min=1, doc="parameter grid step in pixels"),
        "mask_sigma": Param(21.0, float, min=1e-6, doc="mask smoothing σ (and margin) in px"),
        "coldness": Param(20.0, float, min=0.0, doc="softmax-pooling coldness (inf = max)"),
        "jitter": Param(True, bool, doc="flip the perturbed image on even iterations"),
        "reward": Param("contrastive", str, REWARDS, doc="reward on the perturbed image"),
        "lambda0": Param(300.0, float, min=0.0, doc="initial area-constraint weight λ_0"),
        "lambda_growth": Param(1.0035, float, min=0.0, doc="λ_{t+1} = growth·λ_t"),
        "init": Param("ones", str, ("ones", "uniform", "startgrad"), doc="initial parameters"),
        "startgrad_score": Param("prob", str, SCORES, doc="score of init='startgrad'"),
        "history_every": Param(0, int, min=0, doc="log per-iteration extras every k steps "
                               "(0: off)"),
        "return_mask": Param(False, bool, doc="add extras['mask'] (N, 1, H, W)"),
        "compat": Param("none", str, ("none", "shearletx"),
                        doc="shearletx: explanation mask·x̃² (HEAD scatterplot.py L263)"),
    }

    #: parameters that do not change the optimisation's start: left out of the seed of the
    #: ``uniform`` init, so that logging, the output form or the run length (``steps=0``
    #: shows the start of every longer run) never change the draw
    OUTPUT_ONLY = ("history_every", "return_mask", "compat", "steps")

    # -- pieces -----------------------------------------------------------------------------
    def seed_parts(self, image_id: int, *extra) -> tuple:
        """:meth:`Method.seed_parts` without the :data:`OUTPUT_ONLY` parameters."""
        seed, iid, name, hp, *rest = super().seed_parts(image_id, *extra)
        return (seed, iid, name, {k: v for k, v in hp.items() if k not in self.OUTPUT_ONLY},
                *rest)

    def generator_for(self, shape) -> SmoothMaskGenerator:
        p = self.hparams
        return SmoothMaskGenerator(shape, p.mask_step, p.mask_sigma, p.coldness)

    def initial_params(self, images, target, image_ids, gen: SmoothMaskGenerator):
        """(N, 1, h, w) initial parameters m̄_0 (see the module doc)."""
        p = self.hparams
        n = images.shape[0]
        shape = (n, 1, *gen.shape_in)
        if p.init == "ones":
            return torch.ones(shape, device=images.device)
        if p.init == "uniform":
            return torch.stack([
                torch.rand(shape[1:], generator=generator(*self.seed_parts(int(i), "init")))
                for i in image_ids]).to(images.device)
        x = images.detach().requires_grad_(True)
        with torch.enable_grad():
            s = ranking_score(self.model(x), target, p.startgrad_score)
            (g,) = torch.autograd.grad(s.sum(), x)
        a = g.abs().amax(1, keepdim=True)                                # max over RGB
        return quantile_transform(parameter_grid_average(a, gen.step), 2).to(images.device)

    def group_size(self, images) -> int:
        """Images optimised together, under the memory budget (model pass + generator)."""
        shape = tuple(images.shape[1:])
        gen = self.generator_for(shape[-2:])
        per = estimate_point_bytes(self.model, shape, images.device)
        per += 6 * 4 * gen.weight.numel() + 4 * self.hparams.levels * math.prod(shape)
        budget = (self.memory_mb or default_memory_mb(images.device)) * 2**20
        k = max(1, int(budget // per))
        return min(k, self.max_batch) if self.max_batch else k

    # -- method -----------------------------------------------------------------------------
    def attribute(self, images, target, image_ids=None):
        k = self.group_size(images)
        parts = [self._optimise(images[s:s + k], target[s:s + k], image_ids[s:s + k])
                 for s in range(0, images.shape[0], k)]
        if len(parts) == 1:
            return parts[0]
        return Attribution(torch.cat([a.maps for a in parts]),
                           {key: torch.cat([a.extras[key] for a in parts])
                            for key in parts[0].extras})

    def _optimise(self, images, target, image_ids) -> Attribution:
        p = self.hparams
        n, _, h, w = images.shape
        gen = self.generator_for((h, w))
        pyramid = blur_pyramid(images, p.levels, p.max_blur)
        reference = area_reference(math.prod(gen.shape_out), p.area).to(images.device)
        pmask = self.initial_params(images, target, image_ids, gen).float()
        every, steps = p.history_every, p.steps
        h_x = entropy(images, (1, 2, 3))

        def explanation(m):
            x_e = m * images
            return x_e * images if p.compat == "shearletx" else x_e

        def retained(m):
            """(ℓ1 of m ⊙ x̃, entropy of m ⊙ x̃, ℓ1 of the explanation), each over x̃'s."""
            kept, x_e = m * images, explanation(m)
            return (_l1_ratio(kept, images), (entropy(kept, (1, 2, 3)) / h_x).float(),
                    _l1_ratio(x_e, images))

        names = ("retained_probability", "retained_l1", "retained_entropy", "retained_pixel")
        hist = {k: [] for k in (*names, *CLEAN_HISTORY, "loss_terms")}
        if every:
            with torch.no_grad():                   # one pass: p_c(x̃), and log p_c (float64)
                logits = self.model(images)
                p_clean = torch.softmax(logits, 1).gather(1, target.view(-1, 1)).squeeze(1)
                logp_clean = target_log_prob(logits, target)

        with torch.no_grad():
            mask, full = gen(pmask)             # rendered mask when steps == 0
        lam, buf = float(p.lambda0), None
        for t in range(steps):
            pm = pmask.detach().requires_grad_(True)
            with torch.enable_grad():
                mask, full = gen(pm)
                x = perturb(pyramid, mask)
                if p.jitter and t % 2 == 0:
                    x = torch.flip(x, dims=(3,))
                logits = self.model(x)
                r = reward(logits, target, p.reward)
                pen = area_penalty(full, reference, lam)
                (g,) = torch.autograd.grad((pen - r).sum(), pm)
            if every and t % every == 0:
                with torch.no_grad():
                    prob = torch.softmax(logits, 1).gather(1, target.view(-1, 1)).squeeze(1)
                    l1, ent, pix = retained(mask.detach())
                    for k, v in zip(names, (prob / p_clean, l1, ent, pix)):
                        hist[k].append(v.float())
                    for k, v in clean_cp(self.model, images, explanation(mask.detach()), target,
                                         logp_clean, l1, ent).items():
                        hist[k].append(v.float().to(images.device))
                    hist["loss_terms"].append(torch.stack([r.detach(), pen.detach()], 1))
            with torch.no_grad():               # torch.optim.SGD's update, elementwise
                if buf is None:
                    buf = g.clone()
                else:
                    buf.mul_(p.momentum).add_(g, alpha=1 - p.dampening)
                pmask = (pmask - p.lr * buf).clamp_(0, 1)
            lam *= p.lambda_growth
        mask, full = mask.detach(), full.detach()

        x_e = explanation(mask)
        l1, ent, pix = retained(mask)
        h_e = entropy(x_e, (1, 2, 3))
        extras = {
            "final_retained_l1": l1,
            "final_retained_entropy": (h_e / h_x).float(),
            "final_entropy_explanation": h_e.float(),
            "final_entropy_image": h_x.float(),
            "final_retained_pixel": pix,
            "area": mask.flatten(1).mean(1).float(),
            "area_full": full.flatten(1).mean(1).float(),
        }
        if p.return_mask or steps == 0:
            extras["mask"] = mask.float()
        if every:
            out = {k: torch.stack(v, 1) if v else images.new_zeros(n, 0) for k, v in hist.items()}
            if not hist["loss_terms"]:
                out["loss_terms"] = images.new_zeros(n, 0, len(LOSS_TERMS))
            out["cp_l1"] = out["retained_probability"] / out["retained_l1"]
            out["cp_pixel"] = out["retained_probability"] / out["retained_pixel"]
            out["cp_entropy"] = out["retained_probability"] / out["retained_entropy"]
            extras.update({k: v.float() for k, v in out.items()})
        return Attribution(x_e.float(), extras)
