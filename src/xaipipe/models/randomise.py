"""The model-randomisation sanity check (Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim,
*Sanity Checks for Saliency Maps*, NeurIPS 2018), in the cascading form of the attribution
re-calibration experiments of Yang, Akhtar, Wen, Mian (the group of *Local Path Integration
for Attribution*, AAAI 2023): ``ypeiyu/attribution_recalibration`` @5b745d4 and ``ypeiyu/LPI``
@6ff4785, ``utils/utils.py`` (``inception_block_names``) and the ``sanity_check`` branch of
``main.py`` / ``Evaluator.sanity_inspection`` in ``evaluator.py``.

:func:`cascade` yields progressively randomised copies of a model: stage 0 is the model as
it is, stage k has the first k listed layers re-initialised (the top first: ``fc``, then
down to the first convolution). Inside a listed layer, the tensors of the kinds in ``kinds``
are re-sampled from N(mean, std) of the original tensor (``torch.std_mean``, unbiased std as
the reference; a one-element tensor gets std 0). The default kinds are the reference's:
convolution weights, batch-norm biases, and the weights and biases of linear layers
(``conv.weight``, ``bn.bias``, ``fc.weight``, ``fc.bias``); everything else (batch-norm
weights and running statistics, convolution biases, other layers) is kept. A method is then
run on every stage and :func:`randomisation_similarity` compares each stage's maps with
stage 0's (the workflow wiring: a method per stage is the caller's job, since a metric never
runs a method).

Differences from the reference, on purpose: the reference re-creates the model at every stage
and re-samples all the layers of the prefix from the global generator, so a layer's random
values differ between stages; here each tensor is drawn once, from (seed, layer, sub-module,
tensor name), and keeps its values in the later stages (a true cascade, reproducible, the same
on every device). The reference matches parameter names by substring (``'fc' in name`` also
re-samples ``AuxLogits.fc``, which only the training-mode auxiliary output reads); here a
listed name is a module, and only its own sub-modules are re-sampled.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..utils import generator

#: the reference's 18-step order for torchvision's ``inception_v3`` (``aux_logits=True``):
#: stage 0 is the trained model, then these 17 modules, re-initialised cumulatively
INCEPTION_V3_CASCADE = (
    "fc", "Mixed_7c", "Mixed_7b", "Mixed_7a", "Mixed_6e", "Mixed_6d", "Mixed_6c", "Mixed_6b",
    "Mixed_6a", "Mixed_5d", "Mixed_5c", "Mixed_5b", "Conv2d_4a_3x3", "Conv2d_3b_1x1",
    "Conv2d_2b_3x3", "Conv2d_2a_3x3", "Conv2d_1a_3x3")
ORIGINAL = "original"

#: tensor kinds a cascade can re-sample: <module type>.<parameter>
KINDS = ("conv.weight", "conv.bias", "bn.weight", "bn.bias", "linear.weight", "linear.bias")
DEFAULT_KINDS = ("conv.weight", "bn.bias", "linear.weight", "linear.bias")

SIMILARITIES = ("spearman_abs", "spearman", "ssim")


def module_kind(module: nn.Module) -> str | None:
    """``conv``, ``bn`` or ``linear`` for the module types a cascade re-samples, else None
    (``nn.MultiheadAttention`` is ``linear``: its fused input projection, see
    :func:`_tensors`)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn"
    if isinstance(module, (nn.Linear, nn.MultiheadAttention)):
        return "linear"
    return None


def _tensors(module: nn.Module) -> tuple[tuple[str, str], ...]:
    """(parameter name, weight|bias) of a module's re-sampled tensors: ``weight`` and ``bias``,
    or for ``nn.MultiheadAttention`` (torchvision's ViTs) its fused input projection
    ``in_proj_weight`` / ``in_proj_bias`` (x W_inᵀ + b_in: a linear layer's; ``out_proj`` is an
    ``nn.Linear`` of its own)."""
    if isinstance(module, nn.MultiheadAttention):
        return (("in_proj_weight", "weight"), ("in_proj_bias", "bias"))
    return (("weight", "weight"), ("bias", "bias"))


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """Sub-module ``name`` of ``model``; for a model with a ``net`` (a
    :class:`~xaipipe.models.NormalizedModel`) relative to the network or to the wrapper."""
    roots = [model.net, model] if isinstance(getattr(model, "net", None), nn.Module) \
        else [model]
    for root in roots:
        try:
            return root.get_submodule(name)
        except AttributeError:
            continue
    names = [n for n, _ in roots[0].named_children()]
    raise KeyError(f"model randomisation: the model has no layer {name!r}; its top-level "
                   f"layers: {names}")


