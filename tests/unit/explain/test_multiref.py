"""Multi-reference path estimators (IG-Uniform, IG-SG, IG-SQ, Expected Gradients), attribution
re-calibration (Yang et al., ICLR 2023) on them and on IG, the reference code's quirks under
``compat``, and the reference code's class-contrastive objective."""
import pytest
import torch
from torch import nn

from helpers.multiref import direct
from xaipipe.errors import ConfigError
from xaipipe.explain import explain, explain_sweep, get_method, run_method
from xaipipe.explain.paths.integrated_gradients import IntegratedGradients
from xaipipe.maths.objectives import objective, objective_for

FAMILY = ["ig_uniform", "ig_sg", "ig_sq", "expected_gradients"]
MODES = ["none", "valid_ref", "valid_ip"]


def pool(n=12, size=32, seed=5):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def kw(name, size=32, **extra):
    """Parameters a family member needs to run (EG: a reference pool)."""
    out = {"references": pool(size=size)} if name == "expected_gradients" else {}
    out.update(extra)
    return out


def weights(model, t):
    """∂z_t/∂x̃ of the linear test model (through its normalisation), (N, 3, 8, 8)."""
    w = model.net.fc.weight.detach()[t].view(-1, 3, 8, 8)
    return w / model.normalize.std.view(1, 3, 1, 1)


@pytest.fixture
def x8():
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))


# -- the class-contrastive objective ------------------------------------------------------------
def test_contrast_gradient_through_the_logits_clean_and_ypeiyu():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3, 5])
    onehot = torch.nn.functional.one_hot(t, 6).double()
    w = torch.softmax(z.detach().masked_fill(onehot.bool(), float("-inf")), 1)   # w_y = 0
    (clean,) = torch.autograd.grad(objective(z, t, "contrast").sum(), z)
    assert torch.allclose(clean, onehot - w, atol=1e-12)                 # e_y − w, w detached
    # ypeiyu: value z_y − Σ w_s z_s, weights not detached:
    # ∂/∂z_s = −w_s (1 + z_s − z̄) for s ≠ y, z̄ = Σ_t w_t z_t
    value = objective(z, t, "contrast_ypeiyu")
    zd = z.detach()
    zbar = (w * zd).sum(1, keepdim=True)
    assert torch.allclose(value, zd.gather(1, t[:, None]).squeeze(1) - zbar.squeeze(1))
    (compat,) = torch.autograd.grad(value.sum(), z)
    assert torch.allclose(compat, onehot - w * (1 + zd - zbar), atol=1e-12)
    assert (compat - clean).abs().max() > 1e-2                           # they differ
    # equal non-target logits: the same gradient
    ze = torch.full((1, 6), 0.7, dtype=torch.float64)
    ze[0, 2] = 3.0
    ze.requires_grad_(True)
    (a,) = torch.autograd.grad(objective(ze, torch.tensor([2]), "contrast").sum(), ze)
    (b,) = torch.autograd.grad(objective(ze, torch.tensor([2]), "contrast_ypeiyu").sum(), ze)
    assert torch.allclose(a, b, atol=1e-12)


def test_compat_profiles_choose_the_contrast_variant(cnn):
    assert objective_for("contrast", "ypeiyu") == "contrast_ypeiyu"
    assert objective_for("contrast", None) == objective_for("contrast", "ypeiyu_lpi") == "contrast"
    assert objective_for("logit", "ypeiyu") == "logit"
    for name in FAMILY:
        assert get_method(name)(cnn, objective="contrast", compat="ypeiyu").objective_name == \
            "contrast_ypeiyu"
        assert get_method(name)(cnn, objective="contrast").objective_name == "contrast"
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    clean = explain("ig_uniform", cnn, x, 1, samples=2, steps=2, objective="contrast",
                    recalibrate="none", image_ids=[3])
    compat = explain("ig_uniform", cnn, x, 1, samples=2, steps=2, objective="contrast",
                     recalibrate="none", image_ids=[3], compat="ypeiyu")
    assert (clean - compat).abs().max() > 1e-6


