"""GradMask (Marchetti et al., *Integrating Gradient and Mask-based Approaches for Vision
Transformer Explainability*, IJCNN 2025; code ``DavideTraini/GradMask``, ``GradMask.py`` and
``hook.py``, read, not copied).

Per image x and class c, on a vision transformer (:func:`~xaipipe.models.vit.vit_structure`):

1. one forward and one backward pass of the logit z_c give the gradient of z_c with respect
   to the output of every layer's query, key and value projection, (T, D) per layer;
2. each gradient, patch tokens only (CLS and DeiT's distillation token dropped), is split
   into ``masks_layer`` groups of D / ``masks_layer`` channels, summed within a group and
   clamped at 0: scores G^s_r(t) for s in {Q, K, V} and rows r = (layer, group). The last layer
   is left out (only the CLS output reaches the head, so its query gradients are 0 on the
   patches): 3·(L − 1)·``masks_layer`` rows;
3. binary masks M^s_r(t) = 1[G^s_r(t) ≥ mean_t G^s_r(t)] on the patch grid;
4. each mask, nearest-upsampled, keeps its patches and sets the others to 0 in the model's
   normalised space (the mean colour in pixels: 0.5 grey for ViT, ImageNet's mean for DeiT);
   all masked images of a batch go through batched no-grad forwards (chunks sized by the
   forward-only memory estimate), and w^s_r = softmax(·)_c of its masked image;
5. S(t) = Σ_s Σ_r w^s_r M^s_r(t), not normalised, nearest-upsampled to the image:
   (N, 1, H, W), 0 ≤ S ≤ Σ w.

The reference collects the gradients with backward hooks in firing order (last layer first)
and keys nothing by layer; the sum does not depend on the order, so that is not a profile.
``compat="gradmask"``: ``target == 0`` explains the prediction instead (the reference's
``label or prediction`` with 0 falsy). Extras: ``weight_sum`` (Σ w) per image.
"""
from __future__ import annotations

import torch

from ...maths.objectives import objective
from ...models.vit import vit_structure
from ...params import Param
from ..base import OBJECTIVE_PARAM, Attribution, Method, register_method
from .tokens import capture, patch_map, require_vit


@register_method
class GradMask(Method):
    name = "gradmask"
    channels = "single"
    params = {
        "masks_layer": Param(4, int, min=1,
                             doc="groups of channels per layer and projection (12: the heads)"),
        "objective": OBJECTIVE_PARAM,
        "compat": Param(None, (str, type(None)), (None, "gradmask"),
                        doc="gradmask: target 0 explains the prediction, as the reference"),
    }

    @classmethod
    def check_model(cls, params, model, where):
        require_vit(model, where, "gradmask")

    def masks(self, images: torch.Tensor, target: torch.Tensor):
        """(binary masks (N, R, P) bool, the patch grid) of a batch, R = 3·(L − 1)·groups,
        rows ordered (layer, projection Q/K/V, group)."""
        st = vit_structure(self.model)
        hm = self.hparams.masks_layer
        mods = [m for layer in st.qkv[:-1] for m in layer]
        if not mods:
            raise ValueError("gradmask: the model has one layer; the last one is left out")
        with capture(mods) as outs, torch.enable_grad():
            f = objective(self.model(images), target, self.objective_name)
            grads = torch.autograd.grad(f.sum(), outs)
        n = images.shape[0]
        rows = []
        for g in grads:
            g = g[:, st.prefix_tokens:, :]
            p, d = g.shape[1], g.shape[2]
            if d % hm:
                raise ValueError(f"gradmask: masks_layer = {hm} does not divide the hidden "
                                 f"size {d}")
            rows.append(g.reshape(n, p, hm, d // hm).sum(-1).clamp_min(0).transpose(1, 2))
        scores = torch.cat(rows, 1)                                   # (N, R, P)
        grid = st.grid(*images.shape[-2:])
        if grid[0] * grid[1] != scores.shape[-1]:
            raise ValueError(f"gradmask: {scores.shape[-1]} patch tokens for a {grid} grid")
        return scores >= scores.mean(-1, keepdim=True), grid

    def attribute(self, images, target, image_ids=None):
        if self.hparams.compat == "gradmask" and bool((target == 0).any()):
            with torch.no_grad():
                pred = self.model(images).argmax(1)
            target = torch.where(target == 0, pred, target)
        n, _, h, w = images.shape
        masks, grid = self.masks(images, target)
        r = masks.shape[1]
        up = patch_map(masks.reshape(n * r, -1), grid, (h, w)).to(images.dtype)   # (N·R,1,H,W)
        fill = self.model.normalize.mean.to(images.dtype)                        # normalised 0
        weights = torch.empty(n * r, device=images.device, dtype=torch.float32)
        rows = torch.arange(n, device=images.device).repeat_interleave(r)
        chunk = self.chunk_size(images.shape[1:], images.device, forward_only=True)
        with torch.no_grad():
            for s in range(0, n * r, chunk):
                sl = slice(s, min(n * r, s + chunk))
                m = up[sl]
                x = images[rows[sl]] * m + fill * (1 - m)
                p = torch.softmax(self.model(x).float(), 1)
                weights[sl] = p.gather(1, target[rows[sl]].view(-1, 1)).squeeze(1)
        wr = weights.view(n, r, 1)
        heat = (wr * masks.float()).sum(1)                                        # (N, P)
        return Attribution(patch_map(heat, grid, (h, w)), {"weight_sum": wr.sum((1, 2))})
