"""Agreement with an independent implementation: Captum."""
import pytest
import torch

from helpers import oracles
from xaipipe.explain import explain

captum_attr = oracles.require("captum.attr", "Captum 0.9.0, the oracle of IG, Grad-CAM and "
                              "StartGrad's IG baseline (pip install captum==0.9.0)")

CAPTUM_RULE = {"left": "riemann_left", "right": "riemann_right", "middle": "riemann_middle",
               "trapezoid": "riemann_trapezoid", "gausslegendre": "gausslegendre"}


@pytest.mark.parametrize("rule", sorted(CAPTUM_RULE))
def test_integrated_gradients_matches_captum(cnn, images, rule):
    t = torch.tensor([0, 3, 1])
    m = 16
    ours = explain("integrated_gradients", cnn, images, t, steps=m, rule=rule)
    ig = captum_attr.IntegratedGradients(cnn)
    n_steps = m + 1 if rule == "trapezoid" else m   # Captum counts points, we count segments
    theirs = ig.attribute(images, target=t, n_steps=n_steps, method=CAPTUM_RULE[rule])
    if rule == "trapezoid":
        # Captum's trapezoid weights are 1/n (ends halved) over n points: they sum to (n-1)/n,
        # not 1 (a known quirk). A proper trapezoid over n-1 segments is n/(n-1) times that.
        theirs = theirs * n_steps / (n_steps - 1)
    scale = theirs.abs().max()
    assert (ours - theirs).abs().max() <= 1e-4 * scale


def test_startgrad_faithfulness_ig_baseline_matches_captum(cnn, images):
    """The StartGrad IG baseline: Captum's default Gauss-Legendre rule, 50 points, the
    baseline μ̂ + σ̂·U[0, 1) per image (drawn by image id), the logit."""
    from xaipipe.explain import get_method
    from xaipipe.explain.paths.baselines import make_baseline
    t = torch.tensor([0, 3, 1])
    ids = torch.tensor([5, 6, 7])
    method = get_method("integrated_gradients")(cnn, steps=50, rule="gausslegendre",
                                                baseline="image_noise", objective="logit")
    ours = method.run(images, t, ids).maps
    base = make_baseline("image_noise", images, seed_parts=method.seed_parts, image_ids=ids)
    flat = images.flatten(1)
    lo, sd = flat.mean(1).view(-1, 1, 1, 1), flat.std(1).view(-1, 1, 1, 1)
    assert torch.all(base >= lo) and torch.all(base < lo + sd)
    assert not torch.equal(base[0], base[1])
    theirs = captum_attr.IntegratedGradients(cnn).attribute(images, baselines=base, target=t,
                                                            n_steps=50)
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()


def test_saliency_and_input_x_gradient_match_captum(cnn, images):
    t = torch.tensor([2, 0, 1])
    x = images.clone().requires_grad_(False)
    assert torch.allclose(explain("saliency", cnn, images, t),
                          captum_attr.Saliency(cnn).attribute(x, target=t, abs=False), atol=1e-6)
    assert torch.allclose(explain("input_x_gradient", cnn, images, t),
                          captum_attr.InputXGradient(cnn).attribute(x, target=t), atol=1e-6)


def test_gradcam_matches_captum_layer_gradcam(cnn, images):
    t = torch.tensor([1, 1, 3])
    ours = explain("gradcam", cnn, images, t)
    layer = cnn.net.layer4[1].conv2
    cam = captum_attr.LayerGradCam(cnn, layer).attribute(images, target=t, relu_attributions=True)
    theirs = captum_attr.LayerAttribution.interpolate(cam, (32, 32), interpolate_mode="bilinear")
    assert torch.allclose(ours, theirs, atol=1e-5 * max(1.0, theirs.abs().max().item()))
