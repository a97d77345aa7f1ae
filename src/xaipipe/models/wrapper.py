"""Every model takes pixel images in [0, 1]: its normalisation is its own first module."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """(x - mean) / std per channel, with the constants as buffers (they follow .to(device))."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class NormalizedModel(nn.Sequential):
    """``Sequential(Normalize, net)``: ``model[0]`` is the normalisation, ``model.net`` the network.

    Attributes ``mean``/``std`` (tuples) expose the normalisation constants, e.g. for fill values
    that a paper defines in normalised space; ``name`` and ``input_size`` describe the model.
    """

    def __init__(self, net: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD, name: str = "",
                 input_size: int | None = None):
        super().__init__()
        self.add_module("normalize", Normalize(mean, std))
        self.add_module("net", net)
        self.name = name
        self.input_size = input_size

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.normalize.mean.flatten().tolist())

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.normalize.std.flatten().tolist())

    def layer(self, name: str) -> nn.Module:
        """A sub-module by name, relative to the network (``layer4.1.conv2``) or to the wrapper
        (``net.layer4.1.conv2``)."""
        for root, key in ((self.net, name), (self, name)):
            try:
                return root.get_submodule(key)
            except AttributeError:
                continue
        names = [n for n, _ in self.net.named_modules() if n]
        raise KeyError(f"model {self.name or type(self.net).__name__!r} has no layer {name!r}; "
                       f"some layers: {names[-8:]}")
