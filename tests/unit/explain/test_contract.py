"""The contract every registered attribution method keeps (DESIGN "Contracts inside the
package", "Public API"). Parametrised over ``available_methods()``: registering a method is
all it takes to have it tested here.

A method whose defaults are too slow for this file gets light parameters in ``LIGHT``;
methods without an entry run with small generic counts (``GENERIC``) for the count-like
parameters they declare, and their defaults otherwise.
"""
import pytest
import torch

from xaipipe.errors import ConfigError
from xaipipe.explain import available_methods, get_method, run_method
from xaipipe.explain.base import estimate_point_bytes
from xaipipe.models import load_model

#: hyper-parameters that keep each method fast on a 32x32 demo CNN
LIGHT = {
    "integrated_gradients": {"steps": 4},
    "smoothgrad": {"samples": 3},
    # mask methods: a few steps; pyShearLab builds no shearlet system at 32x32, so ShearletX
    # runs on the batch upsampled to 64x64 with 2 scales (17 bands; see SIZE)
    "shearletx": {"steps": 2, "samples": 2, "history_every": 1},
    "waveletx": {"steps": 2, "samples": 2, "levels": 2, "history_every": 1},
    "cartoonx": {"steps": 2, "samples": 2, "levels": 2},
    "pixel_mask": {"steps": 2, "samples": 2, "history_every": 1},
    # Expected Gradients needs a pool of references (training images)
    "expected_gradients": {"samples": 3, "steps": 4, "references": torch.rand(
        6, 3, 32, 32, generator=torch.Generator().manual_seed(11))},
    # LPI needs its reference set (references and their density; one cluster)
    "lpi": {"samples": 3, "steps": 4, "references": torch.rand(
        3, 3, 32, 32, generator=torch.Generator().manual_seed(12)),
        "density": torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)},
}
#: Optimisation methods: a gradient summed over another chunk composition differs in its last
#: bits (the backend's convolution kernels depend on the batch), and Adam's normalised steps
#: (m/√v) carry such differences into the mask at lr scale; batches and memory budgets agree
#: to this tolerance instead of 1e-6 (measured: 1e-5 after 2 steps).
ITERATIVE_ATOL = {"shearletx": 1e-4, "waveletx": 1e-4, "cartoonx": 1e-4, "pixel_mask": 1e-4,
                  "smooth_mask": 1e-4}
#: image size per method where 32x32 cannot work
SIZE = {"shearletx": 64}
#: small values for count-like parameters of methods not in LIGHT (clamped to their minimum)
GENERIC = {"steps": 4, "samples": 3, "n_samples": 3, "iterations": 4, "history_every": 2}

TINY_MB = 0.05   # far below one point of the demo CNN: one point per chunk
N = 4
METHODS = available_methods()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


def light_params(name: str) -> dict:
    if name in LIGHT:
        return dict(LIGHT[name])
    out = {}
    for key, value in GENERIC.items():
        p = get_method(name).params.get(key)
        if p is not None and isinstance(p.default, int) and not isinstance(p.default, bool):
            out[key] = max(value, int(p.min or 0))
    return out


@pytest.fixture(scope="module")
def cpu_models():
    """The tiny demo CNN, and tiny demo ViTs (conv stem, 8x8 patches, 2 layers) at 32x32 and,
    for the methods of ``SIZE``, 64x64: every method runs on both architectures (``arch``);
    the transformer-only methods must refuse the CNN."""
    torch.manual_seed(0)
    cnn = load_model("demo_resnet18", weights="random", num_classes=4, width=4)
    vits = {}
    for size in (32, 64):
        torch.manual_seed(0)
        vits[size] = load_model("demo_vit", weights="random", num_classes=4, width=16,
                                image_size=size, layers=2, heads=2)
    return cnn, vits


def needs_vit(name: str, cnn) -> bool:
    cls = get_method(name)
    try:
        cls.check_model(cls.check(light_params(name)), cnn, "contract")
    except ConfigError:
        return True
    return False


ARCHS = ["cnn", "vit"]


@pytest.fixture
def model(cpu_models, request):
    """The model of the test's method (``name``) and architecture (``arch``, default the CNN)
    in eval mode, back on the CPU after each test: a transformer-only method on the CNN skips
    the test after checking that its ``check_model`` refuses the CNN."""
    cnn, vits = cpu_models
    params = request.node.callspec.params
    name, arch = params.get("name"), params.get("arch", "cnn")
    if arch == "cnn" and name and needs_vit(name, cnn):
        pytest.skip(f"{name} needs a vision transformer (check_model refuses the CNN); "
                    "it runs under arch=vit")
    m = vits[SIZE.get(name, 32)] if arch == "vit" else cnn
    yield m.eval()
    m.to("cpu").eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(7)
    images = torch.rand(N, 3, 32, 32, generator=g)
    target = torch.tensor([0, 3, 1, 2])
    ids = torch.tensor([101, 7, 55, 2**40 + 3])
    return images, target, ids


