"""Hallucination Score (`metrics.md` §9) and its CoShREM edge measure.

Oracle: the PyPI package ``pycoshrem`` 0.0.2 (``coshrem.shearletsystem.EdgeSystem``), which the
reference pipeline (``skmda37/ShearletX:code/shearlet_edge_detector.py``) calls. It uses NumPy
aliases removed in NumPy 2 (``np.float``, ``np.complex_``, ...): :func:`coshrem_edge_system`
restores them only for the duration of the test that uses it and removes them afterwards.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from helpers import oracles
from xaipipe.metrics.base import MetricInputs, get_metric
from xaipipe.metrics.coshrem import EdgeDetector, shearlet_filters
from xaipipe.metrics import hallucination as hmod
from xaipipe.metrics.hallucination import (HallucinationScore, detector_input, dilate3x3,
                                           edge_maps, hallucination_score)

SMALL = 64           # side of the property tests (the system at 64 builds in milliseconds)

_ALIASES = {"float": float, "int": int, "bool": bool, "complex": complex, "object": object,
            "complex_": np.complex128, "float_": np.float64}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread in this module: on a loaded 2-core machine OpenMP's second thread
    makes these many small FFTs several times slower; results do not depend on it."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def coshrem_edge_system():
    """``coshrem.shearletsystem.EdgeSystem`` with the removed NumPy aliases restored while the
    test runs; NumPy is put back as it was afterwards."""
    added = [k for k in _ALIASES if k not in np.__dict__]
    for k in added:
        setattr(np, k, _ALIASES[k])
    try:
        mod = oracles.require("coshrem.shearletsystem", "pycoshrem 0.0.2, the oracle of the "
                              "CoShREM edge measure (pip install pycoshrem==0.0.2)")
        yield mod.EdgeSystem
    finally:
        for k in added:
            delattr(np, k)


def gray_scene(h: int, w: int, seed: int = 0, noise: float = 3.0) -> np.ndarray:
    """A gray test image in [0, 255]: a bright square, a disc, a ramp, Gaussian noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    img = np.full((h, w), 40.0)
    img[h // 6:h // 2, w // 6:w // 2] = 200
    img[(y - 0.65 * h) ** 2 + (x - 0.7 * w) ** 2 < (0.18 * min(h, w)) ** 2] = 120
    img += (x / w) * 60 * (y > 0.8 * h)
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255)


def rgb_scene(n: int, side: int = SMALL, seed: int = 0) -> torch.Tensor:
    """(n, 3, side, side) images in [0, 1] with edges, each with max exactly 1 (so the max
    normalisation of x_E = x is the identity)."""
    out = []
    for i in range(n):
        g = gray_scene(side, side, seed=seed + i) / 255
        tint = np.array([1.0, 0.8 - 0.1 * i, 0.6 + 0.1 * i])[:, None, None]
        img = np.clip(g[None] * tint, 0, 1)
        img[:, 2, 2] = 1.0
        out.append(img)
    return torch.tensor(np.stack(out), dtype=torch.float32)


# -- CoShREM edge measure against pycoshrem ----------------------------------------------------

@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # its 0/0
@pytest.mark.parametrize("shape,n_images", [((64, 64), 4), ((48, 72), 2), ((45, 51), 2),
                                             ((256, 256), 2)])     # the score's own size
def test_edge_measure_matches_pycoshrem(coshrem_edge_system, shape, n_images):
    h, w = shape
    system = coshrem_edge_system(h, w)
    det = EdgeDetector(h, w)
    # the shearlet system itself: pycoshrem stores centred spectra (rows, cols, scale·ori)
    ref_filters = np.conj(np.fft.ifftshift(np.moveaxis(system.shearlets, -1, 0), axes=(-2, -1)))
    mine = shearlet_filters(h, w)
    np.testing.assert_allclose(mine.reshape(ref_filters.shape), ref_filters, rtol=0, atol=1e-10)

    scene = gray_scene(h, w)
    images = [scene,                                    # float, squares + disc + ramp + noise
              np.int8(scene / 3).astype(np.float64),    # the compat input range [0, 85]
              np.clip(gray_scene(h, w, seed=5, noise=25.0), 0, 255),   # heavy noise
              np.zeros((h, w))]                         # no edges (pycoshrem: 0/0 = NaN)
    images = images[:n_images - 1] + images[-1:]
    batch = det.detect(np.stack(images), min_contrast=3.0, offset=1.0)
    for img, got in zip(images, batch):
        ref, _ = system.detect(img, min_contrast=3, offset=1, pivoting_scales="all")
        ref = np.nan_to_num(ref, nan=0.0)       # NaN only where every coefficient vanishes
        assert got.shape == (h, w) and np.all((got >= 0) & (got <= 1))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-8)
        assert np.array_equal(got > 0.1, ref > 0.1)
    assert (batch[0] > 0.1).mean() > 0.05                # the scene does have edges
    assert not (batch[-1] > 0.1).any()
    # a single (H, W) image and a tensor give the same values, a tensor back
    np.testing.assert_allclose(det.detect(images[0]), batch[0], rtol=0, atol=1e-12)
    t = det.detect(torch.from_numpy(np.stack(images[:2])))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), batch[:2], rtol=0, atol=1e-12)


