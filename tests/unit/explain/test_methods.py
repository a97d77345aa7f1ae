import pytest
import torch
from torch import nn

from xaipipe.errors import ConfigError
from xaipipe.explain import available_methods, explain, explain_sweep, run_method
from xaipipe.explain.paths.integration import riemann
from xaipipe.maths.objectives import objective
from xaipipe.models import NormalizedModel


def f(model, x, t, obj="logit"):
    with torch.no_grad():
        return objective(model(x), t, obj)


def test_registry_lists_the_issue_methods():
    assert {"saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "gradcam",
            "random"} <= set(available_methods())


def test_unknown_method_and_bad_parameter_are_named(cnn, images):
    with pytest.raises(ConfigError, match="unknown method 'nope'.*integrated_gradients"):
        explain("nope", cnn, images, 0)
    with pytest.raises(ConfigError, match="integrated_gradients.*rule.*'simpson'.*trapezoid"):
        explain("integrated_gradients", cnn, images, 0, rule="simpson")
    with pytest.raises(ConfigError, match="steps.*minimum"):
        explain("integrated_gradients", cnn, images, 0, steps=0)
    with pytest.raises(ConfigError, match="unknown parameter.*'step'"):
        explain("integrated_gradients", cnn, images, 0, step=3)


@pytest.mark.parametrize("rule,steps", [("trapezoid", 64), ("middle", 64), ("trapezoid", 128),
                                        ("right", 128), ("left", 128)])
@pytest.mark.parametrize("objective", ["logit", "prob"])
def test_ig_completeness_within_one_percent_at_64_steps(smooth_cnn, rule, steps, objective):
    """Σφ = f(x) − f(x') within 1%. Second-order rules (trapezoid, middle) reach it at 64
    steps; the first-order left/right rules have an O(1/m) bias (1.4% here at 64) and reach
    it at 128, the spec's default M."""
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():   # explain the class whose score changes most along the path
        delta = smooth_cnn(x) - smooth_cnn(torch.zeros_like(x))
        if objective == "prob":
            delta = torch.softmax(smooth_cnn(x), 1) - torch.softmax(smooth_cnn(0 * x), 1)
    t = delta.abs().argmax(1)
    out = run_method("integrated_gradients", smooth_cnn, x, t, steps=steps, rule=rule,
                     objective=objective)
    diff = f(smooth_cnn, x, t, objective) - f(smooth_cnn, torch.zeros_like(x), t, objective)
    total = out.maps.flatten(1).sum(1)
    assert torch.all((total - diff).abs() <= 0.01 * diff.abs()), (total, diff)
    assert torch.allclose(out.extras["completeness_gap"], total - diff, atol=1e-5)


def test_ig_completeness_gap_shrinks_with_steps(cnn, images):
    t = torch.tensor([0, 1, 2])
    gaps = [run_method("integrated_gradients", cnn, images, t, steps=m, rule="right")
            .extras["completeness_gap"].abs().mean().item() for m in (2, 8, 64)]
    assert gaps[0] > gaps[1] > gaps[2]


@pytest.mark.parametrize("rule", ["left", "right", "trapezoid", "middle", "pair_mean"])
def test_ig_exact_on_linear_model_for_every_rule(linear_model, rule):
    x = torch.rand(2, 3, 8, 8)
    t = torch.tensor([0, 2])
    maps = explain("integrated_gradients", linear_model, x, t, steps=3, rule=rule)
    w = linear_model.net.fc.weight / linear_model.normalize.std.flatten().repeat_interleave(64)
    expected = (x.flatten(1) * w[t]).view_as(x)
    assert torch.allclose(maps, expected, atol=1e-6)


class CubeSum(nn.Module):
    """Logits [Σ x³, 0]: the gradient 3x² is quadratic along a straight path, so every
    Riemann rule has its own, exactly known, error."""

    def forward(self, x):
        z = (x ** 3).flatten(1).sum(1)
        return torch.stack([z, torch.zeros_like(z)], 1)


