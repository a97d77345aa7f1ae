"""StartGrad faithfulness (`metrics.md` §3.4): hand-computed values, its invariants (d_keep(1) =
0, d_remove(0) = 0, a random ranking scores ≈ 0, a ranking of what the model reads scores
high), the reference's tie rule, and the mask methods' per-iteration records."""
import numpy as np
import pytest
import torch
from torch import nn

from xaipipe.errors import ConfigError, DataError
from xaipipe.explain import run_method
from xaipipe.metrics import MetricInputs, faithfulness, get_metric
from xaipipe.metrics.faithfulness import faithfulness_curves
from xaipipe.utils import derive_seed


class CornerModel(nn.Module):
    """Two classes; logit 0 = a · Σ_c x[c, 0, 0] − b, logit 1 = 0: only pixel (0, 0) counts."""

    def __init__(self, a=4.0, b=3.0):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        z = self.a * x[:, :, 0, 0].sum(1) - self.b
        return torch.stack([z, torch.zeros_like(z)], 1)


class RegionModel(nn.Module):
    """Class 0's logit reads the mean of a top-left 4×4 region only."""

    def forward(self, x):
        z = 30.0 * (x[:, :, :4, :4].mean((1, 2, 3)) - 0.7)
        return torch.stack([z, -z], 1)


def test_hand_computed_two_by_two():
    """M = 4 pixels, fractions {0, ½, 1}, pixel (0, 0) ranked first. keep: d(0) = (p − p(u))²,
    d(½) = d(1) = 0; remove: d(0) = 0, d(½) = d(1) = (p − p(u))², the same noise u for both
    curves. AUCs d/4 and 3d/4, faithfulness d/2."""
    model = CornerModel()
    x = torch.tensor([[[[0.9, 0.1], [0.2, 0.3]], [[0.8, 0.0], [0.1, 0.2]],
                       [[0.7, 0.5], [0.4, 0.6]]]])
    maps = torch.tensor([[[[5.0, 1.0], [2.0, 0.0]]]]).expand(1, 3, 2, 2)
    out = faithfulness(model, x, maps, 0, ids=[7], steps=3, seed=3)
    p = torch.sigmoid(torch.tensor(4.0 * 2.4 - 3.0)).double()        # p_0 = σ(z) for 2 classes
    g = torch.Generator().manual_seed(derive_seed(3, 7, "faithfulness", "pixel"))
    mu, sd = x.flatten().mean(), x.flatten().std()
    u = (mu - sd + 2 * sd * torch.rand((3, 2, 2), generator=g)).clamp(0, 1)
    d = float((p - torch.sigmoid(4.0 * u[:, 0, 0].sum() - 3.0).double()) ** 2)
    assert d > 1e-4
    np.testing.assert_allclose(out["keep"][0], [d, 0, 0], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(out["remove"][0], [0, d, d], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(out["auc_keep"], [d / 4], rtol=1e-6)
    np.testing.assert_allclose(out["auc_remove"], [3 * d / 4], rtol=1e-6)
    np.testing.assert_allclose(out["faithfulness"], [d / 2], rtol=1e-6)


def test_endpoints_and_right_ranking_beats_random_ones():
    torch.manual_seed(0)
    model = RegionModel()
    x = torch.rand(6, 3, 12, 12)
    x[:, :, :4, :4] = 0.9                                 # p_0 ≈ 0.99 on the clean images
    good = torch.zeros(6, 1, 12, 12)
    good[:, :, :4, :4] = 1.0
    good = good + 0.01 * torch.rand(6, 1, 12, 12)
    out_good = faithfulness(model, x, good, 0, steps=11)
    out_bad = faithfulness(model, x, -good, 0, steps=11)     # the region last
    assert np.all(out_good["keep"][:, -1] == 0) and np.all(out_good["remove"][:, 0] == 0)
    assert np.all(out_good["faithfulness"] > 0.1)
    assert np.all(out_bad["faithfulness"] < -0.1)
    rand = np.stack([faithfulness(model, x, torch.rand(6, 3, 12, 12, generator=torch.Generator()
                                                       .manual_seed(s)), 0, steps=11,
                                  seed=s)["faithfulness"] for s in range(12)])
    assert abs(rand.mean()) < 0.15 * out_good["faithfulness"].mean()
    # the noise is drawn per image id: another batch composition gives the same numbers
    half = faithfulness(model, x[3:], good[3:], 0, ids=np.arange(3, 6), steps=11)
    np.testing.assert_allclose(half["faithfulness"], out_good["faithfulness"][3:], rtol=1e-6)


def test_compat_keeps_ties_together_and_ranks_each_array():
    """An all-equal ranking: the reference keeps everything on both curves (0), the clean
    form ranks the ties in pixel order (not 0); two arrays with disjoint score ranges: the
    reference takes the top p of each array."""
    model = RegionModel()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x[:, :, :4, :4] = 0.9
    flat = torch.ones(2, 1, 8, 8)
    ref = faithfulness(model, x, flat, 0, compat="startgrad", steps=5)
    assert np.all(ref["keep"] == 0) and np.all(ref["remove"] == 0)
    assert np.all(np.abs(faithfulness(model, x, flat, 0, steps=5)["faithfulness"]) > 1e-3)

    c = [torch.arange(1.0, 5.0).view(1, 1, 4), torch.arange(11.0, 15.0).view(1, 1, 4)]
    scores = [torch.tensor([[[4.0, 3.0, 2.0, 1.0]]]), torch.tensor([[[0.4, 0.3, 0.2, 0.1]]])]
    seen = []

    def synth(parts):
        seen.append([(q[0, 0] != u[0, 0]).tolist() for q, u in zip(parts, c)])
        return torch.zeros(parts[0].shape[0], 3, 2, 2)

    zero = [torch.zeros(1, 1, 1), torch.zeros(1, 1, 1)]
    for compat, expect in ((None, [[False] * 4, [True] * 4]),        # clean: array 1 first
                           ("startgrad", [[False, False, True, True]] * 2)):
        seen.clear()
        faithfulness_curves(model, torch.tensor([0]), torch.tensor([0.5]), c, scores,
                            zero, zero, synth, [0], steps=3, compat=compat, batch_size=1)
        # job 1 is keep at p = ½: the randomised units (noise ≠ coefficient) per array
        assert seen[1] == expect, compat


@pytest.fixture(scope="module")
def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 3)).eval()


