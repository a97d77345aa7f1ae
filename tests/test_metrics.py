import numpy as np
import pytest
import torch
from torch import nn

from xaipipe.errors import ConfigError
from xaipipe.metrics import available_metrics, deletion, insertion
from xaipipe.metrics.aggregate import bootstrap_ci, summarize, to_markdown
from xaipipe.metrics.perturbation import pixel_counts, pixel_ranks
from xaipipe.models import NormalizedModel


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
    assert {"insertion", "deletion"} <= set(available_metrics())
    with pytest.raises(ConfigError, match="fill.*'white'.*black"):
        insertion(None, None, None, None, fill="white")


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


def test_bootstrap_interval_and_summary():
    v = np.arange(100.0)
    m, lo, hi = bootstrap_ci(v, seed=0)
    assert m == 49.5 and lo < m < hi and hi - lo < 25
    assert bootstrap_ci(v, seed=0) == bootstrap_ci(v, seed=0)
    assert bootstrap_ci(np.full(10, 2.0)) == (2.0, 2.0, 2.0)
    assert np.isnan(bootstrap_ci([np.nan])[0])
    import pandas as pd
    keys = dict(dataset="d", model="m", metric="insertion", method="ig", variant="original")
    s = summarize([(keys, pd.DataFrame({"auc": [0.1, 0.3], "auc_norm": [0.2, 0.4]}),
                    ("auc", "auc_norm"))])
    assert s["mean"].tolist() == pytest.approx([0.2, 0.3]) and s["n"].tolist() == [2, 2]
    assert "insertion" in to_markdown(s) and "0.2000 [" in to_markdown(s)
