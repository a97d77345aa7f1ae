"""The common interface of the image representations the mask methods optimise over
(Kolek et al., CVPR 2023; ``skmda37/ShearletX``): a linear transform T applied per colour
channel, with ``decompose`` (x -> coefficients) and ``reconstruct`` (coefficients -> x).

Both work on torch tensors on the input's device and dtype, are differentiable (autograd)
and batched over images and channels; the coefficient layout is the transform's own (one
tensor for the shearlet transform, ``(yl, yh)`` for the DWT).
"""
from __future__ import annotations

import abc


class Transform(abc.ABC):
    """A linear image representation: ``reconstruct(decompose(x)) ≈ x``."""

    @abc.abstractmethod
    def decompose(self, x):
        """Coefficients of the images ``x`` (N, C, H, W), per channel."""

    @abc.abstractmethod
    def reconstruct(self, coeffs):
        """Images (N, C, H, W) from coefficients in the layout :meth:`decompose` returns."""
