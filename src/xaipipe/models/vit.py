"""Vision transformers: Hugging Face ``transformers`` ViT / DeiT classifiers from a local
``save_pretrained`` folder (``hf_vit``), a demo-sized ViT of the same classes (``demo_vit``),
and what the transformer methods need to know of any of them (:func:`vit_structure`).

Nothing is downloaded: ``hf_vit`` reads ``config.json``, the weights and
``preprocessor_config.json`` (its ``image_mean`` / ``image_std`` become the model's own
normalisation: 0.5 / 0.5 for ``google/vit-base-patch16-224``, ImageNet's for DeiT) from the
folder, with ``local_files_only``. Attention is loaded ``eager`` (the methods read the query,
key and value projections). Module names of transformers 4.x
(``vit.encoder.layer.i.attention.attention.query``) and 5.x (``vit.layers.i.attention.q_proj``)
are both recognised.

The wrapped network returns a logits tensor (``HFClassifier``), so every method and metric
treats it as any other model; DeiT-distilled's logits are the mean of its two heads, as its
``logits`` output.

torchvision's ViTs (``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ... any
``torchvision.models.VisionTransformer``) compute attention in ``nn.MultiheadAttention`` with
one fused input projection (``in_proj_weight``, (3D, D)): there is no query, key or value
module whose output a hook could read. :func:`inspectable_vit` (called by
:func:`~xaipipe.models.load_model` on every network it builds, before any weights are loaded)
replaces each encoder block's ``self_attention`` by a :class:`TokenAttention`: the same
parameters under the same state-dict keys (torchvision checkpoints load unchanged), the same
output, with q, k and v (N, T, D) passed through parameter-free ``query`` / ``key`` /
``value`` children that forward hooks see.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, WeightsNotFoundError

#: the normalisation of ``google/vit-base-patch16-224`` (and of the demo ViT)
HALF = (0.5, 0.5, 0.5)

_QKV = re.compile(r"^(?:.*\.)?(?:layers|layer)\.(\d+)\.attention\.(?:attention\.)?"
                  r"(q_proj|k_proj|v_proj|query|key|value)$")
_ROLE = {"q_proj": "q", "query": "q", "k_proj": "k", "key": "k", "v_proj": "v", "value": "v"}


class HFClassifier(nn.Module):
    """A ``transformers`` image classifier as a plain network: ``forward(pixel_values)`` ->
    logits (N, K). ``hf`` is the wrapped model."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(pixel_values=x).logits

    @property
    def config(self):
        return self.hf.config


def _transformers():
    try:
        import transformers
    except ImportError as e:                      # pragma: no cover - a main dependency
        raise ConfigError("vision transformers need the 'transformers' package") from e
    return transformers


