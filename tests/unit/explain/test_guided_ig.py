"""Guided IG (`attribution-methods.md` §9) and IDGI on its path (§11), with PAIR's
``GuidedIG`` as the oracle (§12)."""
import copy

import numpy as np
import pytest
import torch

from helpers.pair_oracle import pair_saliency
from xaipipe.explain import explain, get_method, run_method
from xaipipe.explain.base import gradient
from xaipipe.explain.paths.guided_ig import guided_step
from xaipipe.maths.objectives import objective


@pytest.fixture
def x16():
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def path_points(model, x, t, steps, fraction, max_dist, grad_space="pixel", eps=1e-9):
    """The step starts x_c(0..S−1) and the end point of one image's Guided IG path, replayed
    with the method's own step function."""
    x_in, x_base = x.double(), torch.zeros_like(x, dtype=torch.float64)
    cur, starts = x_base.clone(), []
    for s in range(steps):
        starts.append(cur.clone())
        g, _ = gradient(model, cur[None].float(), t.view(1), "prob", grad_space)
        guided_step(cur, x_in, x_base, g[0].double(), s, steps, fraction, max_dist, eps)
    return starts, cur


@pytest.mark.parametrize("fraction,max_dist", [(0.5, 1.0), (0.25, 0.02)])
def test_matches_pair_guided_ig(cnn, x16, fraction, max_dist):
    t = torch.tensor([1, 2])
    ours = explain("guided_ig", cnn, x16, t, steps=12, fraction=fraction, max_dist=max_dist,
                   objective="prob")
    with pair_saliency() as (core, _):
        for i in range(len(x16)):
            def call(batch, call_model_args=None, expected_keys=None):
                pts = torch.as_tensor(np.asarray(batch), dtype=torch.float32)
                pts = pts.permute(0, 3, 1, 2).requires_grad_(True)
                f = objective(cnn(pts), t[i].expand(len(pts)), "prob").sum()
                (g,) = torch.autograd.grad(f, pts)
                return {core.base.INPUT_OUTPUT_GRADIENTS: g.permute(0, 2, 3, 1).numpy()}
            ref = core.GuidedIG().GetMask(x16[i].permute(1, 2, 0).double().numpy(), call,
                                          x_steps=12, x_baseline=np.zeros((16, 16, 3)),
                                          fraction=fraction, max_dist=max_dist)
            a = ours[i].permute(1, 2, 0).double().numpy()
            assert np.linalg.norm(a - ref) <= 1e-5 * np.linalg.norm(ref)


def pair_guided_ig(model, x, t, steps, fraction, max_dist, obj, dtype=torch.float64):
    """PAIR ``GuidedIG`` on one image ``x`` (C, H, W; float64) with a callback that runs
    ``model`` on each point in ``dtype`` (NCHW, contiguous). Returns PAIR's map (C, H, W), the
    IDGI map over the points PAIR evaluated (its S step starts, in call order) plus x̃, computed
    here as ``yangruo1226/IDGI:idgi.py`` does (φ = Σ_j (f_{j+1} − f_j) g_j² / ‖g_j‖², g_j at the
    step start), and the S evaluated points (S, C, H, W)."""
    pts, grads, outs = [], [], []
    with pair_saliency() as (core, _):
        def call(batch, call_model_args=None, expected_keys=None):
            p = torch.from_numpy(np.asarray(batch)).permute(0, 3, 1, 2).contiguous()
            p = p.to(dtype).requires_grad_(True)
            f = objective(model(p), t.expand(len(p)), obj)
            (g,) = torch.autograd.grad(f.sum(), p)
            pts.append(p.detach()[0].double())
            grads.append(g[0].double().numpy())
            outs.append(float(f.detach()[0]))
            return {core.base.INPUT_OUTPUT_GRADIENTS: g.permute(0, 2, 3, 1).numpy()}
        ref = core.GuidedIG().GetMask(x.permute(1, 2, 0).double().numpy(), call,
                                      x_steps=steps, x_baseline=np.zeros(x.permute(1, 2, 0).shape),
                                      fraction=fraction, max_dist=max_dist)
    assert len(pts) == steps                     # one gradient per step
    with torch.no_grad():
        outs.append(float(objective(model(x[None].to(dtype)), t.view(1), obj)[0]))
    phi = sum((outs[j + 1] - outs[j]) * g ** 2 / (g ** 2).sum() for j, g in enumerate(grads))
    return (torch.from_numpy(ref).permute(2, 0, 1), torch.from_numpy(phi),
            torch.stack(pts))


