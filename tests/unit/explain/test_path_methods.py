"""IDGI, Blur IG and step sweeps (`attribution-methods.md` §4.2, §10, §11; issue: the IDGI
reproducibility study). Guided IG has its own file (test_guided_ig.py)."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from helpers.pair_oracle import pair_saliency
from xaipipe.explain import explain, explain_sweep, get_method, run_method
from xaipipe.explain.paths.idgi import IDGIAccumulator, idgi
from xaipipe.maths.objectives import objective
from xaipipe.explain.paths.integration import Grid, nested_grids
from xaipipe.maths.imageops import gaussian_blur, gaussian_blur_zero

STEPS = [8, 16, 32]


def f(model, x, t, obj):
    with torch.no_grad():
        return objective(model(x), t, obj).double()


@pytest.fixture
def x32():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))


# -- IDGI core ---------------------------------------------------------------------------------
def test_idgi_core_is_complete_and_sign_follows_output_change():
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(2, 5, 3, 4, 4, generator=g, dtype=torch.float64)
    outs = torch.randn(2, 6, generator=g, dtype=torch.float64)
    phi, gap = idgi(grads, outs)
    assert torch.allclose(phi.flatten(1).sum(1), outs[:, -1] - outs[:, 0], rtol=1e-10)
    assert gap.abs().max() < 1e-10
    # one segment: φ = d_0 g_0² / ‖g_0‖², every entry with the sign of d_0
    phi1, _ = idgi(grads[:, :1], outs[:, :2])
    d = (outs[:, 1] - outs[:, 0]).view(-1, 1, 1, 1)
    expect = d * grads[:, 0] ** 2 / (grads[:, 0] ** 2).flatten(1).sum(1).view(-1, 1, 1, 1)
    assert torch.allclose(phi1, expect, rtol=1e-12)
    assert torch.all(phi1 * d >= 0)


def test_idgi_zero_gradient_segment_goes_to_the_gap():
    grads = torch.ones(1, 3, 1, 2, 2)
    grads[0, 1] = 0
    outs = torch.tensor([[0.0, 1.0, 3.0, 6.0]])
    phi, gap = idgi(grads, outs)
    assert phi.sum().item() == pytest.approx(4.0)          # segments 0 and 2
    assert gap.item() == pytest.approx(-2.0)                # segment 1's d went missing


def test_idgi_accumulator_equals_batch_formula_and_checks_order():
    g = torch.Generator().manual_seed(1)
    grads = torch.randn(2, 4, 1, 3, 3, generator=g)
    outs = torch.randn(2, 5, generator=g)
    acc = IDGIAccumulator(2, (1, 3, 3), 4, "cpu")
    for j in range(5):   # interleave images, points in order per image
        for i in (1, 0):
            gj = grads[i, j] if j < 4 else torch.zeros(1, 3, 3)
            acc.feed(torch.tensor([i]), torch.tensor([j]), gj[None], outs[i, j:j + 1])
    phi, f0, fm, skipped = acc.result()
    ref, _ = idgi(grads, outs)
    assert torch.allclose(phi, ref, atol=1e-6)
    assert torch.equal(f0, outs[:, 0].double()) and skipped.abs().max() == 0
    bad = IDGIAccumulator(1, (1, 3, 3), 4, "cpu")
    with pytest.raises(RuntimeError, match="point 2 fed, 0 expected"):
        bad.feed(torch.tensor([0]), torch.tensor([2]), grads[0, :1], outs[0, :1])


def test_idgi_on_linear_model_has_the_closed_form(linear_model):
    """f = w·x̃ + b on a straight path: φ = w²·(w·(x̃ − x̃′))/‖w‖² for any m."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 2])
    w = (linear_model.net.fc.weight.detach()[t].view(2, 3, 8, 8)
         / linear_model.normalize.std)                      # ∂z/∂x̃ through the normalisation
    expect = w ** 2 * (w * x).flatten(1).sum(1).view(-1, 1, 1, 1) \
        / (w ** 2).flatten(1).sum(1).view(-1, 1, 1, 1)
    for m in (1, 3, 16):
        phi = explain("integrated_gradients", linear_model, x, t, steps=m, idgi=True)
        assert torch.allclose(phi, expect, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name,kw", [("integrated_gradients", {}),
                                     ("blur_ig", {"max_sigma": 8.0}),
                                     ("integrated_gradients", {"compat": "tmlr"}),
                                     ("blur_ig", {"max_sigma": 8.0, "compat": "tmlr"})])
