"""Attention rollout (Abnar & Zuidema, *Quantifying Attention Flow in Transformers*, ACL
2020), a baseline of the GradMask paper.

Per layer, the attention probabilities softmax(q kᵀ / √d_h) of every head (from the layer's
query and key projections, as eager attention computes them), fused over heads (``mean``;
``max``, ``min``), the lowest ``discard_ratio`` of each row's off-diagonal entries set to 0
(0: none, the default), plus the identity (the residual path), rows
renormalised to sum 1; the layers multiplied from the input up, R = Â_L ⋯ Â_1. The map is the
CLS row of R over the patch tokens, nearest-upsampled: (N, 1, H, W), class-agnostic (the
target is not used). One no-grad forward pass per batch.
"""
from __future__ import annotations

import torch

from ...models.vit import attention_probabilities, vit_structure
from ...params import Param
from ..base import Attribution, Method, register_method
from .tokens import capture, patch_map, require_vit

FUSIONS = ("mean", "max", "min")


def rollout(attentions: list[torch.Tensor], fusion: str = "mean",
            discard_ratio: float = 0.0) -> torch.Tensor:
    """R = Â_L ⋯ Â_1 (N, T, T) from per-layer attentions (N, heads, T, T), input layer first:
    Â = rownorm(fuse_heads(A) + I), with ``discard_ratio`` of each row's smallest entries
    (the diagonal kept) set to 0 before the identity is added."""
    out = None
    for a in attentions:
        a = a.double()
        a = a.mean(1) if fusion == "mean" else a.amax(1) if fusion == "max" else a.amin(1)
        t = a.shape[-1]
        eye = torch.eye(t, dtype=a.dtype, device=a.device)
        if discard_ratio > 0:
            k = int(discard_ratio * (t - 1))
            if k:
                off = a.masked_fill(eye.bool(), float("inf"))
                idx = off.topk(k, -1, largest=False).indices
                a = a.scatter(-1, idx, 0.0)
        a = a + eye
        a = a / a.sum(-1, keepdim=True)
        out = a if out is None else a @ out
    return out


@register_method
class AttentionRollout(Method):
    name = "attention_rollout"
    channels = "single"
    params = {
        "head_fusion": Param("mean", str, FUSIONS, doc="how heads are fused per layer"),
        "discard_ratio": Param(0.0, float, min=0.0, max=0.99,
                               doc="share of each row's smallest attentions set to 0"),
    }

    @classmethod
    def check_model(cls, params, model, where):
        require_vit(model, where, "attention_rollout")

    def attribute(self, images, target, image_ids=None):
        st = vit_structure(self.model)
        mods = [m for layer in st.qkv for m in layer[:2]]
        with capture(mods) as outs, torch.no_grad():
            self.model(images)
        atts = [attention_probabilities(outs[2 * i], outs[2 * i + 1], st.heads)
                for i in range(st.layers)]
        r = rollout(atts, self.hparams.head_fusion, self.hparams.discard_ratio)
        cls_row = r[:, 0, st.prefix_tokens:]
        grid = st.grid(*images.shape[-2:])
        return Attribution(patch_map(cls_row, grid, images.shape[-2:]))
