"""Image representations the mask methods optimise over: the digital shearlet transform of
ShearletX and the wavelet transform of WaveletX/CartoonX (Kolek et al., CVPR 2023 and ECCV
2022; ``skmda37/ShearletX``).

>>> from xaipipe.transforms import ShearletTransform, WaveletTransform
>>> T = ShearletTransform(256, 256, scales=4)     # T.decompose(x) -> (N, C, 49, H, W)
>>> D = WaveletTransform(J=5, wave="db3")         # D.decompose(x) -> (yl, yh)

Both share :class:`Transform` (``decompose``, ``reconstruct``); they are differentiable,
batched over images and channels, and run on the input's device and dtype. The libraries
behind them (pyShearLab-MIND, pytorch_wavelets) are imported only when first needed.
"""
from .base import Transform
from .shearlet import ShearletTransform
from .wavelet import WaveletTransform

__all__ = ["ShearletTransform", "Transform", "WaveletTransform"]