@pytest.mark.parametrize("obj", ["prob", "logit"])
def test_idgi_is_complete_on_every_path(cnn, x32, name, kw, obj):
    """Σφ = f(path end) − f(path start) to float error (clean: the input and the baseline,
    the most blurred image for Blur IG; ``compat="tmlr"`` with one step count M: IG's
    α_j = j/(M−1) reaches the input, Blur IG's σ_i = i·σ_max/M stops at σ_max·(M−1)/M).
    The ends are scored here, independently of the method's own diagnostics."""
    t = torch.tensor([0, 1, 3])
    for steps in (4, 16):
        out = run_method(name, cnn, x32, t, steps=steps, idgi=True, objective=obj, **kw)
        total = out.maps.double().flatten(1).sum(1)
        scale = out.maps.double().abs().flatten(1).sum(1)
        if kw.get("compat") == "tmlr":
            start = (gaussian_blur(x32.double(), 8.0 * (steps - 1) / steps).float()
                     if name == "blur_ig" else torch.zeros_like(x32))
            diff = f(cnn, x32, t, obj) - f(cnn, start, t, obj)
            assert torch.allclose(total, diff, rtol=1e-5, atol=1e-6 * float(scale.max())), \
                (total, diff)
            assert torch.allclose(out.extras["f_input"].double(), f(cnn, x32, t, obj),
                                  atol=1e-6)
            continue   # the sub-paths of a sweep end short of the input (tested below)
        diff = (out.extras["f_input"] - out.extras["f_baseline"]).double()
        assert torch.allclose(total, diff, rtol=1e-5, atol=1e-6 * float(scale.max())), \
            (total, diff)
        if name == "blur_ig":
            far = gaussian_blur(x32, 8.0)
            assert torch.allclose(out.extras["f_baseline"].double(), f(cnn, far, t, obj),
                                  atol=1e-6)
        assert torch.allclose(out.extras["f_input"].double(), f(cnn, x32, t, obj), atol=1e-6)


def normalized_grads(model, pts, t, obj):
    """(σ_c ⊙ ∇_pixel f, f) at ``pts``: the gradient w.r.t. the normalised input."""
    pts = pts.clone().requires_grad_(True)
    out = objective(model(pts), t, obj)
    (g,) = torch.autograd.grad(out.sum(), pts)
    return g * model.normalize.std.view(1, -1, 1, 1), out.detach().double()


def idgi_by_hand(grads, outs):
    """φ = Σ_j d_j · g_j² / ‖g_j‖² over lists of per-segment gradients and the outputs at the
    segment ends (Yang et al. 2023, ``yangruo1226/IDGI:idgi.py``), in float64."""
    phi = 0
    for j, g in enumerate(grads):
        g = g.double()
        d = (outs[j + 1] - outs[j]).view(-1, 1, 1, 1)
        phi = phi + d * g ** 2 / (g ** 2).flatten(1).sum(1).view(-1, 1, 1, 1)
    return phi


@pytest.mark.parametrize("obj", ["prob", "logit"])
def test_tmlr_idgi_subpaths_follow_the_tmlr_formula(cnn, x32, obj):
    """``compat="tmlr"`` (``ShreeSinghi/TMLR-IDGI:ig.py``, ``blurig.py``) recomputed by hand
    for a sweep of M = 16 points and its n = 4 sub-path (s = 4) and n = 16:

    - IG: points α = 0, s, …, (n−1)s over M − 1 (black baseline), the gradient (w.r.t. the
      normalised input) at the baseline end of each segment; Σφ = f(α_end·x̃) − f(0).
    - Blur IG: σ = i·σ_max/M for i = 0, s, …, (n−1)s, the gradient at the less blurred end;
      Σφ = f(x̃) − f(G_σ_end * x̃).
    """
    t = torch.tensor([0, 1, 3])
    m, sig_max = 16, 8.0
    ig = explain_sweep("integrated_gradients", cnn, x32, t, steps=[4, m], idgi=True,
                       objective=obj, compat="tmlr")
    blur = explain_sweep("blur_ig", cnn, x32, t, steps=[4, m], idgi=True, objective=obj,
                         compat="tmlr", max_sigma=sig_max)
    for n in (4, m):
        s = m // n
        # IG, baseline → input
        pts = [(j * s / (m - 1)) * x32 for j in range(n)]
        gf = [normalized_grads(cnn, p, t, obj) for p in pts]
        expect = idgi_by_hand([g for g, _ in gf[:-1]], [o for _, o in gf])
        assert torch.allclose(ig[n].double(), expect, rtol=1e-4,
                              atol=1e-5 * float(expect.abs().max())), n
        l1 = float(expect.abs().flatten(1).sum(1).max())
        assert torch.allclose(ig[n].double().flatten(1).sum(1), gf[-1][1] - gf[0][1],
                              rtol=1e-5, atol=1e-6 * l1)
        # Blur IG, baseline (most blurred) → input, σ indices (n−1)s, …, s, 0
        sigmas = [i * sig_max / m for i in range(0, m, s)][::-1]
        pts = [gaussian_blur(x32.double(), sg).float() for sg in sigmas]
        gf = [normalized_grads(cnn, p, t, obj) for p in pts]
        expect = idgi_by_hand([g for g, _ in gf[1:]], [o for _, o in gf])
        assert torch.allclose(blur[n].double(), expect, rtol=1e-4,
                              atol=1e-5 * float(expect.abs().max())), n
        l1 = float(expect.abs().flatten(1).sum(1).max())
        assert torch.allclose(blur[n].double().flatten(1).sum(1), gf[-1][1] - gf[0][1],
                              rtol=1e-5, atol=1e-6 * l1)


