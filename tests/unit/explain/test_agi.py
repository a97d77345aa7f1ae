"""AGI, adversarial gradient integration (Pan, Li, Zhu, IJCAI 2021), its re-calibrated
estimators (ICLR 2023) and the compat modes of ``ypeiyu/attribution_recalibration``,
``ypeiyu/LPI`` and ``pd90506/AGI``: the walk checked against gradients taken here, closed forms
on linear models, pass counts, draws and batch independence."""
import pytest
import torch
from torch import nn

from helpers.models import Linear
from xaipipe.errors import ConfigError
from xaipipe.explain import run_method
from xaipipe.explain.paths.agi import AGI
from xaipipe.maths.objectives import objective
from xaipipe.models import NormalizedModel


def grad(fn, x, cls, name="logit"):
    """∇ of objective(fn(x), cls) w.r.t. x, taken here (not by the method)."""
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(objective(fn(x), cls, name).sum(), x)
    return g


def linear(classes, shape=(3, 8, 8), seed=0):
    return NormalizedModel(Linear(shape, classes, seed), name="linear").eval()


def weights(model):
    """W as (K, C, H, W): ∂z/∂x of the normalised x."""
    net = model.net
    return net.fc.weight.detach().view(-1, *net.shape)


def pixel_weights(model):
    """∂z/∂x̃ through the normalisation: W / σ, (K, C, H, W)."""
    return weights(model) / model.normalize.std[0]


