"""Mask methods (`mask-methods.md` §2, §4, §5, §7, §9): the shared optimisation framework, the
StartGrad initialisation and its quantile transform, on tiny models and images."""
import math

import numpy as np
import pytest
import torch

from xaipipe.explain import explain, run_method
from xaipipe.maths.information import entropy
from xaipipe.explain.masks.startgrad import quantile_transform
from xaipipe.models import load_model
from xaipipe.transforms import WaveletTransform

IDS = torch.tensor([11, 12, 13])


@pytest.fixture(scope="module")
def x32():
    g = torch.Generator().manual_seed(3)
    base = torch.rand(3, 3, 4, 4, generator=g)
    # smooth-ish images with structure (upsampled blocks plus a little noise)
    x = torch.nn.functional.interpolate(base, size=32, mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.rand(3, 3, 32, 32, generator=g)).clamp(0, 1)


# -- the quantile transform --------------------------------------------------------------
def test_qtf_is_uniform_per_block_with_mean_one_half():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 5, 7, 9, generator=g).abs()
    m = quantile_transform(a, 2)
    assert m.shape == a.shape
    flat = m.reshape(10, 63)
    torch.testing.assert_close(flat.mean(1).double(), torch.full((10,), 0.5, dtype=torch.float64))
    assert torch.all(flat.amin(1) == 0) and torch.all(flat.amax(1) == 1)
    # each block is exactly the grid {0, 1/(n-1), ..., 1} (no ties in continuous data)
    srt = flat.sort(1).values
    torch.testing.assert_close(srt, torch.linspace(0, 1, 63).expand(10, 63))


def test_qtf_ties_share_the_mean_rank_and_match_sklearn():
    from sklearn.preprocessing import QuantileTransformer
    a = torch.tensor([[3.0, 1.0, 1.0, 2.0, 5.0, 5.0, 5.0, 0.5]])
    m = quantile_transform(a, 1)[0].double()
    # ranks: 0.5->1, 1,1 -> 2.5, 2 -> 4, 3 -> 5, 5,5,5 -> 7 ; (R-1)/(n-1), n = 8
    want = torch.tensor([4, 1.5, 1.5, 3, 6, 6, 6, 0], dtype=torch.float64) / 7
    torch.testing.assert_close(m, want, atol=1e-7, rtol=0)
    # sklearn's oracle on tie-free data: with ties its percentile grid puts a tie group's
    # ends half a rank off (floating interpolation between equal neighbours)
    g = torch.Generator().manual_seed(1)
    b = torch.randn(500, generator=g)
    qt = QuantileTransformer(n_quantiles=500, subsample=None, output_distribution="uniform")
    ref = qt.fit_transform(b.double().numpy()[:, None])[:, 0]
    np.testing.assert_allclose(quantile_transform(b[None], 1)[0].numpy(), ref, atol=1e-6)


def test_qtf_is_invariant_to_increasing_transforms():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(4, 10, 10, generator=g)
    for f in (torch.exp, lambda v: 3 * v + 1, lambda v: v ** 3):
        assert torch.equal(quantile_transform(a, 2), quantile_transform(f(a), 2))


def test_entropy_of_one_hot_and_uniform():
    one_hot = torch.zeros(1, 50)
    one_hot[0, 7] = 3.0
    assert abs(float(entropy(one_hot))) < 1e-6
    assert float(entropy(torch.ones(1, 50))) == pytest.approx(math.log(50), rel=1e-5)


# -- the pixel mask ----------------------------------------------------------------------
def test_pixel_mask_ones_gives_the_image_and_retains_everything(cnn, x32):
    t = torch.tensor([0, 1, 2])
    att = run_method("pixel_mask", cnn, x32, t, image_ids=IDS, steps=0)
    assert att.extras["mask"].shape == (3, 1, 32, 32)
    assert torch.equal(att.extras["mask"], torch.ones(3, 1, 32, 32))
    torch.testing.assert_close(att.maps, x32)
    for k in ("final_retained_l1", "final_retained_entropy", "final_retained_pixel"):
        torch.testing.assert_close(att.extras[k], torch.ones(3))


