"""Local Path Integration (Yang et al., AAAI 2023): the ρ-weighted multi-reference estimator,
its re-calibrated forms with ρ as weights, cluster assignment and ``compat="ypeiyu_lpi"``."""
import pytest
import torch

from helpers.multiref import direct
from xaipipe.errors import ConfigError
from xaipipe.explain import explain, get_method, lpi_references, run_method
from xaipipe.explain.paths.recalibration import valid_mean

MODES = ["none", "valid_ref", "valid_ip"]


def refset(n=5, size=32, seed=3):
    g = torch.Generator().manual_seed(seed)
    refs = torch.rand(n, 3, size, size, generator=g)
    rho = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    return refs, rho / rho.sum()


@pytest.mark.parametrize("compat", [None, "ypeiyu_lpi"])
def test_streamed_estimators_equal_the_direct_formulas(cnn, compat):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(17))
    t = torch.tensor([0, 2, 3])
    refs, rho = refset()
    for mode in MODES:
        m = get_method("lpi")(cnn, samples=5, steps=3, recalibrate=mode, compat=compat,
                              references=refs, density=rho, max_batch=4)
        ours = m.run(x, t, [7, 8, 9]).maps
        ref = direct(m, cnn, x, t, [7, 8, 9])
        assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max(), (compat, mode)


