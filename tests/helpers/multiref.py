"""The multi-reference estimators written out for tests: every gradient of an image at once (no
chunks, no streaming), the pairing by its formula."""
import torch

from xaipipe.maths.objectives import objective


def direct(method, model, x, t, ids):
    """The maps of a multi-reference ``method`` (IG-Uniform, IG-SG, IG-SQ, EG, LPI) computed
    directly: point (g, j) on reference (g·k + j) mod B under compat, g otherwise; references,
    α and the reference weights ρ (LPI's density; 1/B for the others) as the method draws them.
    Vanilla Σ_b ρ_b m_b (IG-SQ: m_b²; IG-SQ under compat: σ_c (x̃ − r_b) ⊙ ḡ_b²), re-calibrated
    Σ ρ·v·1[m ≥ 0] / Σ ρ·1[m ≥ 0] with each product weighted by its reference's ρ."""
    p = method.hparams
    big_b, k = p.samples, p.steps
    refs = method.references(x, ids)                  # begins the batch: weights need it
    rho = method.reference_weights(x, torch.as_tensor(ids))
    alphas = method.alpha_grid(x, torch.as_tensor(ids))
    g_idx = torch.arange(big_b).view(-1, 1).expand(big_b, k)
    j_idx = torch.arange(k).view(1, -1).expand(big_b, k)
    slot = g_idx if p.compat is None else (g_idx * k + j_idx) % big_b
    out = []
    for i in range(x.shape[0]):
        a = alphas[i].reshape(-1, 1, 1, 1)
        r_pt = refs[i][slot.reshape(-1)]
        pts = (a * x[i] + (1 - a) * r_pt).requires_grad_(True)
        f = objective(model(pts), t[i].expand(big_b * k), method.objective_name)
        (grads,) = torch.autograd.grad(f.sum(), pts)
        gbar = grads.view(big_b, k, *x.shape[1:]).mean(1)
        m_ref = ((x[i] - refs[i]) * gbar).double()           # (B, …): x̃ − r_g with group g
        w = torch.full((big_b,), 1.0 / big_b, dtype=torch.float64) if rho is None \
            else rho[i].double().cpu()
        if p.recalibrate != "none":
            if p.recalibrate == "valid_ip":
                m = ((1 - a) * (x[i] - r_pt) * grads / k).double()
                w = w[slot.reshape(-1)]
            else:
                m = m_ref
            keep = (m >= 0).double()
            val = m * m if method.squared else m
            w = w.view(-1, 1, 1, 1)
            out.append((w * val * keep).sum(0) / (w * keep).sum(0).clamp_min(1e-300))
        elif method.squared and p.compat is not None:
            std = model.normalize.std.view(1, 3, 1, 1).double()
            out.append((w.view(-1, 1, 1, 1) * std * (x[i] - refs[i]).double()
                        * gbar.double() ** 2).sum(0))
        else:
            out.append((w.view(-1, 1, 1, 1) * (m_ref * m_ref if method.squared else m_ref))
                       .sum(0))
    return torch.stack(out).float()