def max_rel(a, ref):
    """max |a − ref| over the map, relative to the reference map's max |ref|."""
    return float((a.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("model_name,obj,steps,fraction,max_dist", [
    ("smooth_cnn", "prob", 128, 0.5, 1.0),       # the TMLR preset
    ("smooth_cnn", "prob", 128, 0.25, 0.02),     # PAIR's fraction and max_dist
    ("smooth_cnn", "prob", 16, 0.25, 1.0),
    ("cnn", "prob", 128, 0.5, 1.0),
    ("cnn", "logit", 32, 0.25, 0.02),
    ("linear_model", "prob", 128, 0.25, 0.02),
    ("linear_model", "prob", 64, 0.5, 1.0),
])
def test_matches_pair_guided_ig_and_idgi_in_float64(request, model_name, obj, steps, fraction,
                                                    max_dist):
    """With a float64 model, Guided IG and IDGI on its path agree with PAIR's ``GuidedIG`` (and
    IDGI over the points its callback evaluated) to 1e-6 of the map's max |φ| (max abs
    difference relative to the reference map's max abs), both images of a chunk stepping
    together. The methods take float32 images (``run`` casts them), so the inputs are float32
    values, given to PAIR in float64. The model is given each path point unrounded, as PAIR's
    callback is: the points agree to 1e-12 (a float32 cast of them would be 2⁻²⁴ off)."""
    model = copy.deepcopy(request.getfixturevalue(model_name)).double()
    shape = (2, 3, 8, 8) if model_name == "linear_model" else (2, 3, 16, 16)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(steps))
    t = torch.tensor([1, 2])
    seen = []
    hook = model.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().clone()) if args[0].requires_grad else None)
    kw = dict(steps=steps, fraction=fraction, max_dist=max_dist, objective=obj)
    try:
        ours = run_method("guided_ig", model, x, t, **kw).maps
        ours_idgi = run_method("guided_ig", model, x, t, idgi=True, **kw).maps
    finally:
        hook.remove()
    assert len(seen) == 2 * steps
    for i in range(2):
        ref, ref_idgi, ref_pts = pair_guided_ig(model, x[i].double(), t[i], steps, fraction,
                                                max_dist, obj)
        pts = torch.stack([p[i] for p in seen[:steps]]).double()
        assert (pts - ref_pts).abs().max() <= 1e-12
        assert max_rel(ours[i], ref) <= 1e-6, max_rel(ours[i], ref)
        assert max_rel(ours_idgi[i], ref_idgi) <= 1e-6, max_rel(ours_idgi[i], ref_idgi)


def test_matches_pair_with_float64_inputs(smooth_cnn):
    """Float64 inputs (not float32 values) through the method's ``attribute`` with a float64
    model: the path is PAIR's to float64 rounding (1e-10 of max |φ|), Guided IG and IDGI."""
    model = copy.deepcopy(smooth_cnn).double()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = torch.tensor([0, 3])
    for fraction, max_dist in [(0.5, 1.0), (0.25, 0.02)]:
        kw = dict(steps=64, fraction=fraction, max_dist=max_dist, objective="prob")
        ours = get_method("guided_ig")(model, **kw).attribute(x, t, torch.arange(2)).maps
        ours_idgi = get_method("guided_ig")(model, idgi=True, **kw).attribute(
            x, t, torch.arange(2)).maps
        assert ours.dtype == torch.float64
        for i in range(2):
            ref, ref_idgi, _ = pair_guided_ig(model, x[i], t[i], 64, fraction, max_dist, "prob")
            assert max_rel(ours[i], ref) <= 1e-10, max_rel(ours[i], ref)
            assert max_rel(ours_idgi[i], ref_idgi) <= 1e-10, max_rel(ours_idgi[i], ref_idgi)


