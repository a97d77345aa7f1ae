"""xaipipe.transforms: the digital shearlet transform against pyShearLab-MIND, its file cache,
its gradients on synthetic banks, and the DWT wrapper against PyWavelets
(`mask-methods.md` §3, §5)."""
from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import numpy as np
import pytest
import pywt
import torch

from helpers import oracles

pyshearlab_mind = oracles.require("pyshearlab_mind", "pyShearLab-MIND 0.0.3, the oracle of "
                                  "the shearlet transform (a dependency of xaipipe)")

from xaipipe.transforms import ShearletTransform, Transform, WaveletTransform  # noqa: E402
from xaipipe.transforms.shearlet import (cache_file, clear_memory_cache,  # noqa: E402
                                        default_cache_dir, library_version)


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def library_must_not_run(*args, **kwargs):
    raise AssertionError("the shearlet library was called although the system is cached")


@pytest.fixture(scope="module")
def dst(tmp_path_factory):
    """The 256x256, 4-scale system, built by the library exactly once for this module: the
    library's own system (the reference) is handed to ShearletTransform through a counting
    wrapper, which also checks the arguments it is built with."""
    lib = pyshearlab_mind.SLgetShearletSystem2D(0, 256, 256, 4)
    calls = []

    def counting(*args, **kwargs):
        calls.append((args, kwargs))
        return lib

    cache = tmp_path_factory.mktemp("shearlets")
    clear_memory_cache()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pyshearlab_mind, "SLgetShearletSystem2D", counting)
        T = ShearletTransform(256, 256, 4, cache_dir=cache)
    return SimpleNamespace(T=T, lib=lib, cache=cache, calls=calls,
                           mtime=os.stat(T.cache_path).st_mtime_ns)