def test_pixel_mask_history_and_projection(cnn, x32):
    t = torch.tensor([0, 1, 2])
    att = run_method("pixel_mask", cnn, x32, t, image_ids=IDS, steps=7, history_every=3,
                     return_mask=True, lr=0.3)
    h = att.extras
    t_hist = math.ceil(7 / 3)
    for k in ("retained_probability", "retained_l1", "retained_entropy", "retained_pixel",
              "cp_l1", "cp_pixel"):
        assert h[k].shape == (3, t_hist), k
    assert h["loss_terms"].shape == (3, t_hist, 3)
    # entry 0 is the all-ones mask: every sample is the clean image, nothing is removed
    torch.testing.assert_close(h["retained_probability"][:, 0], torch.ones(3))
    torch.testing.assert_close(h["retained_l1"][:, 0], torch.ones(3))
    # loss terms at entry 0: distortion (1 - p_c)^2, sparsity λ1·mean(m) = 1, TV weight 0
    p = torch.softmax(cnn(x32), 1).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(h["loss_terms"][:, 0, 0], (1 - p) ** 2, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(h["loss_terms"][:, 0, 1], torch.ones(3))
    assert torch.all(h["loss_terms"][:, :, 2] == 0)
    m = h["mask"]
    assert m.min() >= 0 and m.max() <= 1 and m.min() < 1          # moved, and projected
    torch.testing.assert_close(att.maps, m * x32)                  # x_E = m ⊙ x̃
    torch.testing.assert_close(h["cp_l1"], h["retained_probability"] / h["retained_l1"])


def test_history_holds_the_cp_metric_of_each_recorded_mask(cnn, x32):
    """The clean CP history (`metrics.md` §10.1: Kolek's CP on the clean explanation at each
    recorded step) is the ``cp`` metric of the mask of that step; cp_entropy is StartGrad's
    noisy form over the retained entropy."""
    from xaipipe.metrics.cp import cp_scores

    t = torch.tensor([0, 1, 2])
    kw = dict(image_ids=IDS, init="uniform", lr=0.3, samples=2)
    run = run_method("pixel_mask", cnn, x32, t, steps=4, history_every=3, **kw).extras
    after3 = run_method("pixel_mask", cnn, x32, t, steps=3, return_mask=True, **kw)
    want = cp_scores(cnn, x32, after3.maps, t, coeffs=x32, mask=after3.extras["mask"])
    for k in ("cp_l1_pixel", "cp_l1", "cp_entropy"):
        np.testing.assert_allclose(run[f"clean_{k}"][:, 1].numpy(), want[k], rtol=1e-5,
                                   err_msg=k)
    torch.testing.assert_close(run["cp_entropy"],
                               run["retained_probability"] / run["retained_entropy"])
    assert not torch.allclose(run["clean_cp_l1"][:, 1], run["cp_l1"][:, 1])


def test_pixel_mask_tv_is_zero_for_a_constant_mask(cnn, x32):
    from xaipipe.explain.masks.pixel_mask import PixelMask
    meth = PixelMask(cnn, lambda_tv=1.0, lambda_1=0.0)
    state = meth.prepare(x32)
    regs = meth.regularizers(state, [torch.full((3, 1, 32, 32), 0.3)])
    assert torch.all(regs[1] == 0)
    m = torch.zeros(3, 1, 32, 32)
    m[:, :, :, 16:] = 1.0                                          # one vertical edge
    regs = meth.regularizers(state, [m])
    torch.testing.assert_close(regs[1], torch.full((3,), 32 / 1024))


def test_mask_methods_are_deterministic_and_batch_invariant(cnn, x32):
    t = torch.tensor([0, 1, 2])
    kw = dict(steps=4, samples=3, init="uniform", return_mask=True)
    a = run_method("pixel_mask", cnn, x32, t, image_ids=IDS, **kw)
    b = run_method("pixel_mask", cnn, x32, t, image_ids=IDS, **kw)
    assert torch.equal(a.maps, b.maps)
    one = run_method("pixel_mask", cnn, x32[1:2], t[1:2], image_ids=IDS[1:2], **kw)
    torch.testing.assert_close(one.extras["mask"][0], a.extras["mask"][1], atol=1e-5, rtol=0)
    other = run_method("pixel_mask", cnn, x32, t, image_ids=IDS + 100, **kw)
    assert not torch.equal(other.extras["mask"], a.extras["mask"])   # ids seed the draws


def test_startgrad_pixel_mask(cnn, x32):
    t = torch.tensor([0, 1, 2])
    m = {s: run_method("pixel_mask", cnn, x32, t, steps=0, init="startgrad",
                       startgrad_score=s).extras["mask"] for s in ("prob", "nll", "logit")}
    assert torch.equal(m["prob"], m["nll"])                  # rank-based: same mask
    assert not torch.equal(m["prob"], m["logit"])
    torch.testing.assert_close(m["prob"].mean((1, 2, 3)).double(),
                               torch.full((3,), 0.5, dtype=torch.float64))
    # it ranks by |∂p_c/∂x| max over colour (taken as p_c·|∂log p_c/∂x|: same ranks)
    x = x32.clone().requires_grad_(True)
    p = torch.log_softmax(cnn(x), 1).gather(1, t[:, None]).sum()
    (g,) = torch.autograd.grad(p, x)
    want = quantile_transform(g.abs().amax(1, keepdim=True), 2)
    torch.testing.assert_close(m["prob"], want)


@pytest.mark.parametrize("name", ["pixel_mask", "shearletx", "waveletx"])
def test_gradient_of_the_loss_is_nonzero_at_init(name, cnn, x32, x64):
    """§4: ∂L/∂m ≠ 0 at the all-ones init, in every part of the mask (each band, each
    wavelet level), so the optimisation leaves the init."""
    from xaipipe.explain.base import get_method
    x = x32 if name == "pixel_mask" else x64          # pyShearLab needs 64 px for 2 scales
    n = x.shape[0]
    meth = get_method(name)(cnn, samples=2)
    state = meth.prepare(x)
    t = torch.arange(n)
    masks = [torch.ones(n, *shape[1:], requires_grad=True) for shape in meth.mask_shapes(state)]
    with torch.no_grad():
        y_ref = torch.ones(n)
    meth._distortion_pass(state, masks, t, y_ref, IDS[:n], 0)
    for m in masks:
        assert m.grad is not None and (m.grad.flatten(2).abs().sum(2) > 0).all(), name


def test_optimisation_raises_retained_probability_from_a_uniform_init(cnn, x32):
    t = torch.tensor([0, 1, 2])
    att = run_method("pixel_mask", cnn, x32, t, image_ids=IDS, steps=20, history_every=1,
                     init="uniform", lambda_1=0.0, samples=4, lr=0.1)
    rcp = att.extras["retained_probability"]
    assert torch.all(rcp[:, -3:].mean(1) > rcp[:, 0]), rcp


def test_explain_returns_the_explanation_image(cnn, x32):
    maps = explain("pixel_mask", cnn, x32, 1, steps=2, samples=2)
    assert maps.shape == x32.shape and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1


def test_recording_and_run_length_do_not_change_the_draws(cnn, x32):
    """A 3-step run is the first 3 steps of a 5-step run, with or without histories."""
    t = torch.tensor([0, 1, 2])
    kw = dict(samples=2, init="uniform", return_mask=True)
    short = run_method("pixel_mask", cnn, x32, t, image_ids=IDS, steps=3, **kw)
    logged = run_method("pixel_mask", cnn, x32, t, image_ids=IDS, steps=3, history_every=1, **kw)
    assert torch.equal(short.extras["mask"], logged.extras["mask"])
    init = run_method("pixel_mask", cnn, x32, t, image_ids=IDS, steps=0, init="uniform",
                      samples=2)
    h = run_method("pixel_mask", cnn, x32, t, image_ids=IDS, steps=5, history_every=1,
                   samples=2, init="uniform")
    # entry 0 of the longer run's history is the same initial mask's retained ℓ1
    torch.testing.assert_close(h.extras["retained_l1"][:, 0],
                               init.extras["final_retained_l1"])


# -- ShearletX / WaveletX -----------------------------------------------------------------
@pytest.fixture(scope="module")
def x64(x32):
    return torch.nn.functional.interpolate(x32[:2], size=64, mode="bilinear",
                                           align_corners=False).clamp(0, 1)


@pytest.mark.parametrize("name", ["shearletx", "waveletx", "cartoonx"])
def test_transform_masks_of_ones_give_the_image(name, cnn, x64):
    att = run_method(name, cnn, x64, torch.tensor([0, 1]), steps=0)
    torch.testing.assert_close(att.maps, x64, atol=2e-6, rtol=0)
    for k in ("final_retained_l1", "final_retained_entropy"):
        torch.testing.assert_close(att.extras[k], torch.ones(2))
    if name == "shearletx":
        assert att.extras["mask"].shape == (2, 17, 64, 64)       # 2 scales at 64 px
    else:
        from xaipipe.transforms import WaveletTransform
        assert att.extras["mask"].shape == (2, WaveletTransform().n_coefficients(64, 64))


def test_shearletx_noise_statistics_are_those_of_the_gray_bands(cnn, x64):
    from xaipipe.explain.masks.shearletx import ShearletX
    from xaipipe.transforms import ShearletTransform
    meth = ShearletX(cnn, samples=2)
    state = meth.prepare(x64)
    cg = ShearletTransform(64, 64, scales=2).decompose(x64.mean(1, keepdim=True))
    torch.testing.assert_close(state.mu[0][:, 0, :, 0, 0], cg.mean((-2, -1))[:, 0])
    torch.testing.assert_close(state.sigma[0][:, 0, :, 0, 0], cg.std((-2, -1))[:, 0])
    # one noise tensor for R, G, B: (1, K, H, W), uniform within μ_k ± σ_k of its band
    u = meth._noise(state, 0, 5, 0, 0)[0]
    assert u.shape == (1, 17, 64, 64)
    lo = (state.mu[0][0] - state.sigma[0][0])[0]
    hi = (state.mu[0][0] + state.sigma[0][0])[0]
    assert torch.all(u[0] >= lo - 1e-6) and torch.all(u[0] <= hi + 1e-6)


def test_shearletx_compat_clips_the_coefficients(cnn, x64):
    from xaipipe.explain.masks.shearletx import ShearletX
    clean, compat = ShearletX(cnn), ShearletX(cnn, compat="shearletx")
    state = clean.prepare(x64)
    masks = [torch.full((2, 1, 17, 64, 64), 0.5)]
    noise = [clean._noise(state, i, i, 0, 0) for i in (0, 1)]
    a = clean._obfuscate(state, masks, [0, 1], noise)
    b = compat._obfuscate(state, masks, [0, 1], noise)
    assert a.min() >= 0 and a.max() <= 1                       # the image is clipped
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("noise", ["uniform", "gaussian", "zeros"])
def test_shearletx_split_synthesis_equals_the_direct_obfuscation(cnn, x64, noise):
    """T⁻¹(a + m ⊙ (c − a)) + T⁻¹(((1 − m)·b) ⊙ r_s) with u_s = a + b·r_s, the cheaper form
    a step uses (the draws r_s of a chunk from the thread pool, the product synthesis with
    its own backward), gives the images and the mask gradients of the direct form
    T⁻¹(u_s + m ⊙ (c − u_s)) up to float rounding, for runs of several images; the chunk's
    draws are those of :meth:`_noise`."""
    from xaipipe.explain.masks.shearletx import ShearletX
    meth = ShearletX(cnn, samples=3, noise=noise)
    assert meth.split_synthesis() and not ShearletX(cnn, compat="shearletx").split_synthesis()
    state = meth.prepare(x64)
    m = torch.rand(2, 1, 17, 64, 64, generator=torch.Generator().manual_seed(3))
    img_i = [0, 0, 1, 1, 1]
    pts = [(i, s) for s, i in enumerate(img_i)]
    ids = torch.tensor([10, 11])
    noise_u = [meth._noise(state, i, 10 + i, 0, s) for i, s in pts]
    draws = meth._draw_chunk(state, pts, ids, 0)
    for (i, _), u, r in zip(pts, noise_u, draws[0]):
        a, b = meth._noise_affine(state, 0, i)
        torch.testing.assert_close(u[0], (a if b is None else a + b * r).expand_as(u[0]),
                                   atol=1e-7, rtol=0)
    if noise != "zeros":
        assert not torch.equal(noise_u[0][0], noise_u[1][0])
    weight = torch.linspace(0, 1, 5 * 3 * 64 * 64).view(5, 3, 64, 64)
    out = {}
    for split in (True, False):
        masks = [m.clone().requires_grad_(True)]
        x = (meth._obfuscate_split(state, masks, meth._runs(img_i), draws) if split
             else meth._obfuscate(state, masks, img_i, noise_u))
        (g,) = torch.autograd.grad((x * weight).sum(), masks)
        out[split] = (x.detach(), g)
    torch.testing.assert_close(out[True][0], out[False][0], atol=2e-6, rtol=0)
    torch.testing.assert_close(out[True][1], out[False][1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("noise", ["uniform", "zeros"])
def test_shearletx_step_gradient_does_not_depend_on_the_chunks(cnn, x64, noise):
    """One distortion pass in chunks of one point (each image's shared synthesis is made
    once and back-propagated after its last chunk) gives the probabilities and the mask
    gradient of the pass in one chunk, and of the direct (unsplit) form."""
    from xaipipe.explain.masks.shearletx import ShearletX
    out = []
    for memory_mb, split in ((1e-3, True), (1e6, True), (1e6, False)):
        meth = ShearletX(cnn, samples=3, noise=noise, memory_mb=memory_mb)
        meth.split_synthesis = lambda split=split: split
        state = meth.prepare(x64)
        assert (meth._point_chunk(x64) == 1) == (memory_mb < 1)
        m = torch.rand(2, 1, 17, 64, 64, generator=torch.Generator().manual_seed(4))
        masks = [m.requires_grad_(True)]
        t = torch.tensor([0, 1])
        probs = meth._distortion_pass(state, masks, t, torch.ones(2), torch.tensor([7, 8]), 0)
        out.append((probs, masks[0].grad))
    assert out[1][1].abs().max() > 0
    for other in out[1:]:
        torch.testing.assert_close(out[0][0], other[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(out[0][1], other[1], atol=5e-6, rtol=1e-4)


@pytest.mark.parametrize("name", ["shearletx", "waveletx", "pixel_mask"])
def test_mask_steps_leave_the_models_gradients_alone(name, x64):
    """The optimisation back-propagates into the masks only: no weight gradients are
    computed or accumulated into the model's parameters (whose .grad stay None)."""
    torch.manual_seed(0)
    model = load_model("demo_resnet18", weights="random", num_classes=4, width=4)
    assert all(p.requires_grad for p in model.parameters())
    att = run_method(name, model, x64, torch.tensor([0, 1]), steps=2, samples=2)
    assert att.maps.shape == x64.shape
    assert all(p.grad is None for p in model.parameters())


def test_shearletx_raises_the_retained_probability_over_its_first_steps(cnn, x64):
    t = cnn(x64).argmax(1)
    att = run_method("shearletx", cnn, x64, t, image_ids=[3, 4], steps=8, samples=4,
                     history_every=1, init="uniform", lambda_1=0.1, lambda_2=0.1)
    rcp = att.extras["retained_probability"]
    assert rcp.shape == (2, 8)
    assert torch.all(rcp[:, -2:].mean(1) > rcp[:, 0]), rcp
    assert torch.all((att.extras["retained_l1"] > 0) & (att.extras["retained_l1"] <= 1))


def test_startgrad_on_transform_masks(cnn, x64):
    t = torch.tensor([0, 1])
    for name, shape in (("shearletx", (2, 17, 64, 64)), ("waveletx", None)):
        m = {s: run_method(name, cnn, x64, t, steps=0, init="startgrad",
                           startgrad_score=s).extras["mask"] for s in ("prob", "nll", "logit")}
        assert torch.equal(m["prob"], m["nll"]) and not torch.equal(m["prob"], m["logit"])
        if shape:
            assert m["prob"].shape == shape
            # every band is its own block: mean exactly 0.5 per (image, band)
            torch.testing.assert_close(m["prob"].mean((-2, -1)).double(),
                                       torch.full(shape[:2], 0.5, dtype=torch.float64))
        else:
            # WaveletX: yl and each level's 3 orientations are blocks (1 + 3·J = 16), each
            # uniform on its own: mean exactly 0.5 per (image, block)
            yl, yh = WaveletTransform().decompose(x64[:1, :1])
            parts = m["prob"].split([yl.numel(), *(h.numel() for h in yh)], 1)
            blocks = [parts[0].view(2, -1)] + [p.view(2, 3, -1)[:, o] for p in parts[1:]
                                               for o in range(3)]
            assert len(blocks) == 16
            torch.testing.assert_close(torch.stack([b.double().mean(1) for b in blocks], 1),
                                       torch.full((2, 16), 0.5, dtype=torch.float64))
        assert m["prob"].min() >= 0 and m["prob"].max() <= 1


def test_cp_entropy_exp_reads_the_method_entropies(cnn, x64):
    """The mask methods export both entropies, so the cp metric's entropy_exp works from
    their extras: exp(H(m ⊙ c) − H(c)), which is 1 for the all-ones mask."""
    from xaipipe.metrics import get_metric
    from xaipipe.metrics.base import MetricInputs
    t = torch.tensor([0, 1])
    att = run_method("shearletx", cnn, x64, t, steps=0)
    ex = {k: v.numpy() for k, v in att.extras.items() if k != "mask"}
    torch.testing.assert_close(att.extras["final_entropy_explanation"],
                               att.extras["final_entropy_image"])
    out = get_metric("cp")(entropy_exp=True, normalize=False)(MetricInputs(
        ids=np.arange(2), target=t, maps=att.maps, model=cnn, images=x64, extras=ex))
    np.testing.assert_allclose(out["cp_entropy_exp"], out["retained_probability"], rtol=1e-5)
    assert out["entropy_from_extras"].all()


# -- StartGrad ablations and the StartGrad repository's variants (mask-methods.md §9.1-9.2) --
def test_startgrad_ablations_and_transforms(cnn, x32):
    x, t = x32[:2], torch.tensor([0, 1])
    kw = dict(steps=0, init="startgrad")
    base = run_method("pixel_mask", cnn, x, t, **kw).extras["mask"]
    adv = run_method("pixel_mask", cnn, x, t, startgrad_ablation="adversarial", **kw)
    torch.testing.assert_close(adv.extras["mask"], 1 - base, rtol=0, atol=0)
    sh = run_method("pixel_mask", cnn, x, t, startgrad_ablation="shuffle", **kw).extras["mask"]
    torch.testing.assert_close(sh.flatten(1).sort(1).values, base.flatten(1).sort(1).values,
                               rtol=0, atol=0)
    assert not torch.equal(sh, base)
    quiet = run_method("pixel_mask", cnn, x, t, startgrad_ablation="noisy", startgrad_noise=0.0,
                       **kw).extras["mask"]
    torch.testing.assert_close(quiet, base, rtol=0, atol=0)
    loud = run_method("pixel_mask", cnn, x, t, startgrad_ablation="noisy", startgrad_noise=1.0,
                      **kw).extras["mask"]
    assert not torch.equal(loud, base)
    gxi = run_method("pixel_mask", cnn, x, t, startgrad_ablation="grad_x_input", **kw)
    assert not torch.equal(gxi.extras["mask"], base)
    # the transforms keep the gradient's order (float32 may tie near values) and span [0, 1]
    ranks = base.flatten(1).argsort(dim=1, stable=True)
    for tr in ("minmax", "sqrt", "log"):
        m = run_method("pixel_mask", cnn, x, t, startgrad_transform=tr, **kw).extras["mask"]
        assert torch.all(m.flatten(1).gather(1, ranks).diff(dim=1) >= 0), tr   # monotone
        assert torch.all(m.flatten(1).amin(1) == 0) and torch.all(m.flatten(1).amax(1) == 1)


def test_prob_score_uses_the_gradient_of_p_where_its_size_matters(cnn, x32):
    """``startgrad_score: prob`` is s = p_c (§9.1): its gradient p_c·∇log p_c. The noisy
    ablation adds σ·ε to it, so there the factor p_c counts; the draws ε are those of the
    ``nll`` run (the initial mask's settings do not seed the draws)."""
    from xaipipe.explain.masks.pixel_mask import PixelMask
    from xaipipe.utils import derive_seed
    x, t = x32[:2], torch.tensor([0, 1])
    kw = dict(steps=0, init="startgrad", startgrad_ablation="noisy", startgrad_noise=0.05,
              image_ids=IDS[:2])
    got = {sc: run_method("pixel_mask", cnn, x, t, startgrad_score=sc, **kw).extras["mask"]
           for sc in ("prob", "nll")}
    meth = PixelMask(cnn, **{k: v for k, v in kw.items() if k != "image_ids"})
    assert meth.seed_parts(11, "a") == PixelMask(cnn, init="ones").seed_parts(11, "a")
    eps = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(
        derive_seed(*meth.seed_parts(i, "startgrad_noise", 0)))) for i in IDS[:2].tolist()])
    xg = x.clone().requires_grad_(True)
    logp = torch.log_softmax(cnn(xg), 1).gather(1, t[:, None])[:, 0]
    (g,) = torch.autograd.grad(logp.sum(), xg)
    pc = logp.detach().exp().view(-1, 1, 1, 1)
    for sc, grad in (("prob", pc * g), ("nll", g)):
        want = quantile_transform((grad + 0.05 ** 0.5 * eps).abs().amax(1, keepdim=True), 2)
        diff = (got[sc] - want).abs()                    # float near-ties swap two ranks
        assert diff.max() <= 2 / 1023 + 1e-6 and (diff > 1e-6).float().mean() < 0.01, sc
    assert (got["prob"] - got["nll"]).abs().max() > 0.1
    # without an ablation the two scores give one mask, bit for bit
    plain = {sc: run_method("pixel_mask", cnn, x, t, steps=0, init="startgrad",
                            startgrad_score=sc).extras["mask"] for sc in ("prob", "nll")}
    assert torch.equal(plain["prob"], plain["nll"])


def test_normalize_gradient_and_lp_sparsity(cnn, x32):
    from xaipipe.explain.masks.schedules import normalize_gradients
    from xaipipe.explain.masks.pixel_mask import PixelMask
    params = [torch.rand(2, 1, 4, 4).requires_grad_(True), torch.rand(2, 5).requires_grad_(True)]
    for m in params:
        m.grad = torch.randn_like(m) * torch.tensor([3.0, 0.01]).view(-1, *[1] * (m.ndim - 1))
    normalize_gradients(params)
    norm = sum(m.grad.flatten(1).pow(2).sum(1) for m in params).sqrt()
    torch.testing.assert_close(norm, torch.ones(2), rtol=1e-5, atol=0)
    m = torch.tensor([[[[0.0, 0.25], [0.5, 1.0]]]])
    meth = PixelMask(cnn, lp_p=0.5, lambda_1=2.0)
    want = 2.0 * sum((v + 1e-7) ** 0.5 for v in (0.0, 0.25, 0.5, 1.0)) / 4
    torch.testing.assert_close(meth.regularizers(None, [m])[0], torch.tensor([want]))
    # Adam is scale-free per entry, so normalising changes the run but not its validity
    a = run_method("pixel_mask", cnn, x32[:2], torch.tensor([0, 1]), steps=3, samples=2,
                   normalize_gradient=True)
    b = run_method("pixel_mask", cnn, x32[:2], torch.tensor([0, 1]), steps=3, samples=2)
    assert not torch.equal(a.maps, b.maps)


def test_shearletx_startgrad_compat_baselines_are_pixel_shaped(cnn, x64):
    from xaipipe.explain.masks.shearletx import ShearletX
    from xaipipe.transforms import ShearletTransform
    t = torch.tensor([0, 1])
    for init, shape in (("ones", (2, 1, 64, 64)), ("uniform", (2, 1, 64, 64)),
                        ("startgrad", (2, 17, 64, 64))):
        att = run_method("shearletx", cnn, x64, t, steps=0, init=init, compat="startgrad")
        assert att.extras["mask"].shape == shape, init
    ones = run_method("shearletx", cnn, x64, t, steps=0, compat="startgrad")
    torch.testing.assert_close(ones.maps, x64, atol=2e-6, rtol=0)
    meth = ShearletX(cnn, compat="startgrad")
    assert meth.normalizes_gradient() and meth.coefficient_clip()
    state = meth.prepare(x64)
    lum = (x64 * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    cg = ShearletTransform(64, 64, scales=2).decompose(lum)
    torch.testing.assert_close(state.mu[0][:, 0, :, 0, 0], cg.mean((-2, -1))[:, 0])
    run = run_method("shearletx", cnn, x64, t, steps=2, samples=2, compat="startgrad",
                     history_every=1, faithfulness_at=[2])
    assert torch.isfinite(run.extras["faithfulness"]).all()


# -- schedules and the SmoothGrad ablation (StartGrad repository options, §9.2) ------------
@pytest.mark.parametrize("schedule,kw", [
    ("cosine", {}), ("step", {"gamma": 0.5, "step_size": 3}),
    ("exponential", {"gamma": 0.9})])
def test_lr_schedules_equal_torchs_schedulers(schedule, kw):
    """lr_at's closed forms against torch's own schedulers, stepped once per iteration."""
    from xaipipe.explain.masks.schedules import lr_at
    steps, lr = 12, 0.1
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = {"cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps),
             "step": lambda: torch.optim.lr_scheduler.StepLR(opt, kw["step_size"], kw["gamma"]),
             "exponential": lambda: torch.optim.lr_scheduler.ExponentialLR(opt, kw["gamma"])
             }[schedule]()
    for step in range(steps):
        want = opt.param_groups[0]["lr"]
        got = lr_at(step, lr, schedule, steps, kw.get("gamma", 0.99), kw.get("step_size", 100))
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-15), (step, got, want)
        opt.step()
        sched.step()


def test_adaptive_lambda_factor_grows_to_one():
    from xaipipe.explain.masks.schedules import lambda_factor
    f = [lambda_factor(s, "adaptive", 0.1) for s in range(200)]
    assert f[0] == pytest.approx(0.1) and f[1] == pytest.approx(0.1 ** 0.5)
    assert all(b > a for a, b in zip(f, f[1:])) and f[-1] == pytest.approx(0.1 ** (1 / 200))
    assert lambda_factor(5, "constant", 0.1) == 1.0


def test_schedules_change_the_run_not_the_draws(cnn, x32):
    """Neutral settings of the schedules give the constant run bit for bit (they are left
    out of the seeds); real ones change the mask; the adaptive λ scales the recorded terms."""
    x, t = x32[:2], torch.tensor([0, 1])
    kw = dict(steps=4, samples=2, init="uniform", return_mask=True, image_ids=IDS[:2],
              history_every=1, lambda_1=1.0, lambda_tv=0.5)
    base = run_method("pixel_mask", cnn, x, t, **kw)
    for neutral in (dict(lr_schedule="exponential", lr_gamma=1.0),
                    dict(lr_schedule="step", lr_step_size=4, lr_gamma=0.1),
                    dict(lambda_schedule="adaptive", lambda_delta=1.0)):
        same = run_method("pixel_mask", cnn, x, t, **kw, **neutral)
        assert torch.equal(same.extras["mask"], base.extras["mask"]), neutral
    for real in (dict(lr_schedule="cosine"), dict(lr_schedule="exponential", lr_gamma=0.5),
                 dict(lambda_schedule="adaptive", lambda_delta=0.1)):
        other = run_method("pixel_mask", cnn, x, t, **kw, **real)
        assert not torch.equal(other.extras["mask"], base.extras["mask"]), real
    # step 0 of the adaptive run has the same mask as the constant run: its regulariser
    # terms are δ times the constant run's, its distortion term the same
    ada = run_method("pixel_mask", cnn, x, t, **kw, lambda_schedule="adaptive",
                     lambda_delta=0.1)
    a, b = ada.extras["loss_terms"][:, 0], base.extras["loss_terms"][:, 0]
    torch.testing.assert_close(a[:, 0], b[:, 0])
    torch.testing.assert_close(a[:, 1:], 0.1 * b[:, 1:])


def test_smoothgrad_ablation(cnn, x32):
    """The gradient averaged over noisy copies: one copy equals StartGrad on that noisy image
    (the same seeded draw); the copies do not depend on the batch; more copies differ."""
    from xaipipe.explain.masks.startgrad import SMOOTHGRAD_SPREAD
    from xaipipe.explain.masks.pixel_mask import PixelMask
    from xaipipe.utils import derive_seed
    x, t = x32[:2], torch.tensor([0, 1])
    kw = dict(steps=0, init="startgrad", startgrad_ablation="smoothgrad")
    one = run_method("pixel_mask", cnn, x, t, image_ids=IDS[:2], startgrad_samples=1,
                     **kw).extras["mask"]
    meth = PixelMask(cnn, startgrad_samples=1, **kw)
    noisy = []
    for j, i in enumerate(IDS[:2].tolist()):
        eps = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(
            derive_seed(*meth.seed_parts(i, "startgrad_smoothgrad", 0))))
        noisy.append(x[j] + SMOOTHGRAD_SPREAD * (x[j].max() - x[j].min()) * eps)
    xn = torch.stack(noisy).requires_grad_(True)
    p = torch.softmax(cnn(xn), 1).gather(1, t[:, None]).sum()
    (g,) = torch.autograd.grad(p, xn)
    want = quantile_transform(g.abs().amax(1, keepdim=True), 2)
    # the same ranks up to float near-ties (a swap moves two entries by 1/(n − 1))
    diff = (one - want).abs()
    assert diff.max() <= 2 / 1023 + 1e-6 and (diff > 1e-6).float().mean() < 0.01, diff.max()
    four = run_method("pixel_mask", cnn, x, t, image_ids=IDS[:2], startgrad_samples=4,
                      **kw).extras["mask"]
    assert not torch.equal(four, one)
    alone = run_method("pixel_mask", cnn, x[1:], t[1:], image_ids=IDS[1:2],
                       startgrad_samples=4, **kw).extras["mask"]
    torch.testing.assert_close(alone[0], four[1], atol=1e-6, rtol=0)
    assert PixelMask.smoothgrad_samples == 250
    from xaipipe.explain.masks.shearletx import ShearletX
    assert ShearletX.smoothgrad_samples == 10


@pytest.mark.parametrize("name", ["shearletx", "waveletx", "cartoonx"])
@pytest.mark.parametrize("init", ["uniform", "startgrad"])
def test_transform_masks_are_batch_invariant_from_every_init(name, init, cnn, x64):
    """An image's result does not depend on its batch whatever the initial mask (the
    contract test covers ``ones``): its draws, its StartGrad gradient and its QTF are its own.
    The initial masks agree bit for bit; after steps, to the contract test's tolerance for
    optimisation methods (last-bit differences of batched kernels, carried by Adam's
    normalised steps)."""
    x = torch.cat([x64, x64.flip(-1)[:1]])                       # 3 images
    t, ids = torch.tensor([0, 1, 2]), torch.tensor([21, 22, 23])
    m0 = run_method(name, cnn, x, t, image_ids=ids, steps=0, init=init).extras["mask"]
    m0_one = run_method(name, cnn, x[1:2], t[1:2], image_ids=ids[1:2], steps=0,
                        init=init).extras["mask"]
    if init == "uniform":
        assert torch.equal(m0_one[0], m0[1])
    else:   # the gradient's last bits follow the batch's kernels: near-tied ranks may swap
        d = (m0_one[0] - m0[1]).abs()
        assert d.max() < 0.01 and (d > 1e-6).float().mean() < 0.01, (d.max(), (d > 0).sum())
    kw = dict(steps=2, samples=2, init=init, return_mask=True, history_every=1)
    batch = run_method(name, cnn, x, t, image_ids=ids, **kw)
    one = run_method(name, cnn, x[1:2], t[1:2], image_ids=ids[1:2], **kw)
    tol = 1e-4 if init == "uniform" else 1e-3      # startgrad: plus the swapped ranks' 1/(n-1)
    torch.testing.assert_close(one.extras["mask"][0], batch.extras["mask"][1], atol=tol, rtol=0)
    torch.testing.assert_close(one.maps[0], batch.maps[1], atol=tol, rtol=0)
    torch.testing.assert_close(one.extras["retained_probability"][0],
                               batch.extras["retained_probability"][1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["shearletx", "waveletx", "cartoonx", "pixel_mask",
                                  "smooth_mask"])
def test_mask_methods_explain_a_two_class_model(name, x64):
    """Any classifier: two classes, every init, a history; the masks stay in [0, 1]."""
    torch.manual_seed(5)
    two = load_model("demo_resnet18", weights="random", num_classes=2, width=4)
    t = two(x64).argmax(1)
    kw = {} if name == "smooth_mask" else {"samples": 2}
    for init in ("ones", "uniform", "startgrad"):
        att = run_method(name, two, x64, t, image_ids=[1, 2], steps=2, init=init,
                         history_every=1, return_mask=True, **kw)
        assert att.maps.shape == x64.shape and torch.isfinite(att.maps).all(), init
        m = att.extras["mask"]
        assert m.min() >= 0 and m.max() <= 1, init
        rcp = att.extras["retained_probability"]
        assert rcp.shape == (2, 2) and torch.isfinite(rcp).all() and (rcp > 0).all(), init


# -- compat startgrad: scikit-learn's QTF, PixelRDE, WaveletX, rescaling_gradient ----------
def test_sampled_qtf_matches_sklearn():
    """scikit-learn's QuantileTransformer per block, with fewer quantiles than values, with
    ties, with a subsample drawn by the block's seed; a constant block maps to 0 there."""
    from sklearn.preprocessing import QuantileTransformer
    from xaipipe.explain.masks.startgrad import sampled_quantile_transform
    g = torch.Generator().manual_seed(5)
    a = torch.randn(2, 3, 40, 50, generator=g, dtype=torch.float64).abs()
    a[0, 0, :6] = 0.25                                          # a tie group
    a[1, 2] = 0.7                                               # a constant block
    seeds = [101 + b for b in range(6)]
    for nq, sub in ((500, None), (2000, None), (300, 300), (1500, 1800)):
        got = sampled_quantile_transform(a, 2, nq, sub, seeds if sub else None)
        assert got.dtype == torch.float32 and got.shape == a.shape
        for b in range(6):
            i, j = divmod(b, 3)
            qt = QuantileTransformer(n_quantiles=nq, subsample=sub, output_distribution="uniform",
                                     random_state=np.random.RandomState(seeds[b]))
            want = qt.fit_transform(a[i, j].reshape(-1, 1).numpy()).reshape(40, 50)
            np.testing.assert_allclose(got[i, j].double().numpy(), want, atol=1e-7, rtol=0)
    assert torch.all(sampled_quantile_transform(a, 2, 500)[1, 2] == 0)
    # with as many quantiles as values it is the clean tie-averaged CDF
    torch.testing.assert_close(sampled_quantile_transform(a[:, :2], 2, 2000),
                               quantile_transform(a[:, :2], 2), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="one seed per block"):
        sampled_quantile_transform(a, 2, 100, 100)
    with pytest.raises(ValueError, match="n_quantiles"):
        sampled_quantile_transform(a, 2, 500, 100, seeds)


def test_waveletx_compat_startgrad_qtf_subsamples_only_large_blocks(cnn):
    """At 256 px the level-1 bands have 130² > 10⁴ values: the compat QTF subsamples them
    (close to, not equal to, the clean QTF; seeded per image id, so batch-invariant); the
    smaller blocks get n_quantiles = n, the clean QTF."""
    g = torch.Generator().manual_seed(8)
    x = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=256,
                                        mode="bilinear", align_corners=False)
    t = torch.tensor([0, 1])
    kw = dict(steps=0, init="startgrad", image_ids=IDS[:2])
    clean = run_method("waveletx", cnn, x, t, **kw).extras["mask"]
    compat = run_method("waveletx", cnn, x, t, compat="startgrad", **kw).extras["mask"]
    n1 = 3 * 130 * 130                          # level 1 comes right after yl (12 x 12)
    lo, hi = 144, 144 + n1
    diff = (compat - clean).abs()
    # sklearn maps a block's tied minimum (here the zero gradients of the padded border)
    # to 0, not to the ties' mean rank; elsewhere the smaller blocks agree up to a rare half
    # rank (its float percentiles of a tie group), 0.5/(67² − 1) at level 2
    rest = torch.cat([diff[:, :lo], diff[:, hi:]], 1)
    rest_c = torch.cat([compat[:, :lo], compat[:, hi:]], 1)
    assert rest[rest_c > 0].max() <= 0.5 / (67 ** 2 - 1) + 1e-6
    assert (rest[rest_c > 0] > 1e-6).float().mean() < 1e-3
    level1 = diff[:, lo:hi][compat[:, lo:hi] > 0]      # the sampling error of the CDF
    assert 1e-4 < level1.max() < 0.03, level1.max()
    alone = run_method("waveletx", cnn, x[1:], t[1:], steps=0, init="startgrad",
                       image_ids=IDS[1:2], compat="startgrad").extras["mask"]
    # the same subsample (a batch-dependent draw would move most level-1 entries); the
    # gradient's last bits follow the batch's kernels, which moves a few interpolated values
    moved = (alone[0] - compat[1]).abs()
    assert moved.max() < 2e-3 and (moved > 1e-6).float().mean() < 0.01


def test_pixel_mask_compat_startgrad_is_pixel_rde(cnn, x32):
    """PixelRDE: x̃_s = m ⊙ x̃ + (1 − m) ⊙ u_s unclipped, the luminance explanation, and a
    QTF with n_quantiles = H·W (the clean one)."""
    from xaipipe.explain.masks.pixel_mask import PixelMask
    x, t = x32[:2], torch.tensor([0, 1])
    clean = PixelMask(cnn, noise="gaussian")
    rde = PixelMask(cnn, noise="gaussian", compat="startgrad")
    state = clean.prepare(x)
    m = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    noise = [clean._noise(state, i, i, 0, s) for i in (0, 1) for s in (0, 1)]
    got = rde._obfuscate(state, [m], [0, 0, 1, 1], noise)
    want = torch.stack([m[i] * x[i] + (1 - m[i]) * noise[2 * i + s][0]
                        for i in (0, 1) for s in (0, 1)])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert got.min() < 0 or got.max() > 1                      # not clipped
    torch.testing.assert_close(clean._obfuscate(state, [m], [0, 0, 1, 1], noise),
                               want.clamp(0, 1), atol=1e-6, rtol=0)
    att = run_method("pixel_mask", cnn, x, t, steps=0, compat="startgrad")
    lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(att.maps, lum[:, None].expand(-1, 3, -1, -1))
    kw = dict(steps=0, init="startgrad")
    sk = run_method("pixel_mask", cnn, x, t, compat="startgrad", **kw).extras["mask"]
    exact = run_method("pixel_mask", cnn, x, t, **kw).extras["mask"]
    # equal but for the tied minimum (zero gradients of dead ReLUs), 0 in sklearn's QTF
    inner = sk > 0
    assert inner.float().mean() > 0.5
    torch.testing.assert_close(sk[inner], exact[inner], atol=1e-6, rtol=0)
    for j in range(2):                          # one tie group per image, the lowest
        lowest = exact[j][~inner[j]]
        assert torch.all(lowest == lowest[0]) and lowest[0] < exact[j][inner[j]].min()
    # an option added later leaves the draws of the runs without it as they were
    assert "compat" not in clean.seed_parts(1)[3] and "compat" in rde.seed_parts(1)[3]


def test_pixel_mask_rescaling_gradient_uses_the_models_sigma(x32):
    """StartGrad's pixel mask with rescaling_gradient: QTF of max_c |∂log p_c/∂x̃_c · σ_c|,
    σ the model's own normalisation."""
    from xaipipe.models import NormalizedModel
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 3))
    sigma = (0.5, 0.05, 0.2)
    model = NormalizedModel(net, std=sigma).eval()
    x, t = x32[:2], torch.tensor([0, 2])
    kw = dict(steps=0, init="startgrad")
    got = run_method("pixel_mask", model, x, t, rescaling_gradient=True, **kw).extras["mask"]
    plain = run_method("pixel_mask", model, x, t, **kw).extras["mask"]
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.log_softmax(model(xg), 1).gather(1, t[:, None]).sum(), xg)
    want = quantile_transform((g * torch.tensor(sigma).view(1, 3, 1, 1)).abs().amax(1), 2)
    assert (got[:, 0] - want).abs().max() <= 2 / 1023 + 1e-6
    assert (got[:, 0] != want).float().mean() < 0.01
    assert (got - plain).abs().max() > 0.1


