"""Vision transformers: models from save_pretrained folders, GradMask (Marchetti et al.) and
attention rollout (Abnar & Zuidema) on tiny random ViT / DeiT of transformers' own classes, and
on a tiny torchvision ViT against its transformers twin (the same weights)."""
import copy

import numpy as np
import pytest
import torch

from helpers.vit import tiny_torchvision_vit, tiny_vit_folder, transformers_twin
from xaipipe.errors import ConfigError, WeightsNotFoundError
from xaipipe.explain import explain, get_method, run_method
from xaipipe.explain.vit.attention_rollout import attention_probabilities
from xaipipe.explain.vit.tokens import capture
from xaipipe.models import NormalizedModel, load_model
from xaipipe.models.vit import inspectable_vit, vit_structure

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    folder = tiny_vit_folder(tmp_path_factory.mktemp("vit"), "vit", layers=3, hidden=32)
    return load_model("hf_vit", weights=str(folder))


@pytest.fixture(scope="module")
def deit(tmp_path_factory):
    folder = tiny_vit_folder(tmp_path_factory.mktemp("deit"), "deit", mean=IMAGENET_MEAN,
                             std=IMAGENET_STD, seed=1)
    return load_model("hf_vit", weights=str(folder))


@pytest.fixture
def x():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def hooks(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
               for m in model.modules())


# -- models ---------------------------------------------------------------------------------------
def test_hf_folders_keep_their_normalisation_and_structure(vit, deit, tmp_path):
    assert vit.mean == pytest.approx((0.5,) * 3) and vit.input_size == 32
    assert deit.mean == pytest.approx(IMAGENET_MEAN) and deit.std == pytest.approx(IMAGENET_STD)
    s, d = vit_structure(vit), vit_structure(deit)
    assert (s.layers, s.heads, s.patch_size, s.prefix_tokens) == (3, 4, 8, 1)
    assert d.prefix_tokens == 2                     # CLS and the distillation token
    # the wrapper returns the classifier's logits (DeiT: the mean of its two heads)
    xx = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(deit(xx), deit.net.hf(pixel_values=deit.normalize(xx)).logits)
    with pytest.raises(WeightsNotFoundError, match="not a save_pretrained folder"):
        load_model("hf_vit", weights=str(tmp_path / "nothing"))
    with pytest.raises(WeightsNotFoundError, match="folder"):
        load_model("hf_vit", weights="random")
    cnn = load_model("demo_resnet18", weights="random", num_classes=3, width=4)
    with pytest.raises(ConfigError, match="not a vision transformer"):
        vit_structure(cnn)
    with pytest.raises(ConfigError, match="not a vision transformer"):
        get_method("gradmask").check_model(get_method("gradmask").check({}), cnn, "here")


def test_demo_vit_is_the_same_classes(x):
    torch.manual_seed(0)
    m = load_model("demo_vit", weights="random", num_classes=4, width=32)
    assert m.mean == pytest.approx((0.5,) * 3) and vit_structure(m).layers == 4
    assert m(torch.rand(2, 3, 64, 64)).shape == (2, 4)


# -- GradMask -------------------------------------------------------------------------------------
def test_last_layer_query_gradients_vanish_on_the_patches(vit, x):
    """Only the CLS output reaches the head: the last layer's query gradient is 0 on every
    patch token (why GradMask leaves that layer out), and not on CLS."""
    st = vit_structure(vit)
    q_last = st.qkv[-1][0]
    with capture([q_last]) as outs, torch.enable_grad():
        z = vit(x)[:, 1].sum()
        (g,) = torch.autograd.grad(z, outs)
    assert g.shape == (3, 1 + 16, 32)
    assert g[:, 1:].abs().max() == 0 and g[:, 0].abs().max() > 0


@pytest.mark.parametrize("hm", [1, 4, 8])
def test_masks_are_binary_rows_at_their_mean(vit, x, hm):
    m = get_method("gradmask")(vit, masks_layer=hm)
    masks, grid = m.masks(x, torch.tensor([0, 1, 2]))
    assert masks.dtype == torch.bool and grid == (4, 4)
    assert masks.shape == (3, 3 * (3 - 1) * hm, 16)          # 3 projections x (L - 1) x groups
    assert masks.any(-1).all()                                 # a row keeps >= 1 patch