def attribute(name, model, images, target, ids=None, **kw):
    if name in SIZE and images.shape[-1] != SIZE[name]:
        images = torch.nn.functional.interpolate(images, size=SIZE[name], mode="bilinear",
                                                 align_corners=False)
    return run_method(name, model, images, target, image_ids=ids, **light_params(name), **kw)


def assert_same(a, b, what, atol=1e-6):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.allclose(a, b, rtol=1e-5, atol=atol), \
        f"{what}: max difference {(a - b).abs().max().item():.3g}"


def assert_same_attribution(a, b, what):
    atol = ITERATIVE_ATOL.get(what.split(":")[0], 1e-6)
    assert_same(a.maps, b.maps, f"{what}: maps", atol)
    assert a.extras.keys() == b.extras.keys(), f"{what}: extras {sorted(a.extras)} != " \
                                                f"{sorted(b.extras)}"
    for key in a.extras:
        assert_same(a.extras[key], b.extras[key], f"{what}: extras[{key!r}]", atol)


def cat(parts):
    return type(parts[0])(torch.cat([p.maps for p in parts]),
                          {k: torch.cat([p.extras[k] for p in parts]) for k in parts[0].extras})


def test_every_method_is_tested():
    assert {"saliency", "integrated_gradients", "smoothgrad", "gradcam", "random"} <= \
        set(METHODS)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", METHODS)
def test_method_contract(name, device, arch, model, batch):
    images, target, ids = (t.to(device) for t in batch)
    model = model.to(device)
    cls = get_method(name)
    assert cls.channels in ("input", "single"), f"{name}: channels {cls.channels!r}"
    out = attribute(name, model, images, target, ids)

    # shape, dtype, device, finite
    c = images.shape[1] if cls.channels == "input" else 1
    size = (SIZE[name],) * 2 if name in SIZE else tuple(images.shape[-2:])
    assert out.maps.shape == (N, c, *size), f"{name}: {tuple(out.maps.shape)}"
    assert out.maps.dtype == torch.float32
    assert out.maps.device == images.device
    assert torch.isfinite(out.maps).all(), f"{name}: non-finite maps"
    for key, value in out.extras.items():
        assert isinstance(value, torch.Tensor), f"{name}: extras[{key!r}] is {type(value)}"
        assert value.ndim >= 1 and value.shape[0] == N, \
            f"{name}: extras[{key!r}] has shape {tuple(value.shape)}, want leading dim {N}"
        assert not value.is_floating_point() or torch.isfinite(value).all(), \
            f"{name}: extras[{key!r}] not finite"

    # deterministic
    again = attribute(name, model, images, target, ids)
    if device == "cpu":
        assert torch.equal(out.maps, again.maps), f"{name}: two runs differ"
        for key in out.extras:
            assert torch.equal(out.extras[key], again.extras[key]), f"{name}: extras[{key!r}]"
    else:   # CUDA atomics (conv backward, index_add_) may change the summation order
        assert_same_attribution(out, again, f"{name}: two runs")

    # batch invariant: two halves, and one point per chunk
    halves = cat([attribute(name, model, images[:2], target[:2], ids[:2]),
                  attribute(name, model, images[2:], target[2:], ids[2:])])
    assert_same_attribution(out, halves, f"{name}: [0:2] + [2:4] vs [0:4]")
    assert estimate_point_bytes(model, (images.shape[1], *size), device) > TINY_MB * 2**20
    chunked = attribute(name, model, images, target, ids, memory_mb=TINY_MB)
    assert_same_attribution(out, chunked, f"{name}: memory_mb={TINY_MB} vs default")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", METHODS)
def test_method_without_ids_is_batch_invariant(name, arch, model, batch):
    images, target, _ = batch
    whole = attribute(name, model, images, target).maps
    halves = torch.cat([attribute(name, model, images[:2], target[:2]).maps,
                        attribute(name, model, images[2:], target[2:]).maps])
    assert_same(whole, halves, f"{name}: no ids, [0:2] + [2:4] vs [0:4]",
                ITERATIVE_ATOL.get(name, 1e-6))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", METHODS)
def test_method_leaves_the_model_mode(name, training, arch, model, batch):
    images, target, ids = batch
    model.train(training)
    next(model.net.children()).train(not training)   # a mixed state must survive too
    modes = [m.training for m in model.modules()]
    try:
        attribute(name, model, images[:2], target[:2], ids[:2])
        assert [m.training for m in model.modules()] == modes, f"{name}: model mode changed"
    finally:
        model.eval()
