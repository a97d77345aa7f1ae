"""The 2-D discrete wavelet transform of WaveletX and CartoonX (Kolek et al.): a thin
wrapper of pytorch_wavelets' ``DWTForward(J, wave, mode)`` and ``DWTInverse(wave, mode)``,
as ``skmda37/ShearletX:code/waveletx.py`` uses them (``DWT_DEFAULT_PARAMS``: J=5, db3,
zero padding).

What the wrapper adds:

- **Device and dtype follow the input.** One (forward, inverse) pair of modules is kept per
  (device, dtype). pytorch_wavelets rounds its filter taps to the default dtype (float32) when
  it builds them, so a plain ``.double()`` copy computes in float64 with float32 taps (a
  round trip then errs by ~3e-7). The float64 taps here are rebuilt exactly: each tap
  v = hi + lo with hi = float32(v), both halves pass pytorch_wavelets' own filter preparation
  (a reversal and a reshape, which are exact) and are summed in float64; so float64 inputs get
  a float64 DWT that agrees with PyWavelets to ~1e-15.
- **Cropping.** The inverse returns 2·h₁ − L + 2 rows for h₁ level-1 rows (L the filter
  length), one more than the input for some odd sizes; :meth:`WaveletTransform.reconstruct`
  crops to the input size (``size=``, or the size of the last :meth:`decompose` whose
  coefficient shapes match).
- **Sizes.** :meth:`WaveletTransform.coeff_shapes` and :meth:`n_coefficients` follow
  PyWavelets' ``dwt_coeff_len`` per level, which pytorch_wavelets uses itself (zero mode:
  ⌊(N + L − 1)/2⌋; 256 -> 130, 67, 36, 20, 12 for db3, 69,831 coefficients per channel).

Layout (pytorch_wavelets'): ``yl`` (N, C, h_J, w_J); ``yh`` a list of J tensors
(N, C, 3, h_j, w_j), finest level first; the orientation axis is pywt's (cH, cV, cD) order
(pytorch_wavelets calls them LH, HL, HH), tested against ``pywt.wavedec2``.
"""
from __future__ import annotations

import copy
import threading
import warnings

import numpy as np
import pywt
import torch

from ..utils import full_precision
from .base import Transform

#: pytorch_wavelets' names of the padding modes -> PyWavelets' names (coefficient lengths)
MODES = {"zero": "zero", "symmetric": "symmetric", "reflect": "reflect",
         "periodization": "periodization", "per": "periodization", "periodic": "periodic"}