# -- dilation ------------------------------------------------------------------------------------

def test_dilation_equals_3x3_maxpool():
    from scipy import ndimage
    g = torch.Generator().manual_seed(0)
    for shape, density in [((4, 17, 23), 0.02), ((2, 9, 9), 0.3), ((1, 5, 8), 0.7)]:
        b = torch.rand(shape, generator=g) < density
        b[0, 0, 0] = b[0, -1, -1] = True                       # border pixels set
        got = dilate3x3(b)
        pooled = F.max_pool2d(b.float()[:, None], 3, stride=1, padding=1)[:, 0] > 0
        assert got.dtype == torch.bool and torch.equal(got, pooled)
        for i in range(shape[0]):
            ref = ndimage.binary_dilation(b[i].numpy(), np.ones((3, 3), bool), border_value=0)
            assert np.array_equal(got[i].numpy(), ref)
    one = torch.zeros(5, 5, dtype=torch.bool)
    one[2, 2] = True
    assert dilate3x3(one).sum() == 9 and dilate3x3(one)[1:4, 1:4].all()


# -- Hallucination Score -------------------------------------------------------------------------

def test_hs_of_the_image_itself_is_zero():
    x = rgb_scene(3)
    for compat in (False, True):
        metric = HallucinationScore(size=SMALL, compat=compat)
        cols = metric(MetricInputs(ids=np.arange(3), target=torch.zeros(3, dtype=torch.long),
                                   maps=x.clone(), images=x))
        assert (cols["n_edges"] > 0).all() and not cols["no_edges"].any()
        np.testing.assert_array_equal(cols["hs"], 0.0)
        assert (cols["n_hallucinated"] == 0).all()


def test_hs_of_a_darker_image_itself_is_zero_by_default():
    """§9's HS(x̃, x̃) = 0 for an image whose max is below 1 (a dim photograph): the clean default
    scales x_E to the image's max. Dividing x_E by its own max (`normalize="max"`, §9's
    wording and the reference's) brightens it past x̃, and CoShREM's absolute min_contrast
    then finds edges x̃ does not have; for an image of max 1 the two agree exactly."""
    bright = rgb_scene(3)
    for top in (0.8, 0.5):
        x = bright * top
        assert torch.allclose(x.flatten(1).amax(1), torch.tensor(top))
        for size in (SMALL, None):
            np.testing.assert_array_equal(hallucination_score(x, x.clone(), size=size), 0.0)
            np.testing.assert_array_equal(
                hallucination_score(x, x.clone(), size=size, normalize="image"), 0.0)
        # an explanation that only dims the image is brought back to it
        np.testing.assert_array_equal(hallucination_score(x, 0.3 * x, size=SMALL), 0.0)
        assert (hallucination_score(x, x.clone(), size=SMALL, normalize="max") > 0).any()
    for normalize in ("max", "image", True):
        np.testing.assert_array_equal(
            hallucination_score(bright, 0.6 * bright, size=SMALL, normalize=normalize), 0.0)
    with pytest.raises(ValueError, match="normalize"):
        HallucinationScore(normalize="unit")


def test_compat_scores_the_smooth_masks_explanation_unscaled():
    """Under compat the metric divides x_E by its max (the reference's), except the smooth
    mask's, which the reference scores as given; the method comes with the inputs."""
    x = rgb_scene(2)
    g = torch.Generator().manual_seed(5)
    xe = F.interpolate(torch.rand(2, 1, 8, 8, generator=g), size=SMALL) * x * 0.3

    def cols(method, **kw):
        return HallucinationScore(size=SMALL, compat=True, **kw)(MetricInputs(
            ids=np.arange(2), target=torch.zeros(2, dtype=torch.long), maps=xe, images=x,
            method=method))["n_hallucinated"]
    assert np.array_equal(cols("smooth_mask"), cols("shearletx", normalize=False))
    assert np.array_equal(cols("shearletx"), cols("smooth_mask", normalize="max"))
    assert not np.array_equal(cols("smooth_mask"), cols("shearletx"))


