"""Integrated Gradients (Sundararajan et al. 2017), `attribution-methods.md` §5.

φ = (x̃ − x̃′) ⊙ Σ_j w_j ∇f(x̃′ + α_j (x̃ − x̃′)) with a Riemann rule over ``steps`` segments.
Diagnostics: ``completeness_gap`` = Σφ − (f(x̃) − f(x̃′)) per image.
"""
import torch

from ...params import Param
from ..base import OBJECTIVE_PARAM, Attribution, Method, register_method
from ..baselines import BASELINES, make_baseline
from ..paths import RULES, riemann, straight_path_gradient


@register_method
class IntegratedGradients(Method):
    name = "integrated_gradients"
    params = {
        "steps": Param(128, int, min=1, doc="number of path segments m"),
        "rule": Param("right", str, RULES, doc="Riemann rule"),
        "baseline": Param("black", (str, torch.Tensor), BASELINES, doc="baseline x̃′"),
        "blur_sigma": Param(10.0, float, min=0.0, doc="σ (pixels) of the 'blurred' baseline"),
        "objective": OBJECTIVE_PARAM,
    }

    def attribute(self, images, target, image_ids=None):
        p = self.hparams
        base = make_baseline(p["baseline"], images, self.model, seed_parts=self.seed_parts,
                             image_ids=image_ids, blur_sigma=p["blur_sigma"])
        alphas, weights = riemann(p["rule"], p["steps"])
        path_grad, f_path = straight_path_gradient(self, images, base, target, alphas, weights)
        maps = (images - base) * path_grad
        # f at the path ends, from the path evaluations when the rule includes them
        f_b = f_path[:, 0] if alphas[0] == 0 else self.outputs(base, target)
        f_x = f_path[:, -1] if alphas[-1] == 1 else self.outputs(images, target)
        gap = maps.flatten(1).sum(1) - (f_x - f_b)
        return Attribution(maps, {"completeness_gap": gap, "f_input": f_x, "f_baseline": f_b})