class ConvStem(nn.Sequential):
    """The early-convolution stem of a hybrid ViT (Xiao et al., *Early Convolutions Help
    Transformers See Better*, NeurIPS 2021), in place of the patch embedding's single
    ``patch_size`` convolution: 3x3 convolutions with batch norm and ReLU, halving the
    resolution log2(``patch_size``) times, the last one to ``width`` channels; each output
    position is one patch token, so the patch grid is the same. ``weight`` is the last
    convolution's (``transformers`` reads the embedding's dtype from it)."""

    def __init__(self, width: int, patch_size: int, channels: int = 3):
        s = int(patch_size).bit_length() - 1
        if patch_size < 2 or 2 ** s != patch_size:
            raise ValueError(f"demo_vit: a convolutional stem needs a power-of-2 patch size, "
                             f"got {patch_size}")
        ch = [max(8, width // 2 ** (s - 1 - i)) for i in range(s)]

        def cbr(i, o, stride):
            return [nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

        layers = cbr(channels, ch[0], 1)
        for i in range(s - 1):
            layers += cbr(ch[i], ch[i + 1], 2) + cbr(ch[i + 1], ch[i + 1], 1)
        super().__init__(*layers, nn.Conv2d(ch[-1], width, 3, 2, 1))

    @property
    def weight(self) -> torch.Tensor:
        return self[-1].weight


def demo_vit(num_classes: int = 10, width: int = 64, image_size: int = 64, patch_size: int = 8,
             layers: int = 4, heads: int = 4, stem: str = "conv") -> HFClassifier:
    """The demo ViT: ``transformers``' ``ViTForImageClassification`` sized for the 64x64 shapes
    images (8x8 patches, 64 tokens + CLS; ``width`` the hidden size, MLP 2x), randomly
    initialised; the pipeline trains it like the demo CNNs. ``stem="conv"`` (default) embeds
    the patches with a :class:`ConvStem` (a hybrid ViT, which learns the 8,000 demo images in
    CPU minutes; a plain patch embedding did not learn them in 8 epochs); ``"patch"``: the
    plain ``patch_size`` convolution of ViT."""
    if stem not in ("conv", "patch"):
        raise ValueError(f"demo_vit: stem must be 'conv' or 'patch', got {stem!r}")
    tf = _transformers()
    cfg = tf.ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=3,
                       hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=2 * width, num_labels=num_classes,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "eager"
    hf = tf.ViTForImageClassification(cfg)
    if stem == "conv":
        hf.vit.embeddings.patch_embeddings.projection = ConvStem(width, patch_size)
    return HFClassifier(hf)


def load_hf_folder(folder, weights: bool = True) -> tuple[HFClassifier, tuple, tuple, int]:
    """(network, mean, std, image size) of a ``save_pretrained`` folder (the model and, when
    present, its ``preprocessor_config.json``), read locally with eager attention;
    ``weights=False`` builds the architecture from ``config.json`` alone (config checks, on the
    meta device)."""
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise WeightsNotFoundError(
            f"model 'hf_vit': {str(folder)!r} is not a save_pretrained folder (no config.json); "
            "nothing is downloaded: save the checkpoint there with "
            "model.save_pretrained(folder) and its image processor's save_pretrained(folder)")
    tf = _transformers()
    try:
        if weights:
            hf = tf.AutoModelForImageClassification.from_pretrained(
                folder, local_files_only=True, attn_implementation="eager")
        else:
            cfg = tf.AutoConfig.from_pretrained(folder, local_files_only=True)
            hf = tf.AutoModelForImageClassification.from_config(cfg,
                                                                attn_implementation="eager")
    except (OSError, ValueError) as e:
        raise WeightsNotFoundError(f"model 'hf_vit': cannot load {str(folder)!r}: {e}") from e
    mean, std = HALF, HALF
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        p = json.loads(pre.read_text())
        mean = tuple(float(v) for v in p.get("image_mean", mean))
        std = tuple(float(v) for v in p.get("image_std", std))
    return HFClassifier(hf.eval()), mean, std, int(hf.config.image_size)


def split_heads(z: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, T, D) projections -> (N, heads, T, D / heads)."""
    n, t, d = z.shape
    return z.reshape(n, t, heads, d // heads).transpose(1, 2)


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, heads, T, T) softmax(q kᵀ / √d_h) from projections q, k (N, T, D), as eager
    attention computes them (:class:`TokenAttention`; attention rollout)."""
    d_h = q.shape[-1] // heads
    return torch.softmax(split_heads(q, heads) @ split_heads(k, heads).transpose(-1, -2)
                         * d_h ** -0.5, -1)


class TokenAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` as torchvision's ViT encoder blocks use it (batch-first
    self-attention, ``self_attention(x, x, x, need_weights=False)``), computed explicitly so
    that forward hooks see the query, key and value projections.

    Same parameters and state-dict keys as the module it replaces (``in_proj_weight``,
    ``in_proj_bias``, ``out_proj.*``); ``query``, ``key`` and ``value`` are parameter-free
    ``nn.Identity`` children that the projections q, k, v (N, T, D), the three slices of
    ``x W_inᵀ + b_in``, pass through. Then per head softmax(q_h k_hᵀ / √d_h) (dropout when
    training, as the original), times v_h, heads concatenated, ``out_proj``: the original's
    output within float rounding. Returns ``(output, weights)``, the weights (averaged over
    heads unless ``average_attn_weights=False``) when ``need_weights``, else None. Any other
    call (cross-attention, masks, unbatched input) goes to ``nn.MultiheadAttention``'s own
    forward, where the hooks do not fire.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.query, self.key, self.value = nn.Identity(), nn.Identity(), nn.Identity()

    @classmethod
    def from_module(cls, mha: nn.MultiheadAttention) -> TokenAttention:
        """A :class:`TokenAttention` holding ``mha``'s own parameters (shared, not copied; no
        new weights are allocated or initialised) in its training mode."""
        if not (mha.batch_first and mha._qkv_same_embed_dim and mha.bias_k is None
                and not mha.add_zero_attn):
            raise ValueError("TokenAttention: only batch-first self-attention with one fused "
                             "input projection, no bias_k/bias_v and no zero attention")
        new = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout,
                  bias=mha.in_proj_bias is not None, batch_first=True, device="meta",
                  dtype=mha.in_proj_weight.dtype)
        for name, param in mha.named_parameters(recurse=False):
            setattr(new, name, param)
        new.out_proj = mha.out_proj
        return new.train(mha.training)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if not (query is key and key is value and query.dim() == 3 and key_padding_mask is None
                and attn_mask is None and not is_causal):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, attn_mask=attn_mask,
                                   average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        n, t, d = query.shape
        q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, -1)
        q, k, v = self.query(q), self.key(k), self.value(v)
        att = attention_probabilities(q, k, self.num_heads)
        if self.training and self.dropout > 0:
            att = F.dropout(att, self.dropout)
        out = self.out_proj((att @ split_heads(v, self.num_heads)).transpose(1, 2)
                            .reshape(n, t, d))
        if not need_weights:
            return out, None
        return out, att.mean(1) if average_attn_weights else att


def _torchvision_vit_classes():
    """(VisionTransformer, EncoderBlock) of torchvision when it is imported, else None: a
    model holding them was built by torchvision, and the demo path never imports it."""
    mod = sys.modules.get("torchvision.models.vision_transformer")
    return None if mod is None else (mod.VisionTransformer, mod.EncoderBlock)


def inspectable_vit(net: nn.Module) -> nn.Module:
    """``net`` with every torchvision ``VisionTransformer`` in it (``net`` itself, usually)
    given :class:`TokenAttention` in each encoder block, in place; other networks, and blocks
    already converted, are left as they are. Parameters, state-dict keys and outputs do not
    change, so a torchvision checkpoint loads before or after. :func:`~xaipipe.models.load_model`
    calls it on every network it builds (torchvision names, local weights, the meta-device
    builds of the config checks); call it on a ``VisionTransformer`` built elsewhere."""
    classes = _torchvision_vit_classes()
    if classes is None:
        return net
    vit_cls, block_cls = classes
    for vit in [m for m in net.modules() if isinstance(m, vit_cls)]:
        for block in vit.encoder.layers:
            if isinstance(block, block_cls) and type(block.self_attention) is \
                    nn.MultiheadAttention:
                block.self_attention = TokenAttention.from_module(block.self_attention)
    return net


@dataclass(frozen=True)
class ViTStructure:
    """What the transformer methods read of a ViT: per encoder layer (input to output) the
    modules whose outputs are its query, key and value projections (N, T, D) (``nn.Linear``
    in ``transformers``; ``TokenAttention``'s ``query`` / ``key`` / ``value`` in torchvision),
    the number of heads, the patch size and the tokens before the patches (CLS; DeiT-distilled:
    CLS and distillation)."""
    qkv: tuple                       # ((q, k, v), ...) one per layer
    heads: int
    patch_size: int
    prefix_tokens: int

    @property
    def layers(self) -> int:
        return len(self.qkv)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size


def _not_a_vit(model: nn.Module, why: str = "") -> ConfigError:
    return ConfigError(f"model {getattr(model, 'name', type(model).__name__)!r} is not a "
                       "vision transformer with query/key/value projections "
                       f"(transformers' ViT or DeiT, torchvision's VisionTransformer){why}")


def _torchvision_structure(model: nn.Module) -> ViTStructure | None:
    """The structure of a torchvision ``VisionTransformer`` with :class:`TokenAttention`
    blocks, None when ``model`` holds no such ViT."""
    classes = _torchvision_vit_classes()
    vits = [] if classes is None else [m for m in model.modules() if isinstance(m, classes[0])]
    if not vits:
        return None
    if len(vits) > 1:
        raise _not_a_vit(model, f": it holds {len(vits)} of them")
    vit = vits[0]
    attn = [b.self_attention for b in vit.encoder.layers]
    if not all(isinstance(a, TokenAttention) for a in attn):
        raise _not_a_vit(model, ": a torchvision VisionTransformer whose attention has no "
                                "query/key/value modules; load it with xaipipe's load_model "
                                "or convert it with xaipipe.models.vit.inspectable_vit(net)")
    return ViTStructure(tuple((a.query, a.key, a.value) for a in attn), int(attn[0].num_heads),
                        int(vit.patch_size), 1)


def vit_structure(model: nn.Module) -> ViTStructure:
    """The :class:`ViTStructure` of a model wrapping a ``transformers`` ViT/DeiT (``hf_vit``,
    ``demo_vit``) or a torchvision ``VisionTransformer`` converted by :func:`inspectable_vit`
    (``vit_b_16``, ``vit_l_16``, ... from :func:`~xaipipe.models.load_model`: heads from its
    attention, patch size from the network, one prefix token, CLS); a :class:`ConfigError`
    naming the model otherwise."""
    tv = _torchvision_structure(model)
    if tv is not None:
        return tv
    found: dict[int, dict[str, nn.Module]] = {}
    for name, mod in model.named_modules():
        m = _QKV.match(name)
        if m and isinstance(mod, nn.Linear):
            found.setdefault(int(m.group(1)), {})[_ROLE[m.group(2)]] = mod
    cfg = next((getattr(m, "config", None) for m in model.modules()
                if hasattr(getattr(m, "config", None), "num_attention_heads")), None)
    if not found or cfg is None or any(len(v) != 3 for v in found.values()):
        raise _not_a_vit(model)
    qkv = tuple((found[i]["q"], found[i]["k"], found[i]["v"]) for i in sorted(found))
    distilled = "Distill" in type(getattr(model, "net", model)).__name__ or any(
        "distillation_token" in n for n, _ in model.named_parameters())
    return ViTStructure(qkv, int(cfg.num_attention_heads), int(cfg.patch_size),
                        2 if distilled else 1)


def is_vit(model: nn.Module) -> bool:
    try:
        vit_structure(model)
    except ConfigError:
        return False
    return True
