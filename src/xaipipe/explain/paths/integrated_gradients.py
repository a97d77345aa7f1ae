"""Integrated Gradients (Sundararajan, Taly, Yan, ICML 2017), with IDGI (Yang, Wang, Bilgic,
CVPR 2023; ``yangruo1226/IDGI``) and step sweeps from one path (as the TMLR study,
``ShreeSinghi/TMLR-IDGI``).

φ = (x̃ − x̃′) ⊙ Σ_j w_j ∇f(x̃′ + α_j (x̃ − x̃′)) with a Riemann rule over ``steps`` segments.
With ``idgi=True`` the map is IDGI over the m segments α = j/m (whatever ``rule`` says), the
gradient of each segment taken at its baseline-side end; it is complete: Σφ = f(x̃) − f(x̃′).

Step sweeps (:meth:`IntegratedGradients.sweep`): one path of M = max(steps) segments is
evaluated; the n-step result takes the points j = 0, M/n, 2M/n, …, M of it, so every count of a
nested set (8, 16, …, 128) costs nothing beyond the M-step run.

``compat="tmlr"`` (``ShreeSinghi/TMLR-IDGI:ig.py``): M points α_j = j/(M−1); the n-step
sub-path takes the points 0, s, …, (n−1)s (s = M/n), so it stops at α = (n−1)s/(M−1) < 1 for
n < M; IG is the right rule over its n−1 segments and IDGI is taken over the same points with
gradients w.r.t. the normalised input. ``rule`` is ignored there.

``recalibrate`` (Yang, Akhtar, Wen, Shah, Mian, *Re-calibrating Feature Attributions for Model
Interpretation*, ICLR 2023; ``ypeiyu/attribution_recalibration`` @5b745d4, whose own IG class
has no estimator): re-calibrated IG is the paper's ``valid_ip`` estimator with one reference,
the baseline, over IG's own points: each point p_j = x̃′ + α_j (x̃ − x̃′) with a gradient
gives the product m_j = w_j (x̃ − p_j) ⊙ ∇f(p_j) = w_j (1 − α_j)(x̃ − x̃′) ⊙ ∇f(p_j), with w_j
the rule's weight (1/k for the rules with equal weights over k points, the paper's 1/k), and
φ_i = Σ_j m_{j,i}·1[m_{j,i} ≥ 0] / max(1, #{j : m_{j,i} ≥ 0}). ``valid_ref`` with one reference
keeps the IG map where it is ≥ 0 (0 elsewhere). Both are ≥ 0; IDGI has no re-calibrated form
(``idgi`` with ``recalibrate`` is a config error). The parameter is left out of seeds and job
signatures at its default (``none``), so plain IG runs are keyed as before it existed.

Diagnostics per image: ``completeness_gap`` = Σφ − (f(x̃) − f(x̃′)), ``f_input``, ``f_baseline``.
"""
import torch

from ...errors import ConfigError
from ...params import Param
from ..base import OBJECTIVE_PARAM, Attribution, Method, register_method
from .baselines import BASELINES, make_baseline
from .integration import OFF_GRID, RULES, Grid, evaluate_path, nested_grids, riemann
from .recalibration import RECALIBRATIONS

COMPATS = (None, "tmlr")
IDGI_SPACES = ("pixel", "normalized")