def test_waveletx_compat_startgrad_spatial_term_reads_rgb(cnn, x64):
    """compat startgrad: λ_2·mean|clip(IDWT(m ⊙ y_RGB))| over the 3 channels (the repository's
    compression='pixel'), not the gray reconstruction's."""
    from xaipipe.explain.masks.waveletx import WaveletX
    from xaipipe.transforms import WaveletTransform
    meth = WaveletX(cnn, compat="startgrad", lambda_2=3.0, lambda_3=1.0)
    state = meth.prepare(x64)
    g = torch.Generator().manual_seed(4)
    masks = [torch.rand(2, 1, *c.shape[2:], generator=g) for c in state.coeffs]
    regs = meth.regularizers(state, masks)
    tr = WaveletTransform()
    yl, yh = tr.decompose(x64)
    rgb = tr.reconstruct((masks[0] * yl, [m * y for m, y in zip(masks[1:], yh)]))
    want = 3.0 * rgb[..., :64, :64].clamp(0, 1).abs().flatten(1).mean(1)
    torch.testing.assert_close(regs[1], want, atol=1e-6, rtol=1e-6)
    rms = rgb[..., :64, :64].clamp(0, 1).pow(2).flatten(1).mean(1).sqrt()
    torch.testing.assert_close(regs[2], rms, atol=1e-6, rtol=1e-6)
    # the gray image's RMS is smaller than its channels' (a mean of colours)
    clean = WaveletX(cnn, lambda_2=3.0, lambda_3=1.0).regularizers(state, masks)
    assert torch.all(regs[2] - clean[2] > 1e-3), (regs[2], clean[2])


