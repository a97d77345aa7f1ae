"""Multi-reference path estimators: the shared kernel of IG-Uniform, IG-SG, IG-SQ and Expected
Gradients, with attribution re-calibration.

Sources: Sturmfels, Lundberg, Lee, *Visualizing the Impact of Feature Attribution Baselines*,
Distill 2020 (IG-Uniform, noisy baselines); Erion et al., *Improving performance of deep
learning models with axiomatic attribution priors and expected gradients* (Expected Gradients);
Hooker et al., *A Benchmark for Interpretability Methods in Deep Neural Networks*, NeurIPS 2019
(the squared estimator of IG-SQ); Yang, Akhtar, Wen, Shah, Mian, *Re-calibrating Feature
Attributions for Model Interpretation*, ICLR 2023, with its code
``ypeiyu/attribution_recalibration`` @5b745d4 (``saliency_methods/IG_SG.py``: ``IntGradSG``,
inherited by ``IG_Uniform.py``, ``IG_SQ.py`` and ``expected_grad.py``; read, not copied), and
``ypeiyu/LPI`` @6ff4785 (``saliency_methods/expected_grad.py``) for ``compat="ypeiyu_lpi"``.

The estimator, per image x̃ (pixel space):

- references r_b, b = 1..B (``samples``), and coefficients α_{b,j}, j = 1..k (``steps``);
- points p_{b,j} = α_{b,j} x̃ + (1 − α_{b,j}) r_b, gradients g_{b,j} = ∇f(p_{b,j}), mean
  gradient ḡ_b = (1/k) Σ_j g_{b,j};
- ``recalibrate="none"``: φ = (1/B) Σ_b (x̃ − r_b) ⊙ ḡ_b (IG-SQ: (1/B) Σ_b ((x̃ − r_b) ⊙ ḡ_b)²,
  squaring each reference's attribution as SmoothGrad-squared squares each sample);
- ``valid_ref``: m_b = (x̃ − r_b) ⊙ ḡ_b,
  φ_i = Σ_b m_{b,i}·1[m_{b,i} ≥ 0] / max(1, #{b : m_{b,i} ≥ 0});
- ``valid_ip`` (the re-calibration paper's default estimator, ``utils/settings.py``
  ``est_method='valid_ip'``): every point is a reference, m_{b,j} = (x̃ − p_{b,j}) ⊙ g_{b,j} / k
  = (1 − α_{b,j})(x̃ − r_b) ⊙ g_{b,j} / k and φ is their valid mean over (b, j).

IG-SQ's re-calibrated forms square the kept products (the count is unchanged). Re-calibrated
maps are ≥ 0; a product of exactly 0 (the point α = 1 is x̃ itself) counts as valid.

Coefficients (``alphas``): ``linspace`` (j/(k−1), both ends; k = 1 gives α = 1, as the
reference code), ``uniform`` (U(0, 1) i.i.d. per (b, j), Expected Gradients' default), or a
tensor (k,), (B, k) or (N, B, k). References: the method's own draw, or ``references`` given as
a pool (R, C, H, W) from which B are drawn per image without replacement, or (N, B, C, H, W)
used in order (N = the batch).

Evaluation: the N·B·k points of a batch are flattened in (image, reference, step) order and
evaluated in chunks sized by the memory budget (:meth:`~xaipipe.explain.base.Method.chunk_size`),
across references and images: never one forward per reference. Estimators stream: ``valid_ip``
feeds each chunk's products to a :class:`~.recalibration.ValidMean`; the others sum each
reference's gradients until its k points are done (a reference whose points straddle two chunks
carries its partial sum over), then fold it into the map. No estimator holds all B·k products of
an image; references are drawn once per image and dropped when its points are done.

Randomness: every reference and coefficient draw is seeded by (seed, image id, method,
hyper-parameters, what is drawn, reference slot) on the CPU, so maps do not depend on batching,
chunking or device.

``compat="ypeiyu"`` (``IntGradSG._get_samples_input`` / ``_get_grads``): the k·B samples of an
image are indexed s = 0..kB−1; sample s interpolates toward reference s mod B with α index
s mod k, and the gradients of samples g·k … g·k + k − 1 are grouped as "reference g". So point
(g, j) uses reference (g·k + j) mod B and α_{g,j}; ``none``/``valid_ref`` multiply x̃ − r_g by
the mean gradient of points on other references' paths; with k = 5, B = 10 and ``linspace``
only 10 distinct points exist (reference r at α = (r mod 5)/4), each evaluated 5 times.
``valid_ip`` stays consistent (each point with its own displacement) on that degenerate set
(and when B and k are coprime and every reference has the same α grid, the set is not
degenerate: every (reference, α) pair is visited once, so ``valid_ip`` equals the clean one).
The method files add their own quirks (IG-SG/IG-SQ batch mixing and batch-level σ, IG-SQ's
squared mean gradient) and the class-contrastive objective of that code
(``contrast_ypeiyu`` in :mod:`xaipipe.maths.objectives`: weights not detached).
``compat="ypeiyu_lpi"`` (Expected Gradients only: ``ypeiyu/LPI`` has no IG-Uniform, IG-SG or
IG-SQ) is the same pairing; that code explains the logit only, so ``contrast`` stays clean.

Weights: a method may weight its references (:meth:`MultiReferenceMethod.reference_weights`,
LPI's density ρ_b): the vanilla map is then Σ_b ρ_b (x̃ − r_b) ⊙ ḡ_b and the valid means are
weighted by each product's reference (:class:`~.recalibration.ValidMean`); without weights the
code path and its numbers are those above.

Diagnostics per image (``Attribution.extras``):

- ``completeness_gap`` = Σφ − (f(x̃) − (1/B) Σ_b f(r_b)), ``f_input``, ``f_references`` (the
  mean over b of f(r_b)): for the vanilla estimator of IG-Uniform, IG-SG and EG with
  ``linspace`` coefficients (k ≥ 2) and the clean pairing, where both path ends are evaluated
  points and the values cost nothing (with random α, B extra forward passes per image would be
  needed; squared maps have no completeness);
- ``valid_fraction``: for re-calibrated maps, the share of products (feature × reference or
  point) that were kept.
"""
from __future__ import annotations

