"""Blur IG (Xu, Venugopalan, Sundararajan, CVPR 2020; ``PAIR-code/saliency``), with IDGI (Yang,
Wang, Bilgic, CVPR 2023) and step sweeps from one path (as ``ShreeSinghi/TMLR-IDGI``).

The path runs from the fully blurred image G_{σ_max} * x̃ (the baseline end) to x̃ through
Gaussian blurs on the grid σ_i = i·σ_max/m (√ of it with ``sqrt``):

    φ = Σ_{i=0}^{m−1} (σ_{i+1} − σ_i) · (−∂x/∂σ|σ_i) ⊙ ∇f(G_{σ_i} * x̃),
    ∂x/∂σ|σ ≈ (G_{σ+h} * x̃ − G_σ * x̃) / h,  h = ``grad_step``,

the gradient taken at the less blurred end of each interval. With ``idgi=True`` the map is IDGI
over the path points G_{σ_m}, …, G_{σ_0} = x̃ with the gradient at the baseline-side (more
blurred) end of each segment, which costs one extra gradient at the fully blurred image; it is
complete: Σφ = f(x̃) − f(G_{σ_max} * x̃).

Blur: reflect padding, kernel 2·round(4σ)+1 (torchvision ``gaussian_blur``; the radius is
capped at side − 1 so that any σ works on small images). ``compat="pair"``: zero padding with
radius int(4σ + 0.5), as PAIR's ``scipy.ndimage.gaussian_filter(mode="constant")``.
``compat="tmlr"`` (``ShreeSinghi/TMLR-IDGI:blurig.py``): M points σ_0 … σ_{M−1} (the path never
reaches σ_max); the n-step sub-path takes σ indices 0, s, …, (n−1)s with merged intervals
Δσ = σ_{i+s} − σ_i; IDGI over its n−1 segments with the gradient at the less blurred end and
gradients w.r.t. the normalised input.

Sweeps: one path of M = max(steps) intervals serves every n dividing M (σ grid of n = every
(M/n)-th σ of M's). Diagnostics: ``completeness_gap`` = Σφ − (f(x̃) − f(G_{σ_max} * x̃)),
``f_input``, ``f_baseline``.
"""
import math

import torch

from ...maths.imageops import gaussian_blur, gaussian_blur_zero
from ...params import Param
from ..base import OBJECTIVE_PARAM, Attribution, Method, register_method
from .integration import Grid, evaluate_path, nested_grids

COMPATS = (None, "tmlr", "pair")


@register_method
class BlurIG(Method):
    name = "blur_ig"
    params = {
        "steps": Param(128, int, min=1, doc="number of σ intervals m"),
        "max_sigma": Param(50.0, float, min=0.0, doc="σ_max (pixels) of the baseline blur"),
        "grad_step": Param(0.01, float, min=1e-8, doc="h of the finite difference ∂x/∂σ"),
        "sqrt": Param(False, bool, doc="σ_i = sqrt(i·σ_max/m)"),
        "objective": OBJECTIVE_PARAM,
        "idgi": Param(False, bool, doc="IDGI over the blur path instead of the Riemann sum"),
        "idgi_space": Param("pixel", str, ("pixel", "normalized"),
                            doc="space of the gradients IDGI weighs"),
        "compat": Param(None, (str, type(None)), COMPATS,
                        doc="pair: zero-padded scipy blur; tmlr: the TMLR-IDGI sub-paths"),
    }
    sweepable = True

    def attribute(self, images, target, image_ids=None):
        n = self.hparams.steps
        return self.sweep_attribute(images, target, image_ids, [n])[n]

    def sigma(self, i: int, m: int) -> float:
        """σ_i on the grid of m intervals (computed as i·σ_max/m, so nested grids agree)."""
        v = float(i) * self.hparams.max_sigma / float(m)
        return math.sqrt(v) if self.hparams.sqrt else v

    def blur(self, images, sigma):
        if self.hparams.compat == "pair":
            return gaussian_blur_zero(images, sigma)
        return gaussian_blur(images, sigma)

    def sweep_attribute(self, images, target, image_ids, steps):
        p = self.hparams
        tmlr = p.compat == "tmlr"
        m, strides = nested_grids(steps)
        h = p.grad_step
        n_pts = m if tmlr else m + 1
        # point j (baseline -> input order) is σ index i = last - j
        last = n_pts - 1
        sig = [self.sigma(last - j, m) for j in range(n_pts)]
        grids = {}
        for n, s in strides.items():
            i_sub = list(range(0, m, s)) if tmlr else list(range(0, m + 1, s))
            idx = sorted(last - i for i in i_sub)
            coef = {}
            if not p.idgi:
                for i in i_sub:
                    if i < m:   # the interval (σ_i, σ_{i+s}), gradient at σ_i
                        coef[last - i] = self.sigma(i + s, m) - self.sigma(i, m)
            end = ("input_side" if tmlr else "baseline_side") if p.idgi else None
            grids[n] = Grid(idx, coef, end)
        coef_pts = {j for g in grids.values() for j in g.coef}
        stash = {}

        def points(img_i, pt_i):
            pts = torch.empty((len(img_i), *images.shape[1:]), device=images.device,
                              dtype=images.dtype)
            dirs = torch.zeros_like(pts)
            for j in torch.unique(pt_i).tolist():
                sel = (pt_i == j).nonzero().flatten()
                # in float64: the finite difference divides rounding errors by h
                x = images[img_i[sel]].double()
                blurred = self.blur(x, sig[j])
                pts[sel] = blurred.to(images.dtype)
                if j in coef_pts:
                    dirs[sel] = (-(self.blur(x, sig[j] + h) - blurred) / h).to(images.dtype)
            stash["dirs"] = dirs
            return pts

        res = evaluate_path(self, images, target, n_pts, points, grids,
                            idgi_space="normalized" if tmlr else p.idgi_space,
                            directions=lambda img_i, pt_i: stash["dirs"])
        f_b = None
        out = {}
        for n, g in grids.items():
            r = res[n]
            maps = r["idgi"] if p.idgi else r["acc"]
            f_x = r["f"][:, -1]                               # σ = 0: the input itself
            if f_b is None:
                f_b = (r["f"][:, 0] if not tmlr else
                       self.outputs(self.blur(images, self.sigma(m, m)), target).double())
            gap = maps.flatten(1).double().sum(1) - (f_x - f_b)
            out[n] = Attribution(maps, {"completeness_gap": gap.float(),
                                        "f_input": f_x.float(), "f_baseline": f_b.float()})
        return out
