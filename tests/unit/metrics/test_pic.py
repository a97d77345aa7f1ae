"""PIC metrics, SIC and AIC (`metrics.md` §5): the PAIR oracle, a hand-computed curve, the
ordering of maps, the §5.4 invariants, exclusions, batch invariance and the metric contract."""
import importlib

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from helpers.pair_oracle import pair_pic, pair_saliency
from xaipipe.maths.imageops import gaussian_blur
from xaipipe.metrics import MetricInputs, get_metric, pic
from xaipipe.metrics.pic import (PAIR_THRESHOLDS, Pic, curve_grid, interpolated_image,
                                 random_mask)
from xaipipe.models import NormalizedModel

PIC = importlib.import_module("xaipipe.metrics.pic")   # the module (pic is the function)


def detail(x):
    """Mean absolute difference of neighbouring pixels, per image."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3))
            + (x[..., :, 1:] - x[..., :, :-1]).abs().mean((1, 2, 3)))


class Detail(nn.Module):
    """Class 0's logit grows with the image's detail (optionally inside ``region`` only): the
    interpolated "blurred" image is smooth and scores low, textured originals score high."""

    def __init__(self, gain=40.0, bias=-4.0, region=None):
        super().__init__()
        self.gain, self.bias, self.region = gain, bias, region

    def forward(self, x):
        if self.region is not None:
            x = x[..., self.region[0], self.region[1]]
        z = self.gain * detail(x) + self.bias
        return torch.stack([z, torch.zeros_like(z), -z], 1)


def plain(net):
    return NormalizedModel(net, mean=(0.0,) * 3, std=(1.0,) * 3).eval()


def textured(n=6, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for i in range(n):
        f = 0.3 + 0.25 * i
        base = 0.5 + 0.4 * torch.sin(f * xx + i) * torch.cos(f * yy)
        out.append(torch.stack([base, base.roll(i, 0), 1 - base])
                   + 0.05 * torch.rand(3, size, size, generator=g))
    return torch.stack(out).clamp(0, 1)


# -- (1) the PAIR oracle ----------------------------------------------------------------------
def test_interpolated_image_is_pairs_blurred_image_bit_for_bit():
    g = np.random.default_rng(0)
    img = (textured(1, 20)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    with pair_saliency() as (_, P):
        for frac in (0.0, 0.01, 0.1, 0.5, 0.9):
            known = g.random((20, 20)) < frac
            np.testing.assert_array_equal(interpolated_image(img, known),
                                          P.create_blurred_image(img, known), err_msg=str(frac))
        block = np.zeros((20, 20), bool)            # structured masks: many cocircular ties
        block[4:15, 3:12] = True
        block[8, 6] = False
        np.testing.assert_array_equal(interpolated_image(img, block),
                                      P.create_blurred_image(img, block))
        np.testing.assert_array_equal(interpolated_image(img, np.ones((20, 20), bool)), img)


def test_pair_variant_matches_compute_pic_metric():
    model = plain(Detail())
    x = textured(6, 24)
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(6, 3, 24, 24, generator=g)
    target = torch.tensor([0, 0, 0, 0, 0, 1])               # image 5: wrong class
    masks = np.stack([random_mask(24, 24, 0, i) for i in range(6)])
    ours = pic(model, x, maps, target, variant="pair", random_mask=masks, batch_size=5)
    ref = pair_pic(model, x, maps, target, masks, PAIR_THRESHOLDS)
    assert ours["sic_curve"].shape == ours["aic_curve"].shape == (6, 1001)
    for score in ("sic", "aic"):
        kept = np.array([r[score] is not None for r in ref])
        np.testing.assert_array_equal(ours[f"{score}_valid"], kept, err_msg=score)
        for i in np.flatnonzero(kept):
            r = ref[i][score]
            np.testing.assert_array_equal(r.curve_x, curve_grid(1000))
            # SIC: the only difference is the batched forward (float32 ulps)
            tol = 1e-6 if score == "sic" else 0.0
            np.testing.assert_allclose(ours[f"{score}_curve"][i], r.curve_y, rtol=0, atol=tol)
            assert abs(ours[f"{score}_auc"][i] - r.auc) <= tol
    # the case must exercise both outcomes
    assert ours["sic_valid"].sum() >= 3 and not ours["sic_valid"].all()
    assert ours["sic_reason"][0] == "min_pred" and ours["aic_reason"][5] == "min_pred"
    assert ours["aic_valid"][:5].all()
    # the default masks are those of (seed, image id)
    again = pic(model, x, maps, target, variant="pair")
    for k in ours:
        np.testing.assert_array_equal(again[k], ours[k], err_msg=k)


# -- (2) a hand-computed curve ----------------------------------------------------------------
class LevelTable(nn.Module):
    """Logits [z(k), 0] where k = number of revealed (white) pixels of a 4x4 image on black,
    and z is read from a table at k/4 (levels 0, 4, 8, 12, 16 pixels)."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)

    def forward(self, x):
        k = (x[:, 0].flatten(1).sum(1) / 4).round().long()
        z = self.table[k]
        return torch.stack([z, torch.zeros_like(z)], 1)


