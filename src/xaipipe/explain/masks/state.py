"""What a host mask method prepares once per batch (:meth:`MaskMethod.prepare`): the images,
the coefficients of each part of its representation and the noise statistics."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class State:
    """What a host method prepares once per batch."""
    images: torch.Tensor                 # (N, C, H, W) in [0, 1]
    coeffs: list[torch.Tensor]           # per part (N, C, ...)
    mu: list[torch.Tensor]               # per part, broadcastable to (N, Cn, ...)
    sigma: list[torch.Tensor]
    extra: dict = field(default_factory=dict)
