"""Grad-CAM against pytorch-grad-cam (``jacobgil/pytorch-grad-cam``, PyPI ``grad-cam`` 1.5.7,
import ``pytorch_grad_cam``), the implementation the README cites, at matched settings.

What ``pytorch_grad_cam.GradCAM`` computes (``base_cam.py``, ``grad_cam.py``): forward hooks on
the target layer keep its output A and, through a tensor hook, G = ∂(Σ_images target)/∂A; the
weights are mean_{u,v} G (``get_cam_weights``), the raw CAM Σ_k α_k A_k (``get_cam_image``).
Then ``compute_cam_per_layer`` applies the ReLU, min-max normalises each image's CAM
(``scale_cam_image``: (c − min) / (1e-7 + max of c − min)) and resizes it with ``cv2.resize``
(bilinear, half-pixel centres) to the input's W × H; ``aggregate_multi_layers`` averages the
layers (one here) and min-max normalises the resized map again (the upsampled map need not
reach the CAM's extremes: its pixel centres fall between the CAM's).

xaipipe's ``gradcam`` returns the unnormalised CAM, upsampled with ``F.interpolate(bilinear,
align_corners=False)``. So the tests compare (1) the raw CAM, taken from pytorch-grad-cam's own
hooks and ``get_cam_image``, with xaipipe's CAM at the layer's resolution (``relu=False``, and
with the ReLU), and (2) pytorch-grad-cam's final output with xaipipe's upsampled map put
through the same two min-max scalings (the first with the native CAM's min and max; bilinear
weights sum to 1, so scaling before or after the upsampling is the same), so that what is left
to differ is the upsampling itself.

One difference that matched settings avoid: pytorch-grad-cam stores ``output.cpu().detach()``,
which on the CPU shares memory with the layer's output, so an in-place op right after the
target layer (``ReLU(inplace=True)``) would change the A it uses; xaipipe's hook keeps A
intact. The models here have no in-place op after the target layer.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import oracles
from xaipipe.explain import get_method, run_method
from xaipipe.explain.cams.gradcam import find_layer
from xaipipe.models import NormalizedModel, load_model

pgc = oracles.require("pytorch_grad_cam", "pytorch-grad-cam (PyPI grad-cam 1.5.7), the oracle "
                      "of Grad-CAM (pip install grad-cam==1.5.7)")
targets_mod = oracles.require("pytorch_grad_cam.utils.model_targets", "pytorch-grad-cam's "
                              "targets (pip install grad-cam==1.5.7)")

TARGETS = {"logit": targets_mod.ClassifierOutputTarget,
           "prob": targets_mod.ClassifierOutputSoftmaxTarget}


class SmallCNN(nn.Module):
    """Three convolutions (the last, ``c3``, is the target layer), no in-place ops."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(8, 10, 3, padding=1)
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(F.relu(self.c3(x)).mean((2, 3)))


def small_cnn():
    torch.manual_seed(3)
    return NormalizedModel(SmallCNN(), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)).eval()


def demo_resnet():
    torch.manual_seed(0)
    return load_model("demo_resnet18", weights="random", num_classes=4, width=4)


def theirs(model, layer, x, t, obj):
    """(raw CAM (N, h, w), final output (N, H, W)) of pytorch-grad-cam's GradCAM: the raw CAM
    from its own hooks and ``get_cam_image`` (what ``compute_cam_per_layer`` computes before
    the ReLU and the scaling), the final output from ``GradCAM.__call__``."""
    targets = [TARGETS[obj](int(c)) for c in t]
    xg = x.clone().requires_grad_(True)      # gradients reach A whether or not weights need them
    with pgc.GradCAM(model=model, target_layers=[layer]) as cam:
        outputs = cam.activations_and_grads(xg)
        model.zero_grad()
        sum(tg(o) for tg, o in zip(targets, outputs)).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = cam.get_cam_image(xg, layer, targets, acts, grads)
        final = cam(xg, targets)
    model.zero_grad()
    return torch.from_numpy(np.asarray(raw)), torch.from_numpy(np.asarray(final))


def min_max(maps, like=None):
    """pytorch-grad-cam's ``scale_cam_image`` per image, (c − min) / (1e-7 + max of c − min),
    with the min and max of ``like`` (default ``maps`` itself)."""
    like = maps if like is None else like
    lo = like.flatten(1).amin(1).view(-1, 1, 1)
    return (maps - lo) / (1e-7 + (like - lo).flatten(1).amax(1).view(-1, 1, 1))


def ours(model, name, x, t, obj, relu=True, native=False):
    method = get_method("gradcam")(model, layer=name, objective=obj, relu=relu)
    method.native_resolution = native
    return method.run(x, t).maps[:, 0]