def revealed_pixels(image):                   # a predictable "entropy": the white pixels
    return int((image > 0).all(-1).sum())


def hand_case(table, monkeypatch, entropy=revealed_pixels, **params):
    monkeypatch.setattr(PIC, "png_size", entropy)
    x, fill = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    maps = -torch.arange(16.0).view(1, 1, 4, 4)              # reveal in raster order
    return pic(plain(LevelTable(table)), x, maps, 0, variant="tmlr", fill_images=fill,
               levels=5, **params)


def test_tmlr_hand_computed_curve(monkeypatch):
    table = [-3.0, 1.0, -0.5, 2.0, 4.0]
    out = hand_case(table, monkeypatch)
    s = 1 / (1 + np.exp(-np.array(table)))                   # p(level)
    y = (s - s[0]) / (s[-1] - s[0])
    y_mono = np.array([0.0, y[1], y[1], y[3], 1.0])          # running max
    x = np.array([0.0, 0.25, 0.5, 0.75, 1.0])                # entropy k/16
    grid = curve_grid(100)
    np.testing.assert_allclose(out["sic_curve"][0], np.interp(grid, x, y_mono), atol=1e-7)
    auc = 0.25 * sum((y_mono[j] + y_mono[j + 1]) / 2 for j in range(4))
    assert out["sic_auc"][0] == pytest.approx(auc, abs=1e-7)
    # AIC: top-1 correct iff z >= 0 (ties go to class 0): 0, 1, 0, 1, 1 -> max 0, 1, 1, 1, 1
    assert out["aic_auc"][0] == pytest.approx(0.25 * 0.5 + 0.75)
    # AIC points take only 0 and 1 (the levels lie on the grid)
    assert set(out["aic_curve"][0][[0, 25, 50, 75, 100]]) == {0.0, 1.0}
    # without keep_monotonous the dip at level 2 stays
    raw = hand_case(table, monkeypatch, keep_monotonous=False)
    assert raw["sic_curve"][0][50] == pytest.approx(max(y[2], 0.0), abs=1e-7)
    assert raw["aic_curve"][0][50] == 0.0


@pytest.mark.parametrize("table, entropy, reason", [
    ([-3.0, 0.0, 0.0, 0.0, 1.0], revealed_pixels, "min_pred"),      # p_orig = 0.73 < 0.8
    ([5.0, 0.0, 0.0, 0.0, 4.0], revealed_pixels, "blur_pred"),       # p_blur > p_orig
    ([-3.0, 0.0, 0.0, 0.0, 4.0], lambda im: 16 - revealed_pixels(im), "blur_entropy"),
])
def test_each_exclusion_gives_its_reason(table, entropy, reason, monkeypatch):
    out = hand_case(table, monkeypatch, entropy=entropy)
    assert out["sic_reason"][0] == reason and not out["sic_valid"][0]
    assert np.isnan(out["sic_auc"][0]) and np.isnan(out["sic_curve"][0]).all()