@pytest.fixture
def saturated():
    """Images with some pixels exactly at 0 and 1 (there δ can be 0)."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 16, 16, generator=g)
    x[:, :, :4] = 1.0
    x[:, :, 4:8] = 0.0
    return x


@pytest.fixture
def small(images):
    """Three 16x16 images (the demo CNN pools adaptively): fast runs."""
    return images[:, :, :16, :16].contiguous()


# -- the walk ----------------------------------------------------------------------------------
def test_walk_follows_the_sign_of_the_target_gradient_within_the_eps_box(cnn, saturated):
    """Every iterate is clip(x̃ + ε·sign(∇s_t(x^{i−1})), 0, 1) with the gradient taken here
    (one pair per chunk, so the method's forward has the same batch), ‖x^i − x̃‖_∞ ≤ ε,
    x^i ∈ [0, 1], and c_{t,i} = ∇f(x^i) ⊙ δ_i, zero wherever δ_i = 0."""
    eps, k = 0.05, 3
    x, y = saturated, torch.tensor([0, 2])
    method = AGI(cnn.eval(), steps=k, samples=3, eps=eps, max_batch=1)
    ids = torch.tensor([11, 12])
    prev, seen, zeros = {}, 0, 0
    for chunk in method.walks(x, y, ids):
        for st in chunk.steps:
            for j in range(st.rows.numel()):
                n, t = int(st.rows[j]), st.classes[j:j + 1]
                key = (int(chunk.rows[st.pairs[j]]), int(chunk.slots[st.pairs[j]]))
                before = prev.get(key, x[n:n + 1])
                expect = torch.clamp(x[n:n + 1] + eps * torch.sign(grad(cnn, before, t)), 0, 1)
                assert torch.equal(st.point[j:j + 1], expect), f"pair {key}, step {st.iteration}"
                prev[key] = expect
                g_f = grad(cnn, expect, y[n:n + 1])
                assert torch.allclose(st.product[j:j + 1], g_f * (x[n:n + 1] - expect),
                                      rtol=1e-6, atol=1e-12)
            assert (st.point - x[st.rows]).abs().max() <= eps + 1e-6
            assert st.point.min() >= 0 and st.point.max() <= 1
            assert torch.equal(st.delta, x[st.rows] - st.point)
            still = st.delta == 0
            assert torch.all(st.product[still] == 0)
            seen += 1
            zeros += int(still.sum())
    assert seen == 3 * 2 * k and zeros > 0
    assert len(prev) == 2 * 3


def test_pixels_at_the_clip_boundary_contribute_nothing(cnn):
    """On a white image every pixel whose step points up stays at 1: δ = 0 and c = 0 there,
    elsewhere δ = ε."""
    x = torch.ones(1, 3, 16, 16)
    method = AGI(cnn.eval(), steps=2, samples=2, eps=0.1)
    for chunk in method.walks(x, torch.tensor([1]), torch.tensor([3])):
        for st in chunk.steps:
            still = st.delta == 0
            assert 0 < int(still.sum()) < still.numel()
            assert torch.all(st.product[still] == 0)
            assert torch.allclose(st.delta[~still], torch.full_like(st.delta[~still], 0.1))


# -- closed forms on linear models -------------------------------------------------------------
@pytest.mark.parametrize("recalibrate", ["none", "valid_ip", "valid_ref"])
def test_linear_model_by_hand(recalibrate):
    """z = W·N(x̃) + b: ∇s_t = w_t/σ is constant, so every x^i = clip(x̃ + ε·sign(w_t), 0, 1)
    and every c_{t,i} = (w_y/σ) ⊙ (x̃ − x^t). Three classes, B = 10: the K − 1 = 2 others."""
    eps, k = 0.07, 4
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 2])
    model = linear(3)
    out = run_method("agi", model, x, y, image_ids=[5, 6], eps=eps, steps=k,
                     recalibrate=recalibrate)
    w = pixel_weights(model)
    targets = out.extras["adv_targets"]
    assert targets.shape == (2, 2) and targets.dtype == torch.int64
    for n in range(2):
        others = sorted(set(range(3)) - {int(y[n])})
        assert sorted(targets[n].tolist()) == others
        c = torch.stack([w[y[n]] * (x[n] - torch.clamp(x[n] + eps * torch.sign(w[t]), 0, 1))
                         for t in others]).double()        # c_t, the same for every i
        keep = (c >= 0).double()
        if recalibrate == "none":
            expect = k * c.sum(0)
        elif recalibrate == "valid_ip":      # k copies of each c_t
            expect = (k * c * keep).sum(0) / (k * keep.sum(0)).clamp_min(1)
        else:                                # a_t = k·c_t
            expect = (k * c * keep).sum(0) / keep.sum(0).clamp_min(1)
        assert torch.allclose(out.maps[n].double(), expect, rtol=1e-5, atol=1e-7)


def test_valid_ref_is_vanilla_over_the_targets_where_every_a_t_is_nonnegative():
    """w_t = −λ_t·w_y for every t ≠ y: each step moves against sign(w_y), so every product
    c = (w_y/σ) ⊙ δ ≥ 0; valid_ref then keeps all B targets (vanilla / B) and valid_ip all
    B·k products (vanilla / (B·k))."""
    model = linear(4)
    with torch.no_grad():
        w = model.net.fc.weight
        w[1], w[2], w[3] = -w[0], -2 * w[0], -0.5 * w[0]
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    y, k = torch.tensor([0, 0]), 3
    maps = {r: run_method("agi", model, x, y, steps=k, recalibrate=r).maps.double()
            for r in ("none", "valid_ref", "valid_ip")}
    assert (maps["none"] >= 0).all() and maps["none"].abs().max() > 0
    assert torch.allclose(maps["valid_ref"], maps["none"] / 3, rtol=1e-6, atol=1e-9)
    assert torch.allclose(maps["valid_ip"], maps["none"] / (3 * k), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("recalibrate", ["valid_ip", "valid_ref"])
def test_recalibrated_maps_are_nonnegative(cnn, small, recalibrate):
    images = small
    y = torch.tensor([0, 1, 3])
    vanilla = run_method("agi", cnn, images, y, steps=3, samples=3, recalibrate="none").maps
    assert (vanilla < 0).any()                  # there is something to discard
    maps = run_method("agi", cnn, images, y, steps=3, samples=3, recalibrate=recalibrate).maps
    assert (maps >= 0).all() and (maps > 0).any()


# -- seeds, batches, passes --------------------------------------------------------------------
def test_deterministic_and_independent_of_the_batch(cnn, small):
    images = small
    y, ids = torch.tensor([0, 1, 3]), torch.tensor([7, 2**40, 13])
    kw = dict(steps=3, samples=2, recalibrate="none")
    whole = run_method("agi", cnn, images, y, image_ids=ids, **kw)
    again = run_method("agi", cnn, images, y, image_ids=ids, **kw)
    assert torch.equal(whole.maps, again.maps)
    assert torch.equal(whole.extras["adv_targets"], again.extras["adv_targets"])
    tiny = run_method("agi", cnn, images, y, image_ids=ids, max_batch=1, **kw)
    assert torch.allclose(whole.maps, tiny.maps, rtol=1e-5, atol=1e-7)
    for n in range(3):
        alone = run_method("agi", cnn, images[n:n + 1], y[n:n + 1], image_ids=ids[n:n + 1], **kw)
        assert torch.equal(alone.extras["adv_targets"], whole.extras["adv_targets"][n:n + 1])
        assert torch.allclose(alone.maps, whole.maps[n:n + 1], rtol=1e-5, atol=1e-7)
    # the same image at another position of another batch
    flipped = run_method("agi", cnn, images.flip(0), y.flip(0), image_ids=ids.flip(0), **kw)
    assert torch.allclose(flipped.maps.flip(0), whole.maps, rtol=1e-5, atol=1e-7)


def test_the_draw_depends_on_seed_and_image_but_not_on_the_estimator():
    model = linear(4, (3, 4, 4))
    images = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y, ids = torch.tensor([0, 1, 3]), torch.tensor([7, 8, 9])

    def targets(**kw):
        return run_method("agi", model, images, y, image_ids=ids, steps=1, samples=2,
                          **kw).extras["adv_targets"]

    base = targets()
    for kw in ({"recalibrate": "none"}, {"recalibrate": "valid_ref"}, {"eps": 0.2},
               {"objective": "prob"}, {"target_score": "prob"}):
        assert torch.equal(targets(**kw), base), kw
    method = AGI(model, samples=2)
    many = method.draw_targets(torch.zeros(40, dtype=torch.long), range(40), 4)
    assert len({tuple(r) for r in many.tolist()}) > 1         # images draw independently
    assert not torch.equal(AGI(model, samples=2, seed=1).draw_targets(
        torch.zeros(40, dtype=torch.long), range(40), 4), many)
    assert (many != 0).all() and set(many.flatten().tolist()) == {1, 2, 3}
    assert (many[:, 0] != many[:, 1]).all()                     # without replacement


class CountingModel(nn.Module):
    """Counts the rows that each backward pass through the output carries."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.backward_rows = 0

    def forward(self, x):
        z = self.model(x)
        if z.requires_grad:
            z.register_hook(self._count)
        return z

    def _count(self, g):
        self.backward_rows += g.shape[0]


@pytest.mark.parametrize("compat", [None, "ypeiyu", "ypeiyu_lpi"])
@pytest.mark.parametrize("max_batch", [None, 1])
def test_two_backward_passes_per_target_and_iteration(cnn, small, compat, max_batch):
    images = small
    """2·B·k backward passes per image: ∇s_t(x^{i−1}) and ∇f(x^i) for each of k steps."""
    counting = CountingModel(cnn.net)
    model = NormalizedModel(counting, mean=cnn.mean, std=cnn.std).eval()
    b, k = 2, 3
    run_method("agi", model, images, torch.tensor([0, 1, 3]), samples=b, steps=k,
               compat=compat, max_batch=max_batch)
    assert counting.backward_rows == 2 * b * k * images.shape[0]


# -- fewer classes, fixed targets, errors ------------------------------------------------------
def test_fewer_classes_than_samples_and_fixed_targets():
    linear_model = linear(3)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2])
    out = run_method("agi", linear_model, x, y, samples=5, steps=1)
    assert out.extras["adv_targets"].shape == (3, 2)
    assert (out.extras["adv_targets"] != y[:, None]).all()
    fixed = torch.tensor([[1, 2], [0, 2], [0, 1]])
    a = run_method("agi", linear_model, x, y, steps=2, adv_targets=fixed, recalibrate="none")
    assert torch.equal(a.extras["adv_targets"], fixed)
    # the same classes in another order give the same vanilla sum
    b = run_method("agi", linear_model, x, y, steps=2, adv_targets=fixed.flip(1),
                   recalibrate="none")
    assert torch.allclose(a.maps, b.maps, rtol=1e-6, atol=1e-9)
    one = run_method("agi", linear_model, x, y, steps=2, adv_targets=torch.tensor([1]),
                     recalibrate="none")
    assert torch.equal(one.extras["adv_targets"], torch.ones(3, 1, dtype=torch.long))
    with pytest.raises(ConfigError, match="adv_targets"):
        run_method("agi", linear_model, x, y, adv_targets=torch.tensor([3]))
    with pytest.raises(ConfigError, match="adv_targets"):
        run_method("agi", linear_model, x, y, adv_targets=torch.tensor([0.5]))
    with pytest.raises(ConfigError, match="adv_targets has 2 rows for 3 images"):
        run_method("agi", linear_model, x, y, adv_targets=fixed[:2])


