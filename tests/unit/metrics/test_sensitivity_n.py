"""Sensitivity-n (`metrics.md` §4.2): correlation 1 for a linear model whose attribution is
exactly its contribution (sum reduction, zero fill in normalised space), the samples against
a loop over the seeded draws, Pearson against SciPy, the masks' seeding and rate, undefined
correlations, the aggregate."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from xaipipe.errors import ConfigError
from xaipipe.metrics import MetricInputs, get_metric, sensitivity_n
from xaipipe.metrics.sensitivity_n import FRACTIONS, SensitivityN, draws, pearson
from xaipipe.models import NormalizedModel

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)


class RowLinear(nn.Module):
    """z = W·flatten(x) + b, each row reduced on its own (batch-independent logits)."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, x):
        return (x.flatten(1)[:, None, :] * self.weight).sum(-1) + self.bias


def setup(n=4, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = 3 * h * w
    net = RowLinear(torch.randn(3, d, generator=g), torch.randn(3, generator=g))
    model = NormalizedModel(net, mean=MEAN, std=STD).eval()
    images = torch.rand(n, 3, h, w, generator=g)
    return model, images


def contributions(model, images, target):
    """φ = w_y ⊙ x in normalised space: z_y(x) − z_y(x with pixels set to normalised 0) is
    exactly the sum of φ over those pixels."""
    w = model.net.weight[torch.as_tensor(target)].detach().view(images.shape)
    return w * model.normalize(images)


def test_exact_contributions_correlate_perfectly_with_sum_and_zero_fill():
    model, images = setup()
    target = torch.tensor([0, 1, 2, 0])
    phi = contributions(model, images, target)
    out = sensitivity_n(model, images, phi, target, fill="zero", reduction="sum",
                        ids=[5, 6, 7, 8])
    assert not out["correlation_undefined"].any()
    np.testing.assert_allclose(out["correlation"], 1.0, atol=1e-6)
    np.testing.assert_allclose(out["attribution_sums"], out["logit_drops"], rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(out["mean"], 1.0, atol=1e-6)
    np.testing.assert_allclose(out["std"], 0.0, atol=1e-6)
    # the same masks with the fill in pixel space (pixel 0, i.e. −μ/σ normalised) no longer
    # remove exactly φ: the correlation drops below 1
    shifted = model.net.weight[target].detach().view(images.shape) * (
        model.normalize(images) - model.normalize(torch.zeros_like(images)))
    assert not np.allclose(sensitivity_n(model, images, shifted, target, fill="zero",
                                         reduction="sum")["correlation"], 1.0, atol=1e-3)
    # |φ| does not add up to the drop when φ has both signs
    a = sensitivity_n(model, images, phi, target, fill="zero", reduction="abs")
    assert (a["correlation"] < 0.999).any()


def test_samples_equal_a_loop_over_the_seeded_draws():
    """A (Σ over masked pixels of the reduced map) and D (the logit drop), one mask at a time
    from :func:`draws` (seed, image id, q), against the batched metric."""
    model, images = setup(n=3, h=4, w=4)
    target = torch.tensor([2, 0, 1])
    maps = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    ids = [11, 3, 7]
    qs = (0.2, 0.5, 0.8)
    for fill, reduction in (("rand", "abs"), ("zero", "sum")):
        out = sensitivity_n(model, images, maps, target, fractions=qs, samples=4, fill=fill,
                            reduction=reduction, seed=3, ids=ids, batch_size=5)
        red = maps.abs().sum(1) if reduction == "abs" else maps.sum(1)
        with torch.no_grad():
            for i in range(3):
                x = model.normalize(images[i:i + 1])[0]
                z = model.net(x[None])[0, target[i]]
                for a, q in enumerate(qs):
                    masks, noise = draws(ids[i], q, 4, (3, 4, 4), fill, seed=3)
                    for s in range(4):
                        m = masks[s]
                        fillv = noise[s] if fill == "rand" else torch.zeros_like(x)
                        xm = torch.where(m, fillv, x)
                        drop = float(z - model.net(xm[None])[0, target[i]])
                        assert out["logit_drops"][i, a, s] == pytest.approx(drop, abs=1e-5)
                        assert out["attribution_sums"][i, a, s] == pytest.approx(
                            float(red[i][m].double().sum()), rel=1e-12, abs=1e-12)
                    np.testing.assert_allclose(
                        out["correlation"][i, a],
                        pearson(out["attribution_sums"][i, a], out["logit_drops"][i, a]))


def test_pearson_agrees_with_scipy():
    from scipy.stats import pearsonr
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 10)), rng.normal(size=(5, 10))
    b[2] = 3 * a[2] + 1
    for i in range(5):
        assert pearson(a[i], b[i]) == pytest.approx(pearsonr(a[i], b[i]).statistic, abs=1e-12)
    assert np.isnan(pearson(np.ones(10), a[0]))


