"""Grad-CAM (Selvaraju et al., ICCV 2017).

A = activation of the target layer, G = ∂f/∂A, α_k = mean_{u,v} G_k,
CAM = ReLU(Σ_k α_k A_k), bilinearly upsampled to the input size (align_corners=False).
Default layer: the output of the last ``nn.Conv2d`` in registration order (before its BN/ReLU),
e.g. ResNet-18 ``layer4.1.conv2``; any module name (``layer4``) can be given instead.

Vision transformers (``hf_vit``, ``demo_vit``, torchvision's ``vit_b_16`` ...): a layer whose
output is tokens (N, T, D) is read over its patch tokens (CLS and DeiT's distillation token
dropped) as a (D, h, w) map of the patch grid, weights the token-mean gradient; the default
layer is the last encoder layer's first LayerNorm (``layernorm_before``; torchvision's ``ln_1``;
pytorch-grad-cam's ViT example uses the same ``norm1``).
Returns (N, 1, H, W), not normalised.

With ``native_resolution`` set on an instance (the explain runner sets it, so stores keep the
h x w CAM, see ``xaipipe.store``), the CAM is returned before the upsampling, (N, 1, h, w);
``native_upsample`` holds the ``F.interpolate`` settings that turn it into the (N, 1, H, W) map.
"""
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...params import Param
from ..base import OBJECTIVE_PARAM, Attribution, Method, register_method
from ...maths.objectives import objective


def last_conv_name(model: nn.Module) -> str:
    root = getattr(model, "net", model)
    names = [n for n, m in root.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ValueError("gradcam: the model has no nn.Conv2d layer; give layer=<module name>")
    return names[-1]


def default_layer(model: nn.Module) -> str:
    """The layer Grad-CAM reads when none is named: for a vision transformer the last
    encoder layer's first LayerNorm (the tokens its attention mixes into CLS, as
    pytorch-grad-cam's ViT example: ``layernorm_before`` in ``transformers``, ``ln_1`` in
    torchvision), else the last ``nn.Conv2d``."""
    from ...models.vit import is_vit
    if is_vit(model):
        root = getattr(model, "net", model)
        names = [n for n, m in root.named_modules()
                 if n.endswith(("layernorm_before", ".ln_1")) and isinstance(m, nn.LayerNorm)]
        if names:
            return names[-1]
    return last_conv_name(model)


def find_layer(model: nn.Module, name: str) -> nn.Module:
    if hasattr(model, "layer"):
        return model.layer(name)
    try:
        return model.get_submodule(name)
    except AttributeError as e:
        raise KeyError(f"gradcam: model has no layer {name!r}") from e


@register_method
class GradCAM(Method):
    name = "gradcam"
    channels = "single"
    params = {
        "layer": Param(None, str, doc="target layer name; default the last Conv2d"),
        "relu": Param(True, bool, doc="apply the ReLU to the weighted sum"),
        "objective": OBJECTIVE_PARAM,
    }
    #: ``F.interpolate`` keywords (besides ``size``) from the layer's h x w to the image's H x W
    native_upsample: ClassVar[dict] = {"mode": "bilinear", "align_corners": False}
    #: return the h x w CAM, not upsampled (an execution setting, not a hyper-parameter)
    native_resolution: bool = False

    @classmethod
    def check_model(cls, params, model, where):
        """The named layer (or, with none named, an ``nn.Conv2d``) must exist in ``model``.
        Only looks at the module tree, so a model on the meta device will do."""
        label = getattr(model, "name", "") or type(model).__name__
        layer = cls.check(params, where).layer
        if layer:
            try:
                find_layer(model, layer)
            except KeyError as e:
                raise ConfigError(f"{where}: gradcam layer {layer!r} is not in model {label!r} "
                                  f"({e.args[0] if e.args else e}); give layer=<a module name "
                                  f"of the model> or leave it out for the last Conv2d") from None
        else:
            try:
                default_layer(model)
            except ValueError:
                raise ConfigError(f"{where}: gradcam needs a convolutional layer, but model "
                                  f"{label!r} has no nn.Conv2d; give layer=<module name> or "
                                  f"use another method for this model") from None

    def attribute(self, images, target, image_ids=None):
        p = self.hparams
        layer = find_layer(self.model, p.layer or default_layer(self.model))
        store = {}

        def hook(_m, _i, out):
            if isinstance(out, tuple):          # a transformer block: (hidden states, ...)
                store["a"] = out[0]
                return (out[0].clone(), *out[1:])
            store["a"] = out
            return out.clone()  # later in-place ops (ReLU(inplace=True)) must not alter A

        handle = layer.register_forward_hook(hook)
        maps = []
        try:
            chunk = self.chunk_size(images.shape[1:], images.device)
            for s in range(0, images.shape[0], chunk):
                x = images[s:s + chunk].detach().requires_grad_(True)
                with torch.enable_grad():
                    f = objective(self.model(x), target[s:s + chunk], p.objective)
                    a = store.pop("a")
                    (g,) = torch.autograd.grad(f.sum(), a)
                a = a.detach()
                if a.ndim == 3:                 # tokens (N, T, D): the patch grid
                    a, g = (self._token_grid(t, images.shape[-2:]) for t in (a, g))
                cam = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)
                if p.relu:
                    cam = cam.clamp_min(0)
                if not self.native_resolution:
                    cam = F.interpolate(cam, size=images.shape[-2:], **self.native_upsample)
                maps.append(cam)
        finally:
            handle.remove()
        return Attribution(torch.cat(maps))

    def _token_grid(self, t: torch.Tensor, size) -> torch.Tensor:
        """Transformer tokens (N, T, D) as a (N, D, h, w) map of the patch tokens (CLS and
        DeiT's distillation token dropped)."""
        from ...models.vit import vit_structure
        st = vit_structure(self.model)
        gh, gw = st.grid(*size)
        patches = t[:, st.prefix_tokens:, :]
        if patches.shape[1] != gh * gw:
            raise ValueError(f"gradcam: the layer has {patches.shape[1]} patch tokens, not the "
                             f"{gh}x{gw} grid of the input")
        return patches.transpose(1, 2).reshape(t.shape[0], t.shape[2], gh, gw)