def test_compat_modes_need_a_normalised_model_and_enough_classes():
    linear_model = linear(3)
    AGI.check_model({}, nn.Linear(3, 3), "experiment.models.m")
    for compat in ("ypeiyu", "ypeiyu_lpi"):
        with pytest.raises(ConfigError, match="experiment.models.m.*normalize"):
            AGI.check_model({"compat": compat}, nn.Linear(3, 3), "experiment.models.m")
        AGI.check_model({"compat": compat}, linear_model, "experiment.models.m")
        # three classes: select_id's range(0, K − 2) holds one
        with pytest.raises(ConfigError, match="samples=2.*range\\(0, 1\\)"):
            run_method("agi", linear_model, torch.rand(1, 3, 8, 8), 0, samples=2,
                       compat=compat)


# -- compat ------------------------------------------------------------------------------------
def test_compat_ypeiyu_draws_from_range_k_minus_2_without_excluding_the_label():
    model = linear(10, (3, 4, 4))
    y = torch.zeros(60, dtype=torch.long)
    clean = AGI(model, samples=3).draw_targets(y, range(60), 10)
    quirk = AGI(model, samples=3, compat="ypeiyu").draw_targets(y, range(60), 10)
    assert (clean != 0).all() and clean.max() == 9           # {1..9}
    assert (quirk < 8).all() and (quirk == 0).any(dim=1).any()  # range(0, 8), label 0 drawn
    assert all(len(set(r)) == 3 for r in quirk.tolist())     # without replacement per image
    lpi = AGI(model, samples=3, compat="ypeiyu_lpi").draw_targets(y, range(60), 10)
    assert (lpi < 8).all() and (lpi == 0).any()              # LPI's select_id is the same