def test_tmlr_excludes_both_curves_pair_each_separately(monkeypatch):
    # SIC passes (p 0.62 -> 0.98) but the blurred image is already classified correctly
    # (z = 0.5 > 0): AIC fails with blur_pred, and TMLR drops the image from both. Each
    # reason is the curve's own first failure (the study's code raises per curve): SIC's
    # none, AIC's blur_pred.
    out = hand_case([-3.0 + 3.5, 0.0, 0.0, 0.0, 4.0], monkeypatch)
    assert out["sic_reason"][0] == "" and out["aic_reason"][0] == "blur_pred"
    assert not out["sic_valid"][0] and not out["aic_valid"][0]
    assert np.isnan(out["sic_auc"][0]) and np.isnan(out["aic_curve"][0]).all()
    # the other way round: SIC fails (p_orig = 0.73 < 0.8), AIC passes (0 -> 1)
    out2 = hand_case([-3.0, 0.0, 0.0, 0.0, 1.0], monkeypatch)
    assert out2["sic_reason"][0] == "min_pred" and out2["aic_reason"][0] == ""
    assert not out2["sic_valid"][0] and not out2["aic_valid"][0]
    # the summary counts each curve's exclusions by its own reason, and those it passes but
    # loses to the other curve apart
    df = pd.DataFrame({k: [v[0] for v in (out[k], out2[k])] for k in
                       ("sic_curve", "aic_curve", "sic_valid", "aic_valid", "sic_reason",
                        "aic_reason")})
    rows = {r["score"]: r for r in Pic.aggregate(df, n_boot=0)}
    assert (rows["sic"]["n"], rows["sic"]["excluded"], rows["sic"]["excluded_min_pred"],
            rows["sic"]["excluded_blur_pred"], rows["sic"]["excluded_other_curve"]) == \
        (0, 2, 1, 0, 1)
    assert (rows["aic"]["n"], rows["aic"]["excluded"], rows["aic"]["excluded_min_pred"],
            rows["aic"]["excluded_blur_pred"], rows["aic"]["excluded_other_curve"]) == \
        (0, 2, 0, 1, 1)
    # PAIR variant: the same situation excludes AIC only
    model = plain(Detail(gain=40.0, bias=-0.2))
    x = textured(2, 24)
    res = pic(model, x, torch.randn(2, 3, 24, 24), 0)
    assert res["sic_valid"].all() and (res["aic_reason"] == "blur_pred").all()


# -- (3) a map that reveals the object first beats its reverse --------------------------------
@pytest.mark.parametrize("variant", ["pair", "tmlr"])
def test_object_first_beats_reverse(variant):
    size = 24
    g = torch.Generator().manual_seed(5)
    region = (slice(8, 16), slice(8, 16))
    x = 0.5 + 0.45 * (torch.rand(3, 3, size, size, generator=g) * 2 - 1)    # noisy background
    model = plain(Detail(gain=40.0, bias=-4.0, region=region))
    obj = torch.zeros(3, 1, size, size)
    obj[..., 8:16, 8:16] = 1.0
    smooth = torch.rand(3, 1, size, size, generator=g) * 1e-3       # break ties
    fill = gaussian_blur(x, 3.0) if variant == "tmlr" else None
    good = pic(model, x, obj + smooth, 0, variant=variant, fill_images=fill)
    bad = pic(model, x, 1 - obj + smooth, 0, variant=variant, fill_images=fill)
    assert good["sic_valid"].all() and bad["sic_valid"].all()
    assert (good["sic_auc"] > bad["sic_auc"] + 0.2).all()
    assert (good["aic_auc"][good["aic_valid"]] >= bad["aic_auc"][good["aic_valid"]]).all()