def cube_rule_sums(rule, m):
    """(Σ w_j, Σ w_j α_j, Σ w_j α_j²) of a rule over m segments, in closed form:
    Σ_{j<m} j = m(m−1)/2 and Σ_{j<m} j² = (m−1)m(2m−1)/6 give left and right; the midpoints
    (j + ½)/m give Σ (j + ½)² = m(4m² − 1)/12; trapezoid is the mean of left and right;
    pair_mean averages the m + 1 grid points; Gauss–Legendre is exact for degree < 2m."""
    return {
        "left": (1, (m - 1) / (2 * m), (m - 1) * (2 * m - 1) / (6 * m * m)),
        "right": (1, (m + 1) / (2 * m), (m + 1) * (2 * m + 1) / (6 * m * m)),
        "middle": (1, 1 / 2, (4 * m * m - 1) / (12 * m * m)),
        "trapezoid": (1, 1 / 2, (2 * m * m + 1) / (6 * m * m)),
        "pair_mean": (1, 1 / 2, (2 * m + 1) / (6 * m)),
        "gausslegendre": (1, 1 / 2, 1 / 3 if m > 1 else 1 / 4),
    }[rule]


def cube_ig(x, base, rule, m):
    """IG of Σ x³ by a rule: Δ ⊙ Σ_j w_j 3(x′ + α_j Δ)²
    = 3Δ (x′² S0 + 2 x′ Δ S1 + Δ² S2) with the rule's sums S0, S1, S2."""
    s0, s1, s2 = cube_rule_sums(rule, m)
    d = x - base
    return 3 * d * (base ** 2 * s0 + 2 * base * d * s1 + d ** 2 * s2)


@pytest.mark.parametrize("rule", ["left", "right", "trapezoid", "middle", "pair_mean",
                                  "gausslegendre"])
def test_ig_rules_place_their_points_on_a_cubic(rule):
    """IG maps of f = Σ x³ (path gradient not affine in α) equal each rule's exact sum, for
    several step counts and a non-zero baseline: a rule's points and weights are seen, not only
    its total weight (the linear model sees only Σ w_j). The exact integral x³ − x′³ is the
    limit; the sums differ from it and from each other at these m."""
    model = NormalizedModel(CubeSum(), mean=(0, 0, 0), std=(1, 1, 1)).double().eval()
    g = torch.Generator().manual_seed(6)
    x = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    base = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64) - 0.5
    for m in (1, 2, 5):
        got = explain("integrated_gradients", model, x, 0, steps=m, rule=rule, baseline=base)
        expect = cube_ig(x, base, rule, m)
        assert torch.allclose(got.double(), expect, rtol=1e-5, atol=1e-6), (rule, m)
    if rule not in ("middle", "gausslegendre"):       # on the j/m grid: sweeps share a path
        sweep = explain_sweep("integrated_gradients", model, x, 0, steps=[1, 2, 4], rule=rule,
                              baseline=base)
        for m, got in sweep.items():
            assert torch.allclose(got.double(), cube_ig(x, base, rule, m), rtol=1e-5,
                                  atol=1e-6), (rule, m)
    # the closed forms tend to the integral x³ − x′³ (a check of the formulas themselves)
    assert torch.allclose(cube_ig(x, base, rule, 10 ** 6), x ** 3 - base ** 3, atol=1e-5)


def test_riemann_weights_integrate_polynomials():
    for rule, exact_deg in (("left", 0), ("right", 0), ("middle", 1), ("trapezoid", 1)):
        a, w = riemann(rule, 4)
        assert w.sum().item() == pytest.approx(1.0)
        for deg in range(exact_deg + 1):
            assert (w * a**deg).sum().item() == pytest.approx(1 / (deg + 1))


def test_ig_zero_when_baseline_equals_input(cnn, images):
    maps = explain("integrated_gradients", cnn, images, 0, steps=4, baseline=images)
    assert torch.count_nonzero(maps) == 0