def resample_(param: torch.Tensor, g: torch.Generator) -> None:
    """Overwrite ``param`` in place with N(mean, std) draws of its own mean and (unbiased)
    std, drawn on the CPU in float64 from ``g`` (so the same on every device)."""
    with torch.no_grad():
        v = param.detach().to("cpu", torch.float64)
        mean = v.mean()
        std = v.std() if v.numel() > 1 else torch.zeros((), dtype=torch.float64)
        new = torch.randn(v.shape, generator=g, dtype=torch.float64) * std + mean
        param.copy_(new.to(param.device, param.dtype))


def reinitialise_(layer: nn.Module, name: str, seed: int = 0,
                  kinds: Sequence[str] = DEFAULT_KINDS) -> list[str]:
    """Re-sample the ``kinds`` tensors of every sub-module of ``layer`` (itself included) in
    place; each tensor from its own generator (seed, layer name, sub-module name, tensor
    name). Returns the re-sampled tensors' names relative to ``layer``."""
    done = []
    for sub_name, sub in layer.named_modules():
        kind = module_kind(sub)
        if kind is None:
            continue
        for pname, role in _tensors(sub):
            p = getattr(sub, pname, None)
            if f"{kind}.{role}" in kinds and isinstance(p, torch.Tensor):
                resample_(p, generator(seed, "model_randomisation", name, sub_name, pname))
                done.append(f"{sub_name}.{pname}" if sub_name else pname)
    return done


def check_kinds(kinds) -> tuple[str, ...]:
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"model randomisation: unknown tensor kinds {bad}; allowed: "
                         f"{', '.join(KINDS)}")
    return kinds


def default_cascade(model: nn.Module) -> tuple[str, ...]:
    """The cascade of a model when none is given: the reference's
    :data:`INCEPTION_V3_CASCADE` for torchvision's Inception-v3; a vision transformer's head,
    encoder blocks and patch embedding (:func:`_vit_cascade`); otherwise the network's
    top-level layers that hold a convolution, batch norm or linear layer, a ``Sequential``
    opened one level (ResNet's ``layer4.2`` … ``layer1.0``, VGG's ``classifier.6`` …
    ``features.0``), from the output down to the input."""
    net = model.net if isinstance(getattr(model, "net", None), nn.Module) else model
    if type(net).__name__ == "Inception3":
        return INCEPTION_V3_CASCADE
    from .vit import is_vit
    if is_vit(model):
        return _vit_cascade(net)
    names = []
    for name, child in net.named_children():
        subs = [(f"{name}.{n}", c) for n, c in child.named_children()] \
            if isinstance(child, nn.Sequential) else [(name, child)]
        names += [n for n, c in subs if any(module_kind(m) for m in c.modules())]
    return tuple(reversed(names))


def _vit_cascade(net: nn.Module) -> tuple[str, ...]:
    """A vision transformer's cascade, from the output down: the re-sampled layers after the
    encoder blocks one by one (the head; DeiT-distilled: both heads), the encoder blocks from
    the last to the first (each block the item of its ``ModuleList`` / ``Sequential``:
    ``hf.vit.encoder.layer.11``, torchvision's ``encoder.layers.encoder_layer_11``), then the
    patch embedding (the common parent of the layers before the blocks: its convolution, or
    the demo ViT's convolutional stem)."""
    from .vit import vit_structure
    names = {m: n for n, m in net.named_modules()}
    blocks = []
    for q, _, _ in vit_structure(net).qkv:     # up from the query to its container's item
        name = names[q]
        while "." in name and not isinstance(net.get_submodule(name.rsplit(".", 1)[0]),
                                             (nn.ModuleList, nn.Sequential)):
            name = name.rsplit(".", 1)[0]
        blocks.append(name)
    inside = tuple(f"{b}." for b in blocks)
    pos = {n: i for i, (n, _) in enumerate(net.named_modules())}
    leaves = [n for n, m in net.named_modules() if module_kind(m) and not n.startswith(inside)]
    before = [n for n in leaves if pos[n] < pos[blocks[0]]]
    after = [n for n in leaves if pos[n] > pos[blocks[-1]]
             and not any(n.startswith(f"{a}.") for a in leaves if a != n)]
    stages = list(reversed(after)) + list(reversed(blocks))
    if before:          # their deepest common parent (one name left: that layer itself)
        stages.append(".".join(os.path.commonprefix([n.split(".") for n in before]))
                      or before[0])
    return tuple(stages)