import torch

from ...errors import ConfigError
from ...maths.objectives import objective_for
from ...params import Param
from ...utils import generator
from ..base import OBJECTIVE_PARAM, Attribution, Method
from .recalibration import RECALIBRATIONS, ValidMean

ALPHAS = ("linspace", "uniform")


class ReferencePool:
    """A pool of references read on demand (a training split that does not fit in memory):
    ``shape`` (R, C, H, W) and ``take(rows)`` -> the images of ``rows`` (a long tensor) as a
    float tensor (len(rows), C, H, W) in [0, 1]. Where ``references`` is a pool it may be one
    of these instead of a tensor (the workflow gives Expected Gradients the training split of
    the model's image store this way); only the B rows an image draws are read."""

    ndim = 4

    @property
    def shape(self) -> tuple:
        raise NotImplementedError

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


REFERENCE_TYPES = (torch.Tensor, ReferencePool, type(None))


def multiref_params(alphas: str = "linspace", compats=(None, "ypeiyu"),
                    references_doc: str = "") -> dict:
    """The declared parameters every multi-reference method shares (``alphas``: its default
    coefficients; ``compats``: the compat profiles it offers)."""
    return {
        "samples": Param(10, int, min=1, doc="number of references B per image"),
        "steps": Param(5, int, min=1, doc="points k on each reference's path"),
        "recalibrate": Param("valid_ip", str, RECALIBRATIONS,
                             doc="estimator: none (the method's own), valid_ref or valid_ip "
                                 "(attribution re-calibration, ICLR 2023; its default)"),
        "alphas": Param(alphas, (str, torch.Tensor), ALPHAS,
                        doc="path coefficients: linspace (j/(k-1), both ends), uniform "
                            "(U(0, 1) per reference and step), or a tensor (k,), (B, k) or "
                            "(N, B, k)"),
        "references": Param(None, REFERENCE_TYPES,
                            doc=references_doc or "references: None (the method's own draw), "
                            "a pool (R, C, H, W) drawn from per image without replacement, or "
                            "(N, B, C, H, W) used in order (Python only)"),
        "objective": OBJECTIVE_PARAM,
        "compat": Param(None, (str, type(None)), tuple(compats),
                        doc="ypeiyu: the reference code's sample pairing and its method "
                            "quirks (see the method's docstring)"),
    }


def linspace_alphas(k: int) -> torch.Tensor:
    """j/(k−1), j = 0..k−1, in float64; k = 1 gives [1.0], as ``IntGradSG._get_samples_input``
    (``ypeiyu/attribution_recalibration``)."""
    if k == 1:
        return torch.ones(1, dtype=torch.float64)
    return torch.linspace(0, 1, k, dtype=torch.float64)


