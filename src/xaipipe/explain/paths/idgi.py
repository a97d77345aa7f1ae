"""IDGI (Yang, Wang, Bilgic, CVPR 2023; ``yangruo1226/IDGI``).

On a path p_0 (baseline) … p_m (input) with outputs f_j and, for each segment j, a gradient g_j
taken at one end of it (by default the baseline side, p_j, as ``yangruo1226/IDGI:idgi.py``),
IDGI keeps only the component of each step along the gradient, rescaled to the actual output
change d_j = f_{j+1} − f_j:

    φ_i = Σ_j d_j · g_{j,i}² / ‖g_j‖²      (‖g_j‖² summed over all C·H·W entries)

so Σ_i φ_i = Σ_j d_j = f_m − f_0 exactly, for any path and any m. A segment whose gradient is
zero (‖g_j‖² < ``ZERO_NORM``) cannot carry its d_j; it is skipped and its d_j is added to the
completeness gap (the reference code has no guard and would divide by zero).

The methods accumulate segment by segment (:class:`IDGIAccumulator`) so that no path is held
in memory: a path method evaluates (image, point) pairs in chunks, in increasing point order
per image, and feeds each evaluated point to the accumulator.
"""
from __future__ import annotations

import torch

ZERO_NORM = 1e-30


def idgi_weights(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(g² / ‖g‖², valid) per point for gradients (P, C, H, W); ``valid`` is False where
    ‖g‖² < ZERO_NORM (the weights are 0 there)."""
    sq = g.double().square() if g.dtype == torch.float64 else g.square()
    norm = sq.flatten(1).sum(1)
    valid = norm >= ZERO_NORM
    safe = torch.where(valid, norm, torch.ones_like(norm))
    u = sq / safe.view(-1, *([1] * (g.ndim - 1)))
    u[~valid] = 0
    return u.to(g.dtype), valid


def idgi(grads: torch.Tensor, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IDGI of one path per image, all in memory (for tests and small paths).

    ``grads``: (N, m, C, H, W), the gradient of segment j (at whichever end the caller chose);
    ``outputs``: (N, m+1), f at p_0 … p_m. Returns (φ (N, C, H, W), gap (N,)) where the gap is
    Σφ − (f_m − f_0) (0 up to float error unless a segment had a zero gradient)."""
    n, m = grads.shape[:2]
    if outputs.shape != (n, m + 1):
        raise ValueError(f"outputs must be (N, m+1) = ({n}, {m + 1}), got {tuple(outputs.shape)}")
    u, valid = idgi_weights(grads.flatten(0, 1))
    d = (outputs[:, 1:] - outputs[:, :-1]).reshape(-1).to(u.dtype)
    phi = (u * d.view(-1, 1, 1, 1)).view(n, m, *grads.shape[2:]).sum(1)
    gap = phi.flatten(1).sum(1) - (outputs[:, -1] - outputs[:, 0]).to(phi.dtype)
    return phi, gap


class IDGIAccumulator:
    """IDGI over a path fed point by point (in increasing point order per image).

    ``feed(images, points, grads, outputs)``: image indices (P,), point indices (P,) on this
    accumulator's grid (0 … m, consecutive per image), gradients (P, C, H, W) and outputs (P,)
    at those points. ``grad_end="baseline_side"`` uses the gradient at p_j for segment
    (j, j+1) (the gradient of the input p_m is never used), ``"input_side"`` the one at p_{j+1}
    (the gradient of p_0 is never used). :meth:`result` gives (φ, f_0, f_m, skipped_d) where
    ``skipped_d`` is the sum of d_j over zero-gradient segments (the completeness gap)."""

    def __init__(self, n: int, shape, m: int, device, dtype=torch.float32,
                 grad_end: str = "baseline_side"):
        if grad_end not in ("baseline_side", "input_side"):
            raise ValueError(f"grad_end must be baseline_side or input_side, got {grad_end!r}")
        self.m, self.grad_end = m, grad_end
        self.phi = torch.zeros((n, *shape), device=device, dtype=dtype)
        self.pending = torch.zeros((n, *shape), device=device, dtype=dtype)
        self.pending_valid = torch.zeros(n, dtype=torch.bool, device=device)
        self.f_prev = torch.zeros(n, device=device, dtype=torch.float64)
        self.f_first = torch.full((n,), float("nan"), device=device, dtype=torch.float64)
        self.f_last = torch.full((n,), float("nan"), device=device, dtype=torch.float64)
        self.skipped = torch.zeros(n, device=device, dtype=torch.float64)
        self.next = torch.zeros(n, dtype=torch.long, device=device)

    def feed(self, images: torch.Tensor, points: torch.Tensor, grads: torch.Tensor | None,
             outputs: torch.Tensor) -> None:
        for k in range(images.numel()):
            i, j = int(images[k]), int(points[k])
            if j != int(self.next[i]):
                raise RuntimeError(f"IDGI path of image {i}: point {j} fed, {int(self.next[i])} "
                                   "expected (points must come in order)")
            self.next[i] = j + 1
            f = outputs[k].double()
            if j == 0:
                self.f_first[i] = f
            else:
                d = f - self.f_prev[i]
                if self.grad_end == "baseline_side":
                    u_valid = bool(self.pending_valid[i])
                    if u_valid:
                        self.phi[i] += (d.to(self.phi.dtype) * self.pending[i])
                    else:
                        self.skipped[i] += d
                else:
                    u, valid = idgi_weights(grads[k:k + 1].to(self.phi.dtype))
                    if bool(valid[0]):
                        self.phi[i] += d.to(self.phi.dtype) * u[0]
                    else:
                        self.skipped[i] += d
            if j == self.m:
                self.f_last[i] = f
            elif self.grad_end == "baseline_side":
                u, valid = idgi_weights(grads[k:k + 1].to(self.phi.dtype))
                self.pending[i] = u[0]
                self.pending_valid[i] = valid[0]
            self.f_prev[i] = f

    def result(self):
        if bool((self.next != self.m + 1).any()):
            raise RuntimeError("IDGI path incomplete: not every point was fed")
        return self.phi, self.f_first, self.f_last, self.skipped