@pytest.fixture
def one_thread():
    """gradcheck runs thousands of ops on tiny tensors: there, handing work to a second
    thread costs far more than the work (tens of ms per op on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def images(n=1, c=1, size=256, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g, dtype=dtype)


def smooth_image(size=256, dtype=np.float64):
    u = np.linspace(0, 1, size)
    yy, xx = np.meshgrid(u, u, indexing="ij")
    return (0.5 + 0.3 * np.sin(2 * np.pi * xx) * np.cos(3 * np.pi * yy)
            + 0.2 * np.exp(-((xx - 0.4) ** 2 + (yy - 0.6) ** 2) / 0.02)).astype(dtype)


# ---------------------------------------------------------------------------------------------
# shearlet system (§3.1)

def test_system_is_the_libraries(dst):
    T, lib = dst.T, dst.lib
    assert dst.calls == [((0, 256, 256, 4), {})]          # other arguments left at defaults
    assert isinstance(T, Transform)
    assert T.n_bands == 49 == lib["nShearlets"]
    assert np.abs(lib["shearlets"].imag).max() < 1e-14
    assert T.filters.dtype == torch.float32 and T.filters.shape == (49, 256, 256)
    np.testing.assert_array_equal(T.filters.numpy(),
                                  np.moveaxis(lib["shearlets"].real, -1, 0).astype(np.float32))
    np.testing.assert_array_equal(T.shearlet_idxs, lib["shearletIdxs"])
    # low-pass [0, 0, 0] last, and only there
    assert T.shearlet_idxs[-1].tolist() == [0, 0, 0]
    assert not (T.shearlet_idxs[:-1] == 0).all(axis=1).any()
    w = T.dual_frame_weights.numpy()
    assert w.shape == (256, 256)
    assert 0.0669 <= w.min() < 0.067 and 1.0 < w.max() <= 1.0000015
    np.testing.assert_allclose(w, lib["dualFrameWeights"], rtol=1e-6)
    np.testing.assert_allclose(T.rms, lib["RMS"], rtol=1e-6)


def test_three_scales_give_33_bands(tmp_path):
    T = ShearletTransform(256, 256, 3, cache_dir=tmp_path)
    assert T.n_bands == 33 and T.shearlet_idxs[-1].tolist() == [0, 0, 0]


def test_odd_sizes_are_rejected_before_building():
    with pytest.raises(ValueError, match="odd side"):
        ShearletTransform(63, 64, 2)


# ---------------------------------------------------------------------------------------------
# transform (§3.2) against pyShearLab

@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_decompose_and_reconstruct_match_the_library(dst, kind):
    x = images(seed=3)[0, 0].double().numpy() if kind == "random" else smooth_image()
    ref = np.moveaxis(pyshearlab_mind.SLsheardec2D(x, dst.lib), -1, 0)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-6)):
        got = dst.T.decompose(torch.from_numpy(x).to(dtype))
        assert got.dtype == dtype and got.shape == (49, 256, 256)
        assert rel(got, ref) < tol
    # reconstruction of the library's coefficients
    rec = pyshearlab_mind.SLshearrec2D(np.moveaxis(ref, 0, -1), dst.lib)
    got = dst.T.reconstruct(torch.from_numpy(ref).float())
    assert rel(got, rec) < 1e-4
    assert rel(dst.T.reconstruct(torch.from_numpy(ref)), rec) < 1e-6


def test_round_trip(dst):
    x = images(1, 2, seed=1)
    assert (dst.T.reconstruct(dst.T.decompose(x)) - x).abs().max() < 1e-5
    x64 = x.double()
    assert (dst.T.reconstruct(dst.T.decompose(x64)) - x64).abs().max() < 1e-12


def test_linearity(dst):
    x, y = images(seed=4, dtype=torch.float64), images(seed=5, dtype=torch.float64)
    T = dst.T
    torch.testing.assert_close(T.decompose(2.5 * x - 0.7 * y),
                               2.5 * T.decompose(x) - 0.7 * T.decompose(y), rtol=0, atol=1e-12)
    c, d = T.decompose(x), torch.randn(1, 1, 49, 256, 256, dtype=torch.float64)
    torch.testing.assert_close(T.reconstruct(c - 3 * d), T.reconstruct(c) - 3 * T.reconstruct(d),
                               rtol=0, atol=1e-12)


def test_batching_over_images_and_channels(dst):
    x = images(2, 3, seed=6)
    c = dst.T.decompose(x)
    assert c.shape == (2, 3, 49, 256, 256)
    noise = torch.randn(c.shape, generator=torch.Generator().manual_seed(0))
    r = dst.T.reconstruct(noise)
    assert r.shape == (2, 3, 256, 256)
    for n, ch in ((0, 0), (1, 2)):
        torch.testing.assert_close(c[n, ch], dst.T.decompose(x[n, ch]), rtol=0, atol=1e-6)
        torch.testing.assert_close(r[n, ch], dst.T.reconstruct(noise[n, ch]), rtol=0, atol=1e-5)


def test_bad_inputs_are_named(dst):
    with pytest.raises(ValueError, match=r"\(\.\.\., 256, 256\)"):
        dst.T.decompose(torch.zeros(1, 3, 224, 224))
    with pytest.raises(ValueError, match=r"\(\.\.\., 49, 256, 256\)"):
        dst.T.reconstruct(torch.zeros(1, 3, 33, 256, 256))
    with pytest.raises(TypeError, match="float32 or float64"):
        dst.T.decompose(torch.zeros(1, 1, 256, 256, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------
# synthetic banks: the algebra without pyShearLab's filters

def random_bank(k, h, w, seed=0):
    """Real filters that are NOT symmetric under u -> -u (so the symmetrisation matters)."""
    g = np.random.default_rng(seed)
    return g.normal(size=(k, h, w)) + 0.5


@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_synthetic_bank_matches_the_library_formulas(size, capsys):
    """pyShearLab's SLsheardec2D/SLshearrec2D (centred FFTs with fftshift/ifftshift, complex
    arithmetic, real part) on a non-symmetric real bank, also at odd sizes: our shift-free
    rfft form with symmetrised filters must give the same numbers."""
    f = random_bank(3, *size)
    T = ShearletTransform.from_filters(torch.from_numpy(f))
    system = {"shearlets": np.moveaxis(f, 0, -1).astype(complex), "nShearlets": 3,
              "dualFrameWeights": (f ** 2).sum(0)}
    g = np.random.default_rng(1)
    x, c = g.normal(size=size), g.normal(size=(3, *size))
    ref_c = np.moveaxis(pyshearlab_mind.SLsheardec2D(x, system), -1, 0)
    ref_x = pyshearlab_mind.SLshearrec2D(np.moveaxis(c, 0, -1), system)
    capsys.readouterr()              # the library prints warnings about the imaginary parts
    np.testing.assert_allclose(T.decompose(torch.from_numpy(x)).numpy(), ref_c, atol=1e-12)
    np.testing.assert_allclose(T.reconstruct(torch.from_numpy(c)).numpy(), ref_x, atol=1e-12)
    np.testing.assert_allclose(T.dual_frame_weights.numpy(), (f ** 2).sum(0), rtol=1e-15)


@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_gradcheck_on_a_synthetic_bank(size, one_thread):
    T = ShearletTransform.from_filters(torch.from_numpy(random_bank(3, *size, seed=2)))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, *size, dtype=torch.float64, generator=g, requires_grad=True)
    c = torch.randn(1, 2, 3, *size, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(T.decompose, (x,))
    assert torch.autograd.gradcheck(T.reconstruct, (c,))
    assert torch.autograd.gradgradcheck(T.decompose, (x,))
    assert torch.autograd.gradgradcheck(T.reconstruct, (c,))


@pytest.mark.parametrize("k", [3, 4])
def test_reconstruct_product_is_reconstruct_of_the_product(k, one_thread):
    """reconstruct_product(w, r) = reconstruct(w ⊙ r), and its gradient to w (accumulated
    from the packed analysis, odd and even band counts) passes gradcheck."""
    T = ShearletTransform.from_filters(torch.from_numpy(random_bank(k, 8, 8, seed=4)))
    g = torch.Generator().manual_seed(5)
    w = torch.rand(k, 8, 8, dtype=torch.float64, generator=g, requires_grad=True)
    r = torch.randn(3, k, 8, 8, dtype=torch.float64, generator=g)
    torch.testing.assert_close(T.reconstruct_product(w, r), T.reconstruct(w * r),
                               atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda w: T.reconstruct_product(w, r), (w,))
    with pytest.raises(ValueError, match="reconstruct_product"):
        T.reconstruct_product(w[None], r)


def test_from_filters_weights():
    f = random_bank(3, 8, 8, seed=3)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    T = ShearletTransform.from_filters(f)
    assert T.scales is None and T.shearlet_idxs is None and T.n_bands == 3
    c = T.decompose(x)
    half = ShearletTransform.from_filters(f, dual_frame_weights=2 * (f ** 2).sum(0))
    torch.testing.assert_close(half.reconstruct(c), 0.5 * T.reconstruct(c))
    with pytest.raises(ValueError, match="> 0"):
        ShearletTransform.from_filters(f, dual_frame_weights=np.zeros((8, 8)))
    with pytest.raises(ValueError, match="real"):
        ShearletTransform.from_filters(f.astype(complex))


# ---------------------------------------------------------------------------------------------
# the cache file

def test_cache_file_written_once_and_reused_without_the_library(dst, monkeypatch):
    expected = cache_file(256, 256, 4, dst.cache)
    assert dst.T.cache_path == expected
    assert "256x256_s4" in expected.name and library_version() in expected.name
    # one complete file, no temporaries
    assert sorted(p.name for p in dst.cache.iterdir()) == [expected.name]
    monkeypatch.setattr(pyshearlab_mind, "SLgetShearletSystem2D", library_must_not_run)
    clear_memory_cache()
    again = ShearletTransform(256, 256, 4, cache_dir=dst.cache)
    assert torch.equal(again.filters, dst.T.filters)
    np.testing.assert_array_equal(again.shearlet_idxs, dst.T.shearlet_idxs)
    assert torch.equal(again.dual_frame_weights, dst.T.dual_frame_weights)
    assert os.stat(expected).st_mtime_ns == dst.mtime     # read, not rewritten
    # in-process: a third construction needs neither the library nor the file
    moved = expected.with_name("moved.npz")
    os.replace(expected, moved)
    try:
        third = ShearletTransform(256, 256, 4, cache_dir=dst.cache)
        assert third._bank is again._bank
    finally:
        os.replace(moved, expected)


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("XAIPIPE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "shearlets"
    clear_memory_cache()
    T = ShearletTransform(64, 64, 2)
    assert T.cache_path.parent == tmp_path / "c" / "shearlets" and T.cache_path.exists()
    monkeypatch.delenv("XAIPIPE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "xaipipe" / "shearlets"
    assert cache_file(64, 64, 2).name != cache_file(64, 64, 3).name


def test_failed_cache_write_leaves_nothing(monkeypatch, tmp_path):
    def disk_full(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    clear_memory_cache()
    with pytest.warns(RuntimeWarning, match="could not write the shearlet cache"):
        T = ShearletTransform(64, 64, 2, cache_dir=tmp_path)
    assert T.n_bands == 17
    assert list(tmp_path.iterdir()) == []


def test_unreadable_cache_is_rebuilt(monkeypatch, tmp_path):
    path = cache_file(64, 64, 2, tmp_path)
    path.write_bytes(b"not a zip file")
    clear_memory_cache()
    with pytest.warns(RuntimeWarning, match="unreadable shearlet cache"):
        T = ShearletTransform(64, 64, 2, cache_dir=tmp_path)
    clear_memory_cache()
    monkeypatch.setattr(pyshearlab_mind, "SLgetShearletSystem2D", library_must_not_run)
    assert torch.equal(ShearletTransform(64, 64, 2, cache_dir=tmp_path).filters, T.filters)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# ---------------------------------------------------------------------------------------------
# WaveletTransform (§5)

@pytest.fixture(scope="module")
def dwt():
    return WaveletTransform(J=5, wave="db3", mode="zero")


def test_wavelet_shapes_at_256(dwt):
    assert isinstance(dwt, Transform)
    chain, n = [], 256
    for _ in range(5):
        n = pywt.dwt_coeff_len(n, 6, "zero")
        chain.append(n)
    assert chain == [130, 67, 36, 20, 12]
    yl, yh = dwt.decompose(torch.zeros(2, 3, 256, 256))
    assert yl.shape == (2, 3, 12, 12)
    assert [tuple(h.shape) for h in yh] == [(2, 3, 3, m, m) for m in chain]
    assert dwt.coeff_shapes(256, 256) == ((12, 12), [(m, m) for m in chain])
    assert dwt.n_coefficients(256, 256) == 69_831
    assert (yl[0, 0].numel() + sum(h[0, 0].numel() for h in yh)) == 69_831


def test_wavelet_round_trip(dwt):
    x = images(2, 3, seed=7)
    r = dwt.reconstruct(dwt.decompose(x))
    assert r.shape == x.shape and r.dtype == torch.float32
    # the round-trip bound (1e-5); float32 kernels differ by CPU (1.07e-6 on an AVX-512
    # EPYC, under 1e-6 elsewhere), float64 shows the transform itself is exact
    assert (r - x).abs().max() <= 1e-5 * x.abs().max()
    x64 = x.double()
    r64 = dwt.reconstruct(dwt.decompose(x64))
    assert r64.dtype == torch.float64 and (r64 - x64).abs().max() < 1e-12


def test_wavelet_matches_pywavelets(dwt):
    """pywt.wavedec2 returns [cA5, (cH5, cV5, cD5), ..., (cH1, cV1, cD1)]; pytorch_wavelets'
    yh is finest first, its orientation axis in the same (cH, cV, cD) order."""
    x = images(1, 1, seed=8, dtype=torch.float64)
    ref = pywt.wavedec2(x[0, 0].numpy(), "db3", mode="zero", level=5)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        yl, yh = dwt.decompose(x.to(dtype))
        assert rel(yl[0, 0], ref[0]) < tol
        for j in range(5):
            for o in range(3):
                assert rel(yh[j][0, 0, o], ref[5 - j][o]) < tol, (dtype, j, o)


def test_wavelet_odd_sizes_are_cropped():
    D = WaveletTransform(J=3)
    x = images(1, 2, size=256, seed=9)[..., :255, :254]
    coeffs = D.decompose(x)
    assert D.reconstruct(coeffs).shape == x.shape                # remembered size
    fresh = WaveletTransform(J=3)
    assert fresh.reconstruct(coeffs).shape[-2:] == (256, 254)   # the inverse's own size
    r = fresh.reconstruct(coeffs, size=(255, 254))
    assert (r - x).abs().max() < 1e-6
    with pytest.raises(ValueError, match="do not belong"):
        fresh.reconstruct(coeffs, size=(250, 254))
    for mode in ("zero", "symmetric", "periodization"):
        M = WaveletTransform(J=3, mode=mode)
        yl, yh = M.decompose(x)
        assert M.coeff_shapes(255, 254) == (tuple(yl.shape[-2:]),
                                             [tuple(h.shape[-2:]) for h in yh]), mode


def test_wavelet_gradients(one_thread):
    D = WaveletTransform(J=2, wave="db3")
    x = torch.randn(1, 2, 12, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: D.decompose(t)[0], (x,))
    yl, yh = D.decompose(x.detach())
    yl = yl.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: D.reconstruct((t, yh), size=(12, 11)), (yl,))
