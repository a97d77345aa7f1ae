"""FullGrad (Srinivas & Fleuret, NeurIPS 2019): the full-gradient decomposition
f(x) = Σ ∇_x f ⊙ x + Σ_l Σ g_l ⊙ b_l at the normalised input (completeness on linear models,
a small BN CNN, torchvision's ResNet-18 and VGG-16), the BatchNorm effective bias by hand, and
the saliency map S = Σ_c P(∇_x f ⊙ x)_c + Σ_l Up(Σ_c P(g_l ⊙ b_l)_c) by hand on a tiny model."""
import pytest
import torch
from torch import nn

from xaipipe.errors import ConfigError
from xaipipe.explain import get_method, run_method
from xaipipe.explain.cams.fullgrad import decompose
from xaipipe.models import NormalizedModel, load_model

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def fullgrad(model, images, target, objective="logit"):
    """The method's own ``attribute`` (no float32 cast, so float64 models stay float64)."""
    method = get_method("fullgrad")(model, objective=objective)
    return method.attribute(images, torch.as_tensor(target).reshape(-1))


def normalised(model, images):
    """(x̃ − μ)/σ with the model's constants (float32 buffers, so not the decimals of MEAN)."""
    return (images - model.normalize.mean) / model.normalize.std


def term_sums(d):
    """(Σ input term, Σ bias terms of nn.Linear layers, Σ other bias terms), each (N,)."""
    linear = sum((t.flatten(1).sum(1) for _, m, t in d["bias"] if isinstance(m, nn.Linear)),
                 torch.zeros_like(d["f"]))
    other = sum((t.flatten(1).sum(1) for _, m, t in d["bias"]
                 if not isinstance(m, nn.Linear)), torch.zeros_like(d["f"]))
    return d["input"].flatten(1).sum(1), linear, other


@torch.no_grad()
def randomise_biases(model, seed=0):
    """Non-zero biases and BN statistics (torchvision and the demo initialise biases, β and
    the running mean to 0 and the running variance to 1, which makes every bias term 0)."""
    g = torch.Generator().manual_seed(seed)

    def u(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * (hi - lo) + lo)

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            if m.affine:
                u(m.weight, 0.5, 1.5)
                u(m.bias, -0.5, 0.5)
            u(m.running_mean, -0.5, 0.5)
            u(m.running_var, 0.5, 2.0)
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            u(m.bias, -0.2, 0.2)
    return model


def assert_complete(d, tol):
    """Σ input + Σ all bias terms = f per image, Linear terms included and needed."""
    inp, linear, other = term_sums(d)
    total = inp + linear + other
    scale = inp.abs() + linear.abs() + other.abs() + d["f"].abs()
    assert ((total - d["f"]).abs() <= tol * scale).all(), (total - d["f"], d["f"])
    assert (other.abs() > 1e3 * tol * scale).all(), "the spatial bias terms are all ~0"
    assert (linear.abs() > 1e3 * tol * scale).all(), "the Linear bias terms are all ~0"
    assert ((inp + other - d["f"]).abs() > 1e3 * tol * scale).all()   # Linear terms needed


# -- linear models ------------------------------------------------------------------------------
class Flat(nn.Module):
    def __init__(self, bias, classes=3, d=3 * 4 * 4):
        super().__init__()
        self.fc = nn.Linear(d, classes, bias=bias)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("bias", [False, True])
