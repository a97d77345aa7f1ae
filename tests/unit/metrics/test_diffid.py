"""DiffID (LPI, AAAI 2023; `metrics.md` §4.1): hand-computed games on tiny linear models,
substitution in the model's normalised space, n_r counts, the kept-mean fill, deterministic
ties, DiffID ≈ 0 for random maps, agreement with a per-image per-ratio loop and with the
reference's quantile thresholding, the flags and the aggregate."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xaipipe.errors import ConfigError, NonFiniteError
from xaipipe.metrics import MetricInputs, diffid, get_metric
from xaipipe.metrics.diffid import RATIOS, DiffID, removed_masks
from xaipipe.metrics.perturbation import pixel_counts
from xaipipe.metrics.statistics import column_seed
from xaipipe.models import NormalizedModel


class LinearNet(nn.Module):
    """z = W·flatten(x) + b on the normalised input, each row reduced on its own (so a logit
    does not depend on the batch it comes in, unlike a matrix product whose blocking follows
    the batch size); records every batch it is given."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(weight, dtype=torch.float32))
        self.bias = nn.Parameter(torch.as_tensor(bias, dtype=torch.float32))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return (x.flatten(1)[:, None, :] * self.weight).sum(-1) + self.bias


def recorded(model):
    return torch.cat(model.net.seen).flatten(1).double()


# -- by hand ----------------------------------------------------------------------------------
def test_hand_computed_one_channel():
    """1 x 2 x 2 image, T = 4. Normalised x = (x̃ − 0.5)/0.25 = [1, −1, 0, 2] (flat);
    |φ| = [0.3, 0.9, 0.1, 0.6] → min–max [0.25, 1, 0, 0.625] → order [1, 3, 0, 2].
    Class 0: z = 2x0 + x1 − x2 + 3x3 + 1 = 8 on x; class 1: constant 2."""
    net = LinearNet([[2.0, 1.0, -1.0, 3.0], [0.0, 0.0, 0.0, 0.0]], [1.0, 2.0])
    model = NormalizedModel(net, mean=(0.5,), std=(0.25,)).eval()
    images = torch.tensor([[[[0.75, 0.25], [0.5, 1.0]]]])
    maps = torch.tensor([[[[0.3, -0.9], [0.1, 0.6]]]])
    out = diffid(model, images, maps, 0, ratios=(0.25, 0.5, 0.75))
    # deletion removes the top n_r = 1, 2, 3 of [1, 3, 0, 2]; the kept mean fills them:
    # r=.25: kept {0,2,3} = (1+0+2)/3 = 1 → [1, 1, 0, 2], z = 10
    # r=.5 : kept {0,2} = 0.5 → [1, .5, 0, .5], z = 5
    # r=.75: kept {2} = 0 → [0, 0, 0, 0], z = 1 (< 2: wrong class)
    np.testing.assert_allclose(out["del_logit"], [[10 / 8, 5 / 8, 1 / 8]], rtol=1e-6)
    np.testing.assert_array_equal(out["del_acc"], [[1, 1, 0]])
    # insertion removes the bottom n_r: r=.25: {2}, kept (1−1+2)/3 = 2/3 → z = 22/3;
    # r=.5: {2, 0}, kept (−1+2)/2 = .5 → [.5, −1, .5, 2], z = 6.5;
    # r=.75: {2, 0, 3}, kept −1 → all −1, z = −4 (wrong class)
    np.testing.assert_allclose(out["ins_logit"], [[22 / 24, 6.5 / 8, -4 / 8]], rtol=1e-6)
    np.testing.assert_array_equal(out["ins_acc"], [[1, 1, 0]])
    diff = np.array([22 / 24 - 10 / 8, 6.5 / 8 - 5 / 8, -4 / 8 - 1 / 8])
    np.testing.assert_allclose(out["diffid_logit"], diff, rtol=1e-6)
    np.testing.assert_array_equal(out["diffid_acc"], [0, 0, 0])
    assert out["diffid_logit_mean"] == pytest.approx(diff.mean(), rel=1e-6)
    assert out["diffid_logit_auc"] == pytest.approx(
        0.25 * ((diff[0] + diff[1]) / 2 + (diff[1] + diff[2]) / 2), rel=1e-6)
    assert out["logit_nonpositive"].tolist() == [False]
    np.testing.assert_array_equal(out["ratios"], [0.25, 0.5, 0.75])


