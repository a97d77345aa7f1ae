"""torchvision's ViTs (``vit_b_16`` ...): the attention load_model gives them (TokenAttention)
keeps the parameters, state-dict keys and outputs of ``nn.MultiheadAttention`` and shows the
query, key and value projections to hooks, on every load path (random, local weights, the
meta-device builds of the config checks). Nothing is downloaded."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.vit import tiny_torchvision_vit
from xaipipe.errors import ConfigError
from xaipipe.explain import get_method
from xaipipe.explain.cams.gradcam import default_layer
from xaipipe.explain.vit.tokens import capture
from xaipipe.models import load_model
from xaipipe.models.meta import meta_model
from xaipipe.models.vit import TokenAttention, inspectable_vit, is_vit, vit_structure
from xaipipe.models.zoo import MODELS, ModelEntry


@pytest.fixture
def x():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def attentions(net):
    return [b.self_attention for b in net.encoder.layers]


def test_conversion_keeps_parameters_keys_and_logits(x):
    """The converted network holds the same parameter tensors under the same keys, in the same
    order, and gives the unconverted network's logits, in eval and in train mode."""
    orig = tiny_torchvision_vit(seed=0)
    conv = inspectable_vit(copy.deepcopy(orig))
    assert all(type(a) is nn.MultiheadAttention for a in attentions(orig))
    assert all(isinstance(a, TokenAttention) for a in attentions(conv))
    so, sc = orig.state_dict(), conv.state_dict()
    assert list(so) == list(sc)
    assert all(torch.equal(so[k], sc[k]) for k in so)
    assert [n for n, _ in orig.named_parameters()] == [n for n, _ in conv.named_parameters()]
    with torch.no_grad():
        ref = orig(x)
        assert ref.abs().max() > 0.1 and ref.std(0).max() > 0.01     # not a constant output
        assert torch.allclose(conv(x), ref, rtol=1e-5, atol=1e-5)
        orig.train(), conv.train()                    # MultiheadAttention's non-fast path
        assert torch.allclose(conv(x), orig(x), rtol=1e-5, atol=1e-5)
    # the converted module shares the original's parameters (nothing copied or re-drawn)
    net = tiny_torchvision_vit(seed=0)
    before = [p for a in attentions(net) for p in a.parameters()]
    inspectable_vit(net)
    assert all(a is b for a, b in zip(before, [p for a in attentions(net)
                                               for p in a.parameters()]))
    # converting twice changes nothing
    mods = attentions(conv)
    assert attentions(inspectable_vit(conv)) == mods