def reference_slots(samples: int, steps: int, compat: str | None) -> torch.Tensor:
    """(B, k) long: the reference whose path point (g, j) lies on. Clean: g. ``ypeiyu`` /
    ``ypeiyu_lpi``: (g·k + j) mod B, the reference code's sample index s = g·k + j taken
    modulo B (``IntGradSG._get_samples_input``: ``reference_tensor.repeat(1, k, ...)``)."""
    g = torch.arange(samples).view(-1, 1).expand(samples, steps)
    if compat is None:
        return g.clone()
    j = torch.arange(steps).view(1, -1)
    return (g * steps + j) % samples


class MultiReferenceMethod(Method):
    """Base of the multi-reference path methods (not registered itself): subclasses set
    ``name`` and ``params`` (:func:`multiref_params`) and implement :meth:`draw_references`;
    IG-SQ sets ``squared``. See the module docstring for the estimators."""

    #: square each reference's attribution (IG-SQ)
    squared: bool = False
    #: the interval of ``alphas="uniform"`` (LPI: (0.01, 0.99))
    alpha_range: tuple = (0.0, 1.0)
    #: where the workflow finds references for a config (which cannot hold a tensor):
    #: None (the method draws its own), ``"train"`` (the training split of the model's image
    #: store, as a :class:`ReferencePool`) or ``"lpi"`` (the LPI reference store of the model)
    needs_references: str | None = None

    # -- parameters ------------------------------------------------------------------------
    @classmethod
    def validate(cls, values, where):
        b, k = values["samples"], values["steps"]
        a = values["alphas"]
        if isinstance(a, torch.Tensor):
            if a.ndim not in (1, 2, 3) or a.shape[-1] != k or \
                    (a.ndim >= 2 and a.shape[-2] != b):
                raise ConfigError(
                    f"{where}.alphas: a tensor of shape (k,), (B, k) or (N, B, k) with k = "
                    f"steps = {k} and B = samples = {b} was expected, got shape "
                    f"{tuple(a.shape)}")
            if not a.is_floating_point() or not bool(torch.isfinite(a).all()):
                raise ConfigError(f"{where}.alphas: the coefficients must be finite floats")
        r = values["references"]
        if r is not None:
            if r.ndim == 4:
                if r.shape[0] < b:
                    raise ConfigError(
                        f"{where}.references: a pool of {r.shape[0]} images cannot give "
                        f"samples = {b} references drawn without replacement")
            elif r.ndim == 5:
                if r.shape[1] != b:
                    raise ConfigError(
                        f"{where}.references: (N, B, C, H, W) with B = samples = {b} was "
                        f"expected, got shape {tuple(r.shape)}")
            else:
                raise ConfigError(
                    f"{where}.references: a pool (R, C, H, W) or per-image references "
                    f"(N, B, C, H, W) was expected, got shape {tuple(r.shape)}")
        return values

    @property
    def objective_name(self) -> str:
        return objective_for(self.hparams.objective, self.hparams.compat)

    def seed_parts(self, image_id: int, *extra) -> tuple:
        """As :meth:`Method.seed_parts` without ``recalibrate``, ``objective`` and ``compat``:
        how the draws are used does not change them, so the vanilla, re-calibrated and compat
        maps of an image share their references and coefficients (paired comparisons)."""
        seed, iid, name, hp, *rest = super().seed_parts(image_id, *extra)
        hp = {k: v for k, v in hp.items() if k not in ("recalibrate", "objective", "compat")
              and not isinstance(v, ReferencePool)}
        return (seed, iid, name, hp, *rest)

    def begin(self, images: torch.Tensor, image_ids: torch.Tensor) -> None:
        """Called once per batch before any reference is drawn (batch-level compat state)."""

    # -- references and coefficients -------------------------------------------------------
    def draw_references(self, images: torch.Tensor, image_ids: torch.Tensor,
                        i: int) -> torch.Tensor:
        """The method's own B references (B, C, H, W) of image ``i`` of the batch, when no
        ``references`` are given."""
        raise NotImplementedError

    def reference_stack(self, images: torch.Tensor, image_ids: torch.Tensor,
                        i: int) -> torch.Tensor:
        """The B references (B, C, H, W) of image ``i`` of the batch, on the images' device:
        from ``references`` when given (a pool: B drawn without replacement, seeded per image;
        per image: row ``i``), else :meth:`draw_references`."""
        p = self.hparams
        ref = p.references
        if ref is None:
            out = self.draw_references(images, image_ids, i)
        else:
            if tuple(ref.shape[-3:]) != tuple(images.shape[1:]):
                raise ValueError(f"method {self.name!r}: references have images of shape "
                                 f"{tuple(ref.shape[-3:])}, the inputs "
                                 f"{tuple(images.shape[1:])}")
            if isinstance(ref, ReferencePool):
                out = ref.take(self.pool_indices(int(image_ids[i]), ref.shape[0]))
            elif ref.ndim == 4:
                idx = self.pool_indices(int(image_ids[i]), ref.shape[0])
                out = ref[idx.to(ref.device)]
            else:
                if ref.shape[0] != images.shape[0]:
                    raise ValueError(f"method {self.name!r}: references hold {ref.shape[0]} "
                                     f"images' references for a batch of {images.shape[0]}")
                out = ref[i]
        return out.to(images.device, images.dtype)

    def references(self, images: torch.Tensor, image_ids) -> torch.Tensor:
        """All references (N, B, C, H, W) of a batch as :meth:`attribute` uses them (prepared
        inputs: ``image_ids`` as :meth:`~xaipipe.explain.base.Method.run` completes them). For
        inspection and tests: the estimator itself holds only the images of a chunk."""
        image_ids = torch.as_tensor(image_ids).reshape(-1)
        self.begin(images, image_ids)
        return torch.stack([self.reference_stack(images, image_ids, i)
                            for i in range(images.shape[0])])

    def pool_indices(self, image_id: int, pool_size: int) -> torch.Tensor:
        """The B pool rows (without replacement) an image draws its references from."""
        g = generator(*self.seed_parts(image_id, "pool", pool_size))
        return torch.randperm(pool_size, generator=g)[:self.hparams.samples]

    def alpha_grid(self, images: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
        """(N, B, k) coefficients α_{i,b,j}, in the images' dtype and device."""
        p = self.hparams
        n, b, k = images.shape[0], p.samples, p.steps
        a = p.alphas
        if isinstance(a, torch.Tensor):
            if a.ndim == 3 and a.shape[0] != n:
                raise ValueError(f"method {self.name!r}: alphas hold {a.shape[0]} images' "
                                 f"coefficients for a batch of {n}")
            out = a.to(torch.float64).expand(n, b, k) if a.ndim < 3 else a.to(torch.float64)
        elif a == "linspace":
            out = linspace_alphas(k).expand(n, b, k)
        else:
            out = torch.stack([torch.rand((b, k), dtype=torch.float64, generator=generator(
                *self.seed_parts(int(image_ids[i]), "alphas"))) for i in range(n)])
            lo, hi = self.alpha_range
            if (lo, hi) != (0.0, 1.0):
                out = lo + (hi - lo) * out
        return out.to(images.device, images.dtype)

    def reference_weights(self, images: torch.Tensor,
                          image_ids: torch.Tensor) -> torch.Tensor | None:
        """(N, B) float64 weights of each image's references in the estimator (LPI: the
        density ρ), or None: equal weights 1/B (the vanilla mean and the unweighted valid
        mean). Called after :meth:`begin`."""
        return None

    def reports_gap(self) -> bool:
        """Whether the completeness gap comes for free: vanilla, not squared, ``linspace``
        with k ≥ 2 and the clean pairing (every path's ends are evaluated points)."""
        p = self.hparams
        return (p.recalibrate == "none" and not self.squared and p.compat is None
                and isinstance(p.alphas, str) and p.alphas == "linspace" and p.steps >= 2)

    def group_term(self, x: torch.Tensor, r: torch.Tensor, gbar: torch.Tensor) -> torch.Tensor:
        """A reference's contribution to the vanilla sum (before 1/B) from its displacement
        x̃ − r and mean gradient ḡ: (x̃ − r) ⊙ ḡ, squared for IG-SQ. IG-SQ's compat overrides."""
        m = (x - r) * gbar
        return m * m if self.squared else m

    # -- the estimator ---------------------------------------------------------------------
    def attribute(self, images, target, image_ids=None):
        p = self.hparams
        n, shape = images.shape[0], images.shape[1:]
        big_b, k = p.samples, p.steps
        dev = images.device
        alphas = self.alpha_grid(images, image_ids)
        slots = reference_slots(big_b, k, p.compat).to(dev)
        mode = p.recalibrate
        self.begin(images, image_ids)
        weights = self.reference_weights(images, image_ids)
        if weights is not None:
            weights = weights.to(dev, torch.float64)
        valid = ValidMean(n, shape, dev, square=self.squared, weighted=weights is not None) \
            if mode != "none" else None
        acc = torch.zeros((n, *shape), device=dev, dtype=torch.float64) \
            if mode == "none" else None
        gap = self.reports_gap()
        f_ref = torch.zeros(n, device=dev, dtype=torch.float64)
        f_x = torch.zeros(n, device=dev, dtype=torch.float64)

        cache: dict[int, torch.Tensor] = {}

        def window(i0: int, i1: int) -> torch.Tensor:
            """References of images i0..i1 as one (…·B, C, H, W) tensor; earlier ones dropped."""
            for i in [i for i in cache if i < i0]:
                del cache[i]
            for i in range(i0, i1 + 1):
                if i not in cache:
                    cache[i] = self.reference_stack(images, image_ids, i)
            return torch.cat([cache[i] for i in range(i0, i1 + 1)]) if i1 > i0 else cache[i0]

        per_image = big_b * k
        total = n * per_image
        chunk = self.chunk_size(shape, dev)
        carry = None                          # (group, partial gradient sum) across chunks
        for s in range(0, total, chunk):
            e = min(total, s + chunk)
            q = torch.arange(s, e, device=dev)
            img, grp, j = q // per_image, (q // k) % big_b, q % k
            i0, i1 = s // per_image, (e - 1) // per_image
            refs = window(i0, i1)
            r_pt = refs[(img - i0) * big_b + slots[grp, j]]
            a = alphas[img, grp, j].view(-1, 1, 1, 1)
            x = images[img]
            pts = a * x + (1 - a) * r_pt      # exact x̃ at α = 1, exact r at α = 0
            grads, f = self.gradient(pts, target[img])
            if gap:
                at0, at1 = j == 0, (j == k - 1) & (grp == 0)
                f0 = f[at0].double()
                if weights is not None:
                    f0 = f0 * weights[img[at0], grp[at0]]
                f_ref.index_add_(0, img[at0], f0)
                f_x[img[at1]] = f[at1].double()
            if mode == "valid_ip":
                valid.feed(img, (1 - a) * (x - r_pt) * grads / k,
                           None if weights is None else weights[img, slots[grp, j]])
                continue
            # per-reference gradient sums; groups (image, reference) are contiguous in q
            g0, g1 = s // k, (e - 1) // k
            sums = torch.zeros((g1 - g0 + 1, *shape), device=dev, dtype=grads.dtype)
            if carry is not None and carry[0] == g0:
                sums[0] = carry[1]
            sums.index_add_(0, q // k - g0, grads)
            done = g1 - g0 + 1 if (g1 + 1) * k <= e else g1 - g0
            carry = None if done == g1 - g0 + 1 else (g1, sums[-1])
            if done == 0:
                continue
            grp_ids = torch.arange(g0, g0 + done, device=dev)
            gi, gb = grp_ids // big_b, grp_ids % big_b
            r_g = refs[(gi - i0) * big_b + gb]
            gbar = sums[:done] / k
            w_g = None if weights is None else weights[gi, gb]
            if mode == "valid_ref":
                valid.feed(gi, (images[gi] - r_g) * gbar, w_g)
            elif w_g is None:
                acc.index_add_(0, gi, self.group_term(images[gi], r_g, gbar).double())
            else:
                acc.index_add_(0, gi, self.group_term(images[gi], r_g, gbar).double()
                               * w_g.view(-1, *[1] * len(shape)))

        extras = {}
        if mode == "none":
            maps = (acc / big_b if weights is None else acc).to(images.dtype)
            if gap:
                f_r = f_ref / big_b if weights is None else f_ref
                extras = {"completeness_gap": (maps.flatten(1).double().sum(1)
                                               - (f_x - f_r)).float(),
                          "f_input": f_x.float(), "f_references": f_r.float()}
        else:
            maps = valid.result().to(images.dtype)
            products = shape.numel() * big_b * (k if mode == "valid_ip" else 1)
            extras = {"valid_fraction": (valid.counts.flatten(1).sum(1).double()
                                         / products).float()}
        return Attribution(maps, extras)