def _pytorch_wavelets():
    """DWTForward, DWTInverse; pytorch_wavelets' import warns that pkg_resources is deprecated
    (its dtcwt module uses it), which is not ours to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pkg_resources.*")
        from pytorch_wavelets import DWTForward, DWTInverse
    return DWTForward, DWTInverse


def _split(taps) -> tuple[np.ndarray, np.ndarray]:
    """float64 taps as hi + lo with hi exactly representable in float32."""
    v = np.asarray(taps, dtype=np.float64)
    hi = v.astype(np.float32).astype(np.float64)
    return hi, v - hi


def _exact_float64(make, lo_pass, hi_pass) -> torch.nn.Module:
    """``make((lo_pass, hi_pass))`` with float64 buffers holding the taps to float64
    precision (see the module docstring)."""
    (a_hi, a_lo), (b_hi, b_lo) = _split(lo_pass), _split(hi_pass)
    big, small = make((a_hi, b_hi)), make((a_lo, b_lo))
    small_buffers = dict(small.named_buffers())
    for name, buf in list(big.named_buffers()):
        setattr(big, name, buf.double() + small_buffers[name].double())
    return big


class WaveletTransform(Transform):
    """The J-level 2-D DWT of pytorch_wavelets, per channel.

    >>> D = WaveletTransform(J=5, wave="db3", mode="zero")
    >>> yl, yh = D.decompose(x)            # x (N, C, H, W)
    >>> x2 = D.reconstruct((yl, yh))       # (N, C, H, W), cropped to x's size

    ``wave`` is a PyWavelets name or :class:`pywt.Wavelet`; ``mode`` one of
    pytorch_wavelets' padding modes (``zero``, ``symmetric``, ``reflect``,
    ``periodization``). Both directions are differentiable and run on the input's device in
    its (floating) dtype.
    """

    def __init__(self, J: int = 5, wave="db3", mode: str = "zero"):
        if isinstance(J, bool) or not isinstance(J, (int, np.integer)) or J < 1:
            raise ValueError(f"WaveletTransform: J must be an integer >= 1, got {J!r}")
        if mode not in MODES:
            raise ValueError(f"WaveletTransform: mode {mode!r} is not allowed; allowed: "
                             f"{', '.join(MODES)}")
        try:
            self.wavelet = wave if isinstance(wave, pywt.Wavelet) else pywt.Wavelet(wave)
        except (ValueError, TypeError) as e:
            raise ValueError(f"WaveletTransform: unknown wavelet {wave!r} ({e}); use a "
                             f"PyWavelets name such as 'db3'") from e
        self.J, self.mode = int(J), mode
        self.filter_len = self.wavelet.dec_len
        self._base: tuple[torch.nn.Module, torch.nn.Module] | None = None
        self._modules: dict[tuple[torch.device, torch.dtype], tuple] = {}
        self._lock = threading.Lock()
        self._last_size: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"WaveletTransform(J={self.J}, wave={self.wavelet.name!r}, mode={self.mode!r})"

    def _pair(self, device: torch.device, dtype: torch.dtype):
        key = (device, dtype)
        got = self._modules.get(key)
        if got is None:
            with self._lock:
                got = self._modules.get(key)
                if got is None:
                    if self._base is None:
                        fwd_cls, inv_cls = _pytorch_wavelets()
                        w = self.wavelet
                        self._base = (
                            _exact_float64(lambda t: fwd_cls(J=self.J, wave=t, mode=self.mode),
                                           w.dec_lo, w.dec_hi),
                            _exact_float64(lambda t: inv_cls(wave=t, mode=self.mode),
                                           w.rec_lo, w.rec_hi))
                    got = tuple(copy.deepcopy(m).to(device=device, dtype=dtype)
                                for m in self._base)
                    self._modules[key] = got
        return got

    @staticmethod
    def _check(t, what: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"WaveletTransform.{what}: expected a torch tensor, got "
                            f"{type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"WaveletTransform.{what}: expected a floating-point tensor, got "
                            f"{t.dtype}")

    @full_precision
    def decompose(self, x: torch.Tensor):
        """(yl, yh) of ``x`` (N, C, H, W): yl (N, C, h_J, w_J), yh a list of J tensors
        (N, C, 3, h_j, w_j), finest first. Remembers (H, W) for :meth:`reconstruct`."""
        self._check(x, "decompose")
        if x.ndim != 4:
            raise ValueError(f"WaveletTransform.decompose: expected (N, C, H, W), got shape "
                             f"{tuple(x.shape)}")
        forward, _ = self._pair(x.device, x.dtype)
        yl, yh = forward(x)
        self._last_size = (int(x.shape[-2]), int(x.shape[-1]))
        return yl, list(yh)

    @full_precision
    def reconstruct(self, coeffs, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Images (N, C, H, W) from ``(yl, yh)``, cropped to ``size`` (H, W); by default to
        the size of the last :meth:`decompose` when the coefficient shapes fit it, else the
        inverse's own size (2·h₁ − L + 2 per axis in zero mode)."""
        try:
            yl, yh = coeffs
        except (TypeError, ValueError) as e:
            raise TypeError("WaveletTransform.reconstruct: expected coeffs = (yl, yh)") from e
        self._check(yl, "reconstruct")
        if len(yh) != self.J:
            raise ValueError(f"WaveletTransform.reconstruct: expected {self.J} levels in yh, "
                             f"got {len(yh)}")
        got = (tuple(yl.shape[-2:]), [tuple(h.shape[-2:]) for h in yh])
        if size is None and self._last_size is not None and \
                self._shapes_as_lists(*self._last_size) == got:
            size = self._last_size
        elif size is not None:
            size = (int(size[0]), int(size[1]))
            if self._shapes_as_lists(*size) != got:
                raise ValueError(f"WaveletTransform.reconstruct: coefficient shapes {got} do "
                                 f"not belong to an image of size {size}; expected "
                                 f"{self._shapes_as_lists(*size)}")
        _, inverse = self._pair(yl.device, yl.dtype)
        x = inverse((yl, list(yh)))
        if size is not None:
            x = x[..., :size[0], :size[1]]
        return x

    def _shapes_as_lists(self, height: int, width: int):
        yl, yh = self.coeff_shapes(height, width)
        return yl, list(yh)

    def coeff_shapes(self, height: int, width: int):
        """((h_J, w_J), [(h_1, w_1), ..., (h_J, w_J)]): the spatial shapes of yl and of each
        level of yh (finest first) for an image of (height, width), by PyWavelets'
        ``dwt_coeff_len`` per level."""
        mode = MODES[self.mode]
        h, w, levels = int(height), int(width), []
        for _ in range(self.J):
            h = pywt.dwt_coeff_len(h, self.filter_len, mode)
            w = pywt.dwt_coeff_len(w, self.filter_len, mode)
            levels.append((h, w))
        return levels[-1], levels

    def n_coefficients(self, height: int, width: int) -> int:
        """Coefficients per channel: h_J·w_J + 3·Σ_j h_j·w_j (69,831 at 256×256, J=5, db3,
        zero mode)."""
        (hl, wl), levels = self.coeff_shapes(height, width)
        return hl * wl + 3 * sum(h * w for h, w in levels)
