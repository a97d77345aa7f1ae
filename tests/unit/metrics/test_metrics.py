import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from xaipipe.errors import ConfigError
from xaipipe.metrics import (MetricInputs, available_metrics, deletion, get_metric, insertion,
                             pointing_game, stability)
from xaipipe.metrics.statistics import bootstrap_ci, column_seed
from xaipipe.metrics.deletion import Deletion
from xaipipe.metrics.insertion import Insertion
from xaipipe.metrics.perturbation import pixel_counts, pixel_ranks
from xaipipe.metrics.pointing_game import PointingGame, class_mean_ci
from xaipipe.metrics.stability import Stability
from xaipipe.models import NormalizedModel
from xaipipe.utils import derive_seed


class PixelSum(nn.Module):
    """Logits [Σ_c w ⊙ x over the pixels, 0] for a fixed pixel-weight map w (H, W)."""

    def __init__(self, w):
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x):
        z = (x * self.w).sum((1, 2, 3))
        return torch.stack([z, torch.zeros_like(z)], 1)


def identity_model(w):
    return NormalizedModel(PixelSum(w), mean=(0, 0, 0), std=(1, 1, 1)).eval()


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def test_registry():
    assert {"insertion", "deletion", "stability", "pointing_game"} <= set(available_metrics())
    with pytest.raises(ConfigError, match="fill.*'white'.*black"):
        insertion(None, None, None, None, fill="white")
    with pytest.raises(ConfigError, match="metrics.x.metric: unknown metric 'auc'; available: conv"):
        get_metric("auc", where="metrics.x.metric")
    assert get_metric("insertion") is Insertion


def test_declarations():
    assert (Insertion.direction, Deletion.direction) == ("higher", "lower")
    assert Insertion().needs == {"model", "images"} and Insertion().other_variant() is None
    blur = Deletion(fill="blur")
    assert blur.needs == {"model", "images", "other_images"} and blur.other_variant() == "blur"
    assert Deletion.needs == {"model", "images"}          # the class default is untouched
    st = Stability(reference="original")
    assert st.needs == {"other_maps"} and st.direction == "lower"
    assert st.other_variant() == "original"
    assert not st.applies_to("original") and st.applies_to("jpeg")
    assert PointingGame.needs == {"masks"} and PointingGame.direction == "higher"
    assert PointingGame(reference_size=None).hparams.reference_size is None
    with pytest.raises(ConfigError, match="reference_size"):
        PointingGame(reference_size=0)


def test_missing_need_is_named():
    x = torch.rand(2, 3, 4, 4)
    inputs = MetricInputs(ids=np.arange(2), target=torch.zeros(2).long(), maps=x)
    with pytest.raises(ValueError, match="'stability' needs other_maps"):
        Stability()(inputs)
    with pytest.raises(ValueError, match="'insertion' needs model, images"):
        Insertion()(inputs)
    with pytest.raises(ValueError, match="'deletion' needs .*other_images"):
        Deletion(fill="blur")(MetricInputs(ids=np.arange(2), target=torch.zeros(2).long(),
                                           maps=x, images=x, model=identity_model(
                                               torch.ones(4, 4))))


def test_hand_computed_insertion_and_deletion_auc():
    # 2x2 image of ones, pixel weights w; p(class 0) = sigmoid(3 * Σ w over kept pixels).
    w = torch.tensor([[1.0, -0.5], [2.0, 0.25]])
    model = identity_model(w)
    x = torch.ones(1, 3, 2, 2)
    sal = w[None, None].expand(1, 3, 2, 2)          # rank: 2.0, 1.0, 0.25, -0.5 (sum red.)
    ins = insertion(model, x, sal, [0], steps=5, reduction="sum")
    kept = np.array([0, 2.0, 3.0, 3.25, 2.75])        # q = 0, .25, .5, .75, 1
    curve = sigmoid(3 * kept)
    np.testing.assert_allclose(ins["curve"][0], curve, rtol=1e-6)
    auc = 0.25 * (curve[0] / 2 + curve[1:4].sum() + curve[4] / 2)
    np.testing.assert_allclose(ins["auc"][0], auc, rtol=1e-6)
    np.testing.assert_allclose(ins["auc_norm"][0], auc / curve[-1], rtol=1e-6)
    dele = deletion(model, x, sal, [0], steps=5, reduction="sum")
    removed = np.array([2.75, 0.75, -0.25, -0.5, 0.0])
    np.testing.assert_allclose(dele["curve"][0], sigmoid(3 * removed), rtol=1e-6)
    np.testing.assert_allclose(dele["score_full"][0], sigmoid(3 * 2.75), rtol=1e-6)
    # logit score instead of probability
    ins_logit = insertion(model, x, sal, [0], steps=5, reduction="sum", score="logit")
    np.testing.assert_allclose(ins_logit["curve"][0], 3 * kept, rtol=1e-6)


