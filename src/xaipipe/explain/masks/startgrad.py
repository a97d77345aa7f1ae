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

import math
from dataclasses import replace

import numpy as np
import torch

from ...maths.objectives import objective
from ...utils import derive_seed
from .state import State

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


class StartGradInit:
    """The initial masks: all ones, U(0, 1), or StartGrad's (the gradient of the score with
    respect to the coefficients, through the inverse transform, |·| and max over colour, then
    the QTF per block), with the paper's ablations. A part of
    :class:`~xaipipe.explain.masks.base.MaskMethod` (``self`` is the mask method)."""

    def initial_masks(self, state: State, target, image_ids) -> list[torch.Tensor]:
        p = self.hparams
        n, dev = state.images.shape[0], state.images.device
        shapes = self.mask_shapes(state)
        if p.init == "ones":
            return [torch.ones((n, *sh), device=dev) for sh in shapes]
        if p.init == "uniform":
            out = []
            for k, sh in enumerate(shapes):
                out.append(torch.stack([torch.rand(sh, generator=self._generator(i, "init", k))
                                        for i in image_ids]).to(dev))
            return out
        return self.startgrad_masks(state, target, image_ids)

    def startgrad_masks(self, state: State, target, image_ids=None) -> list[torch.Tensor]:
        """StartGrad: z = T(x̃) as a leaf, x′ = T⁻¹(z), a = |∂s/∂z|, max over colour, QTF per
        block. The gradient runs through the inverse transform (no clipping). The ablations
        (``startgrad_ablation``, ``startgrad_transform``) change one step each; their draws
        are seeded per image id."""
        p = self.hparams
        ablation = p.startgrad_ablation
        ids = (list(range(state.images.shape[0])) if image_ids is None
               else [int(i) for i in image_ids])
        if ablation == "smoothgrad":
            grads = self._smoothgrad_gradients(state, target, ids)
        else:
            grads = self._coefficient_gradients(state, target)
        # the reference's order: noise, then the rescaling, then × input (one ablation at a
        # time, so only the rescaling's place matters)
        if ablation == "noisy":
            sd = math.sqrt(p.startgrad_noise)
            grads = [g + sd * torch.stack([torch.randn(
                g.shape[1:], generator=self._generator(i, "startgrad_noise", k), dtype=g.dtype)
                for i in ids]).to(g.device) for k, g in enumerate(grads)]
        scale = self.gradient_scale(state)
        if scale is not None:
            grads = [g * scale.to(g.device, g.dtype) for g in grads]
        if ablation == "grad_x_input":
            grads = [g * c for g, c in zip(grads, state.coeffs)]
        out = []
        for k, (g, sh, bd) in enumerate(zip(grads, self.startgrad_shapes(state),
                                            self.qtf_block_dims)):
            a = g.abs().amax(1, keepdim=True)              # max over colour → (N, 1, ...)
            a = a.expand(a.shape[0], *sh) if a.shape[1:] != sh else a
            m0 = self._block_transform(a, bd, k, ids).to(g.device)
            if ablation == "adversarial":
                m0 = 1.0 - m0
            elif ablation == "shuffle":
                m0 = torch.stack([shuffle_blocks(m0[j], bd,
                                                 self._generator(i, "startgrad_shuffle", k))
                                  for j, i in enumerate(ids)])
            out.append(m0)
        return out

    def compat_qtf(self, part: int, n: int) -> tuple[int, int | None] | None:
        """(n_quantiles, subsample) of the scikit-learn QuantileTransformer that the StartGrad
        repository fits to each block of ``n`` values of ``part`` (``compat: startgrad``,
        :func:`~xaipipe.explain.masks.startgrad.sampled_quantile_transform`); None: the clean QTF."""
        return None

    def _block_transform(self, a: torch.Tensor, block_dims: int, part: int,
                         ids: list[int]) -> torch.Tensor:
        """|gradient| (N, ...) of one part → its initial mask, block by block: the
        ``startgrad_transform``, or for ``qtf`` under a compat profile the sampled QTF, whose
        subsample draws are seeded per (image id, part, block)."""
        kind = self.hparams.startgrad_transform
        n = math.prod(a.shape[a.ndim - block_dims:])
        sk = self.compat_qtf(part, n) if kind == "qtf" else None
        if sk is None:
            return block_transform(a, block_dims, kind)
        seeds = None
        if sk[1] is not None and sk[1] < n:          # subsampled: one seed per block
            per_image = math.prod(a.shape[1:a.ndim - block_dims])
            seeds = [derive_seed(*self.seed_parts(i, "startgrad_qtf", part, b))
                     for i in ids for b in range(per_image)]
        return sampled_quantile_transform(a, block_dims, sk[0], sk[1], seeds)

    def gradient_scale(self, state: State) -> torch.Tensor | None:
        """A factor the StartGrad gradients of every part are multiplied by before the
        absolute value (the pixel mask's ``rescaling_gradient``); None: none."""
        return None

    def _coefficient_gradients(self, state: State, target) -> list[torch.Tensor]:
        """∂s/∂z per part for z = T(x̃) as a leaf, through x′ = T⁻¹(z) (StartGrad)."""
        z = [c.detach().clone().requires_grad_(True) for c in state.coeffs]
        with torch.enable_grad():
            chunk = self.chunk_size(state.images.shape[1:], state.images.device)
            grads = [torch.zeros_like(c) for c in z]
            for s in range(0, state.images.shape[0], chunk):
                zs = [c[s:s + chunk] for c in z]
                x = self.synthesize(state, zs)
                logits = self.model(x).float()
                sc = ranking_score(logits, target[s:s + chunk], self.hparams.startgrad_score)
                gs = torch.autograd.grad(sc.sum(), zs)
                if self._prob_magnitude():
                    # ∂p_c/∂z = p_c·∂log p_c/∂z: the gradient of p_c itself where its size,
                    # not only its ranking, reaches the mask
                    pc = torch.softmax(logits.detach().double(), 1).gather(
                        1, target[s:s + chunk].view(-1, 1).to(logits.device)).squeeze(1)
                    gs = [gi * pc.to(gi.dtype).view(-1, *[1] * (gi.ndim - 1)) for gi in gs]
                for g, gi in zip(grads, gs):
                    g[s:s + chunk] = gi
        return grads

    def _prob_magnitude(self) -> bool:
        """Whether ``startgrad_score: prob`` needs the gradient of p_c rather than that of
        log p_c, which :func:`ranking_score` takes for ``prob`` and ``nll`` alike. The
        per-block QTF, min–max and sqrt transforms of |∂s/∂z| (and the adversarial, shuffle and
        grad_x_input ablations of them) do not change when an image's gradient is scaled by
        p_c > 0, so there one gradient keeps the two scores' masks identical bit for bit.
        The ``noisy`` ablation (σ² added to the gradient), the ``smoothgrad`` one (an average
        over copies with different p_c) and the ``log`` transform (log(a + 1e-12)) see the
        size: there ``prob`` is ∂p_c/∂z."""
        p = self.hparams
        return p.startgrad_score == "prob" and (
            p.startgrad_ablation in ("noisy", "smoothgrad") or p.startgrad_transform == "log")

    def _smoothgrad_gradients(self, state: State, target, ids: list[int]) -> list[torch.Tensor]:
        """StartGrad's smoothgrad ablation: |∂s/∂z| averaged over S copies x̃ + ε of each image
        (the absolute value of each copy's gradient, as the StartGrad repository averages it),
        ε ~ N(0, σ²) per pixel with σ = 0.15·(max − min) of that image, z = T(x̃ + ε); each
        image's draws seeded by its id and the copy's index (so copies do not depend on the
        batch, and more copies extend the same sequence)."""
        images = state.images
        n_copies = self.hparams.startgrad_samples or self.smoothgrad_samples
        flat = images.flatten(1)
        sd = (SMOOTHGRAD_SPREAD * (flat.amax(1) - flat.amin(1))).view(-1, 1, 1, 1)
        total = None
        for s in range(n_copies):
            eps = torch.stack([torch.randn(images.shape[1:],
                                           generator=self._generator(i, "startgrad_smoothgrad",
                                                                     s))
                               for i in ids]).to(images.device)
            noisy = images + sd * eps
            grads = self._coefficient_gradients(
                replace(state, images=noisy, coeffs=self.coefficients(state, noisy)), target)
            grads = [g.abs() for g in grads]
            total = grads if total is None else [t + g for t, g in zip(total, grads)]
        return [t / n_copies for t in total]

    def startgrad_shapes(self, state: State) -> list[tuple]:
        """The StartGrad mask's shape per part (the same as every init's, unless a compat
        option makes the baselines smaller: ShearletX ``compat: startgrad``)."""
        return self.mask_shapes(state)