def reference_gradmask(model, x, t, hm):
    """GradMask as the reference code computes it: backward hooks on the query, key and value
    modules collect gradients in firing order (last layer first), the last layer's are dropped,
    each mask is applied to the *normalised* image and classified alone."""
    st = vit_structure(model)
    fired, handles = [], []
    for layer in st.qkv:
        for mod in layer:
            handles.append(mod.register_full_backward_hook(
                lambda _m, _gi, go: fired.append(go[0].detach())))
    try:
        with torch.enable_grad():
            model(x[None])[0, t].backward()
    finally:
        for h in handles:
            h.remove()
    # firing order: layer L's v, k, q first; drop the last layer's three, restore layer order
    per_layer = [fired[3 * i:3 * i + 3][::-1] for i in range(st.layers)][::-1][:-1]
    heat = torch.zeros(16)
    xn = model.normalize(x[None])
    for q, k, v in per_layer:
        for g in (q, k, v):
            g = g[0, 1:]                                       # (P, D), CLS dropped
            scores = g.reshape(16, hm, -1).sum(-1).clamp_min(0).T    # (hm, P)
            for row in scores:
                mask = (row >= row.mean()).float()
                up = mask.view(1, 1, 4, 4).repeat_interleave(8, 2).repeat_interleave(8, 3)
                with torch.no_grad():
                    p = torch.softmax(model.net(xn * up), 1)[0, t]
                heat += p * mask
    return heat.view(4, 4).repeat_interleave(8, 0).repeat_interleave(8, 1)


@pytest.mark.parametrize("hm", [1, 4])
def test_heatmap_is_the_weighted_sum_of_the_reference(vit, x, hm):
    """The batched GradMask equals the reference's route (backward hooks in firing order, one
    masked image at a time in normalised space), image by image."""
    t = torch.tensor([2, 0, 4])
    out = run_method("gradmask", vit, x, t, masks_layer=hm, max_batch=5)
    for i in range(3):
        ref = reference_gradmask(vit, x[i], int(t[i]), hm)
        assert torch.allclose(out.maps[i, 0], ref, rtol=1e-5, atol=1e-6)
    rows = 3 * 2 * hm
    assert (out.maps >= 0).all() and (out.maps.flatten(1).amax(1) <= out.extras["weight_sum"]
                                      + 1e-6).all()
    assert (out.extras["weight_sum"] <= rows).all()


def test_deit_drops_both_prefix_tokens_and_fills_its_mean_colour(deit, x):
    out = run_method("gradmask", deit, x, [1, 2, 3], masks_layer=2)
    assert out.maps.shape == (3, 1, 32, 32) and (out.maps >= 0).all()
    m = get_method("gradmask")(deit, masks_layer=2)
    masks, _ = m.masks(x, torch.tensor([1, 2, 3]))
    assert masks.shape == (3, 3 * 2 * 2, 16)


def test_batches_and_chunks_do_not_change_the_maps(vit, x):
    t = torch.tensor([1, 2, 3])
    both = explain("gradmask", vit, x, t, max_batch=100)
    alone = torch.cat([explain("gradmask", vit, x[i:i + 1], t[i:i + 1], max_batch=3)
                       for i in range(3)])
    assert torch.allclose(both, alone, rtol=1e-5, atol=1e-6)