def test_endpoints_range_and_fills():
    torch.manual_seed(0)
    w = torch.randn(8, 8)
    model = identity_model(w)
    x = torch.rand(4, 3, 8, 8)
    sal = torch.randn(4, 3, 8, 8)
    full = torch.softmax(model(x), 1)[:, 1].numpy()
    black = torch.softmax(model(torch.zeros_like(x)), 1)[:, 1].numpy()
    ins = insertion(model, x, sal, [1] * 4, steps=11)
    dele = deletion(model, x, sal, [1] * 4, steps=11)
    np.testing.assert_allclose(ins["curve"][:, -1], full, rtol=1e-6)
    np.testing.assert_allclose(ins["curve"][:, 0], black, rtol=1e-6)
    np.testing.assert_allclose(dele["curve"][:, 0], full, rtol=1e-6)
    np.testing.assert_allclose(dele["curve"][:, -1], black, rtol=1e-6)
    assert ((ins["auc"] >= 0) & (ins["auc"] <= 1)).all()
    blur = torch.full_like(x, 0.5)
    ins_b = insertion(model, x, sal, [1] * 4, steps=11, fill="blur", fill_images=blur)
    np.testing.assert_allclose(ins_b["curve"][:, 0],
                               torch.softmax(model(blur), 1)[:, 1].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="blur"):
        insertion(model, x, sal, [1] * 4, fill="blur")


def test_oracle_map_beats_random_map():
    # The model looks only at the object pixels: ranking them first is optimal.
    g = torch.Generator().manual_seed(3)
    mask = torch.zeros(16, 16)
    mask[4:10, 5:12] = 1
    model = identity_model(mask * 0.05)
    x = torch.rand(6, 3, 16, 16, generator=g) + 0.2
    oracle = mask.expand(6, 1, 16, 16)
    rnd = torch.rand(6, 1, 16, 16, generator=g)
    t = [0] * 6
    ins_o, ins_r = insertion(model, x, oracle, t), insertion(model, x, rnd, t)
    del_o, del_r = deletion(model, x, oracle, t), deletion(model, x, rnd, t)
    assert (ins_o["auc"] > ins_r["auc"]).all() and (del_o["auc"] < del_r["auc"]).all()
    # and no ranking does better than the oracle
    for _ in range(5):
        other = insertion(model, x, torch.rand(6, 1, 16, 16, generator=g), t)
        assert (ins_o["auc"] >= other["auc"] - 1e-9).all()


def test_ties_are_broken_deterministically_and_batch_size_does_not_matter():
    scores = torch.tensor([[[1.0, 3.0], [3.0, 0.0]]])
    assert pixel_ranks(scores).flatten().tolist() == [2, 0, 1, 3]
    torch.manual_seed(1)
    model = identity_model(torch.randn(8, 8))
    x = torch.rand(5, 3, 8, 8)
    flat = torch.zeros(5, 1, 8, 8)       # all ties: order = flat index
    a = insertion(model, x, flat, [0] * 5, steps=9, batch_size=4)
    b = insertion(model, x, flat, [0] * 5, steps=9, batch_size=45)
    np.testing.assert_allclose(a["curve"], b["curve"], rtol=1e-6)


def test_pixel_counts_are_exact_floors():
    assert pixel_counts(np.linspace(0, 1, 11), 100).tolist() == list(range(0, 101, 10))
    assert pixel_counts([0.3], 10).tolist() == [3]


def test_coarse_maps_are_upsampled():
    model = identity_model(torch.ones(8, 8))
    x = torch.rand(2, 3, 8, 8)
    out = insertion(model, x, torch.rand(2, 1, 2, 2), [0, 0], steps=5)
    assert out["curve"].shape == (2, 5)


@pytest.mark.parametrize("fn", [insertion, deletion])
def test_coarse_maps_are_upsampled_bilinearly(fn):
    """A 2x2 map [[4, 1], [2, 0]] upsampled to 4x4 bilinearly with align_corners=False: each
    axis weighs the two coarse cells (1, 0), (3/4, 1/4), (1/4, 3/4), (0, 1), so the fine map is

        4      3.25    1.75    1          flat indices  0  1  2  3
        3.5    2.8125  1.4375  0.75                     4  5  6  7
        2.5    1.9375  0.8125  0.25                     8  9 10 11
        2      1.5     0.5     0                       12 13 14 15

    (all distinct) and the pixels come in the order below; nearest-neighbour upsampling would
    give 2x2 blocks of ties (0, 1, 4, 5 first). Pixel weights 2^k make every partial sum, hence
    every point of the logit curve 3·Σ_{kept} w, identify the set of pixels kept."""
    order = [0, 4, 1, 5, 8, 12, 9, 2, 13, 6, 3, 10, 7, 14, 11, 15]
    w = 2.0 ** torch.arange(16, dtype=torch.float32).view(4, 4)
    model = identity_model(w)
    x = torch.ones(1, 3, 4, 4)
    coarse = torch.tensor([[4.0, 1.0], [2.0, 0.0]])[None, None]
    out = fn(model, x, coarse, [0], steps=17, score="logit", reduction="sum")
    wf = w.flatten().double().numpy()
    first = np.array([wf[order[:k]].sum() for k in range(17)])     # the k top pixels
    expect = 3 * first if fn is insertion else 3 * (wf.sum() - first)
    np.testing.assert_allclose(out["curve"][0], expect, rtol=1e-6)
    # the same curve as the hand-upsampled map given at full resolution
    fine = torch.tensor([[4, 3.25, 1.75, 1], [3.5, 2.8125, 1.4375, 0.75],
                         [2.5, 1.9375, 0.8125, 0.25], [2, 1.5, 0.5, 0]])[None, None]
    assert pixel_ranks(fine[:, 0]).flatten().argsort().tolist() == order
    np.testing.assert_array_equal(
        fn(model, x, fine, [0], steps=17, score="logit", reduction="sum")["curve"],
        out["curve"])


