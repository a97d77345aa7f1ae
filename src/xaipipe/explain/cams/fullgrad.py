"""FullGrad (Srinivas & Fleuret, *Full-Gradient Representation for Neural Network
Visualization*, NeurIPS 2019); reference code: ``ypeiyu/attribution_recalibration`` @5b745d4,
``saliency_methods/fullgrad.py`` and ``saliency_methods/tensor_extractor.py`` (the authors'
``idiap/fullgrad-saliency`` code, as the Re-calibration study runs it).

**Decomposition.** For a network of piecewise-linear layers with biases (ReLU, max/avg pooling,
BN in eval mode), at its input x,

    f(x) = Σ (∇_x f ⊙ x) + Σ_l Σ (g_l ⊙ b_l),

with g_l = ∂f/∂a_l the gradient w.r.t. the output a_l of bias-carrying layer l and b_l its bias
broadcast over that output. The layers: ``nn.Conv2d`` and ``nn.Linear`` with a bias, and every
``nn.BatchNorm2d``, whose eval-mode map is affine with the effective bias
b = β − μ_run·γ/√(σ²_run + ε) (γ = 1, β = 0 without ``affine``; the reference code supports
affine BN only). A ``BatchNorm2d`` without running statistics normalises with the batch's
statistics even in eval mode, so it has no per-image bias: such a model is refused.
x is the **normalised** input, the input of the network proper (``model.net`` of a
:class:`~xaipipe.models.NormalizedModel`, fed ``model.normalize(images)``), so the
normalisation's offset −μ/σ is not counted as a bias; a model without ``normalize``/``net``
is taken as the network itself. The decomposition is exact for the ``logit`` objective; for
``prob``, ``logprob`` and ``contrast`` the right-hand side is Σ_k (∂f/∂z_k)·z_k, not f.

All g_l come from one forward and one backward pass per chunk of images (the chunks fit the
memory budget, :meth:`Method.chunk_size`): forward hooks register a tensor hook on each
layer's output, which reduces g_l ⊙ b_l as soon as the backward pass produces it, so no g_l
is kept. A tensor hook registered before an in-place op on the output (ResNet's
``out += identity``, ``ReLU(inplace=True)``) receives the gradient w.r.t. the value before
that op, i.e. the layer's own output (checked by the completeness tests on ResNet-18).

**Saliency map**, (N, 1, H, W), non-negative:

    S = Σ_c P(∇_x f ⊙ x)_c + Σ_{l spatial} Up( Σ_c P(g_l ⊙ b_l)_c )

- P(t) = |t|, then min–max per image over *all* of t's channels and positions jointly:
  (|t| − min) / (max(|t| − min) + 1e-6) (the reference's ``_postProcess``).
- Σ_c after P: the reference applies ``_postProcess`` to the whole (N, C, h, w) tensor and
  sums the channels afterwards (``self._postProcess(grd).sum(1, keepdim=True)``), so the
  channels share one min and one max per image and the sum comes last; that order is kept
  (P(Σ_c t_c) would let channels of opposite sign cancel before the absolute value).
- Up: bilinear resize to H×W with ``align_corners=True``. The reference upsamples each
  channel and then sums; bilinear interpolation is linear and acts on each channel alone, so
  Up(Σ_c ·) = Σ_c Up(·) and xaipipe sums first (one map upsampled per layer instead of C;
  the two differ by float rounding only).
- "Spatial" layers are the ``nn.Conv2d`` and ``nn.BatchNorm2d`` layers whose output is
  (N, C, h, w), the reference's 4-D test: ``nn.Linear`` terms enter the decomposition and the
  completeness gap but never S.

The map is not normalised as a whole (the reference returns this sum too).

Diagnostics per image: ``completeness_gap`` = Σ(∇_x f ⊙ x) + Σ_l Σ(g_l ⊙ b_l) − f over all
bias-carrying layers, ``nn.Linear`` included (summed in float64): float rounding for the
``logit`` objective on a network whose only biases sit in those layers; otherwise it also
measures what the decomposition misses (biases of other layers, e.g. ``LayerNorm``; smooth
non-linearities; a non-logit objective's own non-linearity).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...maths.objectives import objective
from ..base import OBJECTIVE_PARAM, Attribution, Method, register_method

#: layers whose (N, C, h, w) bias terms enter the saliency map
SPATIAL = (nn.Conv2d, nn.BatchNorm2d)
#: added to the denominator of the per-image min–max (the reference's ``eps``)
EPS = 1e-6

#: called with (layer name, layer, g ⊙ b) for every bias term during the backward pass
TermSink = Callable[[str, nn.Module, torch.Tensor], None]


def bias_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every bias-carrying layer of ``net`` in registration order:
    ``nn.Conv2d`` and ``nn.Linear`` with a bias, every ``nn.BatchNorm2d``. Only reads the
    module tree (a model on the meta device will do). Raises ValueError for a BatchNorm2d that
    keeps no running statistics (no per-image bias)."""
    out = []
    for name, m in net.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            if m.running_mean is None or m.running_var is None:
                raise ValueError(f"BatchNorm2d {name!r} keeps no running statistics "
                                 "(track_running_stats=False), so it normalises with each "
                                 "batch's statistics and has no per-image bias")
            out.append((name, m))
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            out.append((name, m))
    return out