def test_linear_model_by_hand(bias):
    """f = W·x + b at the normalised x: input term W_y·x (Euler), bias term b_y."""
    torch.manual_seed(0)
    model = NormalizedModel(Flat(bias), mean=MEAN, std=STD).double().eval()
    if bias:
        randomise_biases(model)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([2, 0, 1])
    x = normalised(model, images)
    w = model.net.fc.weight[t]
    d = decompose(model, images, t)
    assert torch.allclose(d["x"], x, rtol=0, atol=1e-15)
    assert torch.allclose(d["input"], (w * x.flatten(1)).view_as(x), rtol=0, atol=1e-15)
    if bias:
        ((name, layer, term),) = d["bias"]
        assert name == "fc" and layer is model.net.fc
        expected = torch.zeros(3, 3, dtype=torch.float64)
        expected[range(3), t] = model.net.fc.bias[t]
        assert torch.allclose(term, expected, rtol=0, atol=1e-15)
    else:
        assert d["bias"] == []
    inp, linear, other = term_sums(d)
    assert torch.allclose(inp + linear, d["f"], rtol=0, atol=1e-12)
    assert not other.any()
    out = fullgrad(model, images, t)
    assert out.extras["completeness_gap"].abs().max() < 1e-6   # float32 diagnostic
    # no spatial layer: S is the input term's P summed over channels
    a = (w * x.flatten(1)).abs()
    a = a - a.min(1, keepdim=True).values
    a = (a / (a.max(1, keepdim=True).values + 1e-6)).view_as(x).sum(1, keepdim=True)
    assert torch.allclose(out.maps, a, rtol=0, atol=1e-12)


# -- a small CNN with BatchNorm in eval mode --------------------------------------------------
class SmallBN(nn.Module):
    """conv(bias) → BN → ReLU → max-pool → conv(no bias) → BN(affine=False) → ReLU → conv(bias)
    → ReLU → global average pool → linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.b1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(8, affine=False)
        self.c3 = nn.Conv2d(8, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.b1(self.c1(x))), 2)
        x = torch.relu(self.c3(torch.relu(self.b2(self.c2(x)))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def small_bn():
    torch.manual_seed(2)
    return randomise_biases(NormalizedModel(SmallBN(), mean=MEAN, std=STD), seed=3).double().eval()


def test_small_bn_cnn_is_complete(small_bn):
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(4),
                        dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3])
    d = decompose(small_bn, images, t)
    assert [name for name, _, _ in d["bias"]] == ["fc", "c3", "b2", "b1", "c1"]   # backward order
    assert_complete(d, 1e-12)
    gap = fullgrad(small_bn, images, t).extras["completeness_gap"]
    assert gap.abs().max() < 1e-6


@pytest.mark.parametrize("obj", ["prob", "logprob", "contrast"])
def test_other_objectives_decompose_the_weighted_logits(small_bn, obj):
    """For f = φ(z) the terms sum to Σ_k ∂f/∂z_k · z_k (each logit decomposes exactly), not f;
    the completeness gap reports the difference to f."""
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5),
                        dtype=torch.float64)
    t = torch.tensor([1, 3, 0])
    d = decompose(small_bn, images, t, obj)
    inp, linear, other = term_sums(d)
    z = small_bn(images).detach().requires_grad_(True)
    from xaipipe.maths.objectives import objective
    (w,) = torch.autograd.grad(objective(z, t, obj).sum(), z)
    assert torch.allclose(inp + linear + other, (w * z).sum(1), rtol=0, atol=1e-12)
    gap = fullgrad(small_bn, images, t, obj).extras["completeness_gap"]
    assert torch.allclose(gap, ((w * z).sum(1) - d["f"]).float(), rtol=1e-5, atol=1e-6)
    assert gap.abs().min() > 1e-3


# -- torchvision architectures ------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["resnet18", "vgg16"])
def test_torchvision_architectures_are_complete(arch):
    """ResNet-18 (in-place residual adds and ReLUs after BN outputs) and VGG-16 (conv and
    linear biases, adaptive average pooling) with random weights and random biases / BN
    statistics, in eval mode, float64, on 32x32 inputs."""
    torch.manual_seed(0)
    model = randomise_biases(load_model(arch, weights="random", num_classes=10)).double()
    assert not model.training
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6),
                        dtype=torch.float64)
    d = decompose(model, images, torch.tensor([3, 7]))
    n_layers = {"resnet18": 20 + 1, "vgg16": 13 + 3}[arch]   # BNs + fc; convs + classifier
    assert len(d["bias"]) == n_layers
    assert_complete(d, 1e-10)


# -- BatchNorm's effective bias by hand -----------------------------------------------------------
class OneBN(nn.Module):
    """BN → global average pool → linear without bias: f = Σ_c W_yc mean(BN(x)_c)."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.fc(self.bn(x).mean((2, 3)))