@register_method
class IntegratedGradients(Method):
    name = "integrated_gradients"
    params = {
        "steps": Param(128, int, min=1, doc="number of path segments m"),
        "rule": Param("right", str, RULES, doc="Riemann rule"),
        "baseline": Param("black", (str, torch.Tensor), BASELINES, doc="baseline x̃′"),
        "blur_sigma": Param(10.0, float, min=0.0, doc="σ (pixels) of the 'blurred' baseline"),
        "objective": OBJECTIVE_PARAM,
        "idgi": Param(False, bool, doc="IDGI over the path instead of the Riemann sum"),
        "idgi_space": Param("pixel", str, IDGI_SPACES,
                            doc="space of the gradients IDGI weighs (pixel or normalized)"),
        "compat": Param(None, (str, type(None)), COMPATS,
                        doc="tmlr: the TMLR-IDGI code's sub-paths (see module docstring)"),
        "recalibrate": Param("none", str, RECALIBRATIONS, omit_default=True,
                             doc="attribution re-calibration (ICLR 2023): valid_ip averages the "
                                 "products (x̃ − p_j) ⊙ ∇f(p_j) ≥ 0 of the path points per "
                                 "feature, valid_ref keeps the map where ≥ 0"),
    }
    sweepable = True

    @classmethod
    def validate(cls, values, where):
        if values["idgi"] and values["recalibrate"] != "none":
            raise ConfigError(f"{where}.recalibrate: {values['recalibrate']!r} does not apply "
                              "with idgi: true (IDGI has no re-calibrated form); use "
                              "recalibrate: none or idgi: false")
        return values

    @classmethod
    def shares_path(cls, params, steps):
        # the midpoints (Gauss–Legendre nodes) of different grids are different points
        params = cls.check(params)
        if params.rule in OFF_GRID and not params.idgi and params.compat != "tmlr" \
                and len(set(steps)) > 1:
            return False
        return super().shares_path(params, steps)

    def attribute(self, images, target, image_ids=None):
        return self.sweep_attribute(images, target, image_ids, [self.hparams.steps])[
            self.hparams.steps]

    def sweep_attribute(self, images, target, image_ids, steps):
        p = self.hparams
        base = make_baseline(p.baseline, images, self.model, seed_parts=self.seed_parts,
                             image_ids=image_ids, blur_sigma=p.blur_sigma)
        alphas, grids = self._grids(steps)
        a = alphas.to(images.device, images.dtype)
        delta = images - base

        def points(img_i, pt_i):
            return base[img_i] + a[pt_i].view(-1, 1, 1, 1) * delta[img_i]

        valid_directions = None
        if p.recalibrate == "valid_ip":
            def valid_directions(img_i, pt_i):          # x̃ − p_j = (1 − α_j)(x̃ − x̃′)
                return (1 - a[pt_i]).view(-1, 1, 1, 1) * delta[img_i]

        tmlr = p.compat == "tmlr"
        res = evaluate_path(self, images, target, len(alphas), points, grids,
                            idgi_space="normalized" if tmlr else p.idgi_space,
                            valid_directions=valid_directions,
                            sums=p.recalibrate != "valid_ip")
        out, f_x, f_b = {}, None, None
        for n, g in grids.items():
            r = res[n]
            if p.idgi:
                maps = r["idgi"]
            elif p.recalibrate == "valid_ip":
                maps = r["valid"].result().to(images.dtype)
            elif p.recalibrate == "valid_ref":
                maps = (delta * r["acc"]).clamp_min(0)
            else:
                maps = delta * r["acc"]
            if f_b is None:
                f_b = (r["f"][:, 0] if alphas[g.idx[0]] == 0
                       else self.outputs(base, target).double())
            if alphas[g.idx[-1]] == 1:
                fx_n = r["f"][:, -1]
            else:
                f_x = self.outputs(images, target).double() if f_x is None else f_x
                fx_n = f_x
            gap = maps.flatten(1).double().sum(1) - (fx_n - f_b)
            out[n] = Attribution(maps, {"completeness_gap": gap.float(),
                                        "f_input": fx_n.float(), "f_baseline": f_b.float()})
        return out

    def _grids(self, steps):
        """(α of the evaluated points, {n: Grid}) for the step counts ``steps``."""
        p = self.hparams
        if p.compat == "tmlr":
            m, strides = nested_grids(steps)
            alphas = torch.arange(m, dtype=torch.float64) / max(m - 1, 1)
            grids = {}
            for n, s in strides.items():
                idx = list(range(0, m, s))
                coef = {} if p.idgi else {j: s / max(m - 1, 1) for j in idx[1:]}
                grids[n] = Grid(idx, coef, "baseline_side" if p.idgi else None)
            return alphas, grids
        if p.rule in OFF_GRID and not p.idgi:
            if len(set(steps)) > 1:
                raise ValueError(f"rule {p.rule!r} has no nested grids (its points are not "
                                 "on the j/m grid); sweep with left, right, trapezoid or "
                                 "pair_mean")
            m = int(steps[0])
            alphas, weights = riemann(p.rule, m)
            return alphas, {m: Grid(range(m), dict(enumerate(weights.tolist())))}
        m, strides = nested_grids(steps)
        alphas = torch.arange(m + 1, dtype=torch.float64) / m
        grids = {}
        for n, s in strides.items():
            idx = list(range(0, m + 1, s))
            if p.idgi:
                grids[n] = Grid(idx, None, "baseline_side")
                continue
            # the rule's own points j/n of the n-grid are the points s·j of the path
            a, w = riemann(p.rule, n)
            grids[n] = Grid(idx, {s * round(float(x) * n): float(v) for x, v in zip(a, w)})
        return alphas, grids
