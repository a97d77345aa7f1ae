"""CP scores (`metrics.md` §8): invariants, a hand-computed case, and the registered metric."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from xaipipe.metrics.base import MetricInputs, get_metric
from xaipipe.maths.information import entropy, explanation_image
from xaipipe.metrics.cp import CPScores, cp_scores, retained_information

CP = ("cp_l1_pixel", "cp_l1", "cp_entropy")


class TinyNet(nn.Module):
    """A small conv net with BatchNorm and Dropout, so train mode would change its outputs."""

    def __init__(self, classes=5):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.5),
                                  nn.Linear(16, classes))
        with torch.no_grad():            # non-trivial running stats
            self.body[1].running_mean.uniform_(-0.2, 0.2)
            self.body[1].running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.body(x)


class SumLogit(nn.Module):
    """logits = [Σx, 0]: softmax p_0 = sigmoid(Σx), by hand."""

    def forward(self, x):
        s = x.flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


def batch(n=4, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    coeffs = torch.randn(n, 3, k, 8, 8, generator=g)
    mask = torch.rand(n, 1, k, 8, 8, generator=g)
    return x, coeffs, mask


def h_np(v):
    e = np.abs(np.asarray(v, np.float64)).ravel() ** 2
    q = e / e.sum()
    return float(-(q * np.log(q + 1e-7)).sum())


def test_entropy_of_one_hot_and_uniform():
    one_hot = torch.zeros(50)
    one_hot[7] = 3.0
    assert abs(float(entropy(one_hot))) < 1e-6
    for n in (2, 10, 1000):
        h = float(entropy(torch.full((n,), 0.3)))
        assert h == pytest.approx(-math.log(1 / n + 1e-7), rel=1e-12)     # exactly, with ε
        assert h == pytest.approx(math.log(n), abs=2 * n * 1e-7)            # ≈ ln n
    # per-row over the given dims, float64, sign and complex phase do not matter
    v = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 2.0, 0.0]])
    h = entropy(v, dims=1)
    assert h.dtype == torch.float64 and h.shape == (2,)
    assert h[0].item() == pytest.approx(math.log(4), rel=1e-6) and abs(h[1].item()) < 1e-6
    assert entropy(v.to(torch.complex64) * 1j, dims=1).tolist() == pytest.approx(h.tolist())
    assert float(entropy(torch.zeros(5))) == 0.0


def test_cp_is_one_when_nothing_is_removed():
    model = TinyNet().eval()
    x, coeffs, _ = batch()
    ones = torch.ones(4, 1, 3, 8, 8)
    t = torch.tensor([0, 1, 2, 3])
    for kw in ({"coeffs": coeffs, "mask": ones}, {}):          # representation, pixel space
        out = cp_scores(model, x, x, t, normalize=False, entropy_exp=True, **kw)
        for k in CP + ("cp_entropy_exp", "retained_probability", "retained_l1_pixel",
                       "retained_l1", "retained_entropy"):
            np.testing.assert_allclose(out[k], 1.0, rtol=1e-6, err_msg=f"{k} {kw.keys()}")
        assert not out["undefined_l1"].any() and not out["undefined_entropy"].any()


def test_hand_computed_case_and_compat_numerator():
    x = torch.full((1, 3, 2, 2), 0.75)   # exact in float32
    xe = x.clone()
    xe[..., 1] = 0.0                                     # the right half removed
    sig = lambda z: 1 / (1 + math.exp(-z))               # noqa: E731
    out = cp_scores(SumLogit(), x, xe, 0, normalize=False)
    rcp = sig(4.5) / sig(9.0)
    h_ratio = h_np(xe) / h_np(x)                         # ≈ ln 6 / ln 12
    assert h_ratio == pytest.approx(math.log(6) / math.log(12), rel=1e-5)
    assert out["retained_probability"][0] == pytest.approx(rcp, rel=1e-9)
    assert out["retained_l1_pixel"][0] == pytest.approx(0.5, rel=1e-12)
    assert out["cp_l1_pixel"][0] == pytest.approx(rcp / 0.5, rel=1e-9)
    assert out["cp_l1"][0] == pytest.approx(rcp / 0.5, rel=1e-9)      # pixel fallback
    assert out["cp_entropy"][0] == pytest.approx(rcp / h_ratio, rel=1e-9)
    assert not out["l1_from_extras"][0] and not out["entropy_from_extras"][0]
    # normalised: x_E / 0.75 has Σ|x_E| = 6 against Σx = 9; logits Σ = 6
    out_n = cp_scores(SumLogit(), x, xe, 0)
    assert out_n["retained_l1_pixel"][0] == pytest.approx(6 / 9, rel=1e-9)
    assert out_n["retained_probability"][0] == pytest.approx(sig(6.0) / sig(9.0), rel=1e-9)
    # class 1: clean uses p_1, compat the max probability (class 0 on both)
    c1 = cp_scores(SumLogit(), x, xe, 1, normalize=False)
    assert c1["retained_probability"][0] == pytest.approx(sig(-4.5) / sig(-9.0), rel=1e-9)
    comp = cp_scores(SumLogit(), x, xe, 1, normalize=False, compat=True)
    assert comp["retained_probability"][0] == pytest.approx(rcp, rel=1e-9)
    assert CPScores(compat="shearletx").hparams.compat == "shearletx"


def test_cp_l1_pixel_does_not_depend_on_the_representation():
    model = TinyNet().eval()
    x, coeffs, mask = batch()
    xe = x * 0.5
    a = cp_scores(model, x, xe, 1, coeffs=coeffs, mask=mask)
    g = torch.Generator().manual_seed(5)
    parts = [torch.randn(4, 3, 6, generator=g), torch.randn(4, 3, 2, 4, 4, generator=g)]
    masks = [torch.rand(4, 1, 6, generator=g), torch.rand(4, 1, 2, 4, 4, generator=g)]
    b = cp_scores(model, x, xe, 1, coeffs=parts, mask=masks)
    c = cp_scores(model, x, xe, 1)
    for k in ("cp_l1_pixel", "retained_l1_pixel", "retained_probability"):
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[k], c[k])
    assert not np.allclose(a["cp_l1"], b["cp_l1"]) and not np.allclose(a["cp_l1"], c["cp_l1"])
    # the representation values are the joint ones over all parts
    kept = np.concatenate([(m * p).flatten(1).numpy() for m, p in zip(masks, parts)], 1)
    full = np.concatenate([p.flatten(1).numpy() for p in parts], 1)
    for i in range(4):
        assert b["retained_l1"][i] == pytest.approx(np.abs(kept[i]).sum() / np.abs(full[i]).sum(),
                                                    rel=1e-6)
        assert b["retained_entropy"][i] == pytest.approx(h_np(kept[i]) / h_np(full[i]), rel=1e-6)


def test_mask_broadcasts_like_the_expanded_mask():
    x, coeffs, mask = batch()
    small = retained_information(coeffs, mask, batch_size=3)
    full = retained_information(coeffs, mask.expand_as(coeffs).clone(), batch_size=64)
    for k in small:
        np.testing.assert_allclose(small[k], full[k], rtol=1e-12, err_msg=k)
    kept, c = mask.double() * coeffs.double(), coeffs.double()
    np.testing.assert_allclose(small["retained_l1"],
                               (kept.abs().flatten(1).sum(1) / c.abs().flatten(1).sum(1)).numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(small["retained_entropy"],
                               [h_np(kept[i]) / h_np(c[i]) for i in range(4)], rtol=1e-9)
    # a mask shared by all images, and one that does not broadcast
    shared = retained_information(coeffs, mask[:1], batch_size=3)
    np.testing.assert_allclose(shared["retained_l1"], retained_information(
        coeffs, mask[:1].expand(4, -1, -1, -1, -1))["retained_l1"], rtol=1e-12)
    with pytest.raises(ValueError, match="does not broadcast"):
        retained_information(coeffs, torch.ones(4, 2, 3, 8, 8))
    with pytest.raises(ValueError, match="both coeffs and mask"):
        cp_scores(TinyNet(), x, x, 0, coeffs=coeffs)


def test_normalize_divides_each_explanation_by_its_max():
    model = TinyNet().eval()
    x, _, _ = batch()
    scale = torch.tensor([0.2, 0.5, 1.0, 3.0]).view(-1, 1, 1, 1)
    xe = x * scale
    top = xe.flatten(1).amax(1).view(-1, 1, 1, 1)
    np.testing.assert_allclose(explanation_image(xe, x).numpy(), (xe / top).numpy(), rtol=1e-6)
    norm = cp_scores(model, x, xe, 2)
    by_hand = cp_scores(model, x, xe / top, 2, normalize=False)
    raw = cp_scores(model, x, xe, 2, normalize=False)
    for k in ("cp_l1_pixel", "retained_probability", "cp_entropy"):
        np.testing.assert_allclose(norm[k], by_hand[k], rtol=1e-5, err_msg=k)
    assert not np.allclose(norm["retained_l1_pixel"], raw["retained_l1_pixel"])
    np.testing.assert_allclose(raw["retained_l1_pixel"],
                               (xe.abs().flatten(1).sum(1) / x.flatten(1).sum(1)).numpy(),
                               rtol=1e-6)
    # an all-zero explanation is left as it is and gives undefined (flagged) CP, no error
    zero = torch.zeros_like(x)
    assert torch.equal(explanation_image(zero, x), zero)
    out = cp_scores(model, x, zero, 0)
    for k, flag in (("cp_l1_pixel", "undefined_l1_pixel"), ("cp_l1", "undefined_l1"),
                    ("cp_entropy", "undefined_entropy")):
        assert np.isnan(out[k]).all() and out[flag].all(), k
    assert np.isfinite(out["retained_probability"]).all()


def test_compat_scores_the_smooth_masks_explanation_unscaled():
    """The reference (scatterplot.py) divides every method's x_E by its max but the smooth
    mask's: under compat the metric does the same, knowing the method from the inputs
    (the store's method_name); in the clean form every map is normalised."""
    model = TinyNet().eval()
    x, _, _ = batch()
    xe = x * torch.tensor([0.2, 0.5, 1.0, 3.0]).view(-1, 1, 1, 1)
    t = torch.full((4,), 2)

    def score(method, **kw):
        return CPScores(**kw)(MetricInputs(ids=np.arange(4), target=t, maps=xe, model=model,
                                           images=x, method=method))

    def same(a, b):
        return all(np.allclose(a[k], b[k], rtol=1e-6, equal_nan=True) for k in CP)
    for method in ("shearletx", "waveletx", "pixel_mask", None):      # divided by their max
        assert not same(score(method, compat=True), score(method, compat=True, normalize=False))
    smooth = score("smooth_mask", compat=True)
    assert same(smooth, score("shearletx", compat=True, normalize=False))
    assert not same(smooth, score("shearletx", compat=True))
    # clean form: the smooth mask's maps are normalised like any other
    assert same(score("smooth_mask"), score("shearletx"))
    assert same(score("smooth_mask", compat=True, normalize=False),
                score("shearletx", compat=True, normalize=False))


def test_model_runs_in_eval_mode_and_keeps_its_mode():
    model = TinyNet()
    x, coeffs, mask = batch()
    ref = cp_scores(model.eval(), x, x * 0.7, 1, coeffs=coeffs, mask=mask)
    model.train()
    model.body[1].eval()                             # mixed modes come back exactly
    modes = [m.training for m in model.modules()]
    torch.manual_seed(123)
    out = cp_scores(model, x, x * 0.7, 1, coeffs=coeffs, mask=mask, batch_size=3)
    assert [m.training for m in model.modules()] == modes
    for k in ref:                                    # eval mode: no dropout, running stats
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-6, err_msg=k)


