"""Path-integral machinery shared by the IG family (Sundararajan, Taly, Yan, ICML 2017).

A straight path from baseline x' to input x is sampled at coefficients α_j with quadrature
weights w_j (the Riemann rule, :func:`riemann`); the path gradient is
Σ_j w_j ∇f(x' + α_j (x − x')). :func:`evaluate_path` flattens all (image, point) pairs and
evaluates them in chunks that fit the memory budget, so the number of steps never changes peak
memory, and serves every step count of a nested sweep from one evaluation.
"""
from __future__ import annotations

import torch

RULES = ("left", "right", "trapezoid", "middle", "pair_mean", "gausslegendre")
#: rules whose points are not on the j/m grid: no nested sweeps
OFF_GRID = ("middle", "gausslegendre")


def riemann(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(alphas, weights) of a rule over ``steps`` segments of [0, 1] (float64).

    - ``left`` / ``right`` / ``middle``: one point per segment at its start / end / middle
    - ``trapezoid``: the steps+1 grid points, end weights halved
    - ``pair_mean``: the mean over the steps+1 grid points (PAIR ``IntegratedGradients``)
    - ``gausslegendre``: ``steps`` Gauss–Legendre nodes mapped to [0, 1] with their weights
      (Captum's default ``method``; exact for polynomial path gradients of degree < 2·steps)
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
    if rule == "gausslegendre":
        import numpy as np
        x, w = np.polynomial.legendre.leggauss(m)
        return torch.from_numpy((x + 1) / 2), torch.from_numpy(w / 2)
    raise ValueError(f"unknown rule {rule!r}; allowed: {', '.join(RULES)}")


# -- one path evaluation, several step counts (the TMLR study's sweeps, ShreeSinghi/TMLR-IDGI) --

class Grid:
    """One sub-path of an evaluated path: its point indices ``idx`` (baseline → input order,
    into the evaluated points 0 … K−1), the coefficient of each point in the method's own
    Riemann sum (``coef``: point index -> float; points without an entry do not contribute),
    and whether IDGI is taken over it and with which gradient end (``idgi``: None,
    ``"baseline_side"`` or ``"input_side"``)."""

    def __init__(self, idx, coef=None, idgi=None):
        self.idx = [int(j) for j in idx]
        self.coef = {} if coef is None else {int(j): float(c) for j, c in coef.items() if c}
        self.idgi = idgi
        self.pos = {j: k for k, j in enumerate(self.idx)}

    def needs_grad(self, j: int) -> bool:
        if j in self.coef:
            return True
        if self.idgi == "baseline_side":
            return j in self.pos and self.pos[j] < len(self.idx) - 1
        if self.idgi == "input_side":
            return j in self.pos and self.pos[j] > 0
        return False


def nested_grids(steps, m: int | None = None) -> tuple[int, dict[int, int]]:
    """(M, {n: stride}) for step counts that all divide M = max(steps) (or the given ``m``);
    raises ValueError naming the first count that does not (it has no sub-grid)."""
    steps = sorted({int(n) for n in steps})
    if not steps or steps[0] < 1:
        raise ValueError(f"steps must be positive integers, got {steps}")
    m = steps[-1] if m is None else int(m)
    bad = [n for n in steps if m % n]
    if bad:
        raise ValueError(f"steps {bad} do not divide {m}: a sweep needs nested grids "
                         f"(e.g. 8, 16, 32, 64, 128)")
    return m, {n: m // n for n in steps}


def evaluate_path(method, images: torch.Tensor, target: torch.Tensor, n_points: int,
                  make_points, grids: dict, grad_space: str = "pixel",
                  idgi_space: str = "pixel", directions=None, valid_directions=None,
                  sums: bool = True):
    """Evaluate one path per image and accumulate every grid's sums in a single pass.

    ``make_points(img_idx, pt_idx) -> (P, C, H, W)`` builds path points (baseline → input
    order; point 0 is the baseline end). Each point is evaluated once, with a gradient if some
    grid needs one there (a forward pass otherwise), in chunks that fit the memory budget, in
    increasing point order per image. For each grid: ``acc`` = Σ_j coef_j · dir_j ⊙ g_j (dir_j
    = ``directions(img_idx, pt_idx)`` or 1), and IDGI when asked. The gradients fed to IDGI
    are in ``idgi_space`` (``normalized``: σ_c · ∇_pixel f); those of the Riemann sums in
    ``grad_space``.

    ``valid_directions(img_idx, pt_idx)``, when given, also feeds every grid's products
    coef_j · vdir_j ⊙ g_j to a :class:`~.recalibration.ValidMean` (attribution
    re-calibration, Yang et al., ICLR 2023: ``valid`` = the mean of the products ≥ 0 per
    feature); ``acc`` is unchanged by it. ``sums=False`` skips ``acc`` (None: where only the
    valid mean is wanted).

    The operations an image's sums go through depend only on its own points, so a grid's sums
    are the same whether it is evaluated alone or inside a sweep (up to the last bits that the
    backend's kernels may change with the chunk's composition).

    Returns {key: dict(acc, idgi, idgi_skipped, f)} with ``f`` (N, len(idx)) the outputs at the
    grid's points (and ``valid``, the ValidMean, with ``valid_directions``)."""
    from .idgi import IDGIAccumulator
    from .recalibration import ValidMean

    n, shape = images.shape[0], images.shape[1:]
    device, dtype = images.device, images.dtype
    used = sorted({j for g in grids.values() for j in g.idx})
    grad_at = {j for j in used if any(g.needs_grad(j) for g in grids.values())}
    state = {}
    for key, g in grids.items():
        state[key] = {
            "acc": torch.zeros_like(images) if g.coef and sums else None,
            "idgi": (IDGIAccumulator(n, shape, len(g.idx) - 1, device, dtype, g.idgi)
                     if g.idgi else None),
            "f": torch.empty((n, len(g.idx)), device=device, dtype=torch.float64),
            "valid": (ValidMean(n, shape, device)
                      if valid_directions is not None and g.coef else None)}
    std = None
    if "normalized" in (grad_space, idgi_space):
        std = getattr(getattr(method.model, "normalize", None), "std", None)
        if std is None:
            raise ValueError("gradients in the normalized space need a model with a "
                             "Normalize first module")
    pairs = [(i, j) for i in range(n) for j in used]
    chunk = method.chunk_size(shape, device)
    for s in range(0, len(pairs), chunk):
        part = pairs[s:s + chunk]
        img_i = torch.tensor([p[0] for p in part], device=device)
        pt_i = torch.tensor([p[1] for p in part], device=device)
        pts = make_points(img_i, pt_i)
        needs = torch.tensor([p[1] in grad_at for p in part], device=device)
        grads = torch.zeros_like(pts)
        outs = torch.empty(len(part), device=device, dtype=dtype)
        if bool(needs.any()):
            sel = needs.nonzero().flatten()
            g, f = method.gradient(pts[sel], target[img_i[sel]], "pixel")
            grads[sel], outs[sel] = g, f.to(dtype)
        if not bool(needs.all()):
            sel = (~needs).nonzero().flatten()
            outs[sel] = method.outputs(pts[sel], target[img_i[sel]]).to(dtype)
        dirs = directions(img_i, pt_i) if directions is not None else None
        if valid_directions is not None:           # one feed per grid and chunk
            vdirs = valid_directions(img_i, pt_i)
            gv = grads * std.view(1, -1, 1, 1) if grad_space == "normalized" else grads
            for key, g in grids.items():
                if state[key]["valid"] is None:
                    continue
                sel = [k for k, (_, j) in enumerate(part) if j in g.coef]
                if not sel:
                    continue
                coef = torch.tensor([g.coef[part[k][1]] for k in sel], device=device,
                                    dtype=dtype).view(-1, 1, 1, 1)
                sel = torch.tensor(sel, device=device)
                state[key]["valid"].feed(img_i[sel], coef * vdirs[sel] * gv[sel])
        for k, (i, j) in enumerate(part):
            g_pix = grads[k]
            for key, g in grids.items():
                pos = g.pos.get(j)
                if pos is None:
                    continue
                st = state[key]
                st["f"][i, pos] = outs[k].double()
                if j in g.coef and st["acc"] is not None:
                    gg = g_pix * std.view(-1, 1, 1) if grad_space == "normalized" else g_pix
                    term = gg if dirs is None else dirs[k] * gg
                    st["acc"][i] += g.coef[j] * term
                if st["idgi"] is not None:
                    gi = g_pix * std.view(-1, 1, 1) if idgi_space == "normalized" else g_pix
                    st["idgi"].feed(torch.tensor([i]), torch.tensor([pos]), gi[None],
                                    outs[k:k + 1])
    out = {}
    for key, st in state.items():
        res = {"acc": st["acc"], "f": st["f"], "idgi": None, "idgi_skipped": None}
        if st["valid"] is not None:
            res["valid"] = st["valid"]
        if st["idgi"] is not None:
            phi, _, _, skipped = st["idgi"].result()
            res["idgi"], res["idgi_skipped"] = phi, skipped
        out[key] = res
    return out
