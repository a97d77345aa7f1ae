"""Agreement with an independent implementation: Captum."""
import pytest
import torch

from xaipipe.explain import explain

captum_attr = pytest.importorskip("captum.attr")

CAPTUM_RULE = {"left": "riemann_left", "right": "riemann_right", "middle": "riemann_middle",
               "trapezoid": "riemann_trapezoid"}


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