def test_shearletx_compat_startgrad_qtf_is_sklearns_with_1e4_quantiles(cnn):
    """At 256 px a band has 65,536 values: the repository's QuantileTransformer(n_quantiles=
    10⁴, subsample=None) per band (scikit-learn itself as the oracle on two bands), close to
    but not the exact CDF of the clean run."""
    from sklearn.preprocessing import QuantileTransformer
    from xaipipe.explain.masks.shearletx import ShearletX
    g = torch.Generator().manual_seed(9)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=256,
                                        mode="bilinear", align_corners=False)
    t = torch.tensor([1])
    meth = ShearletX(cnn, init="startgrad", compat="startgrad")
    state = meth.prepare(x)
    got = meth.startgrad_masks(state, t, [5])[0]                    # (1, 1, 49, 256, 256)
    a = meth._coefficient_gradients(state, t)[0].abs().amax(1)      # (1, 49, 256, 256)
    for k in (0, 48):
        want = QuantileTransformer(n_quantiles=10_000, subsample=None).fit_transform(
            a[0, k].double().reshape(-1, 1).numpy()).reshape(256, 256)
        np.testing.assert_allclose(got[0, 0, k].double().numpy(), want, atol=1e-6, rtol=0)
    clean = ShearletX(cnn, init="startgrad").startgrad_masks(state, t, [5])[0]
    d = (got - clean).abs()
    assert 1e-6 < d.max() < 1e-3