def test_bootstrap_interval_and_summary():
    v = np.arange(100.0)
    m, lo, hi = bootstrap_ci(v, seed=0)
    assert m == 49.5 and lo < m < hi and hi - lo < 25
    assert bootstrap_ci(v, seed=0) == bootstrap_ci(v, seed=0)
    assert bootstrap_ci(np.full(10, 2.0)) == (2.0, 2.0, 2.0)
    assert np.isnan(bootstrap_ci([np.nan])[0])
    import pandas as pd
    df = pd.DataFrame({"auc": [0.1, 0.3, 0.6], "auc_norm": [0.2, 0.4, np.nan]})
    parts = (0, "d", "m", "insertion", "ig", "original")
    rows = get_metric("insertion").aggregate(df, n_boot=200, seed=parts)
    assert [r["score"] for r in rows] == ["auc", "auc_norm"]
    assert [r["mean"] for r in rows] == pytest.approx([1 / 3, 0.3])
    assert [(r["n"], r["excluded"]) for r in rows] == [(3, 0), (2, 1)]
    assert {r["direction"] for r in rows} == {"higher"}
    # the CI is seeded by the entry's keys and the column, as the summary always was
    assert column_seed(parts, "auc") == derive_seed(*parts, "auc")
    assert (rows[0]["ci_low"], rows[0]["ci_high"]) == bootstrap_ci(
        df["auc"], 200, 0.95, derive_seed(*parts, "auc"))[1:]


@pytest.mark.parametrize("n, n_boot, seed, level", [
    (5, 200, 0, 0.95), (37, 1000, 3, 0.95), (100, 999, 11, 0.9), (250, 500, 7, 0.8)])
def test_bootstrap_ci_equals_scipy_percentile_bootstrap(n, n_boot, seed, level):
    """The interval is SciPy's percentile bootstrap of the mean (an independent implementation)
    given a generator in the same state: SciPy draws the resample indices as
    ``rng.integers(0, n, (n_resamples, n))``, n of n with replacement, and takes the
    (1 - level)/2 and (1 + level)/2 percentiles."""
    from scipy import stats
    v = np.random.default_rng(seed + 100).exponential(size=n)
    ref = stats.bootstrap((v,), np.mean, n_resamples=n_boot, method="percentile",
                          confidence_level=level, vectorized=True,
                          rng=np.random.default_rng(seed)).confidence_interval
    m, lo, hi = bootstrap_ci(v, n_boot, level, seed)
    assert m == pytest.approx(v.mean(), rel=1e-15)
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-12, abs=0)


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_bootstrap_ci_covers_a_known_mean_at_its_level(level):
    """On 2000 samples of 60 draws from N(3, 1) the percentile interval contains the true
    mean 3 in a fraction close to ``level`` (the percentile bootstrap of a mean is
    near-exact for normal data at n = 60; the binomial standard error of the fraction is
    0.005 at 95 %, 0.009 at 80 %)."""
    rng = np.random.default_rng(5)
    hits = []
    for k in range(2000):
        _, lo, hi = bootstrap_ci(rng.normal(3.0, 1.0, size=60), 1000, level, seed=k)
        hits.append(lo <= 3.0 <= hi)
    assert abs(np.mean(hits) - level) < 0.015, np.mean(hits)