def test_ig_baselines(cnn, images):
    a = explain("integrated_gradients", cnn, images, 1, steps=4, baseline="uniform",
                image_ids=[5, 6, 7])
    b = explain("integrated_gradients", cnn, images[1:], 1, steps=4, baseline="uniform",
                image_ids=[6, 7])
    assert torch.allclose(a[1:], b, atol=1e-6)   # per-image seeds: batch does not matter
    c = explain("integrated_gradients", cnn, images, 1, steps=4, baseline="uniform",
                image_ids=[5, 6, 7], seed=1)
    assert not torch.allclose(a, c)
    blurred = explain("integrated_gradients", cnn, images, 1, steps=4, baseline="blurred")
    assert blurred.shape == images.shape and torch.isfinite(blurred).all()


@pytest.mark.parametrize("sigma", [1.0, 1.5])
def test_ig_blurred_baseline_on_linear_model(linear_model, sigma):
    """On f = w·x̃ + b, IG = (x̃ − x̃′) ⊙ w exactly for any rule, so the map shows the baseline
    itself: x̃′ is the Gaussian blur of the image with σ = ``blur_sigma``, computed here by
    torchvision (kernel 2·round(4σ)+1, reflect padding), independently of xaipipe's blur."""
    import torchvision.transforms.functional as TF
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    t = torch.tensor([1, 2])
    k = 2 * round(4 * sigma) + 1
    base = TF.gaussian_blur(x, [k, k], [sigma, sigma])
    w = linear_model.net.fc.weight / linear_model.normalize.std.flatten().repeat_interleave(64)
    expected = ((x - base).flatten(1) * w[t]).view_as(x)
    for rule in ("right", "trapezoid"):
        out = run_method("integrated_gradients", linear_model, x, t, steps=3, rule=rule,
                         baseline="blurred", blur_sigma=sigma)
        assert torch.allclose(out.maps, expected, atol=1e-6), rule
        # completeness to f(x̃) − f(x̃′) with both ends scored here
        diff = (f(linear_model, x, t) - f(linear_model, base, t)).double()
        assert torch.allclose(out.maps.double().flatten(1).sum(1), diff, atol=1e-5)


def test_saliency_is_the_weight_row_on_linear_model(linear_model):
    x = torch.rand(2, 3, 8, 8)
    g = explain("saliency", linear_model, x, [1, 0])
    w = linear_model.net.fc.weight / linear_model.normalize.std.flatten().repeat_interleave(64)
    assert torch.allclose(g, w[[1, 0]].view_as(x), atol=1e-6)
    gn = explain("saliency", linear_model, x, [1, 0], grad_space="normalized")
    assert torch.allclose(gn, linear_model.net.fc.weight[[1, 0]].view_as(x), atol=1e-6)


def test_saliency_matches_finite_differences(cnn):
    model = cnn.double()
    try:
        x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
        g = explain("saliency", model, x, 2).double()
        for idx in [(0, 0, 3, 4), (0, 2, 17, 9), (0, 1, 31, 31)]:
            e = torch.zeros_like(x)
            e[idx] = 1e-6
            fd = (f(model, x + e, torch.tensor([2])) - f(model, x - e, torch.tensor([2]))) / 2e-6
            assert abs(fd.item() - g[idx].item()) <= 1e-4 * max(1.0, abs(fd.item()))
    finally:
        cnn.float()


def test_input_x_gradient_equals_ig_on_linear_model(linear_model):
    x = torch.rand(2, 3, 8, 8)
    a = explain("input_x_gradient", linear_model, x, [0, 1])
    b = explain("integrated_gradients", linear_model, x, [0, 1], steps=2)
    assert torch.allclose(a, b, atol=1e-6)


def test_input_x_gradient_euler_for_bias_free_relu_net():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 2, bias=False))
    model = NormalizedModel(net, mean=(0, 0, 0), std=(1, 1, 1)).eval()
    x = torch.rand(2, 3, 8, 8)
    maps = explain("input_x_gradient", model, x, [0, 1])
    assert torch.allclose(maps.flatten(1).sum(1), f(model, x, torch.tensor([0, 1])), atol=1e-5)


def test_smoothgrad_zero_noise_is_saliency_and_linear_invariance(cnn, images, linear_model):
    assert torch.allclose(explain("smoothgrad", cnn, images, 1, noise=0.0, samples=3),
                          explain("saliency", cnn, images, 1), atol=1e-6)
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(explain("smoothgrad", linear_model, x, 0, noise=0.3, samples=4),
                          explain("saliency", linear_model, x, 0), atol=1e-6)


