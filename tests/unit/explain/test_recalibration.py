"""The re-calibration estimators' valid mean (ICLR 2023): kept products ≥ 0 averaged per
feature, streamed in any order."""
import torch

from xaipipe.explain.paths.recalibration import ValidMean, valid_mean


def test_valid_mean_by_hand():
    m = torch.tensor([[1.0, -2.0, 0.0, -1.0],
                      [3.0, -1.0, 0.0, 2.0],
                      [-5.0, -4.0, 0.0, 4.0]])
    # feature 0: (1 + 3) / 2; 1: nothing valid -> 0; 2: zeros are valid, 0 / 3; 3: (2 + 4) / 2
    assert torch.equal(valid_mean(m), torch.tensor([2.0, 0.0, 0.0, 3.0], dtype=torch.float64))
    # squared: kept products squared, same counts
    assert torch.equal(valid_mean(m, square=True),
                       torch.tensor([5.0, 0.0, 0.0, 10.0], dtype=torch.float64))


def test_streamed_in_any_order_equals_all_at_once():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(2, 12, 3, 4, generator=g)             # 2 images x 12 points
    acc = ValidMean(2, (3, 4), "cpu")
    order = torch.randperm(24, generator=g)
    rows = torch.arange(2).repeat_interleave(12)
    flat = m.reshape(24, 3, 4)
    for chunk in order.split(5):
        acc.feed(rows[chunk], flat[chunk])
    out = acc.result()
    for i in range(2):
        assert torch.allclose(out[i], valid_mean(m[i]), atol=1e-12)
    assert (out >= 0).all()


def test_a_nan_product_is_reported_not_dropped():
    """A NaN product (a broken gradient) makes its feature's result NaN, so the non-finite
    check of the maps reports it, instead of counting as an invalid product."""
    m = torch.tensor([[1.0, 2.0], [float("nan"), 4.0]])
    out = valid_mean(m)
    assert torch.isnan(out[0]) and out[1] == 3.0