def test_compat_ypeiyu_steps_on_the_network_without_its_normalisation(cnn, small):
    images = small
    """x^i = clip(x̃ + ε·sign(∇_x̃ s_t(net(x^{i−1}))), 0, 1), f still through the
    normalisation; the clean walk differs."""
    x, y, t = images[:1], torch.tensor([1]), torch.tensor([[2]])
    eps, k = 0.05, 2
    steps = {}
    for compat in (None, "ypeiyu"):
        m = AGI(cnn.eval(), steps=k, eps=eps, adv_targets=t, compat=compat)
        steps[compat] = [st for ch in m.walks(x, y, torch.tensor([0])) for st in ch.steps]
    before = x
    for st in steps["ypeiyu"]:
        expect = torch.clamp(x + eps * torch.sign(grad(cnn.net, before, t[0])), 0, 1)
        assert torch.equal(st.point, expect)
        assert torch.allclose(st.product, grad(cnn, expect, y) * (x - expect),
                              rtol=1e-6, atol=1e-12)
        before = expect
    assert not torch.equal(steps[None][0].point, steps["ypeiyu"][0].point)


def test_compat_ypeiyu_lpi_clamps_the_normalised_tensor():
    """Linear z = W·x + b on the normalised x: x^i = clamp(x + ε·sign(w_t), 0, 1) in
    normalised space, c = w_y ⊙ (x − x^i); the clean pixel-space walk differs."""
    model = linear(6)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    y, t = torch.tensor([0, 4]), torch.tensor([[1, 3], [5, 2]])
    eps, k = 0.3, 3
    kw = dict(eps=eps, steps=k, adv_targets=t, recalibrate="none")
    out = run_method("agi", model, x, y, compat="ypeiyu_lpi", **kw).maps
    w = weights(model)
    xn = model.normalize(x)
    for n in range(2):
        expect = sum(k * w[y[n]] * (xn[n] - torch.clamp(xn[n] + eps * torch.sign(w[c]), 0, 1))
                     for c in t[n].tolist())
        assert torch.allclose(out[n], expect, rtol=1e-5, atol=1e-6)
    clean = run_method("agi", model, x, y, **kw).maps
    assert not torch.allclose(out, clean, rtol=1e-2, atol=1e-3)


