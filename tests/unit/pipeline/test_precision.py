"""Mixed precision, an opt-in (`precision: bfloat16 | float16`, torch.autocast): the model runs
in the lower dtype, maps and scores stay float32 and close to the float32 ones; float32 leaves
the arithmetic alone. The sizes of the differences are reported by benchmarks/bench_precision.py
(docs/benchmarks.md)."""
import numpy as np
import pytest
import torch

from xaipipe.jobs import signature
from xaipipe.errors import ConfigError
from xaipipe.explain import explain, run_method
from xaipipe.metrics import insertion
from xaipipe.utils import autocast

LOW = ["bfloat16", "float16"]


@pytest.fixture(scope="module")
def batch(smooth_cnn):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        t = (smooth_cnn(x) - smooth_cnn(torch.zeros_like(x))).abs().argmax(1)
    return x, t


def test_float32_is_the_default_arithmetic(smooth_cnn, batch):
    x, t = batch
    a = explain("integrated_gradients", smooth_cnn, x, t, steps=16)
    b = explain("integrated_gradients", smooth_cnn, x, t, steps=16, precision="float32")
    assert torch.equal(a, b)


@pytest.mark.parametrize("precision", LOW)
def test_mixed_precision_ig_is_close_and_nearly_complete(smooth_cnn, batch, precision):
    """The model really runs in the lower dtype (the maps differ), the maps stay float32
    within a few percent of each image's max, and completeness holds to a few percent."""
    x, t = batch
    ref = run_method("integrated_gradients", smooth_cnn, x, t, steps=64)
    low = run_method("integrated_gradients", smooth_cnn, x, t, steps=64, precision=precision)
    assert low.maps.dtype == torch.float32 and not torch.equal(low.maps, ref.maps)
    peak = ref.maps.abs().flatten(1).amax(1)
    rel = (low.maps - ref.maps).abs().flatten(1).amax(1) / peak
    assert torch.all(rel < 0.1), rel
    with torch.no_grad():
        f = torch.gather(smooth_cnn(x) - smooth_cnn(torch.zeros_like(x)), 1, t[:, None])[:, 0]
    assert torch.all((low.maps.flatten(1).sum(1) - f).abs() <= 0.05 * f.abs()), precision
    # a model of reduced-precision convolutions: a cross-check that autocast reached it
    with autocast("cpu", precision):
        assert smooth_cnn(x).dtype == getattr(torch, precision)


@pytest.mark.parametrize("precision", LOW)
def test_mixed_precision_methods_and_insertion_stay_close(cnn, batch, precision):
    x, t = batch
    for name in ("saliency", "gradcam", "smoothgrad"):
        ref = explain(name, cnn, x, t, samples=4) if name == "smoothgrad" else \
            explain(name, cnn, x, t)
        low = explain(name, cnn, x, t, precision=precision, samples=4) \
            if name == "smoothgrad" else explain(name, cnn, x, t, precision=precision)
        assert low.dtype == torch.float32 and low.shape == ref.shape, name
        corr = np.corrcoef(low.flatten().numpy(), ref.flatten().numpy())[0, 1]
        assert corr > 0.95, (name, corr)
    maps = explain("saliency", cnn, x, t)
    a = np.asarray(insertion(cnn, x, maps, t, steps=8)["auc"])
    with autocast("cpu", precision):
        b = np.asarray(insertion(cnn, x, maps, t, steps=8)["auc"])
    assert np.all(np.isfinite(b)) and np.abs(a - b).max() < 0.05, np.abs(a - b)


def test_mixed_precision_lowers_the_model_not_the_image_operators(batch):
    """Under autocast the blurs and the wavelet and shearlet transforms stay in float32 and
    equal their float32 results exactly (a blurred baseline, a blur pyramid or a WaveletX
    synthesis in bfloat16 lost 8 mantissa bits); a matmul around them is still lowered."""
    from xaipipe.explain.masks.smooth_mask import gaussian_blur as pyramid_blur
    from xaipipe.maths.imageops import gaussian_blur, gaussian_blur_zero
    from xaipipe.transforms import ShearletTransform, WaveletTransform
    x = torch.nn.functional.interpolate(batch[0][:2], size=64, mode="bilinear")
    dwt, sh = WaveletTransform(J=3), ShearletTransform(64, 64, scales=2)
    ops = {"blur": lambda: gaussian_blur(x, 3.0), "blur_zero": lambda: gaussian_blur_zero(x, 2.0),
           "pyramid": lambda: pyramid_blur(x, 5.0),
           "dwt": lambda: dwt.reconstruct(dwt.decompose(x)), "dwt_yl": lambda: dwt.decompose(x)[0],
           "shearlet": lambda: sh.reconstruct(sh.decompose(x))}
    want = {k: f() for k, f in ops.items()}
    with autocast("cpu", "bfloat16"):
        assert (x @ x).dtype == torch.bfloat16
        for k, f in ops.items():
            got = f()
            assert got.dtype == torch.float32, k
            torch.testing.assert_close(got, want[k], rtol=0, atol=0, msg=k)


def test_bad_precision_is_named(cnn, batch):
    x, t = batch
    with pytest.raises(ConfigError, match="precision 'half'"):
        explain("saliency", cnn, x, t, precision="half")


def test_precision_enters_the_signatures_only_when_set():
    from helpers.configs import BASE, cfg, check

    from xaipipe.config import Plan
    p32, p16 = Plan(check(cfg())), Plan(check(cfg(precision="bfloat16")))
    exp = BASE["run"][0]
    key = p32.explain_keys(exp)[0]
    assert "precision" not in signature(p32.explain_job(*key))
    assert signature(p16.explain_job(*key))["precision"] == "bfloat16"
    for k in p32.score_keys(exp):
        s32, s16 = signature(p32.score_job(*k)), signature(p16.score_job(*k))
        assert "precision" not in s32
        # metrics without a model (stability, pointing game) are not affected
        assert s16.get("precision") == ("bfloat16" if p16.score_job(*k).model else None), k
    with pytest.raises(ConfigError, match="precision"):
        check(cfg(precision="half"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("precision", LOW)
def test_mixed_precision_on_cuda(smooth_cnn, batch, precision):
    x, t = batch
    model = smooth_cnn.cuda()
    try:
        ref = explain("integrated_gradients", model, x.cuda(), t.cuda(), steps=32)
        low = explain("integrated_gradients", model, x.cuda(), t.cuda(), steps=32,
                      precision=precision)
        peak = ref.abs().flatten(1).amax(1)
        assert torch.all((low - ref).abs().flatten(1).amax(1) < 0.1 * peak)
    finally:
        smooth_cnn.cpu()


def test_the_chunk_estimate_is_measured_in_float32_under_autocast():
    """A first run in bfloat16 must not halve the cached per-point estimate that later float32
    runs of the same model size their chunks by."""
    from xaipipe.explain.base import estimate_point_bytes
    from xaipipe.models import load_model
    a = load_model("demo_resnet18", weights="random", num_classes=3, width=4)
    b = load_model("demo_resnet18", weights="random", num_classes=3, width=4)
    with autocast("cpu", "bfloat16"):
        lowered = estimate_point_bytes(a, (3, 32, 32), "cpu")
    assert lowered == estimate_point_bytes(b, (3, 32, 32), "cpu")