def reference_bootstrap_ci(values, n_boot=1000, level=0.95, seed=0):
    """The bootstrap as it was before the replicates were drawn in blocks: one (n_boot, n)
    index array. Kept here as the reference the blocked draw must equal bit for bit."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan, np.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


@pytest.mark.parametrize("block", [None, 1, 50, 999])
def test_bootstrap_in_blocks_equals_one_draw(monkeypatch, block):
    """Drawing the replicates in blocks (default size, and forced tiny blocks that leave a
    ragged last block) gives exactly the numbers of one (n_boot, n) draw."""
    from xaipipe.metrics import statistics
    if block is not None:
        monkeypatch.setattr(statistics, "BLOCK_ELEMENTS", block)
    for n in (1, 2, 17, 1000, 3001):
        v = np.random.default_rng(n).normal(size=n)
        if n > 7:
            v[::7] = np.nan                                   # dropped before resampling
        for n_boot in (1, 7, 1000):
            for seed in (0, 12345, derive_seed(0, "auc")):
                assert bootstrap_ci(v, n_boot, 0.95, seed) == \
                    reference_bootstrap_ci(v, n_boot, 0.95, seed), (n, n_boot, seed)


def test_bootstrap_memory_is_bounded():
    """50,000 images x 1000 replicates: one (n_boot, n) draw held 400 MB of indices and
    400 MB of resampled values; in blocks the peak stays far below that (traced NumPy
    allocations, nothing timed)."""
    import tracemalloc
    v = np.random.default_rng(0).normal(size=50_000)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        m, lo, hi = bootstrap_ci(v, 1000, 0.95, seed=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lo < m < hi
    assert peak < 64e6, f"bootstrap peak {peak / 1e6:.0f} MB"


# -- eval mode, target broadcasting, normalised AUC -----------------------------------------
def bn_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    model = NormalizedModel(net, mean=(0.5,) * 3, std=(0.25,) * 3).train()
    with torch.no_grad():                      # non-trivial running statistics
        for _ in range(3):
            model(torch.rand(8, 3, 8, 8))
    return model


@pytest.mark.parametrize("fn", [insertion, deletion])
def test_metrics_run_in_eval_mode_and_restore_the_mode(fn):
    model = bn_model()
    bn = model.net[1]
    g = torch.Generator().manual_seed(0)
    x, sal = torch.rand(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    model.eval()
    ref = fn(model, x, sal, [0, 1, 2], steps=6, batch_size=5)
    model.train()
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    out = fn(model, x, sal, [0, 1, 2], steps=6, batch_size=5)
    np.testing.assert_array_equal(out["auc"], ref["auc"])
    np.testing.assert_array_equal(out["curve"], ref["curve"])
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert model.training and all(m.training for m in model.modules())
    bn.eval()                                   # mixed modes come back exactly
    fn(model, x, sal, [0, 1, 2], steps=6)
    assert model.training and not bn.training and model.net[0].training


def test_model_mode_is_restored_on_error():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")
    model = NormalizedModel(Broken()).train()
    with pytest.raises(RuntimeError, match="boom"):
        insertion(model, torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), [0])
    assert model.training


def test_scalar_target_is_broadcast():
    torch.manual_seed(2)
    model = identity_model(torch.randn(6, 6))
    x, sal = torch.rand(4, 3, 6, 6), torch.randn(4, 3, 6, 6)
    ref = insertion(model, x, sal, [1, 1, 1, 1], steps=5)
    for t in (1, [1], torch.tensor([1]), torch.tensor(1), np.int64(1)):
        np.testing.assert_array_equal(insertion(model, x, sal, target=t, steps=5)["auc"],
                                      ref["auc"])
    np.testing.assert_array_equal(deletion(model, x, sal, 1, steps=5)["auc"],
                                  deletion(model, x, sal, [1] * 4, steps=5)["auc"])
    with pytest.raises(ValueError, match="target has 2 entries for 4 images"):
        insertion(model, x, sal, [1, 1])


def test_auc_norm_excludes_tiny_reference_scores():
    # PixelSum with w = -1: image 0 (ones) has z = -12, p = sigmoid(-12) ~ 6e-6;
    # image 1 (zeros) has z = 0 at every q, p = 0.5: curve / ref = 1.
    model = identity_model(torch.full((2, 2), -1.0))
    x = torch.stack([torch.ones(3, 2, 2), torch.zeros(3, 2, 2)])
    sal = torch.rand(2, 3, 2, 2)
    out = insertion(model, x, sal, [0, 0], steps=5)
    assert out["norm_excluded"].tolist() == [True, False]
    assert np.isnan(out["auc_norm"][0]) and out["auc_norm"][1] == pytest.approx(1.0)
    assert np.isfinite(out["auc"]).all()
    old = insertion(model, x, sal, [0, 0], steps=5, norm_min=0.0)      # the unguarded ratio
    assert not old["norm_excluded"].any() and old["auc_norm"][0] > 1e3
    np.testing.assert_array_equal(old["auc"], out["auc"])
    # logit: the reference may be negative; only |ref| < norm_min is excluded.
    # image 0: curve z = -3k for k kept pixels = 0, -3, -6, -9, -12 -> AUC -6, ref -12.
    lg = insertion(model, x, sal, [0, 0], steps=5, score="logit")
    assert lg["norm_excluded"].tolist() == [False, True]
    assert lg["auc"][0] == pytest.approx(-6.0) and lg["auc_norm"][0] == pytest.approx(0.5)
    assert np.isnan(lg["auc_norm"][1])
    # the summary counts finite values only and reports the exclusions
    df = pd.DataFrame({k: out[k] for k in ("auc", "auc_norm", "norm_excluded")})
    rows = {r["score"]: r for r in Insertion.aggregate(df, n_boot=50)}
    assert (rows["auc"]["n"], rows["auc"]["excluded"]) == (2, 0)
    assert (rows["auc_norm"]["n"], rows["auc_norm"]["excluded"]) == (1, 1)
    assert rows["auc_norm"]["mean"] == pytest.approx(1.0)


def test_default_aggregate():
    df = pd.DataFrame({"auc": [0.1, 0.3, 0.2], "auc_norm": [0.2, np.nan, 0.4]})
    rows = Deletion.aggregate(df, n_boot=200, seed=7)
    assert [r["score"] for r in rows] == ["auc", "auc_norm"]
    for r, col in zip(rows, ["auc", "auc_norm"]):
        m, lo, hi = bootstrap_ci(df[col], 200, 0.95, derive_seed(7, col))
        assert (r["mean"], r["ci_low"], r["ci_high"]) == (m, lo, hi)
        assert r["direction"] == "lower"
    assert [(r["n"], r["excluded"]) for r in rows] == [(3, 0), (2, 1)]
    assert rows == Deletion.aggregate(df, n_boot=200, seed=7)


# -- stability (metrics.md §6) ----------------------------------------------------------------
def test_stability_invariants():
    g = torch.Generator().manual_seed(4)
    a = torch.rand(3, 3, 5, 5, generator=g, dtype=torch.float64) + 0.1   # float64: c·a exact
    b = a + 0.2 * torch.randn(3, 3, 5, 5, generator=g, dtype=torch.float64)
    assert (stability(a, a)["mse"] == 0).all()
    base = stability(a, b)["mse"]
    assert (base > 0).all()
    for c in (3.0, -0.5, 1e-4, -250.0):
        np.testing.assert_allclose(stability(c * a, b)["mse"], base, rtol=1e-10)
        np.testing.assert_allclose(stability(a, c * b)["mse"], base, rtol=1e-10)
    np.testing.assert_array_equal(stability(b, a)["mse"], base)          # symmetric


def test_stability_hand_computed_and_flag():
    # a: channel sum = ones -> ŝ = 1/4 everywhere; b: [[3, -1], [1, 1]] / 4.
    a = torch.zeros(1, 3, 2, 2)
    a[0, 0] = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    a[0, 1] = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[3.0, -1.0], [1.0, 1.0]])[None, None]
    out = stability(a, b)
    assert out["mse"][0] == pytest.approx((0.5 ** 2 + 0.5 ** 2) / 4)       # 0.125
    assert out["ill_conditioned"].tolist() == [False]
    assert out["mse_well_conditioned"][0] == out["mse"][0]
    # a zero-sum map (and an all-zero map) is flagged, either side; the well-conditioned
    # column is NaN there
    zero_sum = torch.tensor([[1.0, -1.0], [0.5, -0.5]])[None, None]
    near = torch.tensor([[1.0, -1.0], [0.5, -0.4999]])[None, None]   # |Σ| = 1e-4 < 1e-3·3
    ok = torch.tensor([[1.0, -1.0], [0.5, -0.49]])[None, None]       # |Σ| = 1e-2 > 3e-3
    maps = torch.cat([zero_sum, near, ok, torch.zeros(1, 1, 2, 2)])
    ones = torch.ones(4, 1, 2, 2)
    for x, y in ((maps, ones), (ones, maps)):
        s = stability(x, y)
        assert s["ill_conditioned"].tolist() == [True, True, False, True]
        assert np.isnan(s["mse_well_conditioned"][[0, 1, 3]]).all()
        assert np.isfinite(s["mse_well_conditioned"][2])
        assert np.isnan(s["mse"][[0, 3]]).all() and np.isfinite(s["mse"][[1, 2]]).all()
    with pytest.raises(ValueError, match="same images and size"):
        stability(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 3, 3))


def test_stability_ill_conditioning_boundary_is_not_flagged():
    """The flag is |Σs| < 1e-3·Σ|s|, strict: a map exactly on the boundary is well
    conditioned. [500.5, −499.5, 0, 0]: Σs = 1 and Σ|s| = 1000 are exact in float64, and so is
    1e-3 · 1000 = 1 after rounding; one step inside (Σs = 0.5) is flagged."""
    from xaipipe.metrics.stability import ILL_CONDITIONED
    on = torch.tensor([[500.5, -499.5], [0.0, 0.0]], dtype=torch.float64)[None, None]
    inside = torch.tensor([[500.25, -499.75], [0.0, 0.0]], dtype=torch.float64)[None, None]
    assert float(on.sum()) == ILL_CONDITIONED * float(on.abs().sum()) == 1.0
    ones = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    for x, y in ((on, ones), (ones, on)):
        out = stability(x, y)
        assert out["ill_conditioned"].tolist() == [False]
        # ŝ = [500.5, −499.5, 0, 0] against [1/4] * 4
        expect = ((500.5 - 0.25) ** 2 + (-499.5 - 0.25) ** 2 + 2 * 0.25 ** 2) / 4
        assert out["mse"][0] == pytest.approx(expect, rel=1e-12)
        assert out["mse_well_conditioned"][0] == out["mse"][0]
    assert stability(inside, ones)["ill_conditioned"].tolist() == [True]
    assert np.isnan(stability(ones, inside)["mse_well_conditioned"][0])


# -- pointing game (metrics.md §7) -----------------------------------------------------------
def point_map(size, y, x):
    m = torch.zeros(1, 1, size, size)
    m[0, 0, y, x] = 1.0
    return m


def box_mask(size, y0, y1, x0, x1):
    m = torch.zeros(1, size, size, dtype=torch.bool)
    m[0, y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize("size, box, outside, hit", [
    (224, (100, 150), 14, True), (224, (100, 150), 15, False),
    (112, (50, 75), 7, True), (112, (50, 75), 8, False)])
def test_pointing_game_tolerance(size, box, outside, hit):
    lo, hi = box                                    # box rows/cols lo..hi-1
    mask = box_mask(size, lo, hi, lo, hi)
    mid = (lo + hi) // 2
    right = pointing_game(point_map(size, mid, hi - 1 + outside), mask)
    above = pointing_game(point_map(size, lo - outside, mid), mask)
    for out in (right, above):
        assert out["hit"].tolist() == [float(hit)]
    assert (right["point_y"][0], right["point_x"][0]) == (mid, hi - 1 + outside)


@pytest.mark.parametrize("outside, hit", [(14, True), (15, False)])
def test_pointing_game_takes_boxes(outside, hit):
    """Boxes (xmin, ymin, xmax, ymax), 0-based and inclusive, as the ground truth: a point 14
    px right of a box's last column hits, 15 px misses; an image's boxes are a union; an image
    without boxes has no ground truth (NaN); boxes beyond the image are clipped."""
    from xaipipe.metrics.pointing_game import boxes_to_masks
    boxes = [np.array([[100, 100, 149, 149]]), np.array([[0, 0, 9, 9], [100, 100, 149, 149]]),
             np.zeros((0, 4)), np.array([[200, 210, 400, 400]])]
    maps = torch.cat([point_map(224, 120, 149 + outside)] * 4)
    out = pointing_game(maps, boxes)
    assert out["hit"][:2].tolist() == [float(hit)] * 2
    assert np.isnan(out["hit"][2]) and out["mask_empty"][2]
    masks = boxes_to_masks(boxes, (224, 224))
    assert torch.equal(masks[0], box_mask(224, 100, 150, 100, 150)[0])
    assert masks[1, :10, :10].all() and masks[1].sum() == 100 + 50 * 50
    assert masks[3].sum() == 14 * 24 and masks[3, 223, 223]
    same = pointing_game(maps, masks)
    np.testing.assert_array_equal(same["hit"], out["hit"])


@pytest.mark.parametrize("h, w", [(112, 224), (224, 112), (112, 300)])
@pytest.mark.parametrize("outside, hit", [(7, True), (8, False), (10, False), (14, False)])
def test_pointing_game_tolerance_on_non_square_images(h, w, outside, hit):
    """τ = 15 · min(H, W) / 224 = 7.5 px whenever the short side is 112, whichever side it is
    and however long the other (TorchRay scales by the shorter side): a point 7 px from the
    box hits, 8 to 14 px misses (within 15 px, what the long side 224 would allow, or more)."""
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[0, 40:60, 50:90] = True                     # rows 40..59, cols 50..89
    for y, x in ((50, 89 + outside), (59 + outside, 70), (40 - outside, 70)):
        m = torch.zeros(1, 1, h, w)
        m[0, 0, y, x] = 1.0
        out = pointing_game(m, mask)
        assert (out["point_y"][0], out["point_x"][0]) == (y, x)
        assert out["hit"].tolist() == [float(hit)], (y, x)


def test_pointing_game_inside_diagonal_pixels_and_signs():
    mask = box_mask(224, 100, 150, 100, 150)
    assert pointing_game(point_map(224, 120, 130), mask)["hit"].tolist() == [1.0]
    # Euclidean distance from the corner (149, 149): 10·√2 ≈ 14.1 < 15, 11·√2 ≈ 15.6
    assert pointing_game(point_map(224, 159, 159), mask)["hit"].tolist() == [1.0]
    assert pointing_game(point_map(224, 160, 160), mask)["hit"].tolist() == [0.0]
    # tolerance in pixels as given (the point is 21 px right of the box; strict test)
    for tol, hit in ((21.5, 1.0), (21, 0.0)):
        assert pointing_game(point_map(224, 120, 170), mask, tolerance=tol,
                             reference_size=None)["hit"].tolist() == [hit]
    # a signed map: abs_sum makes the strongly negative pixel the point
    m = point_map(224, 10, 10) * 0.5
    m[0, 0, 120, 130] = -2.0
    assert pointing_game(m, mask)["hit"].tolist() == [1.0]
    assert pointing_game(m, mask, reduction="sum")["hit"].tolist() == [0.0]
    # an empty mask has no ground truth: NaN and flagged
    out = pointing_game(point_map(224, 0, 0), torch.zeros(1, 224, 224, dtype=torch.bool))
    assert np.isnan(out["hit"][0]) and out["mask_empty"].tolist() == [True]


def test_pointing_game_ties_and_upsampling():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    out = pointing_game(torch.zeros(1, 1, 8, 8), mask)              # all ties: first pixel
    assert (out["point_y"][0], out["point_x"][0]) == (0, 0)
    m = torch.zeros(1, 1, 8, 8)
    m[0, 0, 5, 2] = m[0, 0, 3, 6] = m[0, 0, 3, 7] = 1.0
    out = pointing_game(m, mask)
    assert (out["point_y"][0], out["point_x"][0]) == (3, 6)
    # a 2x2 map with its maximum bottom-left, bilinearly upsampled to 8x8
    # (align_corners=False): rows 6-7 x cols 0-1 hold the maximum; the first is (6, 0)
    coarse = torch.tensor([[0.0, 0.0], [1.0, 0.0]])[None, None]
    out = pointing_game(coarse, mask)
    assert (out["point_y"][0], out["point_x"][0]) == (6, 0)
    again = pointing_game(coarse.repeat(3, 1, 1, 1), mask.repeat(3, 1, 1))
    assert again["point_y"].tolist() == [6] * 3 and again["point_x"].tolist() == [0] * 3


def test_pointing_game_class_mean_aggregation():
    # class 0: 1/1 hits, class 1: 1/3 -> mean of classes 2/3; global 2/4; class 2 has only
    # an image without ground truth: excluded.
    df = pd.DataFrame({"target": [0, 1, 1, 1, 2], "hit": [1.0, 1.0, 0.0, 0.0, np.nan]})
    rows = {r["score"]: r for r in PointingGame.aggregate(df, n_boot=500, seed=3)}
    assert list(rows) == ["hit", "hit_global"]
    assert rows["hit"]["mean"] == pytest.approx(2 / 3)
    assert rows["hit_global"]["mean"] == pytest.approx(0.5)
    for r in rows.values():
        assert (r["n"], r["excluded"], r["direction"]) == (4, 1, "higher")
        assert 0 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 1
    assert PointingGame.aggregate(df, n_boot=500, seed=3) == list(rows.values())
    # the bootstrap resamples images and recomputes the class mean
    hit, cls = np.array([1.0, 1, 0, 0]), np.array([0, 1, 1, 1])
    m, lo, hi = class_mean_ci(hit, cls, n_boot=2000, seed=1)
    assert m == pytest.approx(2 / 3) and lo < m < hi
    assert class_mean_ci(np.ones(5), np.arange(5), seed=0) == (1.0, 1.0, 1.0)


# -- every registered metric keeps the contract ------------------------------------------------
# the Hallucination Score at the inputs' own size (its default resizes to 256 x 256)
LIGHT = {"hallucination_score": {"size": None}}
CASES = [(name, LIGHT.get(name, {})) for name in available_metrics()] + [
    ("insertion", {"fill": "blur", "steps": 5}), ("deletion", {"fill": "blur", "steps": 5}),
    ("insertion", {"reduction": "sum", "compat": "tmlr"}), ("pic", {"variant": "tmlr"})]


def _explain(*args, **kw):
    from xaipipe.explain import explain
    return explain(*args, **kw)


def contract_inputs(needs, model, n=4):
    g = torch.Generator().manual_seed(11)
    masks = torch.rand(n, 8, 8, generator=g) > 0.7
    masks[:, 4, 4] = True
    given = {
        "model": model,
        "images": torch.rand(n, 3, 8, 8, generator=g),
        "other_images": torch.rand(n, 3, 8, 8, generator=g),
        "other_maps": torch.randn(n, 3, 8, 8, generator=g),
        "masks": masks,
        "boxes": [np.array([[1.0, 1.0, 5.0, 6.0]])] * n,
        # a gap (N,) and a mask method's histories (N, T) (the convergence metric)
        "extras": {"completeness_gap": np.linspace(0, 1, n),
                   **{k: np.linspace(0.5, 1.5, n * 5).reshape(n, 5) for k in (
                       "retained_probability", "retained_l1", "retained_entropy",
                       "retained_pixel", "cp_l1", "cp_pixel")}},
        # the method, for a metric that reruns it (model randomisation)
        "attribute": lambda m, x, t, ids: _explain("saliency", m, x, t, image_ids=ids),
    }
    return MetricInputs(ids=np.arange(100, 100 + n), target=torch.tensor([0, 1, 2, 0][:n]),
                        maps=torch.randn(n, 3, 8, 8, generator=g), batch_size=3,
                        **{k: v for k, v in given.items() if k in needs})


def assert_columns_equal(a, b, exact=True):
    assert set(a) == set(b)
    for k in a:
        if exact or a[k].dtype.kind not in "biuf":      # e.g. PIC's exclusion reasons
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            np.testing.assert_allclose(a[k].astype(np.float64), b[k].astype(np.float64),
                                       rtol=1e-5, atol=1e-7, equal_nan=True, err_msg=k)


@pytest.mark.parametrize("name, params", CASES)
def test_metric_contract(name, params, linear_model):
    cls = get_metric(name)
    metric = cls(**params)
    assert metric.needs <= set(("model", "images", "other_images", "other_maps", "masks",
                                "boxes", "extras", "attribute"))
    assert cls.direction in ("higher", "lower") and set(cls.scalars)
    linear_model.train()
    inputs = contract_inputs(metric.needs, linear_model)
    out = metric(inputs)
    assert linear_model.training                                # mode restored
    assert set(cls.scalars) <= set(out)
    for k, v in out.items():
        assert isinstance(v, np.ndarray) and v.shape[0] == 4, k
        if v.dtype.kind == "f":
            bad = ~np.isfinite(v.reshape(4, -1)).all(1)
            flag = cls.excludes.get(k)              # NaN only where the metric says so
            allowed = out[flag].astype(bool) if flag else np.zeros(4, bool)
            assert not (bad & ~allowed).any(), f"{name}.{k} is not finite for {bad}"
    assert_columns_equal(out, metric(inputs))                    # deterministic
    parts = [metric(inputs.take(slice(0, 2))), metric(inputs.take(slice(2, 4)))]
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    assert_columns_equal(out, joined, exact=False)               # batch invariant
    df = pd.DataFrame({"image_id": inputs.ids, "target": inputs.target.numpy(),
                       **{k: list(v) if v.ndim > 1 else v for k, v in out.items()}})
    rows = cls.aggregate(df, n_boot=100, seed=0)
    assert rows and {r["score"] for r in rows} >= set(cls.scalars)
    for r in rows:
        assert {"score", "n", "mean", "ci_low", "ci_high", "direction"} <= set(r)
        assert r["direction"] == cls.direction and 0 <= r["n"] <= 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name, params", CASES)
def test_metric_on_cuda_agrees_with_cpu(name, params, linear_model):
    """Every metric path runs on CUDA (model and tensors there) and gives the CPU's numbers
    within the documented CPU-GPU tolerance (xaipipe.repro.TOLERANCE); discrete outputs
    (flags, hits, counts) equal. Not run here: no GPU was lent (benchmarks/gpu_check.sh)."""
    import copy
    from dataclasses import replace

    from xaipipe.repro import TOLERANCE
    metric = get_metric(name)(**params)
    cpu_in = contract_inputs(metric.needs, linear_model)
    moved = {k: (v.cuda() if isinstance(v, torch.Tensor) else v)
             for k, v in vars(cpu_in).items() if k not in ("model", "extras", "boxes", "ids",
                                                             "batch_size")}
    model = copy.deepcopy(linear_model).cuda() if cpu_in.model is not None else None
    cuda_in = replace(cpu_in, model=model, **moved)
    a, b = metric(cpu_in), metric(cuda_in)
    assert set(a) == set(b)
    for k in a:
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(b[k].astype(np.float64), a[k].astype(np.float64),
                                       equal_nan=True, err_msg=k, **TOLERANCE)
        else:
            np.testing.assert_array_equal(b[k], a[k], err_msg=k)


def test_tmlr_ranking_is_float16_unstable_argsort_and_clean_is_stable():
    from xaipipe.metrics.perturbation import pixel_order
    scores = torch.tensor([[[1.0, 1.0001, 0.5], [1.0, 2.0, 0.5]]])   # ties after float16
    clean = pixel_order(scores)
    assert clean[0].tolist() == [4, 1, 0, 3, 2, 5]                      # stable: lower index first
    tmlr = pixel_order(scores, compat="tmlr")
    assert torch.equal(tmlr, torch.argsort(scores.flatten(1).half(), dim=1, descending=True))
    assert tmlr[0, 0] == 4 and set(tmlr[0, 1:4].tolist()) == {0, 1, 3}
    with pytest.raises(ValueError, match="unknown compat"):
        pixel_order(scores, compat="pair")


def _class_mean_ci_one_draw(hit, classes, n_boot, level, seed):
    """The pointing game's class-mean interval as one (n_boot, n) draw: the reference the
    blocked implementation must equal bit for bit."""
    from xaipipe.metrics.pointing_game import class_mean
    hit = np.asarray(hit, np.float64)
    _, codes = np.unique(classes, return_inverse=True)
    k = int(codes.max()) + 1
    idx = np.random.default_rng(seed).integers(0, hit.size, size=(n_boot, hit.size))
    flat = (np.arange(n_boot)[:, None] * k + codes[idx]).ravel()
    sums = np.bincount(flat, weights=hit[idx].ravel(), minlength=n_boot * k).reshape(n_boot, k)
    counts = np.bincount(flat, minlength=n_boot * k).reshape(n_boot, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.nanmean(np.where(counts > 0, sums / counts, np.nan), axis=1)
    a = (1 - level) / 2
    return class_mean(hit, classes), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


@pytest.mark.parametrize("n,k,n_boot,block", [(7, 3, 50, None), (200, 10, 300, 1000),
                                               (33, 2, 101, 40)])
def test_pointing_game_class_interval_in_blocks_equals_one_draw(monkeypatch, n, k, n_boot,
                                                                block):
    from xaipipe.metrics import statistics
    from xaipipe.metrics.pointing_game import class_mean_ci
    rng = np.random.default_rng(n)
    hit, classes = rng.random(n) < 0.6, rng.integers(0, k, n)
    if block is not None:                # several blocks, one of them partial
        monkeypatch.setattr(statistics, "BLOCK_ELEMENTS", block)
    assert class_mean_ci(hit, classes, n_boot, 0.9, seed=5) == \
        _class_mean_ci_one_draw(hit, classes, n_boot, 0.9, 5)


def test_pointing_game_class_interval_memory_is_bounded():
    """50,000 images x 1000 replicates in bounded blocks (traced NumPy allocations)."""
    import tracemalloc
    from xaipipe.metrics.pointing_game import class_mean_ci
    rng = np.random.default_rng(0)
    hit, classes = rng.random(50_000) < 0.5, rng.integers(0, 1000, 50_000)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        m, lo, hi = class_mean_ci(hit, classes, 1000, 0.95, seed=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lo <= m <= hi
    assert peak < 200e6, f"class bootstrap peak {peak / 1e6:.0f} MB"