def test_masks_are_seeded_by_image_id_and_q_and_shared_by_the_fills():
    model, images = setup(n=2)
    maps = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(4))
    kw = dict(fractions=(0.3, 0.6), samples=5)
    r = sensitivity_n(model, images, maps, 0, fill="rand", ids=[4, 9], **kw)
    z = sensitivity_n(model, images, maps, 0, fill="zero", ids=[4, 9], **kw)
    np.testing.assert_array_equal(r["attribution_sums"], z["attribution_sums"])
    assert not np.allclose(r["logit_drops"], z["logit_drops"])
    # image 9 alone, or in another position, gets the same draws
    alone = sensitivity_n(model, images[1:], maps[1:], 0, fill="rand", ids=[9], **kw)
    np.testing.assert_array_equal(alone["attribution_sums"][0], r["attribution_sums"][1])
    np.testing.assert_allclose(alone["logit_drops"][0], r["logit_drops"][1], rtol=1e-6)
    swapped = sensitivity_n(model, images, maps, 0, fill="rand", ids=[9, 4], **kw)
    assert not np.array_equal(swapped["attribution_sums"], r["attribution_sums"])
    other_seed = sensitivity_n(model, images, maps, 0, fill="rand", ids=[4, 9], seed=1, **kw)
    assert not np.array_equal(other_seed["attribution_sums"], r["attribution_sums"])


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_masks_are_bernoulli_q_per_pixel(q):
    masks, noise = draws(0, q, 10, (3, 64, 64), "rand")
    assert masks.shape == (10, 64, 64) and noise.shape == (10, 3, 64, 64)
    rate = masks.double().mean().item()
    assert abs(rate - q) < 4 * np.sqrt(q * (1 - q) / masks.numel())
    assert 0 <= noise.min() and noise.max() < 1
    assert abs(noise.mean().item() - 0.5) < 0.01


def test_constant_attribution_sums_give_undefined_correlations_not_errors():
    model, images = setup(n=3)
    maps = torch.zeros(3, 3, 6, 5)
    maps[1] = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(0))
    out = get_metric("sensitivity_n")()(MetricInputs(ids=np.arange(3),
                                                     target=torch.tensor([0, 1, 2]),
                                                     maps=maps, model=model, images=images))
    assert out["correlation_undefined"].tolist() == [True, False, True]
    assert out["undefined_count"].tolist() == [9, 0, 9]
    assert np.isnan(out["correlation"][[0, 2]]).all()
    assert np.isnan(out["correlation_mean"][[0, 2]]).all()
    assert np.isfinite(out["correlation_mean"][1])
    rows = {r["score"]: r for r in SensitivityN.aggregate(pd.DataFrame(
        {k: list(v) if v.ndim > 1 else v for k, v in out.items()}), n_boot=20)}
    assert rows["correlation_mean"]["n"] == 1 and rows["correlation_mean"]["excluded"] == 2


def test_aggregate_mean_and_std_over_images_dropping_nan():
    corr = np.array([[0.5, 0.1], [0.3, np.nan], [np.nan, np.nan], [0.1, 0.7]])
    df = pd.DataFrame({"fractions": [np.array([0.25, 0.75])] * 4, "correlation": list(corr),
                       "correlation_mean": [0.3, 0.3, np.nan, 0.4]})
    rows = {r["score"]: r for r in SensitivityN.aggregate(df, n_boot=100, seed=2)}
    assert list(rows) == ["correlation_mean", "correlation@0.25", "correlation@0.75"]
    assert rows["correlation@0.25"]["mean"] == pytest.approx(0.3)
    assert rows["correlation@0.25"]["std_over_images"] == pytest.approx(np.std([0.5, 0.3, 0.1]))
    assert (rows["correlation@0.25"]["n"], rows["correlation@0.25"]["excluded"]) == (3, 1)
    assert rows["correlation@0.75"]["mean"] == pytest.approx(0.4)
    assert rows["correlation@0.75"]["std_over_images"] == pytest.approx(0.3)
    assert rows["correlation_mean"]["mean"] == pytest.approx(1 / 3)
    for r in rows.values():
        assert r["ci_low"] <= r["mean"] <= r["ci_high"] and r["direction"] == "higher"


def test_plain_function_summary_matches_the_per_q_reference_statistics():
    model, images = setup(n=6, h=4, w=4)
    maps = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(8))
    out = sensitivity_n(model, images, maps, 1, samples=6)
    corr = out["correlation"]
    for j in range(len(FRACTIONS)):
        v = corr[:, j][np.isfinite(corr[:, j])]
        assert out["mean"][j] == pytest.approx(np.mean(v))
        assert out["std"][j] == pytest.approx(np.std(v))


@pytest.mark.parametrize("bad", [(0.5, 0.2), (0.0, 0.5), (0.5, 1.0), ()])
def test_fractions_are_checked(bad):
    with pytest.raises(ConfigError, match=r"sensitivity_n.*fractions"):
        SensitivityN(fractions=bad)
    with pytest.raises(ConfigError, match="fill"):
        SensitivityN(fill="mean")
