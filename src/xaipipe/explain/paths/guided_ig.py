"""Guided Integrated Gradients (Kapishnikov et al., CVPR 2021), with IDGI (Yang, Wang, Bilgic,
CVPR 2023). The algorithm follows the prose of PAIR's ``saliency/core/guided_ig.py``.

Guided IG walks from the baseline x̃′ to x̃ in S steps. At each step it takes the gradient g
once at the current point x_c, then moves the features with the smallest |g| (the
``fraction``-quantile, method ``lower``, over all C·H·W values of the image; features already at
their step target get |g| = +∞) towards that target until the L1 distance to x̃ has shrunk to
L1_total·(1 − (s+1)/S), keeping every feature within ``max_dist`` (relative) of the straight
line. Each move adds (x_new − x_old) ⊙ g to φ. The path ends exactly at x̃.

As PAIR, the path lives in float64 (exact ``x == x_max`` tests; a step ends when the L1
distance matches its target within 1e-9, relative and absolute). The model sees each step's
point in its own precision (:func:`eval_dtype`): rounded to float32 for a float32 model, the
float64 point itself for a float64 model, as PAIR's ``call_model_function`` receives it (a
float32 cast there would move the point by up to 2⁻²⁴ relative before the gradient is taken).
The S gradient evaluations are sequential per image; all images of a batch (as many as the
memory budget allows per forward/backward) take each step together.

Precision. The step is PAIR's: with a float64 model and float64 inputs (``attribute``) the
maps, plain and IDGI, equal those of PAIR ``GuidedIG`` to ~1e-15 of max |φ| (demo ResNet, its
SiLU variant, a linear model; S ≤ 128, ``fraction``/``max_dist`` 0.5/1 and 0.25/0.02). The
selection at the |g| quantile is discontinuous in g, though, and in float32 it amplifies
last-bit differences of the gradient, such as the backend's convolution kernels give for
another batch composition or memory layout: at S = 128, ``fraction`` 0.5, ``max_dist`` 1 on
64x64 images of the random demo ResNet, an image's map computed in a chunk of 4 and alone
differ by up to 0.7 of max |φ| (1.0 on the SiLU variant; ~1e-6 at S = 32). Computed alone
(``max_batch=1``; PAIR's callback gets one image) the float32 maps equal PAIR's to float32
rounding (≤ 6e-8 of max |φ| on both models at 16–64 px, S = 32 and 128, both settings).

``idgi=True``: IDGI over the points x_c(0), …, x_c(S−1), x̃ with each step's own gradient
(baseline side) and one extra forward at x̃: Σφ = f(x̃) − f(x̃′) exactly.
``compat="tmlr"`` (``ShreeSinghi/TMLR-IDGI:gig.py``): gradients w.r.t. the normalised input
(path and displacements in pixel space), tolerance 1e-7; IDGI skips the last segment (x_c(S−1)
→ x̃), so its gap is f(x̃) − f(x_c(S−1)) and IDGI uses normalised gradients.
Diagnostics: ``completeness_gap`` = Σφ − (f(x̃) − f(x̃′)), ``f_input``, ``f_baseline``.
"""
import math

import torch

from ...params import Param
from ..base import GRAD_SPACE_PARAM, OBJECTIVE_PARAM, Attribution, Method, register_method
from .baselines import BASELINES, make_baseline
from .idgi import IDGIAccumulator

COMPATS = (None, "tmlr")
EPSILON = {None: 1e-9, "tmlr": 1e-7}


def guided_steps(x, x_in, x_base, grad, step, steps, fraction, max_dist, eps):
    """One Guided IG step of K images at once: float64 tensors (K, D) (flattened images),
    ``x`` updated in place; returns the step's attribution Σ (x_new − x_old) ⊙ grad (K, D).

    Per image as PAIR's loop: pull features that fell behind α_min up to the line, stop when
    the L1 distance to x̃ matches the step's target (``math.isclose`` with rel = abs = eps),
    else move the features with |g| at or below the ``fraction``-quantile (method ``lower``)
    and |g| < ∞ (features at x_max get ∞) to x_max, or by the fraction γ of the way there
    when that overshoots (the step ends). Images that are done stay put."""
    total = x_in - x_base
    l1_total = total.abs().sum(1)
    alpha = (step + 1.0) / steps
    a_min, a_max = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
    x_min, x_max = x_base + total * a_min, x_base + total * a_max
    l1_target = l1_total * (1 - (step + 1) / steps)
    g = grad.clone()
    start = x.clone()
    moving = total != 0
    safe_total = torch.where(moving, total, torch.ones_like(total))
    k = int(math.floor((x.shape[1] - 1) * fraction)) + 1      # the 'lower' quantile's rank
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    while True:
        pos = torch.where(moving, (x - x_base) / safe_total, torch.full_like(x, a_max))
        low = (pos < a_min) & active[:, None]
        x.copy_(torch.where(low, x_min, x))
        l1_cur = (x - x_in).abs().sum(1)
        close = (l1_target - l1_cur).abs() <= torch.clamp(
            eps * torch.maximum(l1_target.abs(), l1_cur.abs()), min=eps)
        active &= ~close
        if not bool(active.any()):
            break
        g[x == x_max] = math.inf
        ag = g.abs()
        thr = torch.kthvalue(ag, k, dim=1).values
        sel = (ag <= thr[:, None]) & (g != math.inf) & active[:, None]
        l1_s = ((x - x_max).abs() * sel).sum(1)
        gamma = torch.where(l1_s > 0, (l1_cur - l1_target) / torch.where(l1_s > 0, l1_s, 1.0),
                            torch.full_like(l1_s, math.inf))
        full = gamma > 1.0
        x.copy_(torch.where(sel & full[:, None], x_max, x))
        part = sel & ~full[:, None]
        x.copy_(torch.where(part, x + (x_max - x) * gamma[:, None].clamp(max=1.0), x))
        active &= full
    return (x - start) * grad