def test_a_mask_gone_to_zero_has_undefined_cp_and_the_metric_keeps_it(cnn, x32):
    """λ_1 = 100 drives the pixel mask to zero within a few steps: from then on every CP of
    the histories is NaN (zero retained information), not inf; the convergence metric passes
    the NaN with the image flagged, and turns an old store's inf there into NaN too; a NaN
    retained probability (a broken model) is still an error."""
    from xaipipe.errors import NonFiniteError
    from xaipipe.metrics.convergence import convergence
    x, t = x32[:2], torch.tensor([0, 1])
    ex = run_method("pixel_mask", cnn, x, t, image_ids=IDS[:2], steps=16, samples=2,
                    history_every=1, lambda_1=100.0).extras
    zero = ex["retained_l1"] == 0
    assert zero[:, -1].all() and not zero[:, 0].any()
    for k in ("cp_l1", "cp_pixel", "cp_entropy", "clean_cp_l1", "clean_cp_l1_pixel",
              "clean_cp_entropy"):
        assert torch.isnan(ex[k][zero]).all(), k
        assert torch.isfinite(ex[k][~zero]).all(), k
    out = convergence(ex)
    assert out["undefined_cp"].all() and out["undefined_final_cp_l1"].all()
    assert np.isnan(out["final_cp_l1"]).all()
    np.testing.assert_array_equal(np.isnan(out["cp_l1"]), zero.numpy())
    old = {k: v.clone() for k, v in ex.items()}
    old["cp_l1"][zero] = float("inf")                   # what older stores hold
    np.testing.assert_array_equal(np.isnan(convergence(old)["cp_l1"]), zero.numpy())
    broken = {k: v.clone() for k, v in ex.items()}
    broken["retained_probability"][0, 3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"\[0\]"):
        convergence(broken)