def test_masked_batches_are_sized_by_the_forward_only_estimate(vit, x):
    """The no-grad forwards over the masked images get chunks sized by the forward-only
    estimate (smaller than the forward+backward one, larger than the largest activation):
    with a budget of 8 forward-only points (under 8 forward+backward ones) GradMask makes
    ceil(N·R / 8) masked forwards, and the maps equal the unchunked ones."""
    from xaipipe.explain.base import _activation_sizes, estimate_forward_bytes, \
        estimate_point_bytes
    shape = tuple(x.shape[1:])
    fwd, both = estimate_forward_bytes(vit, shape, "cpu"), estimate_point_bytes(vit, shape, "cpu")
    assert _activation_sizes(vit, shape, "cpu")[1] < fwd < both
    budget_mb = 8.5 * fwd / 2**20
    assert int(budget_mb * 2**20 // both) < 8
    t = torch.tensor([1, 2, 3])
    calls = []
    handle = vit.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        chunked = explain("gradmask", vit, x, t, memory_mb=budget_mb)
    finally:
        handle.remove()
    rows = 3 * (vit_structure(vit).layers - 1) * 4
    masked = [c for c in calls[1:]]                 # the first call is the gradient pass
    assert max(masked) == 8 and len(masked) == -(-3 * rows // 8)
    assert torch.allclose(chunked, explain("gradmask", vit, x, t), rtol=1e-5, atol=1e-6)


def test_hooks_are_removed_also_on_errors(vit, x):
    assert hooks(vit) == 0
    explain("gradmask", vit, x, 0)
    explain("attention_rollout", vit, x, 0)
    assert hooks(vit) == 0
    with pytest.raises(ValueError, match="does not divide the hidden size"):
        explain("gradmask", vit, x, 0, masks_layer=5)
    assert hooks(vit) == 0


def test_compat_target_zero_explains_the_prediction(vit, x):
    with torch.no_grad():
        pred = vit(x).argmax(1)
    zero = torch.zeros(3, dtype=torch.long)
    compat = explain("gradmask", vit, x, zero, compat="gradmask")
    assert torch.allclose(compat, explain("gradmask", vit, x, pred))
    clean = explain("gradmask", vit, x, zero)
    differs = pred != 0
    assert differs.any()
    assert not torch.allclose(clean[differs], compat[differs])


# -- attention rollout ----------------------------------------------------------------------------
def test_attention_probabilities_are_the_models_own(vit, x):
    """From the captured query and key projections, softmax(q kᵀ/√d_h) per head equals the
    attentions transformers returns with output_attentions (on a copy: that call installs
    hooks of its own)."""
    import copy
    st = vit_structure(vit)
    mods = [m for layer in st.qkv for m in layer[:2]]
    with capture(mods) as outs, torch.no_grad():
        vit(x)
    ours = [attention_probabilities(outs[2 * i], outs[2 * i + 1], st.heads) for i in range(3)]
    other = copy.deepcopy(vit)
    with torch.no_grad():
        theirs = other.net.hf(pixel_values=other.normalize(x), output_attentions=True).attentions
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-6)


def test_rollout_by_hand_on_two_layers(tmp_path, x):
    """Â_l = rownorm(mean_heads(A_l) + I); R = Â_2 Â_1; the map is R's CLS row over the
    patches, each patch's value over its 8x8 pixels: written out in NumPy."""
    import copy
    model = load_model("hf_vit", weights=str(tiny_vit_folder(tmp_path, layers=2, seed=3)))
    out = explain("attention_rollout", model, x, 0)
    with torch.no_grad():
        atts = copy.deepcopy(model).net.hf(pixel_values=model.normalize(x),
                                           output_attentions=True).attentions
    for i in range(3):
        hat = []
        for a in atts:
            m = a[i].double().numpy().mean(0) + np.eye(17)
            hat.append(m / m.sum(1, keepdims=True))
        r = hat[1] @ hat[0]
        expect = np.kron(r[0, 1:].reshape(4, 4), np.ones((8, 8)))
        np.testing.assert_allclose(out[i, 0].numpy(), expect, rtol=1e-5)
    assert hooks(model) == 0


def test_rollout_fusion_and_discard_by_hand():
    """One layer, one image, two heads of 3 tokens: ``max`` fusion takes the larger head entry;
    ``discard_ratio`` 0.5 zeroes the ⌊0.5·2⌋ = 1 smallest off-diagonal entry of each row before
    the identity is added and the rows renormalised."""
    from xaipipe.explain.vit.attention_rollout import rollout
    a = torch.tensor([[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]],
                      [[0.2, 0.2, 0.6], [0.4, 0.4, 0.2], [0.35, 0.25, 0.4]]])[None]
    fused = np.maximum(a[0, 0].numpy(), a[0, 1].numpy())
    expect = fused + np.eye(3)
    np.testing.assert_allclose(rollout([a], "max")[0].numpy(),
                               expect / expect.sum(1, keepdims=True), rtol=1e-6)
    mean = a[0].double().mean(0).numpy()
    kept = mean.copy()
    for r in range(3):
        off = [c for c in range(3) if c != r]
        kept[r, min(off, key=lambda c: mean[r, c])] = 0.0
    kept += np.eye(3)
    np.testing.assert_allclose(rollout([a], "mean", 0.5)[0].numpy(),
                               kept / kept.sum(1, keepdims=True), rtol=1e-6)