def test_hand_computed_three_channels_substitutes_in_normalised_space():
    """3 x 1 x 2 image (T = 6) with a different μ, σ per channel: normalised
    x = [ch0: 1, −1 | ch1: 1, −1 | ch2: 0.5, 0.25]; pixel A (left) outranks B, the channels
    of a pixel tie, so the order is [0, 2, 4, 1, 3, 5]. The mean of the kept elements is taken
    in normalised space (in pixel space it would differ per channel)."""
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.0] * 6])
    net = LinearNet(w, [0.5, 0.0])
    model = NormalizedModel(net, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0)).eval()
    images = torch.tensor([[[[1.0, 0.0]], [[0.5, 0.0]], [[0.5, 0.25]]]])
    maps = torch.tensor([[[[2.0, -1.0]], [[0.0, 0.0]], [[0.0, 0.0]]]])
    out = diffid(model, images, maps, 0, ratios=(0.34, 0.5))           # n_r = 2, 3
    x = np.array([1.0, -1.0, 1.0, -1.0, 0.5, 0.25])
    del34 = x.copy()
    del34[[0, 2]] = np.mean(x[[1, 3, 4, 5]])                            # −0.3125
    del50 = x.copy()
    del50[[0, 2, 4]] = np.mean(x[[1, 3, 5]])                            # −0.58333
    ins34 = x.copy()
    ins34[[3, 5]] = np.mean(x[[0, 2, 4, 1]])                            # 0.375
    ins50 = x.copy()
    ins50[[1, 3, 5]] = np.mean(x[[0, 2, 4]])                            # 0.83333
    wy, z = w[0].double().numpy(), float(w[0].double().numpy() @ x + 0.5)
    seen = recorded(model).numpy()
    for v in (x, del34, del50, ins34, ins50):                          # fed to the network
        assert np.isclose(seen, v, rtol=0, atol=1e-6).all(1).any(), v
    # a pixel-space mean mapped per channel would fill deletion r=0.5 with
    # [(1/12 − .5)/.5, (1/12 − .25)/.25, 1/12] = [−0.83, −0.67, 0.08]: not what is fed
    assert not np.isclose(seen[:, [0, 2, 4]], [-5 / 6, -2 / 3, 1 / 12], atol=1e-3).all(1).any()
    np.testing.assert_allclose(out["del_logit"], [[(wy @ del34 + .5) / z, (wy @ del50 + .5) / z]],
                               rtol=1e-6)
    np.testing.assert_allclose(out["ins_logit"], [[(wy @ ins34 + .5) / z, (wy @ ins50 + .5) / z]],
                               rtol=1e-6)


# -- counts, the fill, ties --------------------------------------------------------------------
def random_setup(n=3, c=3, h=5, w=7, classes=4, seed=0, mean=(0.4, 0.5, 0.6),
                 std=(0.2, 0.3, 0.25)):
    g = torch.Generator().manual_seed(seed)
    d = c * h * w
    net = LinearNet(torch.randn(classes, d, generator=g) * 0.2,
                    torch.full((classes,), 3.0) + torch.randn(classes, generator=g))
    model = NormalizedModel(net, mean=mean[:c], std=std[:c]).eval()
    images = torch.rand(n, c, h, w, generator=g)
    maps = torch.randn(n, c, h, w, generator=g)
    return model, images, maps


