"""The StartGrad faithfulness curves of a ranking in a representation's own domain (Uendes et
al., *Start Smart: Leveraging Gradients For Enhancing Mask-based XAI Methods*, ICLR 2025;
``BuelentUendes/StartGrad:experiments/vision/main_vision.py`` and ``utils/vision/helper.py``
@318bc36, read, not copied).

The kernel shared by the mask methods, which record it during their optimisation
(``faithfulness_at``), and the ``faithfulness`` metric, which scores pixel maps with it; the
protocol (keep / remove curves, noise, ties, compat) is described in
:mod:`xaipipe.metrics.faithfulness`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .objectives import objective

COMPAT = ("startgrad",)


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """rank[n, j] = position of unit j in the stable descending order of scores[n] (N, M)."""
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device)
                   .expand_as(order).contiguous())
    return ranks


def _top_units(scores: list[torch.Tensor], q: float, compat: str | None,
               ranks: torch.Tensor | None):
    """Per part, the bool (N, 1, ...) units that the *keep* curve keeps and that the *remove*
    curve randomises at fraction q, for ``scores`` (N, 1, ...). Clean: the same top ⌊q·M⌋
    units for both, by ``ranks`` (N, M), the joint order of all parts (the same for every
    fraction, so computed once by the caller). Compat: keep {s ≥ t}, remove {s > t} with t the
    k-th largest score of the array (the reference keeps {s ≥ t} on one curve and {s ≤ t} on
    the other), so that all tied units stay together; ``ranks`` is not used."""
    if compat is None:
        k = int(np.floor(q * ranks.shape[1] + 1e-9))
        top = ranks < k
        out, start = [], 0
        for s in scores:
            m = s[0].numel()
            part = top[:, start:start + m].view(s.shape)
            out.append((part, part))
            start += m
        return out
    out = []
    for s in scores:                                     # the reference: per array, vs k-th
        flat = s.flatten(1).float()
        k = int(q * flat.shape[1])
        srt = torch.sort(flat, dim=1, descending=True).values
        thr = (srt[:, k - 1] if q != 0.0 else srt[:, 0])[:, None]
        out.append(((flat >= thr).view(s.shape), (flat > thr).view(s.shape)))
    return out


def _uniform(mu, sd, shape, gen, device, dtype):
    """U[μ − σ, μ + σ] drawn with the CPU generator ``gen`` and moved to ``device``: the same
    numbers on every device (the score must not depend on where it ran)."""
    return mu - sd + 2 * sd * torch.rand(shape, generator=gen, dtype=dtype).to(device)


def faithfulness_curves(model: torch.nn.Module, target: torch.Tensor, p_ref: torch.Tensor,
                        coeffs: list[torch.Tensor], scores: list[torch.Tensor],
                        mu: list[torch.Tensor], sigma: list[torch.Tensor],
                        synthesize: Callable[[list[torch.Tensor]], torch.Tensor],
                        seeds: list[int], *, steps: int = 21, shared_colour: bool = False,
                        compat: str | None = None, clip: bool = True,
                        batch_size: int = 64) -> dict[str, torch.Tensor]:
    """The keep/remove distortion curves and the faithfulness of N images.

    ``coeffs``: per part (N, C, ...) the representation; ``scores``: per part (N, 1, ...) the
    ranking (a mask, or a reduced map); ``mu``/``sigma``: per part, broadcastable to
    (N, Cn, ...) with Cn = 1 if ``shared_colour`` else C; ``synthesize(parts)`` → (n, C, H, W)
    images, not clipped; ``p_ref`` (N,) p_c of the clean images; ``seeds`` one per image.
    Returns ``keep``, ``remove`` (N, steps), ``auc_keep``, ``auc_remove``, ``faithfulness``
    (N,), float64."""
    if compat is not None and compat not in COMPAT:
        raise ValueError(f"faithfulness: unknown compat {compat!r}; allowed: None, "
                         f"{', '.join(map(repr, COMPAT))}")
    n = coeffs[0].shape[0]
    dev = coeffs[0].device
    qs = np.linspace(0.0, 1.0, steps)
    if compat == "startgrad":                    # μ, σ over each array's coefficients
        mu = [c.flatten(1).mean(1).view(-1, *[1] * (c.ndim - 1)) for c in coeffs]
        sigma = [c.flatten(1).std(1).view(-1, *[1] * (c.ndim - 1)) for c in coeffs]
        shared_colour = False
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]        # CPU: see _uniform

    def draw(i):
        out = []
        for c, m, s in zip(coeffs, mu, sigma):
            shape = (1 if shared_colour else c.shape[1], *c.shape[2:])
            out.append(_uniform(m[i], s[i], shape, gens[i], dev, c.dtype))
        return out

    fixed = None if compat == "startgrad" else [draw(i) for i in range(n)]
    ranks = None if compat else _ranks(torch.cat([s.flatten(1) for s in scores], 1).float())
    tops = [_top_units(scores, q, compat, ranks) for q in qs]
    curves = {"keep": torch.zeros(n, steps, dtype=torch.float64),
              "remove": torch.zeros(n, steps, dtype=torch.float64)}
    jobs = [(i, j, kind) for i in range(n) for kind in ("keep", "remove") for j in range(steps)]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        parts = []
        for k in range(len(coeffs)):
            rows = []
            for i, j, kind in chunk:
                u = (fixed[i] if fixed is not None else draw(i))[k]
                keep_set, remove_set = tops[j][k]
                keep = keep_set[i] if kind == "keep" else ~remove_set[i]
                rows.append(torch.where(keep, coeffs[k][i], u))
            parts.append(torch.stack(rows))
        x = synthesize(parts)
        if clip:
            x = x.clamp(0.0, 1.0)
        t = target[torch.tensor([i for i, _, _ in chunk], device=target.device)]
        p = objective(model(x).float(), t, "prob").double().cpu()
        for (i, j, kind), v in zip(chunk, p):
            curves[kind][i, j] = (float(p_ref[i]) - v) ** 2
    auc = {k: torch.from_numpy(np.trapezoid(v.numpy(), qs, axis=1)) for k, v in curves.items()}
    return {**curves, "auc_keep": auc["keep"], "auc_remove": auc["remove"],
            "faithfulness": auc["remove"] - auc["keep"]}