@pytest.mark.parametrize("name", ["pixel_mask", "waveletx"])
def test_mask_methods_record_it_per_iteration_without_changing_the_run(name, tiny_cnn):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    t = tiny_cnn(x).argmax(1)
    kw = {"samples": 2, "init": "startgrad", "levels": 2} if name == "waveletx" else \
        {"samples": 2, "init": "startgrad"}
    full = run_method(name, tiny_cnn, x, t, steps=4, faithfulness_at=[4, 0, 2], **kw)
    plain = run_method(name, tiny_cnn, x, t, steps=4, **kw)
    torch.testing.assert_close(full.maps, plain.maps, rtol=0, atol=0)   # not seeded by it
    assert full.extras["faithfulness"].shape == (2, 3)
    assert full.extras["faithfulness_step"].tolist() == [[0, 2, 4]] * 2
    short = run_method(name, tiny_cnn, x, t, steps=2, faithfulness_at=[2], **kw)
    torch.testing.assert_close(short.extras["faithfulness"][:, 0],
                               full.extras["faithfulness"][:, 1], rtol=1e-5, atol=1e-7)
    init = run_method(name, tiny_cnn, x, t, steps=0, faithfulness_at=[0], **kw)
    torch.testing.assert_close(init.extras["faithfulness"][:, 0],
                               full.extras["faithfulness"][:, 0], rtol=1e-6, atol=1e-9)
    ones = run_method(name, tiny_cnn, x, t, steps=0, faithfulness_at=[0],
                      faithfulness_compat="startgrad", **{**kw, "init": "ones"})
    assert torch.all(ones.extras["faithfulness"] == 0)            # the reference's 0.000

    metric = get_metric("faithfulness")()
    cols = metric(MetricInputs(ids=np.arange(2), target=t, maps=full.maps, model=tiny_cnn,
                               images=x, extras={k: v.numpy() for k, v in full.extras.items()}))
    np.testing.assert_array_equal(cols["faithfulness"], full.extras["faithfulness"][:, -1])
    assert cols["faithfulness_curve"].shape == (2, 3)


def test_bad_iterations_and_bad_extras_are_named(tiny_cnn):
    with pytest.raises(ConfigError, match=r"faithfulness_at: \[9\]"):
        run_method("pixel_mask", tiny_cnn, torch.rand(1, 3, 8, 8), 0, steps=4,
                   faithfulness_at=[0, 9])
    metric = get_metric("faithfulness")()
    with pytest.raises(DataError, match="faithfulness_step"):
        metric(MetricInputs(ids=np.arange(1), target=torch.tensor([0]),
                            maps=torch.rand(1, 3, 8, 8), model=tiny_cnn,
                            images=torch.rand(1, 3, 8, 8),
                            extras={"faithfulness": np.zeros((1, 2))}))