@pytest.mark.parametrize("t", [12, 105, 3 * 224 * 224])
def test_removed_counts_match_the_formula(t):
    counts = torch.as_tensor(pixel_counts(RATIOS, t))
    assert counts.tolist() == [int(np.floor(r * t + 1e-9)) for r in RATIOS]
    if t == 3 * 224 * 224:          # ⌊r·150528⌋, written out
        assert counts.tolist() == [15052, 30105, 45158, 60211, 75264, 90316, 105369, 120422,
                                   135475]
    ranks = torch.stack([torch.randperm(t, generator=torch.Generator().manual_seed(k))
                         for k in range(2)])
    rm = removed_masks(ranks, counts)                                   # (2, 2, R, T)
    assert rm.sum(-1).tolist() == [[counts.tolist()] * 2] * 2
    # insertion removes the last-ranked, deletion the first-ranked
    for i in range(2):
        for j, k in enumerate(counts.tolist()):
            assert set(ranks[i][rm[i, 0, j]].tolist()) == set(range(t - k, t))
            assert set(ranks[i][rm[i, 1, j]].tolist()) == set(range(k))


def order_of(maps, h, w):
    """The ranking of the spec written out: abs_sum, min–max (1e-10), replicated to the
    channels, NumPy stable descending sort (ties: lower flat index first)."""
    s = maps.abs().sum(1, keepdim=True)
    s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False) \
        if s.shape[-2:] != (h, w) else s
    s = s - s.flatten(1).min(1).values.view(-1, 1, 1, 1)
    s = s / (s.flatten(1).max(1).values.view(-1, 1, 1, 1) + 1e-10)
    rep = s.expand(-1, 3, -1, -1).flatten(1).numpy()
    return [np.argsort(-r, kind="stable") for r in rep]


def test_every_substituted_element_is_the_kept_mean_and_counts_are_n_r():
    """Every perturbed input fed to the network: the changed elements hold one value, the
    float32 mean (computed here in float64) of the unchanged ones, in normalised space; there
    are n_r of them, the top n_r of the order (deletion) or the bottom n_r (insertion), one
    input per game and ratio."""
    model, images, maps = random_setup()
    n, c, h, w = images.shape
    t = c * h * w
    counts = pixel_counts(RATIOS, t).tolist()
    diffid(model, images, maps, 0, batch_size=64)
    seen = recorded(model)
    xs = model.normalize(images).flatten(1).double()
    orders = order_of(maps, h, w)
    for i in range(n):
        found = set()
        for row in seen:
            changed = (row != xs[i]).numpy()
            if changed.sum() == 0:
                continue                                                 # the original
            if changed.sum() > max(counts) or changed.sum() not in counts:
                continue                                                 # another image
            k = int(changed.sum())
            idx = set(np.flatnonzero(changed).tolist())
            top, bottom = set(orders[i][:k].tolist()), set(orders[i][t - k:].tolist())
            if idx not in (top, bottom):
                continue                                                 # another image
            vals = row[changed].unique()
            assert len(vals) == 1
            kept = xs[i][~torch.as_tensor(changed)]
            assert float(vals[0]) == pytest.approx(float(kept.mean()), rel=1e-6, abs=1e-7)
            assert float(vals[0]) == float(torch.tensor(float(kept.mean())).float())
            found.add(("deletion" if idx == top else "insertion", k))
        assert found == {(g, k) for g in ("insertion", "deletion") for k in counts}
    assert len(seen) == n * (2 * len(RATIOS) + 1)


@pytest.mark.parametrize("value", [0.0, 1.0, 3.5])
def test_constant_map_ties_break_by_flat_index_reproducibly(value):
    """A map with all values equal: the ranking is the flat (c, h, w) order, so deletion
    removes the first n_r elements and insertion the last n_r; INS and DEL are the same on a
    rerun and for every batch size."""
    model, images, _ = random_setup(n=4)
    n, c, h, w = images.shape
    t = c * h * w
    maps = torch.full(images.shape, value)
    runs = [diffid(model, images, maps, [0, 1, 2, 3], batch_size=b) for b in (1, 7, 19, 1000)]
    runs.append(diffid(model, images, maps, [0, 1, 2, 3], batch_size=7))
    for r in runs[1:]:
        for k in ("ins_logit", "del_logit", "ins_acc", "del_acc"):
            np.testing.assert_allclose(r[k], runs[0][k], rtol=1e-6, err_msg=k)
    np.testing.assert_array_equal(runs[1]["ins_logit"], runs[-1]["ins_logit"])
    xs = model.normalize(images).flatten(1).double()
    seen = recorded(model)
    for k in pixel_counts(RATIOS, t).tolist():
        dele, ins = xs[0].clone(), xs[0].clone()
        dele[:k] = xs[0][k:].mean()
        ins[t - k:] = xs[0][:t - k].mean()
        for v in (dele, ins):
            assert torch.isclose(seen, v, rtol=0, atol=1e-6).all(1).any()