def cascade(model: nn.Module, layers: Sequence[str] = INCEPTION_V3_CASCADE, seed: int = 0,
            kinds: Sequence[str] = DEFAULT_KINDS,
            include_original: bool = True) -> Iterator[tuple[str, nn.Module]]:
    """The cascading randomisation of ``model``: yields (stage name, model copy), first
    (``include_original``) ("original", an unchanged copy), then (layer, copy with ``layers``
    up to and including it re-initialised by :func:`reinitialise_`), in the order given (the
    top of the network first). ``model`` is never modified; every yielded copy is a separate
    deep copy (keep only the ones you need: each holds a full model), in ``model``'s
    training mode. Every name is checked (a ``KeyError`` naming it) before anything is
    yielded. A layer's random values are the same in every later stage and in every run
    with the same seed."""
    kinds = check_kinds(kinds)
    layers = list(layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"model randomisation: a layer is listed twice in {layers}")
    for name in layers:
        find_layer(model, name)

    def stages():
        work = copy.deepcopy(model)
        if include_original:
            yield ORIGINAL, copy.deepcopy(work)
        for name in layers:
            reinitialise_(find_layer(work, name), name, seed, kinds)
            yield name, copy.deepcopy(work)

    return stages()


def _reduce(maps, signed: bool) -> np.ndarray:
    m = maps.detach().cpu().double().numpy() if isinstance(maps, torch.Tensor) \
        else np.asarray(maps, np.float64)
    if m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4:
        raise ValueError(f"maps must be (N, C, H, W) or (N, H, W), got shape {m.shape}")
    return m.sum(1) if signed else np.abs(m).sum(1)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each row pair (N, P) (average ranks for ties, as
    ``scipy.stats.spearmanr``); NaN for a constant row."""
    from scipy.stats import rankdata     # here: scipy.stats costs start-up time
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def ssim_rows(a: np.ndarray, b: np.ndarray, win: int = 7, data_range: float = 1.0,
              k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Mean SSIM (Wang et al. 2004) of each image pair (N, H, W), as scikit-image's
    ``structural_similarity(a, b, data_range=1.0)`` with its defaults: a ``win`` × ``win``
    uniform window, sample covariances, K1 = 0.01, K2 = 0.03, averaged over the windows that
    lie inside the image."""
    import torch.nn.functional as F
    n, h, w = a.shape
    if min(h, w) < win:
        raise ValueError(f"ssim needs maps of at least {win}x{win}, got {h}x{w}")
    x = torch.from_numpy(np.stack([a, b], 1))                          # (N, 2, H, W) float64

    def mean(t):
        return F.avg_pool2d(t, win, stride=1)

    mx, my = mean(x[:, :1]), mean(x[:, 1:])
    cov = win * win / (win * win - 1)
    vx = cov * (mean(x[:, :1] ** 2) - mx ** 2)
    vy = cov * (mean(x[:, 1:] ** 2) - my ** 2)
    vxy = cov * (mean(x[:, :1] * x[:, 1:]) - mx * my)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).numpy()


def randomisation_similarity(maps_original, maps_randomised,
                             measure: str = "spearman_abs") -> np.ndarray:
    """(N,) similarity of each image's map from the original model with its map from a
    randomised model (Adebayo et al. 2018's measures; maps (N, C, H, W) or (N, H, W), the
    same shape):

    - ``spearman_abs`` (default): Spearman rank correlation of the absolute maps Σ_c |φ_c|
      (the measure of the sanity-check figures);
    - ``spearman``: of the signed maps Σ_c φ_c;
    - ``ssim``: SSIM of the absolute maps Σ_c |φ_c|, each min–max normalised to [0, 1]
      (1e-10 in the denominator) (:func:`ssim_rows`).

    A sanity check passes when the similarity falls as the cascade reaches lower layers."""
    if measure not in SIMILARITIES:
        raise ValueError(f"unknown similarity {measure!r}; allowed: {', '.join(SIMILARITIES)}")
    a = _reduce(maps_original, measure == "spearman")
    b = _reduce(maps_randomised, measure == "spearman")
    if a.shape != b.shape:
        raise ValueError(f"maps_original {a.shape} and maps_randomised {b.shape} differ in "
                         "shape")
    if measure == "ssim":
        def unit(m):
            m = m - m.min((1, 2), keepdims=True)
            return m / (m.max((1, 2), keepdims=True) + 1e-10)
        return ssim_rows(unit(a), unit(b))
    return spearman_rows(a.reshape(len(a), -1), b.reshape(len(b), -1))
