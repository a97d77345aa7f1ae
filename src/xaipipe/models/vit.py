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
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
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


def demo_vit(num_classes: int = 10, width: int = 64, image_size: int = 64, patch_size: int = 8,
             layers: int = 4, heads: int = 4) -> HFClassifier:
    """The demo ViT: ``transformers``' ``ViTForImageClassification`` sized for the 64x64 shapes
    images (8x8 patches, 64 tokens + CLS; ``width`` the hidden size, MLP 2x), randomly
    initialised; the pipeline trains it like the demo CNNs."""
    tf = _transformers()
    cfg = tf.ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=3,
                       hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=2 * width, num_labels=num_classes,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "eager"
    return HFClassifier(tf.ViTForImageClassification(cfg))


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


@dataclass(frozen=True)
class ViTStructure:
    """What the transformer methods read of a ViT: per encoder layer (input to output) its
    query, key and value projections (``nn.Linear``, output (N, T, D)), the number of heads,
    the patch size and the tokens before the patches (CLS; DeiT-distilled: CLS and
    distillation)."""
    qkv: tuple                       # ((q, k, v), ...) one per layer
    heads: int
    patch_size: int
    prefix_tokens: int

    @property
    def layers(self) -> int:
        return len(self.qkv)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size


def vit_structure(model: nn.Module) -> ViTStructure:
    """The :class:`ViTStructure` of a model wrapping a ``transformers`` ViT/DeiT (``hf_vit``,
    ``demo_vit``); a :class:`ConfigError` naming the model otherwise."""
    found: dict[int, dict[str, nn.Module]] = {}
    for name, mod in model.named_modules():
        m = _QKV.match(name)
        if m and isinstance(mod, nn.Linear):
            found.setdefault(int(m.group(1)), {})[_ROLE[m.group(2)]] = mod
    cfg = next((getattr(m, "config", None) for m in model.modules()
                if hasattr(getattr(m, "config", None), "num_attention_heads")), None)
    if not found or cfg is None or any(len(v) != 3 for v in found.values()):
        raise ConfigError(f"model {getattr(model, 'name', type(model).__name__)!r} is not a "
                          "vision transformer with query/key/value projections "
                          "(transformers' ViT or DeiT)")
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