# -- agreement with independent loops ----------------------------------------------------------
def loop_reference(model, images, maps, target, ratios=RATIOS):
    """One image, one ratio, one game at a time: the spec's steps written out (NumPy ranking,
    boolean-index kept mean), a forward per perturbed image."""
    n, c, h, w = images.shape
    t = c * h * w
    out = {k: np.zeros((n, len(ratios))) for k in ("ins_logit", "del_logit", "ins_acc",
                                                     "del_acc")}
    orders = order_of(maps, h, w)
    with torch.no_grad():
        for i in range(n):
            x = model.normalize(images[i:i + 1]).flatten()
            z = model.net(x.view(1, c, h, w))[0]
            y = int(target[i])
            for j, r in enumerate(ratios):
                k = int(np.floor(r * t + 1e-9))
                for game, drop in (("ins", orders[i][t - k:]), ("del", orders[i][:k])):
                    keep = np.ones(t, bool)
                    keep[drop] = False
                    fill = x[torch.as_tensor(keep)].double().mean().float()
                    xp = x.clone()
                    xp[torch.as_tensor(drop, dtype=torch.long)] = fill
                    zp = model.net(xp.view(1, c, h, w))[0]
                    out[f"{game}_logit"][i, j] = float(zp[y].double() / z[y].double())
                    out[f"{game}_acc"][i, j] = float(zp.argmax() == y)
    return out


