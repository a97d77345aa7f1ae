"""StartGrad initialisation (Uendes, Yu, Hoogendoorn, ICLR 2025; ``BuelentUendes/StartGrad``):
the shared pieces every mask method uses for ``init="startgrad"``.

- :func:`quantile_transform`: the clean QTF, the exact tie-averaged empirical CDF per block,
  m₀(i) = (R̄_i − 1)/(n − 1) with R̄_i the average 1-based rank (ties share the mean rank).
  It maps every block to U(0, 1) (mean exactly 0.5) and is invariant to any strictly
  increasing transform of its input, which is why the ``prob`` and ``nll`` scores give the
  same mask.
- :func:`sampled_quantile_transform`: ``compat: startgrad``, the StartGrad repository's
  ``sklearn.preprocessing.QuantileTransformer(output_distribution="uniform", n_quantiles,
  subsample)`` fitted and applied per block, written here in NumPy (tested against scikit-learn).
  With ``n_quantiles`` = n and no subsample it equals the clean QTF up to float rounding,
  except that values tied with the block's minimum (maximum) map to 0 (1), not to their mean
  rank.
- :func:`ranking_score`: the scalar whose gradient StartGrad takes for the score ``prob``,
  ``nll`` or ``logit`` (``prob`` and ``nll`` share it).

Each host method computes a = |∂s/∂z| for its own coefficients z (through its inverse
transform), reduces colour by max and calls :func:`quantile_transform` with its blocks.
"""
from __future__ import annotations

import numpy as np
import torch

from ...maths.objectives import objective

SCORES = ("prob", "nll", "logit")
#: what maps |gradient| to the initial mask per block (the paper's QTF and its ablations)
TRANSFORMS = ("qtf", "minmax", "sqrt", "log")
#: the paper's gradient ablations (its ``create_visuals_bootstrapped.py`` L370-530)
ABLATIONS = ("none", "adversarial", "shuffle", "noisy", "grad_x_input", "smoothgrad")
#: the SmoothGrad ablation's noise: N(0, σ²) per pixel with σ = this × (max − min) of the image
SMOOTHGRAD_SPREAD = 0.15


def quantile_transform(a: torch.Tensor, block_dims: int) -> torch.Tensor:
    """Tie-averaged empirical CDF over the last ``block_dims`` dims of ``a``: every slice
    ``a[i, ..., :, :]`` of those dims is one block. Returns float32 of ``a``'s shape in
    [0, 1]. A block of one value maps to 0.5."""
    if block_dims < 1 or block_dims > a.ndim:
        raise ValueError(f"block_dims must be in 1..{a.ndim}, got {block_dims}")
    lead = a.shape[:a.ndim - block_dims]
    flat = a.detach().reshape(-1, int(torch.tensor(a.shape[a.ndim - block_dims:]).prod()))
    flat = flat.to(torch.float64).contiguous()
    n = flat.shape[1]
    if n == 1:
        return torch.full(a.shape, 0.5, dtype=torch.float32, device=a.device)
    s, _ = torch.sort(flat, dim=1)
    less = torch.searchsorted(s, flat, side="left")          # values < v
    less_eq = torch.searchsorted(s, flat, side="right")      # values <= v
    # average 1-based rank of v's tie group: (less + 1 + less_eq) / 2
    m0 = (less + less_eq - 1).to(torch.float64) / (2.0 * (n - 1))
    return m0.to(torch.float32).reshape(*lead, *a.shape[a.ndim - block_dims:])


