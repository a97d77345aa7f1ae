"""FullGrad against pytorch-grad-cam's ``FullGrad`` (``jacobgil/pytorch-grad-cam``, PyPI
``grad-cam`` 1.5.7, ``pytorch_grad_cam/fullgrad_cam.py``), where the two are exactly related.

What pytorch-grad-cam computes: forward hooks on every ``Conv2d`` / ``BatchNorm2d`` with a bias
(``find_layer_predicate_recursive``, module-tree order) keep, through tensor hooks, the
gradients G_l of Σ_images target w.r.t. their outputs; ``get_bias_data`` gives the bias, for BN
the authors' effective bias β − μ·γ/√(σ² + ε) (``idiap/fullgrad-saliency``'s
``tensor_extractor.py``); the input gradient comes from the input tensor's ``.grad``. Then
``compute_cam_per_layer`` takes |∇x ⊙ x| and each |b_l ⊙ G_l|, min–max normalises every
(image, channel) slice on its own (``scale_accross_batch_and_channels``: (a − min) /
(1e-7 + max of a − min)), resizes each slice with ``cv2.resize`` (bilinear, half-pixel
centres) to the input size, sums the channels and the layers, and ``aggregate_multi_layers``
min–max normalises the sum per image (1e-7 again).

xaipipe's ``fullgrad`` follows the reference code of the Re-calibration study
(``ypeiyu/attribution_recalibration``, ``saliency_methods/fullgrad.py``): one min–max per image
over *all* channels of a term jointly (1e-6), ``align_corners=True`` upsampling, and no final
normalisation. The per-channel scaling cannot be undone from the summed map, so the maps are
not related in general. Two exact relations remain:

1. The raw terms: pytorch-grad-cam's own hooks and ``bias_data`` give ∇x ⊙ x and b_l ⊙ G_l;
   they equal xaipipe's decomposition (:func:`xaipipe.explain.cams.fullgrad.decompose`) term
   by term, on a multi-channel CNN with BN and a stride, differentiated at the normalised input
   (pytorch-grad-cam is given the network proper and the normalised images).
2. The maps, where per-channel and joint scaling coincide and no resize happens: one input
   channel, one channel per spatial layer, no stride. Then pytorch-grad-cam's output is
   xaipipe's map min–max normalised per image, up to the two epsilons: a term of range r
   (after the absolute value) differs by less than (1e-6 − 1e-7)/r between the two scalings;
   the test bounds the difference by these amounts, from the raw terms. P is invariant to
   a term's scale, so with one channel per layer the bias *values* drop out of the map: this
   case checks the absolute value, the scaling, the sum and the choice of layers, case 1 the
   values (a wrong BN bias fails case 1 only).
"""
import torch
from torch import nn

from helpers import oracles
from xaipipe.explain import run_method
from xaipipe.explain.cams.fullgrad import decompose
from xaipipe.models import NormalizedModel

pgc = oracles.require("pytorch_grad_cam", "pytorch-grad-cam (PyPI grad-cam 1.5.7), an oracle "
                      "of FullGrad's bias-gradient terms (pip install grad-cam==1.5.7)")
targets_mod = oracles.require("pytorch_grad_cam.utils.model_targets", "pytorch-grad-cam's "
                              "targets (pip install grad-cam==1.5.7)")


@torch.no_grad()
def randomise_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t, lo, hi in ((m.weight, 0.5, 1.5), (m.bias, -0.5, 0.5),
                              (m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0)):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * (hi - lo) + lo)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.copy_(torch.rand(m.bias.shape, generator=g, dtype=m.bias.dtype) - 0.5)
    return model


def bn_cnn():
    """Sequential (forward order = module order, which pytorch-grad-cam's gradient list
    assumes), several channels, a stride, no in-place op."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
                        nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))
    return randomise_bn(NormalizedModel(net, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)),
                        5).double().eval()


def test_raw_terms_equal_pytorch_grad_cams():
    model = bn_cnn()
    images = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(6),
                        dtype=torch.float64)
    t = torch.tensor([0, 3, 2])
    ours = decompose(model, images, t)

    x = model.normalize(images).detach().requires_grad_(True)
    cam = pgc.FullGrad(model=model.net, target_layers=[])
    try:
        outputs = cam.activations_and_grads(x)
        model.net.zero_grad()
        sum(targets_mod.ClassifierOutputTarget(int(c))(o) for c, o in zip(t, outputs)).backward()
        grads = list(cam.activations_and_grads.gradients)
        layers, biases = cam.target_layers, cam.bias_data
    finally:
        cam.activations_and_grads.release()

    assert torch.allclose(ours["input"], x.grad * x.detach(), rtol=0, atol=1e-14)
    spatial = {id(m): term for _, m, term in ours["bias"] if not isinstance(m, nn.Linear)}
    assert len(layers) == len(grads) == len(biases) == len(spatial) == 4
    for layer, g, b in zip(layers, grads, biases):
        theirs = torch.from_numpy(b)[None, :, None, None] * g
        assert torch.allclose(spatial[id(layer)], theirs, rtol=0, atol=1e-14), layer
    assert all(spatial[id(m)].abs().max() > 1e-4 for m in layers)     # no term is all zero


def one_channel_net():
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1), nn.ReLU(),
                        nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.BatchNorm2d(1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(64, 3))
    with torch.no_grad():
        net[-1].weight.mul_(20)      # all terms' ranges of order 1: the epsilons barely matter
    return randomise_bn(net, 8).eval()


def test_one_channel_map_is_pytorch_grad_cams_up_to_its_final_min_max():
    net = one_channel_net()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(9)) * 2 - 1
    t = torch.tensor([0, 1, 2, 1])
    ours = run_method("fullgrad", net, x, t).maps[:, 0].double()
    lo = ours.flatten(1).min(1).values.view(-1, 1, 1)
    hi = (ours - lo).flatten(1).max(1).values.view(-1, 1, 1)
    scaled = (ours - lo) / (hi + 1e-7)

    with pgc.FullGrad(model=net, target_layers=[]) as cam:
        theirs = cam(input_tensor=x.clone(), targets=[
            targets_mod.ClassifierOutputTarget(int(c)) for c in t])
    assert theirs.shape == (4, 8, 8)
    assert (hi > 0.5).all()          # the maps are far from constant

    # the epsilons' share: Σ over the terms of (1e-6 − 1e-7)/range, doubled by the final
    # min–max (the minimum and the range both move), over the map's range; plus float32
    raw = decompose(net, x, t)
    terms = [raw["input"]] + [term for _, m, term in raw["bias"] if not isinstance(m, nn.Linear)]
    assert len(terms) == 1 + 3
    ranges = torch.stack([a.double().abs().flatten(1).max(1).values - a.abs().flatten(1).min(1).values
                          for a in terms])
    bound = 2 * (0.9e-6 / ranges).sum(0) / hi.flatten() + 1e-6
    diff = (scaled - torch.from_numpy(theirs).double()).abs().flatten(1).max(1).values
    assert (diff <= bound).all(), (diff, bound)
    assert bound.max() < 2e-5
