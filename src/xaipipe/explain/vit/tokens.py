"""What the vision-transformer methods share: the outputs of a model's query, key and value
projections captured during one forward pass (:func:`capture`), the hooks removed on exit
whatever happens, and patch-token maps turned into images (:func:`patch_map`)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...models.vit import vit_structure


def require_vit(model: nn.Module, where: str, method: str) -> None:
    """A :class:`ConfigError` naming ``where`` when ``model`` is not a vision transformer
    (``check_model`` of the transformer-only methods; structure only, meta device fine)."""
    try:
        vit_structure(model)
    except ConfigError as e:
        raise ConfigError(f"{where}: {method} needs a vision transformer ({e})") from None


@contextlib.contextmanager
def capture(modules: list[nn.Module]):
    """Forward hooks on ``modules`` recording each one's latest output (a list aligned with
    ``modules``, filled by the forward pass run inside the ``with``); every hook is removed
    on exit, also when the body raises."""
    outs: list = [None] * len(modules)
    handles = []
    try:
        for i, m in enumerate(modules):
            handles.append(m.register_forward_hook(
                lambda _m, _inp, out, i=i: outs.__setitem__(i, out)))
        yield outs
    finally:
        for h in handles:
            h.remove()


def patch_map(scores: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Per-patch scores (N, P) as (N, 1, H, W) images: the patch grid, nearest-upsampled (each
    patch's value over its pixels)."""
    n = scores.shape[0]
    return F.interpolate(scores.reshape(n, 1, *grid).float(), size=tuple(size), mode="nearest")