def eval_dtype(model, dtype):
    """The dtype the model is given its points in: ``dtype`` (the images') promoted with the
    model's first floating parameter or buffer (float64 for a float64 model; unchanged for a
    float32 one, or for a model without parameters)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return torch.promote_types(dtype, t.dtype)
    return dtype


def guided_step(x, x_in, x_base, grad, step, steps, fraction, max_dist, eps):
    """:func:`guided_steps` for one image of any shape (``x`` updated in place)."""
    flat = x.reshape(1, -1)
    out = guided_steps(flat, x_in.reshape(1, -1), x_base.reshape(1, -1), grad.reshape(1, -1),
                       step, steps, fraction, max_dist, eps)
    x.copy_(flat.view_as(x))
    return out.view_as(x)


@register_method
class GuidedIG(Method):
    name = "guided_ig"
    params = {
        "steps": Param(128, int, min=1, doc="number of steps S"),
        "fraction": Param(0.25, float, min=1e-12, max=1.0,
                          doc="fraction of the features moved at each inner move"),
        "max_dist": Param(0.02, float, min=0.0, max=1.0,
                          doc="largest relative L1 deviation from the straight line"),
        "baseline": Param("black", (str, torch.Tensor), BASELINES, doc="baseline x̃′"),
        "blur_sigma": Param(10.0, float, min=0.0, doc="σ of the 'blurred' baseline"),
        "objective": OBJECTIVE_PARAM,
        "grad_space": GRAD_SPACE_PARAM,
        "idgi": Param(False, bool, doc="IDGI over the Guided IG path"),
        "idgi_space": Param("pixel", str, ("pixel", "normalized"),
                            doc="space of the gradients IDGI weighs"),
        "compat": Param(None, (str, type(None)), COMPATS,
                        doc="tmlr: normalised-space gradients, IDGI without the last segment"),
    }

    def attribute(self, images, target, image_ids=None):
        p = self.hparams
        tmlr = p.compat == "tmlr"
        grad_space = "normalized" if tmlr else p.grad_space
        idgi_space = "normalized" if tmlr else p.idgi_space
        base = make_baseline(p.baseline, images, self.model, seed_parts=self.seed_parts,
                             image_ids=image_ids, blur_sigma=p.blur_sigma)
        n, steps = images.shape[0], p.steps
        maps = torch.zeros_like(images)
        f_b = torch.empty(n, dtype=torch.float64, device=images.device)
        f_in = torch.empty_like(f_b)
        chunk = self.chunk_size(images.shape[1:], images.device)
        point_dtype = eval_dtype(self.model, images.dtype)
        std = self.model.normalize.std.view(-1, 1, 1).double() if idgi_space != grad_space \
            else None
        for s0 in range(0, n, chunk):
            sl = slice(s0, s0 + chunk)
            x_in, x_base = images[sl].double(), base[sl].double()
            x = x_base.clone()
            attr = torch.zeros_like(x)
            k = x.shape[0]
            acc = (IDGIAccumulator(k, images.shape[1:], steps - 1 if tmlr else steps,
                                   images.device, torch.float64) if p.idgi else None)
            for step in range(steps):
                g, f = self.gradient(x.to(point_dtype), target[sl], grad_space)
                g = g.double()
                if step == 0:
                    f_b[sl] = f.double()
                if acc is not None:
                    gi = g if std is None else (g * std if idgi_space == "normalized"
                                                else g / std)
                    acc.feed(torch.arange(k), torch.full((k,), step), gi, f.double())
                flat = x.view(k, -1)
                attr.view(k, -1).add_(guided_steps(
                    flat, x_in.reshape(k, -1), x_base.reshape(k, -1), g.reshape(k, -1), step,
                    steps, p.fraction, p.max_dist, EPSILON[p.compat]))
            f_x = self.outputs(images[sl], target[sl]).double()
            if acc is not None:
                if not tmlr:
                    acc.feed(torch.arange(k), torch.full((k,), steps), None, f_x)
                phi, _, _, _ = acc.result()
                maps[sl] = phi.to(images.dtype)
            else:
                maps[sl] = attr.to(images.dtype)
            f_in[sl] = f_x
        gap = maps.flatten(1).double().sum(1) - (f_in - f_b)
        return Attribution(maps, {"completeness_gap": gap.float(), "f_input": f_in.float(),
                                  "f_baseline": f_b.float()})