def test_convergence_takes_a_methods_extras_as_tensors_of_any_kind(cnn, x32):
    """`convergence(run_method(...).extras)` copies tensor extras to the host: the smooth
    mask keeps its histories on the images' device (a CUDA tensor has no .numpy()), and
    mixed precision can give bfloat16, which NumPy lacks; the curves equal the float32
    NumPy extras' (to bfloat16's rounding)."""
    from xaipipe.metrics.convergence import convergence
    x, t = x32[:2], torch.tensor([0, 1])
    ex = run_method("smooth_mask", cnn, x, t, image_ids=IDS[:2], steps=4, levels=2,
                    history_every=2).extras
    ref = convergence({k: v.numpy() for k, v in ex.items()})
    for extras in (ex, {k: v.to(torch.bfloat16) for k, v in ex.items()}):
        out = convergence(extras)
        np.testing.assert_allclose(out["final_retained_probability"],
                                   ref["final_retained_probability"], rtol=1e-2)
    if torch.cuda.is_available():
        cuda = run_method("smooth_mask", cnn.cuda(), x.cuda(), t.cuda(), image_ids=IDS[:2],
                          steps=4, levels=2, history_every=2).extras
        cnn.cpu()
        assert convergence(cuda)["final_retained_probability"].shape == (2,)