@pytest.mark.parametrize("setup", ["linear", "cnn"])
def test_batched_equals_a_per_image_per_ratio_loop(setup, cnn):
    """Exactly on a network whose logits do not depend on the batch; within float32 rounding
    on the demo CNN."""
    if setup == "linear":
        model, images, maps = random_setup(n=5)
    else:
        model = cnn
        g = torch.Generator().manual_seed(4)
        images = torch.rand(3, 3, 16, 16, generator=g)
        maps = torch.randn(3, 3, 16, 16, generator=g)
    with torch.no_grad():
        target = model(images).argmax(1)
    ref = loop_reference(model, images, maps, target)
    for bs in (5, 64):
        got = diffid(model, images, maps, target, batch_size=bs)
        for k in ref:
            if setup == "linear" or k.endswith("acc"):
                np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
            else:       # convolutions pick their kernels by batch size: float32 rounding
                np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_coarse_maps_are_upsampled_bilinearly_after_the_channel_reduction():
    model, images, _ = random_setup(n=3, h=8, w=8)
    coarse = torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    up = F.interpolate(coarse.abs().sum(1, keepdim=True), size=(8, 8), mode="bilinear",
                       align_corners=False)
    a, b = diffid(model, images, coarse, 1), diffid(model, images, up, 1)
    for k in ("ins_logit", "del_logit", "ins_acc", "del_acc"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def reference_games(model, images, maps, target, ratios):
    """The reference's computation (``Evaluator.DiffID`` of ``ypeiyu/LPI``), written here:
    per-pixel saliency (abs channel sum, min–max), a ``torch.quantile(..., 'midpoint')``
    threshold compared with ``<``, the fill = sum of kept / count_nonzero of kept."""
    s = maps.abs().sum(1, keepdim=True)
    flat = s.view(s.size(0), -1)
    s = s - flat.min(1, keepdim=True)[0].unsqueeze(1).unsqueeze(1)
    flat = s.view(s.size(0), -1)
    s = s / (flat.max(1, keepdim=True)[0].unsqueeze(1).unsqueeze(1) + 1e-10)
    x = model.normalize(images)
    out = {}
    with torch.no_grad():
        z = model.net(x)
        for top, name in ((False, "ins"), (True, "del")):
            curves = []
            for r in ratios:
                q = 1 - r if top else r
                thr = torch.quantile(s.reshape(s.shape[0], -1), q=q, dim=1,
                                     interpolation="midpoint")
                batch = torch.zeros_like(x)
                for b in range(x.shape[0]):
                    zero = torch.zeros_like(x[b])
                    sat, dis = (x[b], zero) if top else (zero, x[b])
                    pert = torch.where(s[b] < thr[b], sat, dis)
                    mean = torch.sum(pert) / (torch.count_nonzero(pert) + 1e-10)
                    batch[b] = torch.where(s[b] < thr[b], sat if top else sat + mean,
                                           dis + mean if top else dis)
                zp = model.net(batch)
                curves.append((zp.gather(1, target[:, None]) / z.gather(1, target[:, None]))[:, 0])
            out[f"{name}_logit"] = torch.stack(curves, 1).double().numpy()
    return out


def test_agrees_with_the_reference_thresholding_where_it_removes_exactly_n_r():
    """On 2 x 5 = 10 pixels with distinct saliency and r = k/10, the reference's midpoint
    quantile falls between the k-th and (k+1)-th pixel, so it removes exactly k whole pixels
    = n_r elements, and no kept element is 0: both computations must agree."""
    model, images, maps = random_setup(n=6, h=2, w=5)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    ratios = tuple(k / 10 for k in range(1, 10))
    ref = reference_games(model, images, maps, target, ratios)
    got = diffid(model, images, maps, target, ratios=ratios)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


# -- expectation -------------------------------------------------------------------------------
def test_random_maps_give_diffid_near_zero_and_an_informative_map_does_not():
    """Random maps: the insertion and deletion games remove uniformly random sets of the same
    size, so E[DiffID] = 0; checked with a 4-standard-error band over 300 images. The model
    reads positive contributions w_0 ⊙ x (w_0 > 0, x ≥ 0, so z_0 > 0): ranking by them makes
    deletion remove what raises z_0 and insertion keep it, a DiffID far above 0."""
    g = torch.Generator().manual_seed(5)
    n, d = 300, 3 * 4 * 4
    w = torch.rand(3, d, generator=g)
    net = LinearNet(w, torch.tensor([0.5, 0.0, 0.0]))
    model = NormalizedModel(net, mean=(0.0,) * 3, std=(1.0,) * 3).eval()
    images = torch.rand(n, 3, 4, 4, generator=g)
    target = torch.zeros(n, dtype=torch.long)
    rand = torch.randn(images.shape, generator=torch.Generator().manual_seed(9))
    good = w[0].view(1, 3, 4, 4) * images
    for maps, centred in ((rand, True), (good, False)):
        out = get_metric("diffid")()(MetricInputs(
            ids=np.arange(n), target=target, maps=maps, model=model, images=images,
            batch_size=256))
        assert not out["logit_nonpositive"].any()
        for col in ("diffid_logit_mean", "diffid_logit_auc", "diffid_acc_mean"):
            v = out[col]
            se = v.std(ddof=1) / np.sqrt(v.size)
            if centred:
                assert abs(v.mean()) < 4 * se, (col, v.mean(), se)
            elif col != "diffid_acc_mean":          # class 0 wins almost always: acc ≈ 1 − 1
                assert v.mean() > 20 * se, (col, v.mean(), se)


# -- flags, non-finite values, parameters ------------------------------------------------------
def test_nonpositive_logits_are_flagged_and_kept_raw():
    """Image 0 has z_y(x) < 0, image 1 exactly 0 (ratio ±inf/NaN), image 2 > 0: the first two
    are flagged, their raw ratios kept, nothing raises."""
    net = LinearNet([[1.0, 1.0, 1.0, 1.0], [0.0] * 4], [0.0, 0.0])
    model = NormalizedModel(net, mean=(0.0,), std=(1.0,)).eval()
    images = torch.tensor([[-1.0, -0.5, 0.25, 0.5], [0.5, -0.5, 0.25, -0.25],
                           [1.0, 0.5, 0.25, 0.5]]).view(3, 1, 2, 2)
    maps = torch.tensor([4.0, 3.0, 2.0, 1.0]).view(1, 1, 2, 2).expand(3, 1, 2, 2)
    out = diffid(model, images, maps, 0, ratios=(0.25, 0.5))
    assert out["logit_nonpositive"].tolist() == [True, True, False]
    # image 0: z = −0.75; deletion r=.25 fills element 0 with mean(−.5, .25, .5) = 1/12
    assert out["del_logit"][0, 0] == pytest.approx((1 / 12 - 0.5 + 0.25 + 0.5) / -0.75)
    assert not np.isfinite(out["del_logit"][1]).all()
    cols = DiffID()(MetricInputs(ids=np.arange(3), target=torch.zeros(3, dtype=torch.long),
                                 maps=maps, model=model, images=images))
    assert np.isfinite(cols["diffid_logit_mean"][[0, 2]]).all()


class NanAbove(nn.Module):
    """The network's logits, NaN for inputs whose first element exceeds 2.5."""

    def __init__(self, net):
        super().__init__()
        self.inner = net

    def forward(self, x):
        z = self.inner(x)
        return z * torch.where(x.flatten(1)[:, 0] > 2.5, float("nan"), 1.0)[:, None]


def test_nonfinite_model_scores_raise_or_are_recorded():
    """Image 1's first element is 3 in normalised space (the model's logits there are NaN);
    the others stay ≤ 2, and so do their fills (means of their own elements)."""
    model, images, maps = random_setup(n=3)
    images = images * 0.8
    images[1, 0, 0, 0] = 1.0                                  # (1 − 0.4)/0.2 = 3
    model = NormalizedModel(NanAbove(model.net), mean=(0.4, 0.5, 0.6),
                            std=(0.2, 0.3, 0.25)).eval()
    with pytest.raises(NonFiniteError, match=r"image ids \[1\]"):
        diffid(model, images, maps, [0, 2, 1])
    out = diffid(model, images, maps, [0, 2, 1], on_nonfinite="record")
    assert out["nonfinite"].tolist() == [False, True, False]
    assert np.isnan(out["ins_logit"][1]).all() and np.isfinite(out["ins_logit"][[0, 2]]).all()
    np.testing.assert_allclose(out["diffid_logit"],
                               (out["ins_logit"] - out["del_logit"])[[0, 2]].mean(0))


@pytest.mark.parametrize("bad", [(0.5, 0.2), (0.1, 1.0), (-0.1, 0.5), (), ("a",)])
def test_ratios_are_checked(bad):
    with pytest.raises(ConfigError, match=r"diffid.*ratios"):
        DiffID(ratios=bad)
    assert DiffID(ratios=[0.0, 0.5]).hparams.ratios == (0.0, 0.5)


# -- the aggregate -----------------------------------------------------------------------------
def frame(ins, dele, flag, ratios=(0.1, 0.5, 0.9)):
    n = len(ins)
    return pd.DataFrame({"image_id": np.arange(n), "target": np.zeros(n, int),
                         "ratios": [np.asarray(ratios)] * n,
                         "ins_logit": list(np.asarray(ins, float)),
                         "del_logit": list(np.asarray(dele, float)),
                         "ins_acc": list((np.asarray(ins) > 0.5).astype(float)),
                         "del_acc": list((np.asarray(dele) > 0.5).astype(float)),
                         "logit_nonpositive": np.asarray(flag, bool)})


def test_aggregate_by_hand_with_and_without_the_flagged_images():
    ins = [[1.0, 0.8, 0.6], [0.9, 0.9, 0.3], [5.0, -2.0, 7.0], [0.7, 0.4, 0.2]]
    dele = [[0.6, 0.2, 0.1], [0.5, 0.4, 0.1], [1.0, 1.0, 1.0], [0.7, 0.5, 0.1]]
    flag = [False, False, True, False]
    rows = {r["score"]: r for r in DiffID.aggregate(frame(ins, dele, flag), n_boot=200, seed=4)}
    d = np.asarray(ins) - np.asarray(dele)
    grid = np.array([0.1, 0.5, 0.9])
    auc = ((d[:, :-1] + d[:, 1:]) / 2 * np.diff(grid)).sum(1)
    assert rows["diffid_logit_mean"]["mean"] == pytest.approx(d.mean())
    assert rows["diffid_logit_auc"]["mean"] == pytest.approx(auc.mean())
    assert rows["diffid_logit_mean_positive"]["mean"] == pytest.approx(d[[0, 1, 3]].mean())
    assert rows["diffid_logit_auc_positive"]["mean"] == pytest.approx(auc[[0, 1, 3]].mean())
    assert (rows["diffid_logit_mean"]["n"], rows["diffid_logit_mean"]["excluded"]) == (4, 0)
    assert (rows["diffid_logit_mean_positive"]["n"],
            rows["diffid_logit_mean_positive"]["excluded"]) == (3, 1)
    for j, r in enumerate(("0.1", "0.5", "0.9")):
        assert rows[f"diffid_logit@{r}"]["mean"] == pytest.approx(d[:, j].mean())
    da = (np.asarray(ins) > 0.5).astype(float) - (np.asarray(dele) > 0.5)
    assert rows["diffid_acc_mean"]["mean"] == pytest.approx(da.mean())
    assert rows["diffid_acc_auc_positive"]["mean"] == pytest.approx(
        ((da[:, :-1] + da[:, 1:]) / 2 * np.diff(grid)).sum(1)[[0, 1, 3]].mean())
    assert {r["direction"] for r in rows.values()} == {"higher"}
    assert set(DiffID.scalars) <= set(rows)
    # the default grid's trapezoid: 0.1·(Σ v − (v_first + v_last)/2)
    v = np.linspace(-1, 2, 9)
    from xaipipe.metrics.diffid import curve_scalars
    assert curve_scalars(v, RATIOS)[1] == pytest.approx(0.1 * (v.sum() - (v[0] + v[-1]) / 2))


def test_aggregate_interval_is_the_curve_level_bootstrap():
    """Resampling images, recomputing the mean difference curve and its scalar gives the same
    interval as the summary row (same draws: NumPy's generator seeded by (seed, score))."""
    rng = np.random.default_rng(0)
    n, grid = 40, (0.1, 0.3, 0.5, 0.7, 0.9)
    ins, dele = rng.normal(0.8, 0.3, (n, 5)), rng.normal(0.4, 0.3, (n, 5))
    flag = rng.random(n) < 0.2
    df = frame(ins, dele, flag, grid)
    rows = {r["score"]: r for r in DiffID.aggregate(df, n_boot=300, level=0.9, seed=(1, "x"))}
    d = ins - dele
    for score, keep in (("diffid_logit_auc", np.ones(n, bool)),
                        ("diffid_logit_mean_positive", ~flag)):
        dk = d[keep]
        idx = np.random.default_rng(column_seed((1, "x"), score)).integers(
            0, len(dk), size=(300, len(dk)))
        curves = dk[idx].mean(1)                                        # (300, R)
        stat = (np.trapezoid(curves, grid, axis=1) if "auc" in score else curves.mean(1))
        assert rows[score]["ci_low"] == pytest.approx(np.quantile(stat, 0.05), rel=1e-9)
        assert rows[score]["ci_high"] == pytest.approx(np.quantile(stat, 0.95), rel=1e-9)


def test_aggregate_of_nothing_and_of_mixed_grids():
    rows = DiffID.aggregate(frame([], [], []).iloc[:0], n_boot=10)
    assert {r["score"] for r in rows} >= set(DiffID.scalars)
    assert all(np.isnan(r["mean"]) for r in rows)
    df = pd.concat([frame([[1.0, 0.5, 0.2]], [[0.1, 0.1, 0.1]], [False]),
                    frame([[1.0, 0.5, 0.2]], [[0.1, 0.1, 0.1]], [False], (0.2, 0.5, 0.8))])
    with pytest.raises(ValueError, match="different ratio grids"):
        DiffID.aggregate(df, n_boot=10)
