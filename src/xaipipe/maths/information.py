"""Information measures and CP ratios, shared by the mask methods (their per-step histories)
and the CP and Hallucination Score metrics (their final scores).

CP, Conciseness–Preciseness (Kolek et al., *Explaining Image Classifiers with Multiscale
Directional Image Representation*, CVPR 2023; code ``skmda37/ShearletX``), is a retained class
probability over a retained information:

- the entropy H(v) = −Σ q ln(q + 1e-7), q = |v|²/Σ|v|² (:func:`entropy`, :func:`joint_entropy`),
  as ``skmda37/ShearletX:code/shearletx.py`` computes it;
- the explanation image x_E scored by CP, divided per image by its max (:func:`max_normalised`,
  :func:`explanation_image`);
- log-probabilities in float64 (:func:`log_softmax`, :func:`target_log_prob`, :func:`log_prob`),
  so that tiny probabilities do not underflow in the ratio;
- the ratio itself, NaN where the retained information is not a positive finite number
  (:func:`cp_ratio`): an empty explanation has no CP.

The names of the per-step CP histories a mask method records (:data:`HISTORY`) are here too:
the methods write them and the ``convergence`` metric reads them.
"""
from __future__ import annotations

import math

import numpy as np
import torch

ENTROPY_EPS = 1e-7      # inside the log of H, as the ShearletX reference

#: the Kolek-style CP of the clean explanation at each recorded step of a mask method
CLEAN_HISTORY = ("clean_retained_probability", "clean_cp_l1_pixel", "clean_cp_l1",
                 "clean_cp_entropy")
#: every per-step history a mask method records (extras (N, T))
HISTORY = ("retained_probability", "retained_l1", "retained_entropy", "retained_pixel",
           "cp_l1", "cp_pixel", "cp_entropy", *CLEAN_HISTORY)


def entropy(v, dims=None) -> torch.Tensor:
    """H(v) = −Σ q ln(q + 1e-7), q = |v|²/Σ|v|², summed over ``dims`` (an int, a tuple, or
    None for all dims), in float64 (as ``skmda37/ShearletX:code/shearletx.py``). Complex v
    uses its modulus. An all-zero v has q = 0 everywhere, so H = 0. The mask methods' retained
    entropy and the ``cp`` metric both use it."""
    v = torch.as_tensor(v).detach()
    if dims is None:
        dims = tuple(range(v.ndim))
    elif isinstance(dims, int):
        dims = (dims,)
    e = v.abs().double() ** 2
    total = e.sum(dims, keepdim=True)
    q = e / torch.where(total > 0, total, torch.ones_like(total))
    return -(q * torch.log(q + ENTROPY_EPS)).sum(dims)


def joint_entropy(flat: list[torch.Tensor]) -> torch.Tensor:
    """:func:`entropy` of the concatenation of the (n, d_i) magnitudes along dim 1, computed
    part by part (no concatenated copy); (n,)."""
    total = sum((v ** 2).sum(1) for v in flat)
    safe = torch.where(total > 0, total, torch.ones_like(total))[:, None]
    h = 0
    for v in flat:
        q = v ** 2 / safe
        h = h - (q * torch.log(q + ENTROPY_EPS)).sum(1)
    return h


def cp_ratio(rcp, info):
    """CP = retained probability / retained information, NaN where the information is not a
    positive finite number (an empty explanation, a mask gone to zero): undefined. Works on
    torch tensors (float64 result) and NumPy arrays (float64 result)."""
    if isinstance(rcp, torch.Tensor) or isinstance(info, torch.Tensor):
        rcp, info = torch.as_tensor(rcp).double(), torch.as_tensor(info).double()
        ok = torch.isfinite(info) & (info > 0)
        return torch.where(ok, rcp / torch.where(ok, info, torch.ones_like(info)),
                           torch.full_like(rcp, math.nan))
    rcp, info = np.asarray(rcp, np.float64), np.asarray(info, np.float64)
    ok = np.isfinite(info) & (info > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, rcp / np.where(ok, info, 1.0), np.nan)


def ratio(num, den) -> np.ndarray:
    """num / den as float64 NumPy, NaN where den is not positive."""
    num = torch.as_tensor(num).double().cpu().numpy()
    den = torch.as_tensor(den).double().cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def log_softmax(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, K) float64 log-softmax of the model's logits, in chunks of ``batch_size`` images."""
    batch_size = max(1, int(batch_size))
    return torch.cat([torch.log_softmax(model(x[a:a + batch_size]).double(), 1)
                      for a in range(0, x.shape[0], batch_size)])


def target_log_prob(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) float64 log p_c of the classes ``target`` on the CPU, from float64 log-softmax of
    the ``logits``."""
    return torch.log_softmax(logits.double(), 1).gather(
        1, target.view(-1, 1).to(logits.device)).squeeze(1).cpu()


@torch.no_grad()
def log_prob(model, x, target, chunk: int | None = None) -> torch.Tensor:
    """(N,) float64 log p_c(x) of the classes ``target`` on the CPU
    (:func:`target_log_prob`), in chunks of ``chunk`` images."""
    n = x.shape[0]
    chunk = max(1, int(chunk or n))
    return torch.cat([target_log_prob(model(x[a:a + chunk]), target[a:a + chunk])
                      for a in range(0, n, chunk)])


def max_normalised(x: torch.Tensor, to: torch.Tensor | None = None) -> torch.Tensor:
    """Each image of ``x`` (N, ...) scaled so that its max is ``to`` (broadcastable per
    image; None: 1) where that max is positive; an image without a positive value is left as
    it is (nothing to rescale)."""
    top = x.flatten(1).amax(1).view(-1, *([1] * (x.ndim - 1)))
    scale = torch.where(top > 0, top, torch.ones_like(top))
    return torch.where(top > 0, x / scale if to is None else x * (to / scale), x)


def explanation_image(maps: torch.Tensor, images: torch.Tensor,
                      normalize: bool = True) -> torch.Tensor:
    """The explanation image x_E scored by CP: ``maps`` broadcast to the images' shape (a
    one-channel map becomes gray), divided per image by its max when ``normalize`` and that
    max is positive (the clean form of CP). Float32 on the images' device."""
    xe = torch.as_tensor(maps).to(images.device, torch.float32)
    try:
        xe = xe.expand_as(images)
    except RuntimeError:
        raise ValueError(f"CP scores need explanation images of the images' shape "
                         f"{tuple(images.shape)}, got maps of shape {tuple(xe.shape)}") from None
    if normalize:
        xe = max_normalised(xe)
    return xe.contiguous()


def pixel_l1_ratio(xe: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(N,) float64 on the CPU: the retained pixel ℓ1 Σ|x_E| / Σ|x̃| (0 where x̃ is black)."""
    return xe.double().abs().flatten(1).sum(1).cpu() / \
        images.double().abs().flatten(1).sum(1).cpu().clamp_min(1e-300)
