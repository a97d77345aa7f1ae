"""Model zoo: torchvision classification architectures with *local* weights, plus xaipipe's own
demo-sized models, behind one name registry (timm style).

Nothing is ever downloaded. Weights come from
- a file path (``weights="/data/resnet50-11ad3fa6.pth"``; a state dict, or a checkpoint with a
  ``state_dict``/``model`` entry), loaded with ``torch.load(weights_only=True)``;
- torchvision's local cache (``$TORCH_HOME/hub/checkpoints/<file of the weights enum>``), for
  ``weights=None`` (the architecture's DEFAULT enum) or an enum name like ``"IMAGENET1K_V1"``;
- ``weights="random"``: random initialisation (tests, stand-ins, training from scratch).
A missing file raises :class:`WeightsNotFoundError` naming every place that was searched.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, WeightsNotFoundError
from ..registry import Registry
from .demo import DEMO_LAYOUTS, build_demo_net
from .vit import inspectable_vit
from .wrapper import IMAGENET_MEAN, IMAGENET_STD, NormalizedModel


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., nn.Module]          # build(num_classes=..., **kw) -> net
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    input_size: int | None = None
    torchvision: bool = False
    #: models whose weights are a folder (a ``save_pretrained`` checkpoint): folder ->
    #: (network, mean, std, input size); ``build`` is not used
    load_folder: Callable | None = None


def _torchvision():
    """torchvision, imported when a torchvision architecture is named (not for the demo
    models: importing it costs every job ~2.6 s, see models/demo.py)."""
    import torchvision
    return torchvision


def _torchvision_names() -> list[str]:
    tv = _torchvision()
    return sorted(tv.models.list_models(module=tv.models))


def _torchvision_entry(name: str) -> ModelEntry | None:
    """A torchvision classification architecture as a :class:`ModelEntry`, or None."""
    if name not in _torchvision_names():
        return None
    return ModelEntry(name, lambda _n=name, **kw: _torchvision().models.get_model(_n, **kw),
                      input_size=299 if name == "inception_v3" else 224, torchvision=True)


#: the models xaipipe builds itself (``@MODELS.register`` / :func:`register_model`); any other
#: name resolves to a torchvision classification architecture, if torchvision has it
MODELS = Registry("model", package="xaipipe.models", fallback=_torchvision_entry,
                  fallback_names=_torchvision_names,
                  fallback_note="a torchvision classification model "
                                "(torchvision.models.list_models())")


def register_model(name: str, build: Callable[..., nn.Module], **kw) -> ModelEntry:
    """Register ``build(num_classes=..., **kw) -> net`` as model ``name`` (``kw``: the other
    fields of :class:`ModelEntry`)."""
    return MODELS.register(ModelEntry(name, build, **kw), name=name)


for _arch in DEMO_LAYOUTS:
    register_model(f"demo_{_arch}",
                   lambda num_classes=10, width=16, _a=_arch: build_demo_net(_a, num_classes, width))


def _demo_vit(**kw):
    from .vit import demo_vit
    return demo_vit(**kw)


def _hf_folder(folder, weights=True):
    from .vit import load_hf_folder
    return load_hf_folder(folder, weights)


# vision transformers (models/vit.py; `transformers` is imported when one is built)
register_model("demo_vit", _demo_vit, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=64)
register_model("hf_vit", None, load_folder=_hf_folder)


def available_models() -> list[str]:
    return sorted(set(MODELS.names()) | set(_torchvision_names()))


def _entry(name: str, where: str | None = None) -> ModelEntry:
    return MODELS.get(name, where)


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _weights_enum(name: str, weights: str | None):
    try:
        enum = _torchvision().models.get_model_weights(name)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"model {name!r}: torchvision knows no weights for it") from e
    if weights is None:
        return enum.DEFAULT
    try:
        return enum[weights]
    except KeyError:
        raise ConfigError(f"model {name!r}: unknown weights {weights!r}; allowed: "
                          f"{[w.name for w in enum]}, a file path, or 'random'") from None


def is_weights_path(weights) -> bool:
    """Whether a ``weights`` value names a file (rather than an enum name or "random")."""
    if isinstance(weights, os.PathLike):
        return True
    return os.sep in weights or weights.endswith((".pt", ".pth", ".bin", ".ckpt"))


def resolve_weights(name: str, weights: str | os.PathLike | None) -> Path | None:
    """The local file to load for (name, weights), or None for random initialisation."""
    if weights == "random":
        return None
    if weights is not None and is_weights_path(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"model {name!r}: weights file {str(path)!r} does not exist")
        return path
    entry = _entry(name)
    if not entry.torchvision:
        raise WeightsNotFoundError(
            f"model {name!r}: give weights=<file> (e.g. a model trained by the pipeline under "
            f"results/models/) or weights='random'")
    enum = _weights_enum(name, weights)
    fname = os.path.basename(enum.url)
    candidates = [cache_dir() / fname]
    for c in candidates:
        if c.is_file():
            return c
    raise WeightsNotFoundError(
        f"model {name!r}: weights {enum} are not available locally and are never downloaded. "
        f"Searched: {', '.join(map(str, candidates))}. Copy {fname} there (or set TORCH_HOME), "
        f"or pass weights=<path to the .pth file>.")


def _state_dict(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise WeightsNotFoundError(f"cannot load weights from {str(path)!r}: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsNotFoundError(f"{str(path)!r} holds no state dict")
    return obj


def _sidecar_kwargs(path: Path, name: str) -> dict:
    """Constructor arguments recorded next to weights trained by the pipeline (model.json)."""
    info_path = path.with_name("model.json")
    if not info_path.is_file():
        return {}
    info = json.loads(info_path.read_text())
    if info.get("arch") not in (None, name):
        raise ConfigError(f"{str(path)!r} holds weights of {info['arch']!r}, not {name!r}")
    return dict(info.get("kwargs", {}))


def _load_folder_model(entry: ModelEntry, name: str, weights, device, mean, std):
    if weights in (None, "random") or not is_weights_path(weights):
        raise WeightsNotFoundError(
            f"model {name!r}: give weights=<folder> (a save_pretrained checkpoint: "
            "config.json, the weights, preprocessor_config.json)")
    # on the meta device (config checks) the architecture alone, from config.json
    net, m, s, size = entry.load_folder(Path(weights).expanduser(), str(device) != "meta")
    model = NormalizedModel(net, mean or m, std or s, name=name, input_size=size)
    return model.to(device).eval()


def load_model(name: str, weights: str | os.PathLike | None = None, *, num_classes: int | None = None,
               device: str | torch.device = "cpu", mean=None, std=None, **build_kw) -> NormalizedModel:
    """A model in eval mode that takes pixel images in [0, 1]: ``Sequential(Normalize, net)``.

    ``name``: a torchvision classification architecture (``resnet50``, ``vgg16``, ``vit_b_16``,
    ...), a demo model (``demo_resnet18``, ``demo_vit``) or ``hf_vit`` (a ``transformers``
    ViT/DeiT; ``weights``: its ``save_pretrained`` folder, whose normalisation it keeps:
    :mod:`xaipipe.models.vit`). ``weights``: file path, torchvision enum name,
    None (the DEFAULT enum from the local cache) or ``"random"``. ``num_classes`` and other
    keyword arguments go to the architecture's constructor; for weights trained by the
    pipeline they default to those recorded in the ``model.json`` next to the file.
    A torchvision ``VisionTransformer`` gets attention that the transformer methods can read
    (:func:`xaipipe.models.vit.inspectable_vit`: same parameters, keys and outputs).
    """
    entry = _entry(name)
    if entry.load_folder is not None:
        return _load_folder_model(entry, name, weights, device, mean, std)
    path = resolve_weights(name, weights)
    kw = dict(build_kw)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    if path is not None:
        for k, v in _sidecar_kwargs(path, name).items():
            kw.setdefault(k, v)
    if entry.torchvision:
        kw.setdefault("weights", None)
        if name == "inception_v3":
            kw.setdefault("aux_logits", True)
            kw.setdefault("init_weights", False)
    # torchvision ViTs: attention whose query/key/value hooks can read, the same parameters
    # and keys (so before the weights load; every build passes here, the meta device's too)
    net = inspectable_vit(entry.build(**kw))
    if path is not None:
        state = _state_dict(path)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise WeightsNotFoundError(f"weights {str(path)!r} do not fit model {name!r}: {e}") from e
    model = NormalizedModel(net, mean or entry.mean, std or entry.std, name=name,
                            input_size=entry.input_size)
    return model.to(device).eval()