def test_registered_metric_uses_extras_when_present():
    model = TinyNet().eval()
    x, coeffs, mask = batch()
    xe = (x * 0.6).clamp(0, 1)
    t = torch.tensor([4, 3, 2, 1])
    assert get_metric("cp") is CPScores
    assert CPScores.needs == {"model", "images", "extras"} and CPScores.direction == "higher"
    assert CPScores.scalars == CP
    info = retained_information(coeffs, mask)
    history = np.random.default_rng(0).random((4, 7))
    extras = {"final_retained_l1": info["retained_l1"].astype(np.float32),
              "final_retained_entropy": info["retained_entropy"].astype(np.float32),
              "retained_l1": history, "retained_entropy": history, "cp_l1": history}
    inputs = MetricInputs(ids=np.arange(10, 14), target=t, maps=xe, model=model, images=x,
                          extras=extras, batch_size=2)
    got = get_metric("cp")()(inputs)
    want = cp_scores(model, x, xe, t, coeffs=coeffs, mask=mask)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)
    assert got["l1_from_extras"].all() and got["entropy_from_extras"].all()
    # histories alone (N, T) are not final values: pixel-space fallback, like no extras
    hist_only = {k: v for k, v in extras.items() if not k.startswith("final_")}
    pix = cp_scores(model, x, xe, t)
    for ex in (hist_only, {}, {"completeness_gap": np.zeros(4)}):
        out = CPScores()(MetricInputs(ids=np.arange(4), target=t, maps=xe, model=model,
                                      images=x, extras=ex))
        for k in pix:
            np.testing.assert_allclose(out[k], pix[k], rtol=1e-6, err_msg=k)
        assert not out["l1_from_extras"].any() and not out["entropy_from_extras"].any()
    np.testing.assert_allclose(pix["retained_l1"], pix["retained_l1_pixel"])
    # entropy_exp needs the raw entropies when the ratio comes from extras
    with pytest.raises(ValueError, match="raw entropies"):
        CPScores(entropy_exp=True)(inputs)
    exp = cp_scores(model, x, xe, t, coeffs=coeffs, mask=mask, entropy_exp=True)
    np.testing.assert_allclose(
        exp["cp_entropy_exp"],
        exp["retained_probability"] / np.exp(np.array(
            [h_np(mask[i] * coeffs[i]) - h_np(coeffs[i]) for i in range(4)])), rtol=1e-6)