def test_smoothgrad_independent_of_batching_and_chunking(cnn, images):
    ids = [10, 11, 12]
    full = explain("smoothgrad", cnn, images, 2, samples=5, image_ids=ids)
    alone = explain("smoothgrad", cnn, images[2:], 2, samples=5, image_ids=ids[2:])
    tiny_chunks = explain("smoothgrad", cnn, images, 2, samples=5, image_ids=ids, max_batch=2)
    assert torch.allclose(full[2:], alone, atol=1e-6)
    assert torch.allclose(full, tiny_chunks, atol=1e-6)
    sq = explain("smoothgrad", cnn, images, 2, samples=5, image_ids=ids, squared=True)
    assert (sq >= 0).all()


def test_memory_budget_does_not_change_ig(cnn, images):
    a = explain("integrated_gradients", cnn, images, 0, steps=16, rule="trapezoid")
    b = explain("integrated_gradients", cnn, images, 0, steps=16, rule="trapezoid",
                memory_mb=0.5)
    c = explain("integrated_gradients", cnn, images, 0, steps=16, rule="trapezoid",
                max_batch=3)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)


class ToyCAM(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


def test_gradcam_equals_cam_on_gap_net():
    torch.manual_seed(0)
    model = NormalizedModel(ToyCAM()).eval()
    x = torch.rand(2, 3, 8, 8)
    t = torch.tensor([0, 2])
    cam = explain("gradcam", model, x, t)
    a = model.net.conv(model.normalize(x))
    expected = torch.relu(torch.einsum("nk,nkhw->nhw", model.net.fc.weight[t], a) / 64)
    assert cam.shape == (2, 1, 8, 8)
    assert torch.allclose(cam[:, 0], expected, atol=1e-6)


def test_gradcam_properties(cnn, images):
    cam = explain("gradcam", cnn, images, 1)
    assert cam.shape == (3, 1, 32, 32) and (cam >= 0).all()
    block = explain("gradcam", cnn, images, 1, layer="layer4")
    assert block.shape == cam.shape and not torch.allclose(block, cam)
    with pytest.raises(KeyError, match="no layer 'layer9'"):
        explain("gradcam", cnn, images, 1, layer="layer9")


def test_random_map_is_reproducible(cnn, images):
    a = explain("random", cnn, images, 0, image_ids=[1, 2, 3])
    b = explain("random", cnn, images.flip(0), 0, image_ids=[3, 2, 1])
    assert torch.equal(a, b.flip(0)) and ((a >= 0) & (a < 1)).all()


def test_objectives():
    z = torch.tensor([[1.0, 3.0], [0.5, -2.0]])
    t = torch.tensor([0, 0])
    assert torch.allclose(objective(z, t, "contrast"), z[:, 0] - z[:, 1])
    z3 = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    t3 = torch.tensor([0, 1, 2, 3])
    (g,) = torch.autograd.grad(objective(z3, t3, "contrast").sum(), z3)
    w = torch.softmax(z3.detach().scatter(1, t3[:, None], float("-inf")), 1)
    assert torch.allclose(g, torch.nn.functional.one_hot(t3, 5).double() - w)
    (g,) = torch.autograd.grad(objective(z3, t3, "logprob").sum(), z3)
    assert torch.allclose(g, torch.nn.functional.one_hot(t3, 5).double() - torch.softmax(z3, 1))


def test_large_step_counts_stay_within_the_memory_budget(cnn, images):
    from xaipipe.explain.base import estimate_point_bytes

    seen = []
    handle = cnn.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape[0]))
    try:
        per_point = estimate_point_bytes(cnn, (3, 32, 32), "cpu")
        budget_mb = 20 * per_point / 2**20              # room for 20 points
        explain("integrated_gradients", cnn, images, 0, steps=1024, memory_mb=budget_mb)
        explain("smoothgrad", cnn, images, 0, samples=200, memory_mb=budget_mb)
    finally:
        handle.remove()
    assert max(seen) == 20 and sum(seen) >= 3 * (1024 + 200)


