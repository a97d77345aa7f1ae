"""Mask explanations: a mask on a representation of the image (shearlets, wavelets, pixels)
optimised so that the masked image keeps the class while the mask stays sparse (Kolek et al.,
CVPR 2023, ``skmda37/ShearletX``), with StartGrad's initialisation (Uendes et al., ICLR 2025,
``BuelentUendes/StartGrad``). The framework, room by room:

- :mod:`.base`: :class:`~.base.MaskMethod`, the optimisation loop and its outputs
- :mod:`.params`: the parameters every mask method shares; run settings and init labels
- :mod:`.noise`: the per-point noise, the obfuscation and the distortion pass
- :mod:`.startgrad`: the initial masks (ones, uniform, StartGrad and its ablations)
- :mod:`.history`: the per-iteration histories and the final retained information
- :mod:`.schedules`: learning-rate and regulariser schedules, gradient normalisation
- :mod:`.state`: what a host prepares per batch

The methods (one file each): :mod:`.shearletx`, :mod:`.waveletx` (and CartoonX),
:mod:`.pixel_mask`, :mod:`.smooth_mask` (Extremal Perturbations).
"""
from .base import MaskMethod, gray, sparsity
from .params import COMMON_PARAMS, init_label, run_setting
from .state import State

__all__ = ["COMMON_PARAMS", "MaskMethod", "State", "gray", "init_label", "run_setting",
           "sparsity"]
