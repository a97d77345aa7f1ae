"""StartGrad initialisation (Uendes et al., ICLR 2025), `mask-methods.md` §9.1: the shared
pieces every mask method uses for ``init="startgrad"``.

- :func:`quantile_transform`: the clean QTF, the exact tie-averaged empirical CDF per block,
  m₀(i) = (R̄_i − 1)/(n − 1) with R̄_i the average 1-based rank (ties share the mean rank).
  It maps every block to U(0, 1) (mean exactly 0.5) and is invariant to any strictly
  increasing transform of its input, which is why the ``prob`` and ``nll`` scores give the
  same mask.
- :func:`ranking_score`: the scalar whose gradient StartGrad takes for the score ``prob``,
  ``nll`` or ``logit`` (``prob`` and ``nll`` share it).

Each host method computes a = |∂s/∂z| for its own coefficients z (through its inverse
transform), reduces colour by max and calls :func:`quantile_transform` with its blocks.
"""
from __future__ import annotations

import torch

from .objectives import objective

SCORES = ("prob", "nll", "logit")
#: what maps |gradient| to the initial mask per block (§9.1 step 5 and its ablations)
TRANSFORMS = ("qtf", "minmax", "sqrt", "log")
#: the gradient ablations of §9.1 (`create_visuals_bootstrapped.py` L370-530)
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