# -- re-calibration -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILY)
def test_recalibrated_maps_are_non_negative(cnn, images, name):
    for mode in ("valid_ref", "valid_ip"):
        out = run_method(name, cnn, images, [0, 1, 2], samples=3, steps=3, recalibrate=mode,
                         **kw(name))
        assert (out.maps >= 0).all() and out.maps.max() > 0, (name, mode)
        frac = out.extras["valid_fraction"]
        assert ((frac > 0) & (frac <= 1)).all()


@pytest.mark.parametrize("name", ["ig_uniform", "ig_sg", "expected_gradients"])
def test_valid_ip_with_one_reference_at_alpha_zero_by_hand(linear_model, x8, name):
    """B = 1, k = 1, α = 0: the point is the reference, φ = max(0, (x̃ − r) ⊙ ∇f(r))."""
    t = torch.tensor([0, 2])
    r = torch.rand(2, 1, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    expect = ((x8 - r[:, 0]) * weights(linear_model, t)).clamp_min(0)
    for mode in ("valid_ip", "valid_ref"):
        phi = explain(name, linear_model, x8, t, samples=1, steps=1, alphas=torch.zeros(1),
                      references=r, recalibrate=mode)
        assert torch.allclose(phi, expect, atol=1e-7), mode
    assert (expect == 0).any() and (expect > 0).any()


def signed_references(linear_model, x, t, scales, flip=None):
    """References r_b = x̃ − s_b·sign(w)·u (u > 0), so every product (x̃ − r_b) ⊙ w ≥ 0; features
    in ``flip`` get r_b = x̃ + s_b·sign(w)·u instead (all their products < 0)."""
    w = weights(linear_model, t)
    u = torch.rand(len(scales), *x.shape, generator=torch.Generator().manual_seed(8)) + 0.1
    sign = torch.sign(w)
    if flip is not None:
        sign[:, flip[0], flip[1], flip[2]] *= -1
    s = torch.tensor(scales).view(-1, 1, 1, 1, 1)
    return (x - s * sign * u).transpose(0, 1).contiguous(), w        # (N, B, 3, 8, 8)


@pytest.mark.parametrize("name", ["ig_uniform", "ig_sg", "expected_gradients"])
def test_valid_ref_equals_vanilla_when_every_product_is_non_negative(linear_model, x8, name):
    t = torch.tensor([1, 0])
    refs, w = signed_references(linear_model, x8, t, [0.2, 0.5, 1.0])
    common = dict(samples=3, steps=3, references=refs)
    vanilla = explain(name, linear_model, x8, t, recalibrate="none", **common)
    valid = explain(name, linear_model, x8, t, recalibrate="valid_ref", **common)
    assert (vanilla >= 0).all()
    assert torch.allclose(valid, vanilla, atol=1e-7)
    # by hand: the gradient is w everywhere, φ = mean_b (x̃ − r_b) ⊙ w
    assert torch.allclose(vanilla, ((x8[:, None] - refs) * w[:, None]).mean(1), atol=1e-6)


@pytest.mark.parametrize("name", FAMILY)
def test_a_feature_whose_products_are_all_negative_gets_zero(linear_model, x8, name):
    t = torch.tensor([2, 1])
    feat = (1, 3, 4)
    refs, w = signed_references(linear_model, x8, t, [0.3, 0.6, 0.9], flip=feat)
    for mode in ("valid_ref", "valid_ip"):
        phi = explain(name, linear_model, x8, t, samples=3, steps=4, references=refs,
                      recalibrate=mode)
        assert (phi[:, feat[0], feat[1], feat[2]] == 0).all(), mode
        others = torch.ones_like(phi, dtype=torch.bool)
        others[:, feat[0], feat[1], feat[2]] = False
        assert (phi[others] > 0).all(), mode
    if name != "ig_sq":
        vanilla = explain(name, linear_model, x8, t, samples=3, steps=4, references=refs,
                          recalibrate="none")
        assert (vanilla[:, feat[0], feat[1], feat[2]] < 0).all()


def test_ig_sq_squares_per_reference_attributions_by_hand(linear_model, x8):
    """Clean IG-SQ: mean_b ((x̃ − r_b) ⊙ ḡ_b)² ≥ 0; re-calibrated: the kept products squared."""
    t = torch.tensor([0, 1])
    refs = torch.rand(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(12))
    w = weights(linear_model, t)
    m = (x8[:, None] - refs) * w[:, None]                              # (N, B, …)
    common = dict(samples=4, steps=3, references=refs)
    vanilla = explain("ig_sq", linear_model, x8, t, recalibrate="none", **common)
    assert (vanilla >= 0).all()
    assert torch.allclose(vanilla, (m * m).mean(1), rtol=1e-5, atol=1e-9)
    valid = explain("ig_sq", linear_model, x8, t, recalibrate="valid_ref", **common)
    keep = m >= 0
    expect = (m * m * keep).sum(1) / keep.sum(1).clamp_min(1)
    assert torch.allclose(valid, expect, rtol=1e-5, atol=1e-9)
    assert not torch.allclose(valid, vanilla)


def test_ig_sq_clean_is_non_negative_on_a_cnn(cnn, images):
    phi = explain("ig_sq", cnn, images, [0, 1, 2], samples=3, steps=3, recalibrate="none")
    assert (phi >= 0).all() and phi.max() > 0


# -- reductions and completeness -----------------------------------------------------------------
def test_one_black_reference_with_linspace_is_ig_pair_mean(cnn, images):
    """B = 1, r = black, α = linspace(0, 1, k): IG's ``pair_mean`` rule over k − 1 segments
    (k points, both ends); re-calibrated the same as IG's own ``recalibrate``."""
    t = [0, 3, 1]
    k = 6
    black = torch.zeros(1, 3, 32, 32)
    for mode in MODES:
        ours = explain("ig_uniform", cnn, images, t, samples=1, steps=k, references=black,
                       recalibrate=mode)
        ig = explain("integrated_gradients", cnn, images, t, steps=k - 1, rule="pair_mean",
                     recalibrate=mode)
        scale = ig.abs().max()
        assert (ours - ig).abs().max() <= 1e-5 * scale, mode
    # and the vanilla map is not another rule's
    right = explain("integrated_gradients", cnn, images, t, steps=k - 1, rule="right")
    assert (ours - right).abs().max() > 1e-3 * right.abs().max()


def test_completeness_for_fixed_references(smooth_cnn):
    """Σφ → f(x̃) − (1/B) Σ_b f(r_b) as k grows (fixed references, linspace), and the
    ``completeness_gap`` extra is that difference."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 32, 32, generator=g)
    refs = torch.rand(2, 3, 3, 32, 32, generator=g)
    t = torch.tensor([1, 3])
    with torch.no_grad():
        f_x = smooth_cnn(x).gather(1, t[:, None]).squeeze(1).double()
        f_r = smooth_cnn(refs.flatten(0, 1)).view(2, 3, -1).gather(
            2, t.view(2, 1, 1).expand(2, 3, 1)).squeeze(2).double().mean(1)
    target = f_x - f_r
    gaps = []
    for k in (4, 16, 64):
        out = run_method("ig_uniform", smooth_cnn, x, t, samples=3, steps=k, references=refs,
                         recalibrate="none")
        gap = out.maps.flatten(1).double().sum(1) - target
        assert torch.allclose(out.extras["completeness_gap"].double(), gap, atol=1e-4)
        assert torch.allclose(out.extras["f_input"].double(), f_x, atol=1e-5)
        assert torch.allclose(out.extras["f_references"].double(), f_r, atol=1e-5)
        gaps.append(gap.abs())
    assert (gaps[2] < gaps[1]).all() and (gaps[1] < gaps[0]).all()
    assert (gaps[2] <= 0.03 * target.abs()).all(), (gaps[2] / target.abs()).tolist()


# -- batching, chunking and draws -----------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILY)
def test_clean_maps_do_not_depend_on_the_batch(cnn, name):
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(13))
    t = torch.arange(8) % 4
    ids = torch.arange(100, 108)
    for mode in MODES:
        common = dict(samples=3, steps=3, recalibrate=mode, **kw(name))
        batch = run_method(name, cnn, x, t, image_ids=ids, **common)
        alone = [run_method(name, cnn, x[i:i + 1], t[i:i + 1], image_ids=ids[i:i + 1],
                            **common) for i in (0, 5)]
        perm = torch.tensor([5, 2, 7, 0, 1, 3, 4, 6])
        shuffled = run_method(name, cnn, x[perm], t[perm], image_ids=ids[perm],
                              memory_mb=0.05, **common)
        for pos, a in zip((0, 5), alone):
            assert torch.allclose(batch.maps[pos], a.maps[0], rtol=1e-5, atol=1e-6), mode
        back = torch.empty_like(shuffled.maps)
        back[perm] = shuffled.maps
        assert torch.allclose(batch.maps, back, rtol=1e-5, atol=1e-6), mode
        for key, value in batch.extras.items():
            assert torch.allclose(value[0], alone[0].extras[key][0], rtol=1e-5, atol=1e-6)


def test_draws(cnn):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(14))
    ids = torch.tensor([1, 2, 3])
    uni = get_method("ig_uniform")(cnn, samples=4, steps=3)
    r = uni.references(x, ids)
    assert r.shape == (3, 4, 3, 32, 32) and (r >= 0).all() and (r < 1).all()
    assert len({float(v) for v in r[:, :, 0, 0, 0].flatten()}) == 12     # every slot its own
    # the estimator does not change the draws; the seed and the image id do
    assert torch.equal(r, get_method("ig_uniform")(cnn, samples=4, steps=3,
                                                   recalibrate="none").references(x, ids))
    assert not torch.equal(r, get_method("ig_uniform")(cnn, samples=4, steps=3,
                                                       seed=1).references(x, ids))
    assert torch.equal(r[1], uni.references(x[1:2], ids[1:2])[0])
    # IG-SG: clip(x̃ + noise) with σ = 0.15 (max − min) of the image
    xs = 0.3 + 0.4 * x[:1]                         # σ = 0.06: clipping 5σ away at least
    sg = get_method("ig_sg")(cnn, samples=200, steps=1).references(xs, ids[:1])[0]
    assert (sg >= 0).all() and (sg <= 1).all()
    resid = sg - xs[0]
    sigma = 0.15 * (xs.max() - xs.min())
    assert abs(resid.std() / sigma - 1) < 0.01 and abs(resid.mean()) < 0.01 * sigma
    wide = get_method("ig_sg")(cnn, samples=20, steps=1).references(x[:1], ids[:1])
    assert (wide >= 0).all() and (wide <= 1).all() and (wide == 0).any() and (wide == 1).any()
    # EG: B of the pool without replacement; α ~ U(0, 1) per (b, j)
    eg = get_method("expected_gradients")(cnn, samples=10, steps=5, references=pool(12))
    refs = eg.references(x, ids)
    rows = [[int((pool(12) == r_b).flatten(1).all(1).nonzero()) for r_b in refs[i]]
            for i in range(3)]
    assert all(len(set(rw)) == 10 for rw in rows) and rows[0] != rows[1]
    a = eg.alpha_grid(x, ids)
    assert a.shape == (3, 10, 5) and (a > 0).all() and (a < 1).all()
    assert len(set(a.flatten().tolist())) == 150


def test_given_coefficients_and_references_are_used_as_given(cnn, linear_model, x8):
    refs = torch.rand(2, 2, 3, 8, 8, generator=torch.Generator().manual_seed(15))
    a = torch.tensor([[0.0, 0.5], [0.25, 1.0]])
    m = get_method("ig_sg")(linear_model, samples=2, steps=2, alphas=a, references=refs)
    assert torch.equal(m.references(x8, [4, 5]), refs)
    assert torch.equal(m.alpha_grid(x8, torch.tensor([4, 5])), a.expand(2, 2, 2))
    # (N, B, k) coefficients per image
    a3 = torch.rand(2, 2, 2, generator=torch.Generator().manual_seed(1))
    m3 = get_method("ig_uniform")(linear_model, samples=2, steps=2, alphas=a3)
    assert torch.equal(m3.alpha_grid(x8, torch.tensor([4, 5])), a3)


def test_bad_parameters_are_named(cnn, images):
    with pytest.raises(ConfigError, match=r"ig_uniform'.alphas: .*k = steps = 5"):
        get_method("ig_uniform").check({"alphas": torch.zeros(4)})
    with pytest.raises(ConfigError, match=r"alphas: .*B = samples = 10"):
        get_method("ig_uniform").check({"alphas": torch.zeros(3, 5)})
    with pytest.raises(ConfigError, match="pool of 4 images cannot give samples = 10"):
        get_method("expected_gradients").check({"references": torch.zeros(4, 3, 8, 8)})
    with pytest.raises(ConfigError, match=r"references: \(N, B, C, H, W\) with B = samples"):
        get_method("ig_sg").check({"references": torch.zeros(2, 3, 3, 8, 8)})
    with pytest.raises(ConfigError, match="compat"):
        get_method("ig_sg").check({"compat": "ypeiyu_lpi"})
    with pytest.raises(ValueError, match="expected_gradients' needs references"):
        explain("expected_gradients", cnn, images, 0)
    with pytest.raises(ValueError, match="references hold 2 images' references for a batch of 3"):
        explain("ig_uniform", cnn, images, 0, samples=10, references=torch.zeros(2, 10, 3, 32, 32))
    with pytest.raises(ValueError, match="references have images of shape"):
        explain("expected_gradients", cnn, images, 0, references=pool(size=16))


# -- compat `ypeiyu` ------------------------------------------------------------------------------
class Recorder(nn.Module):
    """The model, recording every batch it is called on."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.normalize = model.normalize
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x)