def test_completeness_under_the_density(smooth_cnn):
    """Σφ → f(x̃) − Σ_r ρ_r f(r_r) as k grows (linspace); the extra is that difference."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([1, 3])
    refs, rho = refset(4)
    with torch.no_grad():
        f_x = smooth_cnn(x).gather(1, t[:, None]).squeeze(1).double()
        f_r = (smooth_cnn(refs).double()[:, t] * rho[:, None]).sum(0)
    gaps = []
    for k in (4, 16, 64):
        out = run_method("lpi", smooth_cnn, x, t, samples=4, steps=k, references=refs,
                         density=rho, alphas="linspace")
        gap = out.maps.flatten(1).double().sum(1) - (f_x - f_r)
        assert torch.allclose(out.extras["f_references"].double(), f_r, atol=1e-5)
        assert torch.allclose(out.extras["completeness_gap"].double(), gap, atol=1e-4)
        gaps.append(gap.abs())
    assert (gaps[2] < gaps[1]).all() and (gaps[1] < gaps[0]).all()
    assert (gaps[2] <= 0.05 * (f_x - f_r).abs()).all(), gaps


def test_equal_density_is_the_multi_reference_mean(cnn):
    """Without a density (equal ρ = 1/R) LPI is IG-Uniform's estimator over the same
    references and coefficients, vanilla and re-calibrated."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    refs, _ = refset(4)
    alphas = torch.rand(4, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for mode in MODES:
        lpi = explain("lpi", cnn, x, [0, 1], samples=4, steps=3, references=refs,
                      alphas=alphas, recalibrate=mode)
        igu = explain("ig_uniform", cnn, x, [0, 1], samples=4, steps=3, alphas=alphas,
                      references=refs.expand(2, 4, 3, 32, 32), recalibrate=mode)
        assert torch.allclose(lpi, igu, rtol=1e-5, atol=1e-7), mode


def test_valid_ip_weighted_by_hand():
    """Two features, two points: the weighted valid mean Σ ρ m⁺ / Σ ρ 1[m ≥ 0]."""
    from xaipipe.explain.paths.recalibration import ValidMean
    acc = ValidMean(1, (2,), "cpu", weighted=True)
    acc.feed(torch.zeros(2, dtype=torch.long), torch.tensor([[2.0, -1.0], [4.0, -3.0]]),
             torch.tensor([0.25, 0.75]))
    assert torch.allclose(acc.result()[0], torch.tensor([0.25 * 2 + 0.75 * 4, 0.0],
                                                        dtype=torch.float64))
    # equal weights: the unweighted valid mean
    m = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    eq = ValidMean(1, (3, 4, 4), "cpu", weighted=True)
    eq.feed(torch.zeros(6, dtype=torch.long), m, torch.full((6,), 0.3))
    assert torch.allclose(eq.result()[0], valid_mean(m))
    with pytest.raises(ValueError, match="weighted"):
        eq.feed(torch.zeros(6, dtype=torch.long), m)


def test_recalibrated_maps_are_non_negative(cnn, images):
    refs, rho = refset()
    for mode in ("valid_ref", "valid_ip"):
        out = explain("lpi", cnn, images, [0, 1, 2], samples=5, steps=3, references=refs,
                      density=rho, recalibrate=mode)
        assert (out >= 0).all() and out.abs().sum() > 0


def test_alphas_are_drawn_in_the_lpi_interval(cnn, images):
    refs, rho = refset()
    m = get_method("lpi")(cnn, samples=5, steps=40, references=refs, density=rho)
    a = m.alpha_grid(images, torch.tensor([1, 2, 3]))
    assert a.min() >= 0.01 and a.max() <= 0.99 and a.max() - a.min() > 0.9
    assert not torch.equal(a[0], a[1])


def test_inputs_take_the_references_of_their_nearest_cluster(cnn):
    """With several global clusters an image uses its cluster's R references and weights, the
    same as giving that cluster alone."""
    g = torch.Generator().manual_seed(8)
    train = torch.rand(30, 3, 32, 32, generator=g)
    ref = lpi_references(cnn, train, n_references=3, n_clusters=2, seed=1)
    x = train[:4]
    t = torch.tensor([0, 1, 2, 3])
    m = get_method("lpi")(cnn, samples=3, steps=2, references=ref["references"],
                          density=ref["density"], centres=ref["centres"])
    cl = m.cluster_of(x, [0, 1, 2, 3])
    with torch.no_grad():
        assert torch.equal(cl, torch.cdist(cnn(x).double(), ref["centres"]).argmin(1))
    both = m.run(x, t, [0, 1, 2, 3]).maps
    for i in range(4):
        c = int(cl[i])
        alone = run_method("lpi", cnn, x[i:i + 1], t[i:i + 1], image_ids=[i], samples=3,
                           steps=2, references=ref["references"][c],
                           density=ref["density"][c]).maps
        assert torch.allclose(both[i], alone[0], rtol=1e-5, atol=1e-7)


def test_compat_ypeiyu_lpi_differs_from_the_clean_default(cnn, images):
    """The pairing scrambles which gradients meet which displacement, and the vanilla map
    carries the extra 1/R."""
    refs, rho = refset()
    common = dict(samples=5, steps=3, references=refs, density=rho, image_ids=[1, 2, 3])
    clean = explain("lpi", cnn, images, [0, 1, 2], **common)
    compat = explain("lpi", cnn, images, [0, 1, 2], compat="ypeiyu_lpi", **common)
    assert (clean - compat / 5).abs().max() > 1e-3 * clean.abs().max()
    # k = 1: one point per reference, no pairing to scramble; only the 1/R factor is left
    one = dict(common, steps=1)
    assert torch.allclose(explain("lpi", cnn, images, [0, 1, 2], compat="ypeiyu_lpi", **one),
                          explain("lpi", cnn, images, [0, 1, 2], **one) / 5,
                          rtol=1e-5, atol=1e-9)


def test_the_offset_reference_set_of_the_reference_code(cnn):
    train = torch.rand(30, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    plain = lpi_references(cnn, train, n_references=3, seed=2)
    off = lpi_references(cnn, train, n_references=3, seed=2, offset=200)
    assert torch.equal(off["index"], (plain["index"] + 200) % 30)
    assert torch.equal(off["references"][0], train[off["index"][0]])
    assert torch.equal(off["density"], plain["density"])


def test_bad_inputs_are_named(cnn, images):
    refs, rho = refset()
    with pytest.raises(ValueError, match="lpi_references"):
        explain("lpi", cnn, images, 0)
    with pytest.raises(ConfigError, match="samples = 20"):
        explain("lpi", cnn, images, 0, references=refs)
    with pytest.raises(ConfigError, match="density"):
        explain("lpi", cnn, images, 0, samples=5, references=refs, density=rho[:4])
    with pytest.raises(ConfigError, match="centres"):
        explain("lpi", cnn, images, 0, samples=5, references=refs.expand(2, 5, 3, 32, 32))