def test_idgi_uniform_scaling_invariant_per_channel_changes_map_not_sum(cnn, x32):
    t = torch.tensor([0, 1, 2])
    a = run_method("integrated_gradients", cnn, x32, t, steps=8, idgi=True)
    b = run_method("integrated_gradients", cnn, x32, t, steps=8, idgi=True,
                   idgi_space="normalized")
    assert not torch.allclose(a.maps, b.maps)               # per-channel weights σ_c²
    assert torch.allclose(a.maps.sum((1, 2, 3)), b.maps.sum((1, 2, 3)), atol=1e-6)


# -- Blur IG -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.5, 2.0, 7.3])
def test_blurs_match_torchvision_and_scipy(sigma):
    from scipy import ndimage
    x = torch.rand(2, 3, 40, 48, dtype=torch.float64)
    k = 2 * int(round(4 * sigma)) + 1
    assert torch.allclose(gaussian_blur(x, sigma), TF.gaussian_blur(x, [k, k], [sigma, sigma]),
                          atol=1e-12)
    ref = ndimage.gaussian_filter(x.numpy(), sigma=[0, 0, sigma, sigma], mode="constant")
    assert np.allclose(gaussian_blur_zero(x, sigma).numpy(), ref, atol=1e-12)
    assert gaussian_blur(x, 0.0) is x and gaussian_blur_zero(x, 0.0) is x


def test_blur_ig_basics(cnn, x32):
    t = torch.tensor([0, 1, 2])
    const = torch.full((2, 3, 32, 32), 0.3)
    # reflect padding keeps a constant image constant: φ = 0 up to float32 rounding of the
    # kernel, amplified by 1/h in ∂x/∂σ
    scale = explain("blur_ig", cnn, x32, 0, steps=8).abs().max()
    assert explain("blur_ig", cnn, const, 0, steps=8).abs().max() < 1e-3 * scale
    tiny = explain("blur_ig", cnn, x32, t, steps=8, max_sigma=1e-3)
    assert tiny.abs().max() == 0                 # σ_max -> 0: a one-tap kernel, no path
    out = run_method("blur_ig", cnn, x32, t, steps=8, max_sigma=6.0)
    # σ = 0 is the input: the path's input end is scored on x̃ itself
    assert torch.equal(out.extras["f_input"], f(cnn, x32, t, "logit").float())
    gaps = [run_method("blur_ig", cnn, x32, t, steps=m, max_sigma=6.0, grad_step=1e-3)
            .extras["completeness_gap"].abs().mean().item() for m in (2, 8, 64)]
    assert gaps[0] > gaps[1] > gaps[2]


def test_blur_ig_matches_pair_blur_ig(cnn):
    """PAIR ``BlurIG`` (scipy zero-padded blur, gradient at the less blurred end) against
    ``compat="pair"`` on the same model, objective and settings."""
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([1, 2])
    ours = explain("blur_ig", cnn, x, t, steps=10, max_sigma=6.0, grad_step=0.01,
                   objective="prob", compat="pair")
    with pair_saliency() as (core, _):
        for i in range(len(x)):
            def call(batch, call_model_args=None, expected_keys=None):
                pts = torch.as_tensor(np.asarray(batch), dtype=torch.float32).permute(0, 3, 1, 2)
                pts.requires_grad_(True)
                fx = objective(cnn(pts), t[i].expand(len(pts)), "prob").sum()
                (g,) = torch.autograd.grad(fx, pts)
                return {core.base.INPUT_OUTPUT_GRADIENTS: g.permute(0, 2, 3, 1).numpy()}
            ref = core.BlurIG().GetMask(x[i].permute(1, 2, 0).double().numpy(), call,
                                        max_sigma=6.0, steps=10, grad_step=0.01)
            a, b = ours[i].sum(0).numpy(), ref.sum(-1)
            assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b), \
                np.linalg.norm(a - b) / np.linalg.norm(b)