def test_compat_pairing_gives_ten_distinct_points(cnn):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(16))
    rec = Recorder(cnn)
    ids = torch.tensor([21])
    # clean: 10 paths of 4 points each, plus x̃ (α = 1) shared by all; ypeiyu: the 10 pairs
    # (reference r, α = (r mod 5)/4), two of which (r = 4, 9) are x̃ itself
    for compat, distinct in ((None, 10 * 4 + 1), ("ypeiyu", 9)):
        m = get_method("ig_uniform")(rec, samples=10, steps=5, compat=compat)
        m.run(x, 0, ids)                                   # warm-up (the memory estimate)
        rec.seen.clear()
        m.run(x, 0, ids)
        pts = torch.cat(rec.seen)
        assert pts.shape[0] == 50                          # B·k evaluations either way
        assert torch.unique(pts.flatten(1), dim=0).shape[0] == distinct, compat
    # which points: reference r at α = (r mod 5)/4 only, each evaluated 5 times
    refs = m.references(x, ids)[0]
    expect = torch.stack([(r % 5) / 4 * x[0] + (1 - (r % 5) / 4) * refs[r] for r in range(10)])
    match = [[r for r in range(10) if torch.equal(p, expect[r])] for p in pts]
    assert all(match)
    for r in range(10):
        assert sum(r in mt for mt in match) == (10 if r % 5 == 4 else 5), r