def pan_reference(model, x, samples, steps, eps):
    """``pd90506/AGI``'s loop for one image, with softmax gradients in closed form
    (∇_x̃ p_c = p_c (w_c − Σ_j p_j w_j)/σ) in float64: (map, {target: iterations})."""
    w = pixel_weights(model).double()
    k_cls = w.shape[0]
    bias = model.net.fc.bias.detach().double()
    xd = x.double()

    # z = W (x̃ − μ)/σ + b = (W/σ)·x̃ − (W/σ)·μ + b
    shift = (w * model.normalize.mean[0].double()).flatten(1).sum(1)

    def softmax(p):
        return torch.softmax((w * p).flatten(1).sum(1) - shift + bias, 0)

    def dprob(p, c):
        pr = softmax(p)
        return pr[c] * (w[c] - (pr.view(-1, 1, 1, 1) * w).sum(0))

    pred = int(softmax(xd).argmax())
    phi, iters = torch.zeros_like(xd), {}
    for t in range(0, k_cls - 1, max(1, k_cls // samples)):
        if t == pred:
            continue
        cur, iters[t] = xd, 0
        for _ in range(steps):
            if int(softmax(cur).argmax()) == t:
                break
            nxt = torch.clamp(xd + eps * torch.sign(dprob(cur, t)), 0, 1)
            phi += dprob(cur, pred) * (xd - nxt)
            cur, iters[t] = nxt, iters[t] + 1
    return phi, iters, pred


def test_compat_pan_against_the_reference_loop():
    model = linear(5, (3, 4, 4), seed=3)
    x = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(8))
    samples, steps, eps = 4, 6, 0.15
    kw = dict(samples=samples, steps=steps, eps=eps, recalibrate="none", compat="pan")
    out = run_method("agi", model, x, torch.tensor([0, 1, 2, 3]), **kw)
    stopped = 0
    for n in range(4):
        phi, iters, pred = pan_reference(model, x[n], samples, steps, eps)
        ids = out.extras["adv_targets"][n].tolist()
        assert ids == [-1 if c == pred else c for c in range(4)]       # range(0, 4, 5 // 4)
        got = dict(zip(ids, out.extras["adv_iterations"][n].tolist()))
        assert {c: got[c] for c in iters} == iters and got.get(-1, 0) == 0
        stopped += sum(v < steps for v in iters.values())
        assert torch.allclose(out.maps[n].double(), phi, rtol=1e-4, atol=1e-7)
    assert stopped > 0                                   # early stops were exercised
    # f explains the prediction, whatever the target says
    other = run_method("agi", model, x, torch.tensor([4, 4, 0, 1]), **kw)
    assert torch.equal(other.maps, out.maps)
    clean = run_method("agi", model, x, torch.tensor([0, 1, 2, 3]), samples=samples,
                       steps=steps, eps=eps, recalibrate="none")
    assert not torch.allclose(clean.maps, out.maps, rtol=1e-2, atol=1e-6)