def sampled_quantile_transform(a: torch.Tensor, block_dims: int, n_quantiles: int,
                               subsample: int | None = None, seeds=None) -> torch.Tensor:
    """scikit-learn's ``QuantileTransformer(output_distribution="uniform", n_quantiles=...,
    subsample=...).fit_transform`` of every block (the last ``block_dims`` dims of ``a``,
    flattened to one column), in float64 (the StartGrad repository's quantile transform,
    compat ``startgrad``). Per block of n values: q = the linear percentiles at
    r = linspace(0, 1, min(n_quantiles, n)) of the block, or of ``subsample`` of its values
    drawn without replacement (``RandomState(seed).shuffle`` of the indices, as
    ``sklearn.utils.resample``) when subsample < n; then
    m = (interp(v, q, r) − interp(−v, −q[::−1], −r[::−1]))/2, 1 where v = q[−1] and 0 where
    v = q[0] (so a constant block maps to 0, not the clean QTF's 0.5). ``seeds``: one integer
    per block (in row-major order of the leading dims), needed only when subsampling; the
    reference used NumPy's global state, so its draws are not reproducible. Float32 out."""
    if block_dims < 1 or block_dims > a.ndim:
        raise ValueError(f"block_dims must be in 1..{a.ndim}, got {block_dims}")
    if n_quantiles < 1 or (subsample is not None and subsample < n_quantiles):
        raise ValueError(f"n_quantiles must be >= 1 and <= subsample, got {n_quantiles} and "
                         f"{subsample}")
    shape = a.shape
    blocks = a.detach().to(torch.float64).cpu().numpy().reshape(
        -1, int(np.prod(shape[a.ndim - block_dims:])))
    n = blocks.shape[1]
    sampling = subsample is not None and subsample < n
    if sampling and (seeds is None or len(seeds) != blocks.shape[0]):
        raise ValueError(f"subsample={subsample} < n={n} needs one seed per block "
                         f"({blocks.shape[0]}), got {None if seeds is None else len(seeds)}")
    refs = np.linspace(0.0, 1.0, max(1, min(n_quantiles, n)))
    out = np.empty_like(blocks)
    for b, v in enumerate(blocks):
        fit = v
        if sampling:
            idx = np.arange(n)
            np.random.RandomState(int(seeds[b]) % 2**32).shuffle(idx)
            fit = v[idx[:subsample]]
        q = np.percentile(fit, refs * 100)
        m = 0.5 * (np.interp(v, q, refs) - np.interp(-v, -q[::-1], -refs[::-1]))
        m[v == q[-1]] = 1.0
        m[v == q[0]] = 0.0
        out[b] = m
    return torch.from_numpy(out.reshape(shape)).to(device=a.device, dtype=torch.float32)


def ranking_score(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """The scalar whose |gradient| StartGrad ranks for the score ``kind`` (``prob`` p_c,
    ``nll`` −log p_c, ``logit`` z_c). ``prob`` and ``nll`` both use log p_c: ∂p_c/∂z =
    p_c·∂log p_c/∂z, so their |gradients| differ by the factor p_c > 0 per image, which the
    per-image quantile transform removes, and −log p_c has the same |gradient| as log p_c.
    Taking one gradient for both makes their masks identical bit for bit, not just up to
    float rounding of near ties. ``logit`` uses z_c (a different mask)."""
    if kind not in SCORES:
        raise ValueError(f"startgrad_score: {kind!r} is not allowed; allowed: {', '.join(SCORES)}")
    return objective(logits, target, "logit" if kind == "logit" else "logprob")


def block_transform(a: torch.Tensor, block_dims: int, kind: str = "qtf") -> torch.Tensor:
    """|gradient| ``a`` → initial mask per block (the last ``block_dims`` dims). ``qtf``:
    :func:`quantile_transform` (StartGrad). The ablations: ``minmax`` (a − min)/(max − min),
    ``sqrt`` and ``log`` the same min–max scaling of √a and log(a + 1e-12) (a block whose
    values are all equal maps to 0.5, as the QTF's ties). Float32 in [0, 1]."""
    if kind == "qtf":
        return quantile_transform(a, block_dims)
    if kind not in TRANSFORMS:
        raise ValueError(f"startgrad_transform: {kind!r} is not allowed; allowed: "
                         f"{', '.join(TRANSFORMS)}")
    v = a.detach().to(torch.float64)
    v = v.sqrt() if kind == "sqrt" else torch.log(v + 1e-12) if kind == "log" else v
    dims = tuple(range(a.ndim - block_dims, a.ndim))
    lo, hi = v.amin(dims, keepdim=True), v.amax(dims, keepdim=True)
    span = hi - lo
    out = torch.where(span > 0, (v - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                      torch.full_like(v, 0.5))
    return out.to(torch.float32)


def shuffle_blocks(m: torch.Tensor, block_dims: int, generator: torch.Generator) -> torch.Tensor:
    """The ``shuffle`` ablation: the values of each block in a random order (the same values,
    no spatial information)."""
    lead = m.shape[:m.ndim - block_dims]
    flat = m.reshape(int(torch.tensor(lead).prod()) if lead else 1, -1)
    perm = torch.stack([torch.randperm(flat.shape[1], generator=generator)
                        for _ in range(flat.shape[0])]).to(m.device)
    return torch.gather(flat, 1, perm).reshape(m.shape)