def is_spatial(module: nn.Module) -> bool:
    return isinstance(module, SPATIAL)


def effective_bias(module: nn.Module) -> torch.Tensor:
    """The bias b of a layer's affine map (detached): the ``bias`` of ``nn.Conv2d`` and
    ``nn.Linear``; β − μ_run·γ/√(σ²_run + ε) for an eval-mode ``nn.BatchNorm2d``."""
    if isinstance(module, nn.BatchNorm2d):
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight
        b = -module.running_mean * scale
        if module.bias is not None:
            b = b + module.bias
        return b.detach()
    return module.bias.detach()


def _bias_view(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """The layer's bias, shaped to broadcast over its output ``out``."""
    b = effective_bias(module).to(out.device)
    if isinstance(module, nn.Linear):
        return b                                          # (..., out_features)
    return b.reshape((1, -1) + (1,) * (out.ndim - 2))     # (N, C, h, w)


def split_model(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(network, normalisation): ``model.net`` and ``model.normalize`` of a
    :class:`~xaipipe.models.NormalizedModel`, else (``model``, None)."""
    net, norm = getattr(model, "net", None), getattr(model, "normalize", None)
    if isinstance(net, nn.Module) and isinstance(norm, nn.Module):
        return net, norm
    return model, None


def full_gradients(net: nn.Module, x: torch.Tensor, target: torch.Tensor, objective_name: str,
                   sink: TermSink) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and one backward pass of ``net`` at ``x`` (the network's own input): calls
    ``sink(name, layer, g ⊙ b)`` for each call of each bias-carrying layer (:func:`bias_layers`)
    as the backward pass reaches it, and returns (∇_x f, f), f = objective per image (N,)."""
    handles = []

    def hook_for(name: str):
        def forward_hook(module, _inputs, out):
            if not (isinstance(out, torch.Tensor) and out.requires_grad):
                return None
            b = _bias_view(module, out)

            def on_grad(g):
                sink(name, module, g * b)
                return None

            out.register_hook(on_grad)
            return None
        return forward_hook

    try:
        for name, m in bias_layers(net):
            handles.append(m.register_forward_hook(hook_for(name)))
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            f = objective(net(x), target, objective_name)
            (gx,) = torch.autograd.grad(f.sum(), x)
    finally:
        for h in handles:
            h.remove()
    return gx, f.detach()


def decompose(model: nn.Module, images: torch.Tensor, target: torch.Tensor,
              objective_name: str = "logit") -> dict:
    """The raw FullGrad decomposition of ``model`` at pixel ``images`` (one pass, every term
    kept: for tests and diagnostics; the method itself reduces each term as it comes).

    Returns ``{"x": the network's input, "input": ∇_x f ⊙ x, "bias": [(layer name, layer,
    g ⊙ b), ...] in the order the backward pass produced them, "f": f (N,)}``; for the
    ``logit`` objective Σ input + Σ_l Σ bias_l = f per image."""
    net, norm = split_model(model)
    target = torch.as_tensor(target, device=images.device).long().reshape(-1)
    if target.numel() == 1 and images.shape[0] > 1:
        target = target.expand(images.shape[0])
    with torch.no_grad():
        x = norm(images) if norm is not None else images
    terms = []
    gx, f = full_gradients(net, x, target, objective_name,
                           lambda name, m, t: terms.append((name, m, t.detach())))
    return {"x": x, "input": gx * x, "bias": terms, "f": f}


def minmax_abs(t: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """P(t): |t|, then per image (dim 0) min–max over all other dims jointly, to [0, 1) with
    ``eps`` added to the denominator (the reference's ``_postProcess``)."""
    a = t.abs()
    shape = (-1,) + (1,) * (a.ndim - 1)
    a = a - a.flatten(1).min(1).values.reshape(shape)
    return a / (a.flatten(1).max(1).values.reshape(shape) + eps)


@register_method
class FullGrad(Method):
    name = "fullgrad"
    channels = "single"
    params = {"objective": OBJECTIVE_PARAM}

    @classmethod
    def check_model(cls, params, model, where):
        """The network needs a bias-carrying spatial layer (``nn.Conv2d`` with a bias or an
        ``nn.BatchNorm2d``), and every ``nn.BatchNorm2d`` running statistics. Only looks at
        the module tree, so a model on the meta device will do."""
        label = getattr(model, "name", "") or type(model).__name__
        net, _ = split_model(model)
        try:
            layers = bias_layers(net)
        except ValueError as e:
            raise ConfigError(f"{where}: fullgrad cannot explain model {label!r}: {e}; "
                              f"use another method for this model") from None
        if not any(is_spatial(m) for _, m in layers):
            raise ConfigError(f"{where}: fullgrad needs a layer with a bias on a spatial map "
                              f"(nn.Conv2d with bias=True, or nn.BatchNorm2d), but model "
                              f"{label!r} has none; use another method for this model")

    def attribute(self, images, target, image_ids=None):
        p = self.hparams
        net, norm = split_model(self.model)
        size = tuple(images.shape[-2:])
        dtype = torch.promote_types(images.dtype, torch.float32)
        maps, gaps = [], []
        chunk = self.chunk_size(images.shape[1:], images.device)
        for s in range(0, images.shape[0], chunk):
            with torch.no_grad():
                x = norm(images[s:s + chunk]) if norm is not None else images[s:s + chunk]
            n = x.shape[0]
            smap = torch.zeros((n, 1, *size), device=images.device, dtype=dtype)
            total = torch.zeros(n, device=images.device, dtype=torch.float64)

            def sink(_name, module, term):
                total.add_(term.flatten(1).sum(1, dtype=torch.float64))
                if is_spatial(module) and term.ndim == 4:
                    layer_map = minmax_abs(term.to(dtype)).sum(1, keepdim=True)
                    smap.add_(F.interpolate(layer_map, size=size, mode="bilinear",
                                            align_corners=True))

            gx, f = full_gradients(net, x, target[s:s + chunk], p.objective, sink)
            ix = (gx * x).to(dtype)
            total.add_(ix.flatten(1).sum(1, dtype=torch.float64))
            smap.add_(minmax_abs(ix).sum(1, keepdim=True))
            maps.append(smap)
            gaps.append((total - f.double()).float())
        return Attribution(torch.cat(maps), {"completeness_gap": torch.cat(gaps)})