def test_batchnorm_effective_bias_by_hand():
    torch.manual_seed(0)
    model = randomise_biases(NormalizedModel(OneBN(), mean=MEAN, std=STD)).double().eval()
    bn, w = model.net.bn, model.net.fc.weight
    images = torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(7),
                        dtype=torch.float64)
    t = torch.tensor([1, 0])
    d = decompose(model, images, t)
    ((name, layer, term),) = d["bias"]
    assert name == "bn" and layer is bn and term.shape == (2, 3, 5, 4)
    b_eff = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert b_eff.abs().min() > 1e-3
    expected = (w[t] * b_eff / 20).view(2, 3, 1, 1).expand(2, 3, 5, 4)   # g = W_yc / (h·w)
    assert torch.allclose(term, expected, rtol=0, atol=1e-15)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    x = d["x"]
    assert torch.allclose(d["input"], (w[t] * scale / 20).view(2, 3, 1, 1) * x, rtol=0,
                          atol=1e-15)
    assert torch.allclose(term.flatten(1).sum(1) + d["input"].flatten(1).sum(1), d["f"],
                          rtol=0, atol=1e-12)


# -- the saliency map by hand ----------------------------------------------------------------------
class Tiny(nn.Module):
    """conv 2x2 stride 2 (bias) → flatten → linear (bias): 4x4 images, 2x2 conv output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 2, stride=2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def p_by_hand(t):
    """|t|, minus its per-image minimum, over (its new maximum + 1e-6): over all channels."""
    a = t.abs()
    lo = a.flatten(1).min(1).values.view(-1, *[1] * (a.ndim - 1))
    a = a - lo
    return a / (a.flatten(1).max(1).values.view(-1, *[1] * (a.ndim - 1)) + 1e-6)


def up_weights(n_in, n_out):
    """Bilinear with align_corners=True: output i samples input position i·(n_in−1)/(n_out−1)
    with the hat weights max(0, 1 − |pos − p|)."""
    pos = torch.arange(n_out, dtype=torch.float64) * (n_in - 1) / (n_out - 1)
    return (1 - (pos[:, None] - torch.arange(n_in, dtype=torch.float64)[None]).abs()).clamp_min(0)


@pytest.mark.parametrize("bias_scale", [1.0, 1e-5])
def test_saliency_map_by_hand(bias_scale):
    """S = Σ_c P(∇_x f ⊙ x)_c + Up(Σ_c P(g ⊙ b)_c) for the conv layer; the Linear bias is
    left out. With bias_scale 1e-5 the conv term's maximum is ~1e-6, so the 1e-6 of P's
    denominator changes its map by about half."""
    torch.manual_seed(1)
    model = randomise_biases(NormalizedModel(Tiny(), mean=MEAN, std=STD)).double().eval()
    with torch.no_grad():
        model.net.conv.bias.mul_(bias_scale)
    k, b, v = model.net.conv.weight, model.net.conv.bias, model.net.fc.weight
    images = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(8),
                        dtype=torch.float64)
    t = torch.tensor([1, 0])
    x = normalised(model, images)
    vy = v[t].view(2, 2, 2, 2)                     # ∂f/∂conv output: (n, c, u, v)
    # ∇_x f at pixel (ci, 2u + du, 2v + dv) = Σ_c V_y[c, u, v] K[c, ci, du, dv]
    grad = torch.einsum("ncuv,cidk->niudvk", vy, k).reshape(2, 3, 4, 4)
    s_input = p_by_hand(grad * x).sum(1)
    s_conv = p_by_hand(vy * b.view(1, 2, 1, 1)).sum(1)          # (n, 2, 2)
    w = up_weights(2, 4)
    expected = (s_input + w @ s_conv @ w.T).unsqueeze(1)
    got = fullgrad(model, images, t)
    assert got.maps.shape == (2, 1, 4, 4)
    assert torch.allclose(got.maps, expected, rtol=0, atol=1e-12)
    # the 1e-6 and align_corners=True are seen: without them the map differs
    plain = torch.nn.functional.interpolate(s_conv.unsqueeze(1), size=(4, 4), mode="bilinear",
                                            align_corners=False)
    assert (got.maps - s_input.unsqueeze(1) - plain).abs().max() > 1e-3
    if bias_scale < 1:
        a = (vy * b.view(1, 2, 1, 1)).abs().flatten(1)
        no_eps = ((a - a.min(1, keepdim=True).values)
                  / (a - a.min(1, keepdim=True).values).max(1, keepdim=True).values)
        assert (no_eps.view(2, 2, 2, 2).sum(1) - s_conv).abs().max() > 0.1
    # through run_method in float32
    out = run_method("fullgrad", model.float(), images.float(), t)
    assert torch.allclose(out.maps, expected.float(), rtol=1e-5, atol=1e-5)


# -- map properties -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    return randomise_biases(load_model("demo_resnet18", weights="random", num_classes=4, width=4))


def test_map_is_nonnegative_single_channel_and_bounded(demo):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    out = run_method("fullgrad", demo, images, [0, 1, 2])
    assert out.maps.shape == (3, 1, 32, 32) and out.maps.dtype == torch.float32
    assert (out.maps >= 0).all()
    # every P(·) lies in [0, 1): the input term adds at most 3, a layer at most its channels
    channels = [m.num_features if isinstance(m, nn.BatchNorm2d) else m.out_channels
                for m in demo.net.modules() if isinstance(m, nn.BatchNorm2d)
                or (isinstance(m, nn.Conv2d) and m.bias is not None)]
    assert len(channels) == 20                 # the demo ResNet-18's BNs (its convs have no bias)
    assert (out.maps < 3 + sum(channels)).all() and out.maps.max() > 3
    assert out.extras["completeness_gap"].abs().max() < 1e-4


def test_maps_do_not_depend_on_batching(demo):
    """Per-image min–max: one image's map is the same alone, in any batch, in any order and
    in one-image chunks (the demo's BN terms are non-zero here)."""
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    t = torch.tensor([3, 0, 2, 1])
    whole = run_method("fullgrad", demo, images, t)
    perm = torch.tensor([2, 0, 3, 1])
    shuffled = run_method("fullgrad", demo, images[perm], t[perm])
    single = [run_method("fullgrad", demo, images[i:i + 1], t[i:i + 1]) for i in range(4)]
    chunked = run_method("fullgrad", demo, images, t, max_batch=1)
    for other, order in ((shuffled, perm), (chunked, torch.arange(4))):
        assert torch.allclose(other.maps, whole.maps[order], rtol=1e-5, atol=1e-5)
        assert torch.allclose(other.extras["completeness_gap"],
                              whole.extras["completeness_gap"][order], atol=1e-5)
    assert torch.allclose(torch.cat([s.maps for s in single]), whole.maps, rtol=1e-5,
                          atol=1e-5)
    assert not torch.allclose(whole.maps[0], whole.maps[1], atol=1e-2)


# -- check_model ------------------------------------------------------------------------------
def test_check_model(linear_model):
    method = get_method("fullgrad")
    with torch.device("meta"):
        meta = load_model("demo_resnet18", weights="random", num_classes=4, width=4,
                          device="meta")
    assert next(meta.parameters()).is_meta
    assert method.check_model({}, meta, "exp.x") is None
    with pytest.raises(ConfigError, match=r"^exp\.y: fullgrad .*spatial.*'linear'.*has none"):
        method.check_model({}, linear_model, "exp.y")
    no_bias = NormalizedModel(nn.Sequential(nn.Conv2d(3, 2, 3, bias=False), nn.Flatten()),
                              name="nobias")
    with pytest.raises(ConfigError, match=r"^exp\.z: .*'nobias'"):
        method.check_model({}, no_bias, "exp.z")
    batch_stats = NormalizedModel(nn.Sequential(
        nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.Flatten()),
        name="batchstats")
    with pytest.raises(ConfigError, match=r"^exp\.w: .*'batchstats'.*BatchNorm2d '1'.*running"):
        method.check_model({}, batch_stats, "exp.w")