@pytest.mark.parametrize("name", FAMILY)
def test_streamed_estimators_equal_the_direct_formulas(cnn, name):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(17))
    t = torch.tensor([0, 2, 3])
    ids = [7, 8, 9]
    for compat in (None, "ypeiyu"):
        for mode in MODES:
            m = get_method(name)(cnn, samples=4, steps=3, recalibrate=mode, compat=compat,
                                 max_batch=5, **kw(name))
            assert m.chunk_size(x.shape[1:], "cpu") == 5     # k = 3: groups straddle chunks
            ours = m.run(x, t, ids).maps
            ref = direct(m, cnn, x, t, ids)
            scale = ref.abs().max()
            assert (ours - ref).abs().max() <= 1e-5 * scale, (compat, mode)


@pytest.mark.parametrize("name", ["ig_uniform", "expected_gradients"])
def test_compat_pairing_changes_the_maps(cnn, name):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(18))
    common = dict(image_ids=[1, 2], samples=6, steps=3, **kw(name))
    for mode in MODES:
        clean = explain(name, cnn, x, [1, 2], recalibrate=mode, **common)
        compat = explain(name, cnn, x, [1, 2], recalibrate=mode, compat="ypeiyu", **common)
        assert (clean - compat).abs().max() > 1e-3 * clean.abs().max(), mode
    if name == "ig_uniform":
        # B and k coprime with one α grid: compat visits every (reference, α) pair once, in
        # another order, so valid_ip (a mean over all points) is the clean one
        common.update(samples=4)
        clean = explain(name, cnn, x, [1, 2], recalibrate="valid_ip", **common)
        compat = explain(name, cnn, x, [1, 2], recalibrate="valid_ip", compat="ypeiyu",
                         **common)
        assert torch.allclose(clean, compat, rtol=1e-5, atol=1e-7)