def test_hs_of_an_empty_explanation_is_zero():
    x = rgb_scene(2)
    np.testing.assert_array_equal(hallucination_score(x, torch.zeros_like(x), size=SMALL), 0.0)
    np.testing.assert_array_equal(
        hallucination_score(x, torch.zeros_like(x), size=SMALL, compat=True), 0.0)


def test_hs_is_nonnegative_and_finite_for_masked_images():
    x = rgb_scene(2)
    g = torch.Generator().manual_seed(3)
    masks = [torch.rand(2, 1, SMALL, SMALL, generator=g),                      # pixel noise
             F.interpolate(torch.rand(2, 1, 8, 8, generator=g), size=SMALL),   # blocky
             (torch.rand(2, 1, SMALL, SMALL, generator=g) > 0.5).float()]
    hs = hallucination_score(x.repeat(3, 1, 1, 1), torch.cat(masks) * x.repeat(3, 1, 1, 1),
                             size=SMALL)
    assert hs.shape == (6,) and hs.dtype == np.float64
    assert np.isfinite(hs).all() and (hs >= 0).all()
    assert (hs[:2] > 0).all()                               # pixel noise adds edges


def test_flat_image_has_no_hs_and_is_flagged():
    x = rgb_scene(2)
    x[1] = 0.5                                              # flat: no edges at all
    metric = get_metric("hallucination_score")(size=SMALL)
    cols = metric(MetricInputs(ids=np.array([10, 11]), target=torch.zeros(2, dtype=torch.long),
                               maps=x.clone(), images=x))   # no NonFiniteError: excluded
    assert cols["no_edges"].tolist() == [False, True]
    assert cols["n_edges"][1] == 0
    assert np.isfinite(cols["hs"][0]) and np.isnan(cols["hs"][1])
    row, = HallucinationScore.aggregate(pd.DataFrame(cols), n_boot=50)
    assert row["n"] == 1 and row["excluded"] == 1 and row["direction"] == "lower"
    assert np.isnan(hallucination_score(x, torch.rand_like(x), size=SMALL)[1])


def test_sharp_square_in_a_flat_region_hallucinates():
    x = torch.full((1, 3, SMALL, SMALL), 0.3)
    x[:, :, 6:26, 6:26] = 1.0                                # the image's own edges
    xe = x.clone()
    sq = (slice(40, 54), slice(40, 54))
    xe[:, :, sq[0], sq[1]] = 0.9                             # a sharp square where x is flat
    hs = hallucination_score(x, xe, size=SMALL)
    assert hs[0] > 0
    # the new edges are those of the added square
    e = edge_maps(torch.stack([detector_input(x, False)[0], detector_input(xe, False)[0]]))
    new = e[1] & ~dilate3x3(e[0])
    assert new.sum() > 0
    near = torch.zeros(SMALL, SMALL, dtype=torch.bool)
    near[36:58, 36:58] = True
    assert new[~near].sum() == 0
    assert hs[0] == pytest.approx(float(new.sum() / e[0].sum()))
    assert hallucination_score(x, xe, size=SMALL, compat=True)[0] > 0