CASES = [("small_cnn", "c3", (3, 20, 28)), ("demo_resnet18", "layer4.1.conv2", (3, 64, 96)),
         ("demo_resnet18", "layer3", (3, 48, 48))]
MODELS = {"small_cnn": small_cnn, "demo_resnet18": demo_resnet}


@pytest.mark.parametrize("obj", ["logit", "prob"])
@pytest.mark.parametrize("model_name, layer_name, shape", CASES)
def test_gradcam_matches_pytorch_grad_cam(model_name, layer_name, shape, obj):
    model = MODELS[model_name]()
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(7))
    t = torch.tensor([0, 3, 1])
    layer = find_layer(model, layer_name)
    raw, final = theirs(model, layer, x, t, obj)
    tol = dict(rtol=1e-5, atol=1e-6 * float(raw.abs().max()))
    # (1) the CAM at the layer's resolution, without and with the ReLU
    native_lin = ours(model, layer_name, x, t, obj, relu=False, native=True)
    assert native_lin.shape == raw.shape
    assert torch.allclose(native_lin, raw, **tol)
    native = ours(model, layer_name, x, t, obj, native=True)
    assert torch.allclose(native, raw.clamp_min(0), **tol)
    assert (raw < 0).any() and (raw > 0).any()             # the ReLU is exercised
    # (2) the final map: xaipipe's upsampled CAM with pytorch-grad-cam's two min-max scalings
    full = ours(model, layer_name, x, t, obj)
    assert full.shape == final.shape == (3, *shape[1:])
    scaled = min_max(full, like=native)              # = upsampled min_max(native)
    scaled = min_max(scaled)                         # aggregate_multi_layers
    assert torch.allclose(scaled, final, atol=2e-6), float((scaled - final).abs().max())
    # and run_method (the public entry) gives the same upsampled map
    assert torch.equal(run_method("gradcam", model, x, t, layer=layer_name,
                                  objective=obj).maps[:, 0], full)


def token_reshape(prefix, grid):
    """pytorch-grad-cam's ``reshape_transform`` of its ViT tutorial: the patch tokens (after
    ``prefix`` CLS / distillation tokens) as a (N, D, h, w) map."""
    def reshape(t):
        r = t[:, prefix:, :].reshape(t.size(0), *grid, t.size(2))
        return r.transpose(2, 3).transpose(1, 2)
    return reshape


@pytest.mark.parametrize("kind, prefix", [("vit", 1), ("deit", 2), ("torchvision", 1)])
def test_gradcam_on_vit_tokens_matches_pytorch_grad_cam(tmp_path, kind, prefix):
    """Grad-CAM over a transformer block's patch tokens against pytorch-grad-cam with its ViT
    tutorial's reshape_transform, at the layer's resolution (4x4 patches) and the default
    layer (the last encoder layer's ``layernorm_before``; torchvision's ``ln_1``)."""
    from helpers.vit import tiny_torchvision_vit, tiny_vit_folder
    from xaipipe.explain.cams.gradcam import default_layer
    from xaipipe.models.vit import inspectable_vit
    if kind == "torchvision":
        model = NormalizedModel(inspectable_vit(tiny_torchvision_vit(seed=5, num_layers=3)),
                                mean=(0.5,) * 3, std=(0.5,) * 3).eval()
        assert default_layer(model) == "encoder.layers.encoder_layer_2.ln_1"
    else:
        model = load_model("hf_vit", weights=str(tiny_vit_folder(tmp_path, kind, seed=5)))
    name = default_layer(model)
    assert kind == "torchvision" or name.endswith("layers.2.layernorm_before") or \
        name.endswith("layer.2.layernorm_before")
    layer = find_layer(model, name)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    t = torch.tensor([0, 3, 1])
    targets = [TARGETS["logit"](int(c)) for c in t]
    xg = x.clone().requires_grad_(True)
    with pgc.GradCAM(model=model, target_layers=[layer],
                     reshape_transform=token_reshape(prefix, (4, 4))) as cam:
        outputs = cam.activations_and_grads(xg)
        model.zero_grad()
        sum(tg(o) for tg, o in zip(targets, outputs)).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = torch.from_numpy(np.asarray(cam.get_cam_image(xg, layer, targets, acts, grads)))
    model.zero_grad()
    native = ours(model, None, x, t, "logit", relu=False, native=True)
    assert native.shape == raw.shape == (3, 4, 4)
    assert torch.allclose(native, raw, rtol=1e-5, atol=1e-6 * float(raw.abs().max()))