def test_ig_sg_compat_mixes_the_batch(cnn):
    """Reference slot b of image n is image (n·B + b) mod N's noisy copy number
    (n·B + b) div N; with equal value ranges (equal σ) exactly that clean reference."""
    g = torch.Generator().manual_seed(19)
    x = torch.rand(3, 3, 32, 32, generator=g) * 0.8 + 0.1
    x[:, 0, 0, 0], x[:, 0, 0, 1] = 0.0, 1.0                   # every image spans [0, 1]
    ids = torch.tensor([31, 32, 33])
    big_b = 4
    clean = get_method("ig_sg")(cnn, samples=big_b, steps=2).references(x, ids)
    mixed = get_method("ig_sg")(cnn, samples=big_b, steps=2, compat="ypeiyu").references(x, ids)
    for n in range(3):
        for b in range(big_b):
            flat = n * big_b + b
            assert torch.equal(mixed[n, b], clean[flat % 3, flat // 3]), (n, b)
    assert not torch.equal(mixed, clean)
    # so a compat map depends on the batch, a clean one does not
    common = dict(samples=big_b, steps=2, recalibrate="none")
    for compat, same in ((None, True), ("ypeiyu", False)):
        batch = explain("ig_sg", cnn, x, 0, image_ids=ids, compat=compat, **common)
        alone = explain("ig_sg", cnn, x[1:2], 0, image_ids=ids[1:2], compat=compat, **common)
        assert torch.allclose(batch[1], alone[0], atol=1e-6) == same, compat


def test_ig_sg_compat_takes_sigma_over_the_batch(cnn):
    g = torch.Generator().manual_seed(20)
    x = torch.rand(2, 3, 32, 32, generator=g)
    x[0] = 0.45 + 0.1 * x[0]                                   # a narrow range
    x[1, 0, 0, 0], x[1, 0, 0, 1] = 0.0, 1.0                    # the full range
    ids = torch.tensor([41, 42])
    big_b = 4
    clean = get_method("ig_sg")(cnn, samples=big_b, steps=2).references(x, ids)
    mixed = get_method("ig_sg")(cnn, samples=big_b, steps=2, compat="ypeiyu").references(x, ids)
    sigma0 = 0.15 * (x[0].max() - x[0].min())
    sigma_batch = 0.15 * (x.max() - x.min())
    # image 0's slot b is image b mod 2's draw b div 2: for b = 0, 2 image 0's own noise
    for b in (0, 2):
        c, m = clean[0, b // 2] - x[0], mixed[0, b] - x[0]
        inside = (clean[0, b // 2] > 0) & (clean[0, b // 2] < 1) & (mixed[0, b] > 0) & \
            (mixed[0, b] < 1) & (c.abs() > 1e-3)
        assert inside.sum() > 100
        assert torch.allclose(m[inside] / c[inside],
                              (sigma_batch / sigma0).expand(int(inside.sum())), rtol=1e-3)
    # a batch of one: its own σ, no mixing: the clean draw
    one = get_method("ig_sg")(cnn, samples=big_b, steps=2, compat="ypeiyu").references(
        x[:1], ids[:1])
    assert torch.equal(one[0], clean[0])


def test_ig_sq_compat_squares_the_mean_gradient_in_normalised_space(linear_model, x8):
    """φ = (1/B) Σ_b σ_c (x̃ − r_b) ⊙ ḡ_b² (ḡ_b = w on a linear model, whatever the pairing):
    signed, unlike the clean (1/B) Σ_b ((x̃ − r_b) ⊙ ḡ_b)²."""
    t = torch.tensor([1, 2])
    refs = torch.rand(2, 5, 3, 8, 8, generator=torch.Generator().manual_seed(21))
    w = weights(linear_model, t)
    std = linear_model.normalize.std.view(1, 3, 1, 1)
    common = dict(samples=5, steps=5, references=refs, recalibrate="none")
    compat = explain("ig_sq", linear_model, x8, t, compat="ypeiyu", **common)
    expect = std * (x8 - refs.mean(1)) * w * w
    assert torch.allclose(compat, expect, rtol=1e-5, atol=1e-9)
    assert (compat < 0).any()
    clean = explain("ig_sq", linear_model, x8, t, **common)
    assert (clean >= 0).all()
    assert torch.allclose(clean, (((x8[:, None] - refs) * w[:, None]) ** 2).mean(1), rtol=1e-5,
                          atol=1e-9)


# -- re-calibrated IG -----------------------------------------------------------------------------
def test_ig_recalibrate_keeps_plain_ig_seeds_and_signatures(cnn):
    plain = IntegratedGradients.check({"baseline": "uniform"})
    assert "recalibrate" not in plain.signature()
    assert "recalibrate" in IntegratedGradients.check({"recalibrate": "valid_ip"}).signature()
    m = IntegratedGradients(cnn, plain)
    assert m.seed_parts(5) == (0, 5, "integrated_gradients",
                               {k: v for k, v in plain.as_dict().items()
                                if k != "recalibrate"})
    with pytest.raises(ConfigError, match=r"recalibrate: 'valid_ip' does not apply with idgi"):
        IntegratedGradients.check({"idgi": True, "recalibrate": "valid_ip"})


@pytest.mark.parametrize("rule", ["right", "left", "pair_mean"])
def test_recalibrated_ig_on_a_linear_model_by_hand(linear_model, x8, rule):
    """The gradient is w on the whole path, so with d = (x̃ − x̃′) ⊙ w and the rule's k points
    α_j (weights 1/k), m_j = (1 − α_j) d / k: where d ≥ 0 all are kept, φ = d·mean_j (1 − α_j)/k;
    where d < 0 only α = 1 (a zero product) is, φ = 0 (or 0/1 without it)."""
    t = torch.tensor([0, 2])
    m = 4
    d = x8 * weights(linear_model, t)                          # black baseline
    alphas = {"right": torch.arange(1, m + 1) / m, "left": torch.arange(m) / m,
              "pair_mean": torch.arange(m + 1) / m}[rule].double()
    k = len(alphas)
    expect = d.clamp_min(0) * float((1 - alphas).mean()) / k
    phi = explain("integrated_gradients", linear_model, x8, t, steps=m, rule=rule,
                  recalibrate="valid_ip")
    assert torch.allclose(phi, expect.float(), rtol=1e-5, atol=1e-9)
    ig = explain("integrated_gradients", linear_model, x8, t, steps=m, rule=rule)
    ref = explain("integrated_gradients", linear_model, x8, t, steps=m, rule=rule,
                  recalibrate="valid_ref")
    assert torch.equal(ref, ig.clamp_min(0)) and (ig < 0).any()


def test_recalibrated_ig_sweep_equals_separate_runs(cnn, images):
    t = [1, 0, 2]
    sweep = explain_sweep("integrated_gradients", cnn, images, t, steps=[4, 8],
                          recalibrate="valid_ip")
    for n in (4, 8):
        alone = explain("integrated_gradients", cnn, images, t, steps=n, recalibrate="valid_ip")
        assert torch.allclose(sweep[n], alone, rtol=1e-5, atol=1e-7)
        assert (alone >= 0).all()