# -- torchvision ViTs -----------------------------------------------------------------------------
HALF = (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def tv():
    """(a tiny torchvision ViT as load_model converts it, its transformers twin with the same
    weights, the unconverted torchvision network), the first two with the ViT normalisation."""
    net = tiny_torchvision_vit(seed=2)
    orig = copy.deepcopy(net)
    twin = NormalizedModel(transformers_twin(net), HALF, HALF, name="twin").eval()
    model = NormalizedModel(inspectable_vit(net), HALF, HALF, name="tv", input_size=32).eval()
    return model, twin, orig


def test_torchvision_vit_structure_and_twin(tv, x):
    model, twin, orig = tv
    st = vit_structure(model)
    assert (st.layers, st.heads, st.patch_size, st.prefix_tokens) == (2, 2, 8, 1)
    from xaipipe.explain.cams.gradcam import default_layer
    assert default_layer(model) == "encoder.layers.encoder_layer_1.ln_1"
    assert default_layer(twin).endswith("layers.1.layernorm_before")
    with torch.no_grad():
        logits = model(x)
        assert torch.allclose(twin(x), logits, rtol=1e-5, atol=1e-6)
        assert torch.allclose(orig(model.normalize(x)), logits, rtol=1e-5, atol=1e-5)
    assert logits.std(0).max() > 0.05


TWIN_CASES = [("gradmask", {"masks_layer": 1}), ("gradmask", {"masks_layer": 4}),
              ("attention_rollout", {}),
              ("attention_rollout", {"head_fusion": "max", "discard_ratio": 0.5}),
              ("gradcam", {}), ("gradcam", {"relu": False, "objective": "prob"})]


@pytest.mark.parametrize("name, kw", TWIN_CASES)
def test_torchvision_vit_maps_equal_its_transformers_twin(tv, x, name, kw):
    """The same network in two libraries gives the same GradMask, rollout and Grad-CAM maps
    (default layers: ``ln_1`` and ``layernorm_before`` of the last block)."""
    model, twin, _ = tv
    t = torch.tensor([2, 0, 4])
    ours, theirs = run_method(name, model, x, t, **kw), run_method(name, twin, x, t, **kw)
    assert ours.maps.shape == (3, 1, 32, 32) and ours.maps.abs().amax() > 0
    scale = float(theirs.maps.abs().max())
    assert torch.allclose(ours.maps, theirs.maps, rtol=1e-5, atol=1e-6 * scale)
    for k, v in theirs.extras.items():
        assert torch.allclose(ours.extras[k], v, rtol=1e-5, atol=1e-6)
    assert hooks(model) == 0 and hooks(twin) == 0


def test_torchvision_gradmask_is_the_reference_route(tv, x):
    """The reference's route (backward hooks on the query, key and value modules) on the
    converted torchvision ViT."""
    model, hm = tv[0], 2
    t = torch.tensor([1, 3, 0])
    out = run_method("gradmask", model, x, t, masks_layer=hm, max_batch=4)
    for i in range(3):
        ref = reference_gradmask(model, x[i], int(t[i]), hm)
        assert torch.allclose(out.maps[i, 0], ref, rtol=1e-5, atol=1e-6)


def test_torchvision_rollout_attentions_are_its_own(tv, x):
    """softmax(q kᵀ/√d_h) from the captured projections equals the attention weights the
    unconverted ``nn.MultiheadAttention`` returns itself (``need_weights=True,
    average_attn_weights=False``) on the same block inputs."""
    model, _, orig = tv
    st = vit_structure(model)
    with capture([m for layer in st.qkv for m in layer[:2]]) as outs, torch.no_grad():
        model(x)
    blocks = list(orig.encoder.layers)
    with capture([b.ln_1 for b in blocks]) as inputs, torch.no_grad():
        orig(model.normalize(x))
    for i, block in enumerate(blocks):
        h = inputs[i]
        with torch.no_grad():
            _, theirs = block.self_attention(h, h, h, need_weights=True,
                                             average_attn_weights=False)
        ours = attention_probabilities(outs[2 * i], outs[2 * i + 1], st.heads)
        assert theirs.shape == ours.shape == (3, 2, 17, 17)
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_torchvision_hooks_are_removed_also_on_errors(tv, x):
    model = tv[0]
    assert hooks(model) == 0
    for name in ("gradmask", "attention_rollout", "gradcam"):
        explain(name, model, x, 1)
        assert hooks(model) == 0
        with pytest.raises(AssertionError, match="Wrong image height"):  # torchvision
            explain(name, model, torch.rand(1, 3, 40, 32), 1)
        assert hooks(model) == 0
    with pytest.raises(ValueError, match="does not divide the hidden size"):
        explain("gradmask", model, x, 0, masks_layer=5)
    assert hooks(model) == 0
