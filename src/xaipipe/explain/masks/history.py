"""The per-iteration histories a mask method records with ``history_every`` (StartGrad, Uendes
et al., ICLR 2025) and its final retained information (CP, Kolek et al., CVPR 2023):
:class:`Histories`, a part of :class:`~xaipipe.explain.masks.base.MaskMethod`, and
:func:`clean_cp`, the CP of the clean explanation at a step (the smooth mask uses it too).
The names of the histories are :data:`xaipipe.maths.information.HISTORY`."""
from __future__ import annotations

import torch

from ...maths.information import cp_ratio, entropy, explanation_image, log_prob, pixel_l1_ratio
from .state import State


@torch.no_grad()
def clean_cp(model, images, x_e, target, logp_clean, l1, ent, chunk: int | None = None) -> dict:
    """The CP scores of Kolek et al. (clean form) for the current explanation x_E of a
    mask method, as the ``cp`` metric computes them on the final one: RCP = p_c(x_E/max x_E) /
    p_c(x̃) for the fixed class c = ``target`` (``logp_clean``: log p_c(x̃), :func:`log_prob`),
    over the retained pixel ℓ1 of x_E/max (``clean_cp_l1_pixel``), the representation's
    retained ℓ1 ``l1`` (``clean_cp_l1``) and retained entropy ``ent`` (``clean_cp_entropy``);
    (N,) float64 on the CPU. One forward pass of the N explanations."""
    xe = explanation_image(x_e, images, normalize=True)
    rcp = torch.exp(log_prob(model, xe, target, chunk) - logp_clean.double().cpu())
    pix = pixel_l1_ratio(xe, images)
    return {"clean_retained_probability": rcp,
            "clean_cp_l1_pixel": cp_ratio(rcp, pix),
            "clean_cp_l1": cp_ratio(rcp, l1.double().cpu()),
            "clean_cp_entropy": cp_ratio(rcp, ent.double().cpu())}


class Histories:
    """The retained information of the current masks and the per-step record (a part of
    :class:`~xaipipe.explain.masks.base.MaskMethod`; ``self`` is the mask method)."""

    @torch.no_grad()
    def _retained(self, state: State, masks: list[torch.Tensor]):
        """(N,) float64: retained ℓ1 Σ|m ⊙ c|/Σ|c|, the entropies H(m ⊙ c) and H(c) (jointly
        over colour and parts), and the retained pixel ℓ1 Σ|x_E|/Σ|x̃|; and x_E itself."""
        num = sum((m * c).abs().flatten(1).sum(1) for m, c in zip(masks, state.coeffs))
        den = sum(c.abs().flatten(1).sum(1) for c in state.coeffs)
        l1 = num.double() / den.double().clamp_min(1e-300)
        kept = torch.cat([(m * c).flatten(1) for m, c in zip(masks, state.coeffs)], 1)
        full = torch.cat([c.flatten(1) for c in state.coeffs], 1)
        h_kept, h_full = entropy(kept, 1), entropy(full, 1)
        x_e = self.explanation(state, masks)
        pix = x_e.double().abs().flatten(1).sum(1) / \
            state.images.double().abs().flatten(1).sum(1).clamp_min(1e-300)
        return l1, h_kept, h_full, pix, x_e

    def final_extras(self, state: State, masks: list[torch.Tensor]) -> dict:
        """The final retained information, and the two entropies of the ratio (the `cp`
        metric's ``entropy_exp`` needs exp H of each, not their ratio)."""
        l1, h_kept, h_full, pix, _ = self._retained(state, masks)
        ent = h_kept / h_full.clamp_min(1e-300)
        return {"final_retained_l1": l1.float(), "final_retained_entropy": ent.float(),
                "final_retained_pixel": pix.float(),
                "final_entropy_explanation": h_kept.float(),
                "final_entropy_image": h_full.float()}

    def _record(self, hist, j, state, masks, probs, p_clean, target, logp_clean):
        l1, h_kept, h_full, pix, x_e = self._retained(state, [m.detach() for m in masks])
        ent = h_kept / h_full.clamp_min(1e-300)
        rcp = (probs / p_clean[:, None].clamp_min(1e-30)).mean(1).double().cpu()
        l1, ent, pix = l1.cpu(), ent.cpu(), pix.cpu()
        hist["retained_probability"][:, j] = rcp
        hist["retained_l1"][:, j] = l1
        hist["retained_entropy"][:, j] = ent
        hist["retained_pixel"][:, j] = pix
        hist["cp_l1"][:, j] = cp_ratio(rcp, l1)
        hist["cp_pixel"][:, j] = cp_ratio(rcp, pix)
        hist["cp_entropy"][:, j] = cp_ratio(rcp, ent)
        chunk = self.chunk_size(state.images.shape[1:], state.images.device)
        for k, v in clean_cp(self.model, state.images, x_e, target, logp_clean, l1, ent,
                             chunk).items():
            hist[k][:, j] = v
