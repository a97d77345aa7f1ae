"""Path-integral machinery shared by the IG family (`attribution-methods.md` §4).

A straight path from baseline x' to input x is sampled at coefficients α_j with quadrature
weights w_j (the Riemann rule); the path gradient is Σ_j w_j ∇f(x' + α_j (x − x')). All
(image, α) points are flattened and evaluated in chunks that fit the memory budget, so the
number of steps never changes peak memory.
"""
from __future__ import annotations

import torch

RULES = ("left", "right", "trapezoid", "middle", "pair_mean")


def riemann(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(alphas, weights) of a rule over ``steps`` segments of [0, 1] (float64).

    - ``left`` / ``right`` / ``middle``: one point per segment at its start / end / middle
    - ``trapezoid``: the steps+1 grid points, end weights halved
    - ``pair_mean``: the mean over the steps+1 grid points (PAIR ``IntegratedGradients``)
    """
    m = int(steps)
    if m < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    j = torch.arange(m + 1, dtype=torch.float64)
    if rule == "left":
        return j[:-1] / m, torch.full((m,), 1.0 / m, dtype=torch.float64)
    if rule == "right":
        return j[1:] / m, torch.full((m,), 1.0 / m, dtype=torch.float64)
    if rule == "middle":
        return (j[:-1] + 0.5) / m, torch.full((m,), 1.0 / m, dtype=torch.float64)
    if rule == "trapezoid":
        w = torch.full((m + 1,), 1.0 / m, dtype=torch.float64)
        w[0] = w[-1] = 0.5 / m
        return j / m, w
    if rule == "pair_mean":
        return j / m, torch.full((m + 1,), 1.0 / (m + 1), dtype=torch.float64)
    raise ValueError(f"unknown rule {rule!r}; allowed: {', '.join(RULES)}")


def straight_path_gradient(method, images: torch.Tensor, baselines: torch.Tensor,
                           target: torch.Tensor, alphas: torch.Tensor, weights: torch.Tensor,
                           grad_space: str = "pixel") -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_j w_j ∇f(x' + α_j (x − x')) per image, evaluated in memory-bounded chunks, and the
    outputs f at every path point, (N, K) (they come with the gradients at no extra cost).

    ``method`` supplies ``gradient`` and ``chunk_size`` (a :class:`~xaipipe.explain.base.Method`)."""
    n, k = images.shape[0], alphas.numel()
    device, dtype = images.device, images.dtype
    alphas = alphas.to(device, dtype)
    weights = weights.to(device, dtype)
    delta = images - baselines
    acc = torch.zeros_like(images)
    outputs = torch.empty(n * k, device=device, dtype=dtype)
    chunk = method.chunk_size(images.shape[1:], device)
    flat = torch.arange(n * k, device=device)
    for start in range(0, n * k, chunk):
        idx = flat[start:start + chunk]
        img_i, a_i = idx // k, idx % k
        pts = baselines[img_i] + alphas[a_i].view(-1, 1, 1, 1) * delta[img_i]
        g, f = method.gradient(pts, target[img_i], grad_space)
        acc.index_add_(0, img_i, g * weights[a_i].view(-1, 1, 1, 1))
        outputs[idx] = f.to(dtype)
    return acc, outputs.view(n, k)