def test_token_attention_equals_multihead_attention():
    """Every call torchvision's blocks make, and the weights with ``need_weights``, equal
    ``nn.MultiheadAttention``'s; q, k, v seen by the hooks are the three row blocks of the
    fused projection, x W_qᵀ + b_q etc.; a call it does not compute itself (a mask) goes to the
    original code."""
    torch.manual_seed(4)
    mha = nn.MultiheadAttention(12, 3, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    ours = TokenAttention.from_module(copy.deepcopy(mha))
    assert not ours.training
    h = torch.randn(2, 7, 12)
    with torch.no_grad():
        ref_out, none = mha(h, h, h, need_weights=False)
        with capture([ours.query, ours.key, ours.value]) as qkv:
            out, ours_none = ours(h, h, h, need_weights=False)
        assert none is None and ours_none is None
        assert torch.allclose(out, ref_out, atol=1e-6)
        for i, t in enumerate(qkv):
            w = mha.in_proj_weight[12 * i:12 * (i + 1)]
            b = mha.in_proj_bias[12 * i:12 * (i + 1)]
            assert torch.allclose(t, F.linear(h, w, b), atol=1e-6)
        for avg in (True, False):
            r = mha(h, h, h, need_weights=True, average_attn_weights=avg)
            o = ours(h, h, h, need_weights=True, average_attn_weights=avg)
            assert o[1].shape == r[1].shape == ((2, 7, 7) if avg else (2, 3, 7, 7))
            assert torch.allclose(o[0], r[0], atol=1e-6) and torch.allclose(o[1], r[1],
                                                                             atol=1e-6)
        mask = torch.rand(7, 7) > 0.5
        mask.fill_diagonal_(False)
        r = mha(h, h, h, attn_mask=mask)
        o = ours(h, h, h, attn_mask=mask)
        assert torch.allclose(o[0], r[0], atol=1e-6) and torch.allclose(o[1], r[1], atol=1e-6)
    with pytest.raises(ValueError, match="batch-first"):
        TokenAttention.from_module(nn.MultiheadAttention(12, 3))


def test_torchvision_checkpoints_load_unchanged(tmp_path, monkeypatch, x):
    """A state dict of an unconverted torchvision ViT loads through load_model's local-weights
    path into the converted model (same logits), and the converted model's state dict loads
    strictly into torchvision's own class."""
    orig = tiny_torchvision_vit(seed=5)
    path = tmp_path / "tiny_vit.pth"
    torch.save(orig.state_dict(), path)
    name = "tiny_torchvision_vit"
    monkeypatch.setitem(MODELS._items, name, ModelEntry(
        name, lambda **kw: tiny_torchvision_vit(seed=9, **kw), mean=(0.5,) * 3,
        std=(0.5,) * 3, input_size=32))
    model = load_model(name, weights=str(path))
    assert is_vit(model) and all(isinstance(a, TokenAttention) for a in attentions(model.net))
    with torch.no_grad():
        assert torch.allclose(model(x), orig(model.normalize(x)), rtol=1e-5, atol=1e-5)
    back = tiny_torchvision_vit(seed=11)
    back.load_state_dict(model.net.state_dict())          # strict
    with torch.no_grad():
        assert torch.equal(back(x), orig(x))


def test_torchvision_names_are_vits_without_downloads(tmp_path, monkeypatch):
    """``load_model("vit_b_16", weights="random")`` (an empty torch cache: nothing to find,
    nothing fetched) is a ViT of 12 layers and heads, 16x16 patches and CLS; Grad-CAM's
    default layer is the last block's ``ln_1``."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = load_model("vit_b_16", weights="random")
    st = vit_structure(model)
    assert (st.layers, st.heads, st.patch_size, st.prefix_tokens) == (12, 12, 16, 1)
    assert st.grid(224, 224) == (14, 14)
    assert st.qkv[3] == (model.net.encoder.layers[3].self_attention.query,
                         model.net.encoder.layers[3].self_attention.key,
                         model.net.encoder.layers[3].self_attention.value)
    assert default_layer(model) == "encoder.layers.encoder_layer_11.ln_1"
    assert not any((tmp_path / "hub").rglob("*"))


@pytest.mark.parametrize("arch, layers, heads, patch", [("vit_b_32", 12, 12, 32),
                                                         ("vit_l_16", 24, 16, 16)])
def test_meta_builds_of_the_config_checks_are_vits(arch, layers, heads, patch):
    """The config checks' meta-device builds pass the same conversion: the transformer
    methods' ``check_model`` accepts them."""
    model = meta_model(arch)
    assert next(model.parameters()).device.type == "meta"
    st = vit_structure(model)
    assert (st.layers, st.heads, st.patch_size, st.prefix_tokens) == (layers, heads, patch, 1)
    for name in ("gradmask", "attention_rollout", "gradcam"):
        m = get_method(name)
        m.check_model(m.check({}), model, f"experiments.x.methods.{name}")
    assert default_layer(model) == f"encoder.layers.encoder_layer_{layers - 1}.ln_1"


def test_an_unconverted_torchvision_vit_is_refused_with_the_fix():
    net = tiny_torchvision_vit()
    assert not is_vit(net)
    with pytest.raises(ConfigError, match=r"inspectable_vit\(net\)"):
        vit_structure(net)
    assert vit_structure(inspectable_vit(net)).layers == 2