# -- (4) §5.4 invariants ----------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["pair", "tmlr"])
def test_curve_invariants(variant):
    x = textured(6, 24, seed=2)
    maps = torch.randn(6, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    fill = gaussian_blur(x, 4.0) if variant == "tmlr" else None
    out = pic(plain(Detail()), x, maps, 0, variant=variant, fill_images=fill)
    k = 1001 if variant == "pair" else 101
    for score in ("sic", "aic"):
        c, ok = out[f"{score}_curve"], out[f"{score}_valid"]
        assert c.shape == (6, k) and ok.sum() >= 3, score
        v = c[ok]
        assert (v[:, 0] == 0).all() and (v[:, -1] == 1).all()
        assert ((v >= 0) & (v <= 1)).all()
        # keep_monotonous makes y a running max over the *levels*; the entropy of the levels
        # need not grow, so after sorting by x the curve may still dip (PAIR's code does the
        # same; the oracle test checks it). Where the levels' entropy grows, it never dips:
        # see test_tmlr_hand_computed_curve.
        auc = out[f"{score}_auc"][ok]
        assert ((auc >= 0) & (auc <= 1)).all()
        np.testing.assert_allclose(auc, np.trapezoid(v, curve_grid(k - 1), axis=1))
        assert np.isnan(out[f"{score}_auc"][~ok]).all()
        assert set(out[f"{score}_reason"][ok]) <= {""}
    if variant == "tmlr":
        np.testing.assert_array_equal(out["sic_valid"], out["aic_valid"])


def test_compat_and_argument_checks():
    x = textured(2, 16)
    maps = torch.randn(2, 3, 16, 16)
    fill = gaussian_blur(x, 3.0)
    model = plain(Detail())
    # one channel, so the reduction is the identity: values 1 + 1e-5·j collapse to a few
    # float16 values, so compat tmlr ranks them as their float16 copies, unlike clean
    fine = (1 + 1e-5 * torch.arange(256.0)).view(1, 1, 16, 16).repeat(2, 1, 1, 1)
    kw = {"variant": "tmlr", "fill_images": fill, "min_pred_value": 0.0}
    a = pic(model, x, fine, 0, compat="tmlr", **kw)
    b = pic(model, x, fine.half().float(), 0, compat="tmlr", **kw)
    clean = pic(model, x, fine, 0, **kw)
    assert a["sic_valid"].all()
    np.testing.assert_array_equal(a["sic_curve"], b["sic_curve"])
    assert not np.array_equal(a["sic_curve"], clean["sic_curve"])
    with pytest.raises(ValueError, match="compat 'tmlr' applies to variant 'tmlr'"):
        pic(model, x, maps, 0, compat="tmlr")
    with pytest.raises(ValueError, match="needs the blurred images"):
        pic(model, x, maps, 0, variant="tmlr")
    with pytest.raises(ValueError, match="random_mask must be"):
        pic(model, x, maps, 0, random_mask=np.zeros((2, 8, 8), bool))
    assert random_mask(10, 10, 0, 3).sum() == 1 and random_mask(64, 64, 0, 3).sum() == 40


# -- (5) batch invariance ---------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["pair", "tmlr"])
def test_an_image_scores_the_same_alone_or_in_a_batch(variant):
    x = textured(4, 20, seed=4)
    maps = torch.randn(4, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    fill = gaussian_blur(x, 3.0)
    ids = np.array([11, 12, 13, 14])
    kw = {"fill_images": fill} if variant == "tmlr" else {}
    model = plain(Detail())
    whole = pic(model, x, maps, 0, variant=variant, ids=ids, batch_size=7, **kw)
    for i in range(4):
        kw_i = {"fill_images": fill[i:i + 1]} if variant == "tmlr" else {}
        one = pic(model, x[i:i + 1], maps[i:i + 1], 0, variant=variant, ids=ids[i:i + 1],
                  batch_size=3, **kw_i)
        for k, v in one.items():
            if v.dtype.kind == "f":
                np.testing.assert_allclose(v[0], whole[k][i], atol=1e-6, equal_nan=True)
            else:
                assert v[0] == whole[k][i], k
    if variant == "pair":                        # the random mask follows the id
        other = pic(model, x[:1], maps[:1], 0, ids=[99])
        assert not np.array_equal(other["sic_curve"], whole["sic_curve"][:1])


# -- (6) the metric contract and the aggregation ----------------------------------------------
def test_metric_through_the_contract():
    cls = get_metric("pic")
    assert cls is Pic and cls.scalars == ("sic", "aic") and cls.direction == "higher"
    assert Pic().needs == {"model", "images"} and Pic().other_variant() is None
    tm = Pic(variant="tmlr")
    assert tm.needs == {"model", "images", "other_images"} and tm.other_variant() == "blur"
    x = textured(3, 20)
    maps = torch.randn(3, 3, 20, 20)
    model = plain(Detail()).train()
    inputs = MetricInputs(ids=np.array([5, 6, 7]), target=torch.zeros(3, dtype=torch.long),
                          maps=maps, model=model, images=x, batch_size=4)
    out = Pic()(inputs)
    assert model.training
    ref = pic(model, x, maps, 0, ids=[5, 6, 7])
    np.testing.assert_array_equal(out["sic"], ref["sic_auc"])
    np.testing.assert_array_equal(out["aic_curve"], ref["aic_curve"])
    np.testing.assert_array_equal(out["sic_excluded"], ~ref["sic_valid"])
    assert out["sic_reason"].dtype.kind == "U"


def test_aggregate_median_and_mean_curves():
    grid = curve_grid(2)                                   # [0, 0.5, 1]
    curves = [np.array([0.0, 0.2, 1.0]), np.array([0.0, 0.6, 1.0]),
              np.array([0.0, 0.9, 1.0]), np.full(3, np.nan)]
    aic = [np.array([0.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0]),
           np.full(3, np.nan), np.full(3, np.nan)]
    df = pd.DataFrame({
        "image_id": [1, 2, 3, 4], "target": [0, 0, 0, 0],
        "sic_curve": curves, "aic_curve": aic,
        "sic_valid": [True, True, True, False], "aic_valid": [True, True, False, False],
        "sic_reason": ["", "", "", "min_pred"], "aic_reason": ["", "", "blur_pred", "min_pred"],
    })
    rows = {r["score"]: r for r in Pic.aggregate(df, n_boot=300, seed=4)}
    # SIC: median curve [0, 0.6, 1] -> 0.5 * (0.3 + 0.8) = 0.55
    assert rows["sic"]["mean"] == pytest.approx(0.55)
    # AIC: mean curve [0, 0.5, 1] -> 0.5
    assert rows["aic"]["mean"] == pytest.approx(np.trapezoid([0, 0.5, 1.0], grid))
    assert (rows["sic"]["n"], rows["sic"]["excluded"]) == (3, 1)
    assert (rows["aic"]["n"], rows["aic"]["excluded"]) == (2, 2)
    assert rows["sic"]["excluded_min_pred"] == 1 and rows["sic"]["excluded_blur_pred"] == 0
    assert rows["aic"]["excluded_blur_pred"] == 1 and rows["aic"]["excluded_blur_entropy"] == 0
    assert rows["sic"]["excluded_other_curve"] == rows["aic"]["excluded_other_curve"] == 0
    for r in rows.values():
        assert r["ci_low"] <= r["mean"] <= r["ci_high"] and r["direction"] == "higher"
    # SIC bootstrap bounds: the median curve's middle value is one of 0.2, 0.6, 0.9
    assert rows["sic"]["ci_low"] >= 0.5 * (0.1 + 0.6) - 1e-12
    assert rows["sic"]["ci_high"] <= 0.5 * (0.45 + 0.95) + 1e-12
    assert Pic.aggregate(df, n_boot=300, seed=4) == Pic.aggregate(df, n_boot=300, seed=4)
    empty = {r["score"]: r for r in Pic.aggregate(df.iloc[3:], n_boot=10)}
    assert empty["sic"]["n"] == 0 and np.isnan(empty["sic"]["mean"])