# -- step sweeps -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", [
    ("integrated_gradients", {"rule": "trapezoid"}), ("integrated_gradients", {"idgi": True}),
    ("blur_ig", {"max_sigma": 5.0}), ("blur_ig", {"max_sigma": 5.0, "idgi": True})])
def test_sweep_store_equals_separate_run(cnn, x32, name, kw):
    """A sweep's n-step maps equal a separate n-step run: exactly with one point per chunk
    (the same kernels on the same points), and to float error with the default chunks (the
    backend's kernels may change the last bits with a chunk's composition). Not under
    ``compat="tmlr"``, whose n-step sub-path is taken from the M-point path by design (its
    α grid is j/(M−1), so it depends on M)."""
    t = torch.tensor([0, 1, 2])
    sweep = explain_sweep(name, cnn, x32, t, steps=STEPS, max_batch=1, return_extras=True,
                          **kw)
    assert sorted(sweep) == STEPS
    for n in STEPS:
        alone = run_method(name, cnn, x32, t, steps=n, max_batch=1, **kw)
        assert torch.equal(sweep[n].maps, alone.maps), n
        assert torch.equal(sweep[n].extras["completeness_gap"], alone.extras["completeness_gap"])
    default = explain_sweep(name, cnn, x32, t, steps=STEPS, **kw)
    alone = explain(name, cnn, x32, t, steps=32, **kw)
    assert torch.allclose(default[32], alone, rtol=1e-5, atol=1e-6 * float(alone.abs().max()))


def test_sweep_gap_shrinks_and_clean_subpaths_reach_the_input(smooth_cnn, x32):
    t = torch.tensor([0, 1, 2])
    res = explain_sweep("integrated_gradients", smooth_cnn, x32, t, steps=[2, 8, 32],
                        rule="right", return_extras=True)
    gaps = [res[n].extras["completeness_gap"].abs().mean().item() for n in (2, 8, 32)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert all(torch.equal(res[n].extras["f_input"], res[32].extras["f_input"]) for n in res)


def test_tmlr_subpaths_stop_short():
    """compat tmlr: M points α_j = j/(M−1); the n-step sub-path ends at α = (n−1)s/(M−1)."""
    cls = get_method("integrated_gradients")
    alg = cls(torch.nn.Identity(), compat="tmlr", idgi=True)
    alphas, grids = alg._grids([8, 16, 128])
    assert len(alphas) == 128 and alphas[-1] == 1
    for n, g in grids.items():
        s = 128 // n
        assert g.idx == list(range(0, 128, s))
        assert float(alphas[g.idx[-1]]) == pytest.approx((n - 1) * s / 127)
    assert float(alphas[grids[8].idx[-1]]) == pytest.approx(112 / 127)


def test_non_nested_sweeps_fall_back_to_separate_runs(cnn, x32):
    with pytest.raises(ValueError, match=r"\[12\] do not divide 16"):
        nested_grids([12, 16])
    t = torch.tensor([0, 1, 2])
    assert not get_method("integrated_gradients").shares_path({"rule": "middle"}, [4, 8])
    sweep = explain_sweep("integrated_gradients", cnn, x32, t, steps=[3, 4], rule="middle")
    assert torch.equal(sweep[3], explain("integrated_gradients", cnn, x32, t, steps=3,
                                         rule="middle"))


def test_grid_gradient_needs():
    g = Grid([0, 2, 4], {2: 0.5, 4: 0.5}, "baseline_side")
    assert [g.needs_grad(j) for j in range(5)] == [True, False, True, False, True]
    g = Grid([0, 2, 4], None, "input_side")
    assert [g.needs_grad(j) for j in (0, 2, 4)] == [False, True, True]


def test_random_control_differs_across_variants_but_not_batches(cnn, x32):
    t = torch.tensor([0, 1, 2])
    ids = torch.tensor([5, 6, 7])
    a = explain("random", cnn, x32, t, image_ids=ids)
    assert torch.equal(a[1:], explain("random", cnn, x32[1:], t[1:], image_ids=ids[1:]))
    jpeg_like = (x32 * 255).round() / 255
    assert not torch.equal(a, explain("random", cnn, jpeg_like, t, image_ids=ids))
    b = explain("random", cnn, jpeg_like, t, image_ids=ids, seed_by="id")
    assert torch.equal(b, explain("random", cnn, x32, t, image_ids=ids, seed_by="id"))