def test_hs_hand_computed(monkeypatch):
    """Known binary edge maps in place of the detector: the score is the exact count ratio,
    and the detector sees the inputs of the clean and compat conventions."""
    h = w = 6
    e_x = torch.zeros(2, h, w, dtype=torch.bool)
    e_x[0, 2, 2] = e_x[0, 0, 5] = True                     # image 1: two edge pixels
    e_xe = torch.zeros(2, h, w, dtype=torch.bool)
    for p in [(2, 3), (3, 3), (1, 4)]:                      # inside D(E(x)): not counted
        e_xe[0][p] = True
    for p in [(4, 4), (5, 0), (2, 5)]:                      # outside D(E(x)): hallucinated
        e_xe[0][p] = True
    e_xe[1, 3, 3] = True                                    # image 2: E(x) empty -> NaN
    seen = []

    def fake_edge_maps(gray, *, threshold, min_contrast):
        seen.append((gray.clone(), threshold, min_contrast))
        return torch.cat([e_x, e_xe])

    monkeypatch.setattr(hmod, "edge_maps", fake_edge_maps)
    x = torch.full((2, 3, h, w), 0.5)
    x[:, 0] = 0.2
    x[:, 2] = 0.8                                            # channel mean 0.5
    xe = torch.full((2, 3, h, w), 0.1)
    xe[:, :, 0, 0] = 0.4                                     # max 0.4, the image's 0.8
    hs = hallucination_score(x, xe, size=None, threshold=0.25, min_contrast=5.0)
    assert hs[0] == 3 / 2 and np.isnan(hs[1])
    gray, threshold, mc = seen[-1]
    assert (threshold, mc) == (0.25, 5.0) and gray.dtype == torch.float64
    torch.testing.assert_close(gray[:2], torch.full((2, h, w), 127.5, dtype=torch.float64))
    expect = torch.full((2, h, w), 0.2 * 255, dtype=torch.float64)   # × 0.8 / 0.4
    expect[:, 0, 0] = 0.8 * 255
    torch.testing.assert_close(gray[2:], expect)
    # normalize="max" (§9's wording): divided by its own max 0.4
    hallucination_score(x, xe, size=None, normalize="max")
    expect = torch.full((2, h, w), 0.25 * 255, dtype=torch.float64)
    expect[:, 0, 0] = 255.0
    torch.testing.assert_close(seen[-1][0][2:], expect)
    # compat: int8(255 · ((R+G+B)/3) / 3), truncated
    hallucination_score(x, xe, size=None, compat=True)
    gray = seen[-1][0]
    assert torch.equal(gray[:2], torch.full((2, h, w), 42.0, dtype=torch.float64))  # 42.5
    expect = torch.full((2, h, w), 21.0, dtype=torch.float64)                        # 21.25
    expect[:, 0, 0] = 85.0
    assert torch.equal(gray[2:], expect)
    # without normalisation x_E is scored as given: 255 · 0.1 / 3 = 8.5 -> 8
    hallucination_score(x, xe, size=None, compat=True, normalize=False)
    assert seen[-1][0][2, 1, 1] == 8.0
    # compat inputs differ from the clean ones
    x_small = torch.full((1, 3, 4, 4), 0.1)
    assert detector_input(x_small, True)[0, 0, 0] == 8.0
    assert detector_input(x_small, False)[0, 0, 0] == pytest.approx(25.5)


def test_registered_metric_and_plain_function_agree():
    assert get_metric("hallucination_score") is HallucinationScore
    assert HallucinationScore.needs == frozenset({"images"})
    assert HallucinationScore.direction == "lower" and HallucinationScore.scalars == ("hs",)
    assert HallucinationScore.excludes == {"hs": "no_edges"}
    x = rgb_scene(3)
    g = torch.Generator().manual_seed(7)
    xe = F.interpolate(torch.rand(3, 1, 8, 8, generator=g), size=SMALL, mode="bilinear") * x
    metric = get_metric("hallucination_score")(size=SMALL, threshold=0.1)
    cols = metric(MetricInputs(ids=np.arange(3), target=torch.zeros(3, dtype=torch.long),
                               maps=xe, images=x, model=None))
    plain = hallucination_score(x, xe, size=SMALL)
    np.testing.assert_array_equal(cols["hs"], plain)
    np.testing.assert_array_equal(cols["hs"], cols["n_hallucinated"] / cols["n_edges"])
    # numpy inputs, and a one-channel explanation broadcast to gray
    np.testing.assert_array_equal(hallucination_score(x.numpy(), xe.numpy(), size=SMALL), plain)
    m = torch.rand(3, 1, SMALL, SMALL, generator=g)
    np.testing.assert_array_equal(hallucination_score(x, m, size=SMALL),
                                  hallucination_score(x, m.expand(-1, 3, -1, -1), size=SMALL))
    # the threshold matters: a higher one keeps fewer edges
    hi = get_metric("hallucination_score")(size=SMALL, threshold=0.5)(
        MetricInputs(ids=np.arange(3), target=torch.zeros(3, dtype=torch.long), maps=xe,
                     images=x))
    assert (hi["n_edges"] < cols["n_edges"]).all()


def test_default_size_resizes_to_256():
    x = rgb_scene(1, side=40)
    cols = HallucinationScore()(MetricInputs(ids=np.arange(1), target=torch.zeros(1).long(),
                                             maps=x.clone(), images=x))
    assert cols["hs"][0] == 0.0 and cols["n_edges"][0] > 0
    det_native = HallucinationScore(size=None)(MetricInputs(
        ids=np.arange(1), target=torch.zeros(1).long(), maps=x.clone(), images=x))
    # the edge count is taken on the 256 x 256 resized image, not on the 40 x 40 one
    assert cols["n_edges"][0] > det_native["n_edges"][0]
    with pytest.raises(Exception, match="size"):
        HallucinationScore(size=4)

