"""CoShREM edge measure (complex shearlet-based edge measure), FFT-based and batched.

The Hallucination Score (Kolek et al., CVPR 2023) binarises the CoShREM edge measure of Reisenhofer,
King and Kutyniok. The reference pipeline (``skmda37/ShearletX:code/shearlet_edge_detector.py``)
calls the PyPI package ``pycoshrem`` 0.0.2, ``coshrem.shearletsystem.EdgeSystem(rows, cols)``
with its defaults and ``detect(img, min_contrast=3)``. That package needs NumPy < 2 (it uses
``np.float``, ``np.complex_``) and loops over pixels in Python; this module computes the same
edge measure with its own implementation, vectorised over pixels and images in PyTorch (CPU or
GPU, float64), following the algorithm of ``rgcda/PyCoShREM`` (``coshrem/shearlet.py``:
``construct_shearlet``, ``yapuls``, ``shear``; ``coshrem/util/cone.py``; and
``coshrem/shearletsystem.py`` L428-620: ``EdgeSystem.__init__``, ``_single_shearlet``,
``_full_circle_coeffs``, ``detect``). ``tests/unit/metrics/test_hallucination.py`` checks it against the
package.

The system (defaults of ``EdgeSystem``):

- scales s = 1 .. scales_per_octave·octaves (2·3.5 → 1..7), shear level 3 → 2^3 + 2 = 10
  orientations: a "vertical" cone (shears 0, 1, 2 and -2, -1) and a "horizontal" cone
  (shears 2 .. -2); the horizontal generator is the vertical one with the axes swapped.
- generator in frequency: a Mexican-hat wavelet 2π ω² e^{-ω²/2} along one axis, with
  ω = 2π·fftfreq(n) · (63 · wavelet_eff_supp / 512) / 2^{(s-1)/spo}, sampled half a pixel
  off the origin (``sampleWaveletOffOrigin``: the centred spectrum is zero-padded to twice its
  length, i.e. the wavelet is interpolated on a grid twice as fine, and the odd samples are
  kept), times a Gaussian e^{-ω²/2} along the other axis, with ω = 2π·fftfreq(2^{L-2}·m)
  · (74 · gaussian_eff_supp / 512) / 2^{α(s-1)/spo} (anisotropic scaling α = 0.8), built on a
  grid 2^{L-2} times finer along the Gaussian axis.
- shearing: in the centred spectrum, row r (column c) is rolled circularly by
  -k·(n//2 - r) and the fine axis is then subsampled by 2^{L-2}.
- a one-sided (Hilbert) half of the spectrum makes each shearlet complex in space: an even,
  real part responding to ridges and an odd, imaginary part responding to edges.
- normalisation: every shearlet of a scale is divided by |Σ imag ψ| over the left half of the
  first (shear 0, vertical) shearlet of that scale in space.
- coefficients: c = conj(ifft2(fft2(x) · conj(ψ̂))) (circular convolution). The reference's
  ``fftshift``/``ifftshift`` around the FFTs cancel for a circular convolution and are omitted.
- full circle: each of the 10 orientations gets an opposite one (20 in all) whose coefficients
  are the negated coefficients, shifted by one pixel for some cones as in the reference.

Edge measure at a pixel (``detect``, ``pivoting_scales='all'``), with o = int(offset·spo):
the imaginary parts ci of scales o.. and the absolute real parts cr of scales ..S-o; the pivot
(p_o, p_s) is the arg-max of ci over orientations and (pivot) scales, first in the order
(scale, orientation); then

    edge = max(0, Σ_s [min(ci[p_o, s], ci[p_o, p_s]) - cr[p_o, s] - min_contrast])
           / (n_scales · ci[p_o, p_s])

in [0, 1]. ``min_contrast`` is an absolute intensity (images in [0, 255]). The reference
divides 0 by 0 (NaN) where every imaginary coefficient vanishes (a constant image); here that
is 0, "no edge", which binarises the same way (NaN > t is False). The orientation measure of
the reference is not computed (the Hallucination Score does not use it).
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

__all__ = ["EdgeDetector", "edge_measure", "shearlet_filters"]

PIVOTING = ("all", "highest", "lowest")

# Memory per chunk of images in detect(): the complex coefficients of all shearlets.
_CHUNK_BYTES = 2 ** 28


def _orientation_layout(shear_level: int):
    """The shear k of each of the 2^L + 2 orientations (0-based) and the cone of each:
    0 = first vertical block, 1 = horizontal cone, 2 = second vertical block
    (``coshrem/util/cone.py``: ``cone_orientation``)."""
    if shear_level < 2:
        raise ValueError(f"shear_level must be >= 2, got {shear_level}")
    q = 2 ** (shear_level - 2)
    first = list(range(q + 1))                      # shears 0 .. q
    horizontal = list(range(q, -q - 1, -1))         # shears q .. -q
    second = list(range(-q, 0))                     # shears -q .. -1
    shears = np.array(first + horizontal + second, dtype=np.int64)
    cone = np.array([0] * len(first) + [1] * len(horizontal) + [2] * len(second))
    return shears, cone


def _mexican_hat(omega: np.ndarray) -> np.ndarray:
    return 2 * np.pi * omega ** 2 * np.exp(-omega ** 2 / 2)


def _half_pixel(spectrum: np.ndarray) -> np.ndarray:
    """A 1-D spectrum (FFT order, length n) of a filter re-sampled half a pixel off the origin:
    zero-pad the centred spectrum to 2n (band-limited interpolation on a twice finer grid),
    keep the real part of the odd samples, back to the frequency domain."""
    n = spectrum.size
    left = n - n // 2                               # ceil(n/2) zeros before, floor(n/2) after
    padded = np.zeros(2 * n, dtype=np.complex128)
    padded[left:left + n] = np.fft.fftshift(spectrum)
    fine = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(padded))).real
    return np.fft.fft(np.fft.ifftshift(fine[1::2]))


def _roll_lines(a: np.ndarray, shifts: np.ndarray, axis: int) -> np.ndarray:
    """Roll every line of ``a`` along ``axis`` circularly by its own shift
    (row i by shifts[i] for axis=1, column j by shifts[j] for axis=0)."""
    if axis == 1:
        m = a.shape[1]
        idx = (np.arange(m)[None, :] - shifts[:, None]) % m
        return np.take_along_axis(a, idx, axis=1)
    m = a.shape[0]
    idx = (np.arange(m)[:, None] - shifts[None, :]) % m
    return np.take_along_axis(a, idx, axis=0)


def _generator(rows, cols, scale, shear, horizontal, *, wavelet_eff_supp, gaussian_eff_supp,
               scales_per_octave, shear_level, alpha, off_origin) -> np.ndarray:
    """One real-valued sheared generator in the centred frequency domain, (rows, cols)."""
    up = 2 ** (shear_level - 2)
    n_wav, n_gau = (rows, cols) if horizontal else (cols, rows)
    dilation = 2 ** ((scale - 1) / scales_per_octave)
    w = _mexican_hat(2 * np.pi * np.fft.fftfreq(n_wav) * (63 * wavelet_eff_supp / 512)
                     / dilation)
    if off_origin:
        w = _half_pixel(w)
    g = np.exp(-(2 * np.pi * np.fft.fftfreq(n_gau * up) * (74 * gaussian_eff_supp / 512)
                 / dilation ** alpha) ** 2 / 2)
    k = -int(shear)
    if horizontal:                                  # wavelet along rows, Gaussian along columns
        a = np.fft.fftshift(np.outer(w, g))         # (rows, up·cols)
        a = _roll_lines(a, k * (rows // 2 - np.arange(rows)), axis=1)
        return a[:, ::up]
    a = np.fft.fftshift(np.outer(g, w))             # (up·rows, cols)
    a = _roll_lines(a, k * (cols // 2 - np.arange(cols)), axis=0)
    return a[::up, :]


@functools.lru_cache(maxsize=4)
def shearlet_filters(rows: int, cols: int, *, wavelet_eff_supp: float | None = None,
                     gaussian_eff_supp: float | None = None, scales_per_octave: float = 2,
                     shear_level: int = 3, alpha: float = 0.8, octaves: float = 3.5,
                     normalize: bool = True, off_origin: bool = True) -> np.ndarray:
    """The complex shearlet system of ``EdgeSystem(rows, cols, ...)`` as read-only conjugated
    frequency responses in FFT order, (n_scales, n_orientations, rows, cols) complex128.
    Built once per process and arguments (cached)."""
    if wavelet_eff_supp is None:
        wavelet_eff_supp = min(rows, cols) / 7
    if gaussian_eff_supp is None:
        gaussian_eff_supp = min(rows, cols) / 20
    scales = np.arange(1, scales_per_octave * octaves + 1)
    shears, cone = _orientation_layout(shear_level)
    out = np.empty((len(scales), len(shears), rows, cols), dtype=np.complex128)
    for j, s in enumerate(scales):
        norm = None
        for o, (k, c) in enumerate(zip(shears, cone)):
            psi = _generator(rows, cols, s, k, c == 1, wavelet_eff_supp=wavelet_eff_supp,
                             gaussian_eff_supp=gaussian_eff_supp,
                             scales_per_octave=scales_per_octave, shear_level=shear_level,
                             alpha=alpha, off_origin=off_origin).astype(np.complex128)
            # one-sided spectrum (quadrature pair): keep one half, doubled
            if c == 1:
                psi[: rows // 2, :] = 0
                psi[rows // 2:, :] *= 2
            else:
                psi[:, cols // 2:] = 0
                psi[:, : cols // 2] *= 2 if c == 0 else -2
            if normalize:
                if norm is None:                    # first orientation of the scale
                    space = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(psi)))
                    norm = abs(space[:, : cols // 2].imag.sum())
                with np.errstate(invalid="ignore", divide="ignore"):
                    psi = psi / norm
            out[j, o] = np.conj(np.fft.ifftshift(psi))
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=4)
def _filters_on(key: tuple, device: str) -> torch.Tensor:
    """The cached filters as a tensor on ``device`` (on the CPU sharing the numpy memory;
    never written to)."""
    rows, cols, kw = key[0], key[1], dict(key[2])
    f = shearlet_filters(rows, cols, **kw)
    with warnings.catch_warnings():                 # read-only array: the tensor is read only
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(f)
    return t.to(device)


class EdgeDetector:
    """The CoShREM edge measure of images of one size, ``EdgeSystem(rows, cols)`` of
    ``pycoshrem`` with its defaults (keywords as there, ``sample_off_origin`` for
    ``sampleWaveletOffOrigin``). The shearlet system is built once per process and size.

    >>> det = EdgeDetector(256, 256)
    >>> edges = det.detect(gray)      # gray (H, W) or (N, H, W) in [0, 255] -> same shape, [0, 1]
    """

    def __init__(self, rows: int, cols: int, *, wavelet_eff_supp: float | None = None,
                 gaussian_eff_supp: float | None = None, scales_per_octave: float = 2,
                 shear_level: int = 3, alpha: float = 0.8, octaves: float = 3.5,
                 normalize: bool = True, sample_off_origin: bool = True):
        self.rows, self.cols = int(rows), int(cols)
        self.scales_per_octave = scales_per_octave
        kw = dict(wavelet_eff_supp=wavelet_eff_supp, gaussian_eff_supp=gaussian_eff_supp,
                  scales_per_octave=scales_per_octave, shear_level=shear_level, alpha=alpha,
                  octaves=octaves, normalize=normalize, off_origin=sample_off_origin)
        self._key = (self.rows, self.cols, tuple(sorted(kw.items())))
        self.filters = shearlet_filters(self.rows, self.cols, **kw)   # builds (cached)
        self.n_scales, self.n_oris = self.filters.shape[:2]
        _, self._cone = _orientation_layout(shear_level)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    def detect(self, gray, min_contrast: float = 3.0, offset: float = 1.0,
               pivoting_scales: str = "all"):
        """Edge measure of ``gray`` ((H, W) or (N, H, W), intensities in [0, 255]; a numpy
        array or a tensor) -> float64 of the same shape and kind (a tensor stays on its
        device), values in [0, 1]."""
        if pivoting_scales not in PIVOTING:
            raise ValueError(f"pivoting_scales must be one of {PIVOTING}, got "
                             f"{pivoting_scales!r}")
        is_tensor = isinstance(gray, torch.Tensor)
        x = gray if is_tensor else torch.from_numpy(np.asarray(gray))
        single = x.ndim == 2
        if single:
            x = x[None]
        if x.ndim != 3 or tuple(x.shape[-2:]) != self.shape:
            raise ValueError(f"EdgeDetector({self.rows}, {self.cols}) takes (H, W) or (N, H, W)"
                             f" images of {self.rows}x{self.cols}, got shape {tuple(x.shape)}")
        x = x.to(torch.float64)
        filt = _filters_on(self._key, str(x.device))
        per_image = self.n_scales * self.n_oris * self.rows * self.cols * 8 * 3
        chunk = max(1, _CHUNK_BYTES // per_image)
        out = torch.cat([self._detect(x[i:i + chunk], filt, float(min_contrast), offset,
                                      pivoting_scales)
                         for i in range(0, x.shape[0], chunk)]) if x.shape[0] else \
            torch.zeros_like(x)
        if single:
            out = out[0]
        return out if is_tensor else out.cpu().numpy()

    def _orientation(self, ci: torch.Tensor, cr: torch.Tensor, o: int):
        """Imaginary and absolute real parts (B, n, H, W) of orientation ``o`` of the full
        circle (0 <= o < 2·O) from those of the O system orientations (B, O, n, H, W): the
        opposite orientation o + O has the negated coefficients, and some cones are shifted by
        one pixel, as in the reference's ``_full_circle_coeffs``."""
        base = o % self.n_oris
        i, r = ci[:, base], cr[:, base]
        if o >= self.n_oris:
            i = -i
        cone = self._cone[base]
        if cone == 1 and o < self.n_oris:           # horizontal cone, first circle
            return torch.roll(i, 1, dims=-2), torch.roll(r, 1, dims=-2)
        if cone == 2 and o < self.n_oris:           # second vertical block, first circle
            return torch.roll(i, -1, dims=-1), torch.roll(r, -1, dims=-1)
        if cone == 0 and o >= self.n_oris:          # first vertical block, opposite
            return torch.roll(i, -1, dims=-1), torch.roll(r, -1, dims=-1)
        return i, r

    def _detect(self, x, filt, min_contrast, offset, pivoting_scales):
        off = int(offset * self.scales_per_octave)
        n = self.n_scales - off
        spectrum = torch.fft.fft2(x)[:, None]                            # (B, 1, H, W)
        # coefficients conj(ifft2(X·conj ψ̂)), one scale at a time: the imaginary parts of
        # the scales off.. and the absolute real parts of the scales ..n are used, stored as
        # (B, O, n, H, W) so that one orientation is contiguous
        b, (h, w) = x.shape[0], x.shape[-2:]
        ci = x.new_empty((b, self.n_oris, n, h, w))
        cr = x.new_empty((b, self.n_oris, n, h, w))
        for j in range(self.n_scales):
            c = torch.fft.ifft2(spectrum * filt[j])                      # (B, O, H, W)
            if j >= off:
                torch.neg(c.imag, out=ci[:, :, j - off])
            if j < n:
                torch.abs(c.real, out=cr[:, :, j])
        del c
        if pivoting_scales == "all":
            pivots = list(range(n))
        elif pivoting_scales == "highest":
            pivots = [n - 1]
        else:                                                            # reference: index 1
            pivots = [1]
        # pivot: arg-max of ci over (pivot scale, orientation), the first in scale-major
        # order (the reference's Fortran-order argmax); running over orientations
        best = best_s = p_ori = None
        for o in range(2 * self.n_oris):
            i, _ = self._orientation(ci, cr, o)
            m, s = (i if len(pivots) == n else i[:, pivots]).max(1)      # first max over scales
            if best is None:
                best, best_s = m, s
                p_ori = torch.zeros_like(s)
                continue
            better = (m > best) | ((m == best) & (s < best_s))
            best = torch.where(better, m, best)
            best_s = torch.where(better, s, best_s)
            p_ori = torch.where(better, torch.full_like(p_ori, o), p_ori)
        pci = best                                                       # (B, H, W)
        total = torch.zeros_like(pci)
        for o in range(2 * self.n_oris):
            sel = p_ori == o
            if not bool(sel.any()):
                continue
            i, r = self._orientation(ci, cr, o)
            t = (torch.minimum(i, pci[:, None]) - r - min_contrast).sum(1)
            total = torch.where(sel, t, total)
        edge = total.clamp(min=0) / (n * pci)
        return torch.nan_to_num(edge, nan=0.0)


def edge_measure(gray, min_contrast: float = 3.0, offset: float = 1.0):
    """CoShREM edge measure of ``gray`` ((H, W) or (N, H, W) in [0, 255]) with the default
    system of its size (:class:`EdgeDetector`)."""
    h, w = gray.shape[-2:]
    return EdgeDetector(int(h), int(w)).detect(gray, min_contrast=min_contrast, offset=offset)
