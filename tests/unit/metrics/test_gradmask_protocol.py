"""Insertion and deletion in the GradMask protocol (``DavideTraini/GradMask``,
``get_insertion_deletion``): 1, 5, 10, 20, ..., 100 % of the pixels, the AUC over the
percentages (0-100), deletion from (0, 0), coarse maps nearest-upsampled, and the reference's
NumPy ranking under ``compat="gradmask"``."""
import numpy as np
import pytest
import torch
from torch import nn

from xaipipe.metrics import deletion, insertion
from xaipipe.metrics.perturbation import GRADMASK_PERCENT, curve_auc, pixel_order
from xaipipe.models import NormalizedModel


def test_auc_of_a_hand_made_curve():
    """y = x/100 at the 12 percentages: insertion ∫_1^100 x/100 dx = (100² − 1)/200; deletion
    adds the segment from (0, 0) to (1, 0.01), 0.005."""
    qs = np.asarray(GRADMASK_PERCENT) / 100
    curve = qs[None].copy()
    ins = curve_auc(curve, qs, "insertion", "gradmask")
    dele = curve_auc(curve, qs, "deletion", "gradmask")
    assert ins[0] == pytest.approx((100 ** 2 - 1) / 200)
    assert dele[0] == pytest.approx((100 ** 2 - 1) / 200 + 0.005)
    # a step curve: 1 from 50 % on; trapezoids: (50-40)*0.5 + 50*1
    step = (qs >= 0.5).astype(float)[None]
    assert curve_auc(step, qs, "insertion", "gradmask")[0] == pytest.approx(5 + 50)
    assert curve_auc(step, qs, "insertion", "rise")[0] == pytest.approx(0.55)


class Mean(nn.Module):
    """logits = (mean of channel 0, 0): the target's softmax probability grows with the kept
    pixels' values."""

    def forward(self, x):
        m = x[:, 0].mean((1, 2))
        return torch.stack([m * 10, torch.zeros_like(m)], 1)


def test_curve_points_are_the_kept_pixel_counts():
    """On a 10x10 image of ones with the map ranking pixel i before j when i < j, the
    insertion point at p % keeps int(p/100·100) = p pixels of ones over a 0 fill: the logit is
    p/10 and the probability sigmoid(p/10); deletion the complement."""
    model = NormalizedModel(Mean(), mean=(0.0,) * 3, std=(1.0,) * 3).eval()
    x = torch.ones(1, 3, 10, 10)
    maps = (100 - torch.arange(100.0)).view(1, 1, 10, 10)
    ins = insertion(model, x, maps, 0, protocol="gradmask", fill="black")
    dele = deletion(model, x, maps, 0, protocol="gradmask", fill="black")
    p = np.asarray(GRADMASK_PERCENT, float)
    expect = 1 / (1 + np.exp(-p / 10))
    np.testing.assert_allclose(ins["curve"][0], expect, rtol=1e-6)
    np.testing.assert_allclose(dele["curve"][0], 1 / (1 + np.exp(-(100 - p) / 10)), rtol=1e-6)
    np.testing.assert_allclose(ins["fractions"], p / 100)
    np.testing.assert_allclose(ins["auc"], np.trapezoid(expect, p))
    np.testing.assert_allclose(dele["auc"], np.trapezoid(
        np.concatenate([[0], 1 / (1 + np.exp(-(100 - p) / 10))]), np.concatenate([[0], p])))
    # the default protocol is unchanged: 21 points over [0, 1]
    assert insertion(model, x, maps, 0)["curve"].shape == (1, 21)


def test_coarse_maps_are_nearest_upsampled():
    """A 2x2 map on a 4x4 image: each cell's value over its 2x2 pixels (nearest), so the top
    25 % are exactly the pixels of the best cell."""
    model = NormalizedModel(Mean(), mean=(0.0,) * 3, std=(1.0,) * 3).eval()
    x = torch.zeros(1, 3, 4, 4)
    x[:, :, :2, 2:] = 1.0                                    # the top-right cell holds the signal
    coarse = torch.tensor([[[[0.1, 0.9], [0.2, 0.3]]]])
    out = insertion(model, x, coarse, 0, protocol="gradmask", fill="black")
    # 30 % = 4 pixels: exactly the top-right cell, all ones: the full image's score
    full = torch.softmax(model(x), 1)[0, 0].item()
    assert out["curve"][0][GRADMASK_PERCENT.index(30)] == pytest.approx(full, rel=1e-6)


def test_compat_ranking_is_numpys_default_argsort():
    scores = torch.tensor([[[0.5, 0.1], [0.5, 0.9]], [[0.2, 0.2], [0.2, 0.2]]])
    ours = pixel_order(scores, "gradmask").numpy()
    ref = np.argsort(scores.flatten(1).numpy(), axis=1)[:, ::-1]
    np.testing.assert_array_equal(ours, ref)
    clean = pixel_order(scores).numpy()
    np.testing.assert_array_equal(clean[1], [0, 1, 2, 3])   # stable: ties by index


def test_clean_variant_has_true_endpoints_and_unit_scale():
    """``gradmask_clean``: q = 0 first, then the 12 percentages; insertion at 0 is the pure
    fill (logit 0: probability 1/2), deletion at 0 the full image; the AUC is the trapezoid
    over q on [0, 1] (the compat curve's AUC over percentages, divided by 100, plus the first
    segment)."""
    model = NormalizedModel(Mean(), mean=(0.0,) * 3, std=(1.0,) * 3).eval()
    x = torch.ones(1, 3, 10, 10)
    maps = (100 - torch.arange(100.0)).view(1, 1, 10, 10)
    ins = insertion(model, x, maps, 0, protocol="gradmask_clean", fill="black")
    dele = deletion(model, x, maps, 0, protocol="gradmask_clean", fill="black")
    p = np.asarray((0, *GRADMASK_PERCENT), float)
    np.testing.assert_allclose(ins["fractions"], p / 100)
    ins_curve = 1 / (1 + np.exp(-p / 10))
    del_curve = 1 / (1 + np.exp(-(100 - p) / 10))
    np.testing.assert_allclose(ins["curve"][0], ins_curve, rtol=1e-6)
    assert ins["curve"][0, 0] == pytest.approx(0.5)
    assert dele["curve"][0, 0] == pytest.approx(ins["score_full"][0], rel=1e-6)
    np.testing.assert_allclose(ins["auc"], np.trapezoid(ins_curve, p / 100), rtol=1e-6)
    np.testing.assert_allclose(dele["auc"], np.trapezoid(del_curve, p / 100), rtol=1e-6)
    compat = insertion(model, x, maps, 0, protocol="gradmask", fill="black")["auc"][0]
    first = (ins_curve[0] + ins_curve[1]) / 2 * 0.01
    assert ins["auc"][0] == pytest.approx(compat / 100 + first, rel=1e-6)
    assert 0 <= dele["auc"][0] <= 1


def test_clean_variant_upsamples_nearest():
    model = NormalizedModel(Mean(), mean=(0.0,) * 3, std=(1.0,) * 3).eval()
    x = torch.zeros(1, 3, 4, 4)
    x[:, :, :2, 2:] = 1.0
    coarse = torch.tensor([[[[0.1, 0.9], [0.2, 0.3]]]])
    out = insertion(model, x, coarse, 0, protocol="gradmask_clean", fill="black")
    full = torch.softmax(model(x), 1)[0, 0].item()
    assert out["curve"][0][1 + GRADMASK_PERCENT.index(30)] == pytest.approx(full, rel=1e-6)