def test_matches_pair_in_float32_with_the_same_evaluations(cnn):
    """Float32 at the TMLR preset on 32x32 images: Guided IG amplifies last-bit differences of
    the float32 gradient (the selection at the |g| quantile is discontinuous), so it matches
    PAIR only where both take bitwise the same gradients: one image per forward (``max_batch=1``;
    PAIR's callback gets one image), NCHW contiguous. Then the maps agree to float32 output
    rounding (1e-6 of max |φ|; measured 3e-8). The first image computed in a chunk of two
    instead is 0.27 of max |φ| off (see the module docstring of ``guided_ig``)."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1, 2])
    kw = dict(steps=128, fraction=0.5, max_dist=1.0, objective="prob")
    ours = run_method("guided_ig", cnn, x, t, max_batch=1, **kw).maps
    ours_idgi = run_method("guided_ig", cnn, x, t, max_batch=1, idgi=True, **kw).maps
    for i in range(2):
        ref, ref_idgi, _ = pair_guided_ig(cnn, x[i].double(), t[i], 128, 0.5, 1.0, "prob",
                                          torch.float32)
        assert max_rel(ours[i], ref) <= 1e-6, max_rel(ours[i], ref)
        assert max_rel(ours_idgi[i], ref_idgi) <= 1e-6, max_rel(ours_idgi[i], ref_idgi)


def test_path_ends_at_the_input_and_moves_within_max_dist(cnn, x16):
    t = torch.tensor(1)
    starts, end = path_points(cnn, x16[0], t, steps=8, fraction=0.25, max_dist=0.1)
    assert torch.equal(end, x16[0].double())
    for s, p in enumerate(starts):          # every feature within max_dist of the line
        alpha = s / 8
        pos = p / x16[0].double()
        assert pos.min() >= max(alpha - 0.1, 0) - 1e-12
    assert torch.equal(starts[0], torch.zeros_like(end))


@pytest.mark.parametrize("obj", ["prob", "logit"])
def test_idgi_is_complete_and_plain_gap_shrinks(smooth_cnn, x16, obj):
    t = torch.tensor([0, 3])
    out = run_method("guided_ig", smooth_cnn, x16, t, steps=16, fraction=0.5, max_dist=1.0,
                     objective=obj, idgi=True)
    diff = (out.extras["f_input"] - out.extras["f_baseline"]).double()
    assert torch.allclose(out.maps.double().sum((1, 2, 3)), diff, rtol=1e-5, atol=1e-7)
    gaps = [run_method("guided_ig", smooth_cnn, x16, t, steps=m, objective=obj)
            .extras["completeness_gap"].abs().mean().item() for m in (2, 8, 32)]
    assert gaps[0] > gaps[2]


def test_fraction_one_unbounded_is_ig_left(cnn, x16):
    """fraction = 1, max_dist = 1: every feature moves proportionally, the straight line."""
    t = torch.tensor([0, 2])
    gig = explain("guided_ig", cnn, x16, t, steps=6, fraction=1.0, max_dist=1.0)
    ig = explain("integrated_gradients", cnn, x16, t, steps=6, rule="left")
    assert torch.allclose(gig, ig, rtol=1e-4, atol=1e-6 * float(ig.abs().max()))


def test_tmlr_idgi_gap_is_the_skipped_last_segment(cnn, x16):
    t = torch.tensor([1, 3])
    out = run_method("guided_ig", cnn, x16, t, steps=6, fraction=0.5, max_dist=1.0,
                     objective="prob", idgi=True, compat="tmlr")
    for i in range(2):
        starts, _ = path_points(cnn, x16[i], t[i], 6, 0.5, 1.0, "normalized", 1e-7)
        with torch.no_grad():
            f_last = objective(cnn(starts[-1][None].float()), t[i].view(1), "prob")
            f_x = objective(cnn(x16[i][None]), t[i].view(1), "prob")
        assert out.extras["completeness_gap"][i].item() == pytest.approx(
            (f_last - f_x).item(), abs=1e-6)


def test_batch_and_budget_invariance(cnn, x16):
    t = torch.tensor([0, 1])
    ids = torch.tensor([3, 4])
    a = explain("guided_ig", cnn, x16, t, steps=5, image_ids=ids, idgi=True)
    b = torch.cat([explain("guided_ig", cnn, x16[i:i + 1], t[i:i + 1], steps=5,
                           image_ids=ids[i:i + 1], idgi=True) for i in range(2)])
    c = explain("guided_ig", cnn, x16, t, steps=5, image_ids=ids, idgi=True, max_batch=1)
    assert torch.allclose(a, b, atol=1e-7) and torch.allclose(a, c, atol=1e-7)
    assert not get_method("guided_ig").shares_path({}, [8, 16])   # a sweep runs per count