# -- image ids from content --------------------------------------------------------------------
@pytest.mark.parametrize("name,params", [("random", {}), ("smoothgrad", {"samples": 3}),
                                         ("integrated_gradients",
                                          {"steps": 2, "baseline": "uniform"})])
def test_without_ids_maps_do_not_depend_on_batching(cnn, name, params):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    whole = explain(name, cnn, x, [0, 1, 2, 3], **params)
    halves = torch.cat([explain(name, cnn, x[:2], [0, 1], **params),
                        explain(name, cnn, x[2:], [2, 3], **params)])
    assert torch.allclose(whole, halves, rtol=1e-5, atol=1e-6)
    reordered = explain(name, cnn, x.flip(0), [3, 2, 1, 0], **params)
    assert torch.allclose(whole, reordered.flip(0), rtol=1e-5, atol=1e-6)
    twins = explain(name, cnn, torch.stack([x[1], x[1]]), 1, **params)
    assert torch.allclose(twins[0], twins[1], rtol=1e-5, atol=1e-6)
    assert torch.allclose(twins[0], whole[1], rtol=1e-5, atol=1e-6)
    if name != "integrated_gradients":   # distinct images get distinct draws
        assert not torch.allclose(whole[0], whole[1])


def test_content_ids_are_stable_63_bit_hashes(images):
    from xaipipe.explain.base import content_ids

    ids = content_ids(images)
    assert ids.dtype == torch.long and ids.shape == (3,) and (ids >= 0).all()
    assert len(set(ids.tolist())) == 3
    assert torch.equal(content_ids(images[1:]), ids[1:])
    assert torch.equal(content_ids(images.double()), ids)        # hashed as float32
    assert torch.equal(content_ids(images.flip(0)), ids.flip(0))   # non-contiguous views too
    assert content_ids(images[:1] + 1e-6)[0] != ids[0]


def test_run_method_leaves_every_module_in_its_mode(cnn, images):
    cnn.train()
    cnn.net.layer1.eval()
    try:
        explain("saliency", cnn, images, 0)
        assert cnn.training and cnn.net.layer4.training and not cnn.net.layer1.training
        assert not any(m.training for m in cnn.net.layer1.modules())
    finally:
        cnn.eval()


# -- model/method pair checks ------------------------------------------------------------------
def test_check_model_default_accepts_any_model(linear_model):
    from xaipipe.explain import get_method

    for name in ("saliency", "integrated_gradients", "random"):
        assert get_method(name).check_model({}, linear_model, "here") is None


def test_gradcam_check_model_names_where_and_model(linear_model):
    from xaipipe.explain import get_method
    from xaipipe.models import load_model

    gradcam = get_method("gradcam")
    with torch.device("meta"):
        demo = load_model("demo_resnet18", weights="random", num_classes=4, width=4,
                          device="meta")
    assert next(demo.parameters()).is_meta
    for layer in (None, "layer4", "layer4.1.conv2", "net.layer4"):
        gradcam.check_model(gradcam.check({"layer": layer}), demo, "exp.x")
    with pytest.raises(ConfigError, match=r"^exp\.x: .*'layer9'.*'demo_resnet18'"):
        gradcam.check_model(gradcam.check({"layer": "layer9"}), demo, "exp.x")
    with pytest.raises(ConfigError, match=r"^exp\.y: .*'linear'.*no nn\.Conv2d"):
        gradcam.check_model({}, linear_model, "exp.y")
    with pytest.raises(ConfigError, match=r"^exp\.y: .*'fc2'.*'linear'"):
        gradcam.check_model({"layer": "fc2"}, linear_model, "exp.y")
    gradcam.check_model({"layer": "fc"}, linear_model, "exp.y")   # any named module will do
    bare = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))          # no .name, no .layer()
    with pytest.raises(ConfigError, match="'Sequential'"):
        gradcam.check_model({"layer": None}, bare, "exp.z")
    with pytest.raises(ConfigError, match="'Sequential'"):
        gradcam.check_model({"layer": "5"}, bare, "exp.z")
