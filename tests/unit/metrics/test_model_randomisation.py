"""The model-randomisation check as a metric: its cascade, its columns and summary rows, and
the runner building the method from the saliency store (``MetricInputs.attribute``)."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from helpers.jobs import explain_job, score_job
from xaipipe.data.datasets import build_image_store
from xaipipe.data.image_store import open_images
from xaipipe.data.predictions import predict
from xaipipe.explain import explain, get_method
from xaipipe.metrics import get_metric, model_randomisation
from xaipipe.models import NormalizedModel, load_model
from xaipipe.models.randomise import cascade, default_cascade, randomisation_similarity
from xaipipe.pipeline.attribution import explain_to_store
from xaipipe.pipeline.scoring import score_store


def saliency(model, x, t, ids):
    return explain("saliency", model, x, t, image_ids=ids)


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    return load_model("demo_resnet18", weights="random", num_classes=3, width=4).eval()


def test_default_cascades():
    resnet = load_model("resnet34", weights="random")
    c = default_cascade(resnet)
    assert c[:4] == ("fc", "layer4.2", "layer4.1", "layer4.0") and c[-2:] == ("bn1", "conv1")
    assert len(c) == 1 + 3 + 4 + 6 + 3 + 2
    vgg = default_cascade(load_model("vgg16", weights="random"))
    assert vgg[:3] == ("classifier.6", "classifier.3", "classifier.0") and vgg[-1] == \
        "features.0" and len(vgg) == 3 + 13
    inc = load_model("inception_v3", weights="random")
    assert default_cascade(inc)[0] == "fc" and default_cascade(inc)[-1] == "Conv2d_1a_3x3"


def test_columns_are_the_similarities_of_each_stage(demo):
    """Each ``similarity@<layer>`` is randomisation_similarity of the stored maps with the
    method's maps on that stage of the cascade, computed here step by step."""
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 2])
    maps = saliency(demo, x, t, [0, 1, 2])
    out = model_randomisation(demo, x, maps, t, saliency, image_ids=[0, 1, 2], seed=4)
    stages = default_cascade(demo)
    assert [k for k in out if k.startswith("similarity@")] == \
        [f"similarity@{s}" for s in stages]
    for name, m in cascade(demo, stages, seed=4, include_original=False):
        ref = randomisation_similarity(maps, saliency(m.eval(), x, t, [0, 1, 2]))
        np.testing.assert_allclose(out[f"similarity@{name}"], ref, rtol=1e-6, atol=1e-9)
    per_stage = np.stack([out[f"similarity@{s}"] for s in stages], 1)
    np.testing.assert_allclose(out["similarity_mean"], per_stage.mean(1))
    np.testing.assert_allclose(out["similarity_last"], per_stage[:, -1])
    # the fully randomised model's gradients have little to do with the trained ones'
    assert (out["similarity_last"] < 0.5).all()


def test_a_method_blind_to_the_model_keeps_similarity_one(demo):
    """A map that does not depend on the weights (the input itself) is the same on every
    stage: similarity 1 (Spearman of identical maps), the failing case of the sanity check."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    out = model_randomisation(demo, x, x.clone(), 0, lambda m, xx, t, ids: xx.clone(),
                              layers=["fc", "layer4.1"])
    assert set(out) == {"similarity_mean", "similarity_last", "similarity@fc",
                        "similarity@layer4.1", "similarity_undefined"}
    assert not out.pop("similarity_undefined").any()
    for v in out.values():
        np.testing.assert_allclose(v, 1.0)


def test_a_linear_model_by_hand():
    """y = W2 W1 x: the gradient map of class t is (W1ᵀ W2[t]) per pixel; re-initialising the
    top layer (fc2) gives (W1ᵀ W2'[t]), with W2' drawn by the cascade; the similarity is the
    Spearman correlation of the absolute maps, computed here with NumPy's ranks."""
    torch.manual_seed(3)
    net = nn.Sequential()
    net.add_module("flat", nn.Flatten())
    net.add_module("fc1", nn.Linear(12, 5, bias=False))
    net.add_module("fc2", nn.Linear(5, 3, bias=False))
    model = NormalizedModel(net, mean=(0.0,) * 3, std=(1.0,) * 3).eval()
    x = torch.rand(1, 3, 2, 2)
    maps = saliency(model, x, torch.tensor([1]), [0])
    out = model_randomisation(model, x, maps, 1, saliency, layers=["fc2"], seed=7)
    ((_, rand),) = cascade(model, ["fc2"], seed=7, include_original=False)
    w1, w2 = net.fc1.weight.detach(), rand.net.fc2.weight.detach()
    assert not torch.equal(w2, net.fc2.weight)
    a = (w1.T @ net.fc2.weight.detach()[1]).abs().view(3, 2, 2).sum(0).flatten().numpy()
    b = (w1.T @ w2[1]).abs().view(3, 2, 2).sum(0).flatten().numpy()

    def ranks(v):
        return np.argsort(np.argsort(v)).astype(float)
    expect = np.corrcoef(ranks(a), ranks(b))[0, 1]
    np.testing.assert_allclose(out["similarity@fc2"], [expect], rtol=1e-6)


def test_summary_rows_follow_the_cascade_order():
    df = pd.DataFrame({"similarity_mean": [0.5, 0.7], "similarity_last": [0.1, 0.3],
                       "similarity@fc": [0.9, 0.8], "similarity@layer4": [0.4, 0.6]})
    rows = get_metric("model_randomisation").aggregate(df, n_boot=50)
    assert [r["score"] for r in rows] == ["similarity_mean", "similarity_last", "similarity@fc",
                                          "similarity@layer4"]
    assert rows[2]["mean"] == pytest.approx(0.85) and rows[0]["direction"] == "lower"


def test_the_runner_reruns_the_stores_method(tmp_path, demo):
    """score_store gives the metric the store's method with its parameters and seed: the
    scores equal the plain function's with that method (SmoothGrad, seeded noise)."""
    cfg = {"kind": "shapes", "image_size": 32, "num_classes": 3, "train": 0, "val": 3}
    build_image_store("s", cfg, "original", {}, tmp_path / "o.zarr", progress=False)
    torch.save(demo.net.state_dict(), tmp_path / "w.pt")
    predict(demo, open_images(tmp_path / "o.zarr"), progress=False).to_parquet(
        tmp_path / "all.parquet")
    params = get_method("smoothgrad").check({"samples": 3})
    explain_to_store(tmp_path / "sg.zarr", tmp_path / "o.zarr", [tmp_path / "all.parquet"],
                     [tmp_path / "w.pt"], explain_job(method="smoothgrad", params=params,
                                                      seed=5), progress=False)
    from helpers.jobs import SPEC
    mparams = get_metric("model_randomisation").check({"layers": ["fc", "layer4.1"]})
    df = score_store(tmp_path / "mr.parquet",
                     {"saliency": tmp_path / "sg.zarr", "selections": [tmp_path / "all.parquet"],
                      "images": tmp_path / "o.zarr", "model": [tmp_path / "w.pt"]},
                     score_job("model_randomisation", mparams, model=SPEC))
    val = open_images(tmp_path / "o.zarr")
    x = val.tensor(np.arange(3))
    t = torch.tensor(pd.read_parquet(tmp_path / "all.parquet")["label"].to_numpy())
    maps = explain("smoothgrad", demo, x, t, image_ids=val.index, seed=5, samples=3)

    def sg(m, xx, tt, ids):
        return explain("smoothgrad", m, xx, tt, image_ids=ids, seed=5, samples=3)
    ref = model_randomisation(demo, x, maps, t, sg, image_ids=val.index,
                              layers=["fc", "layer4.1"])
    for k in ("similarity@fc", "similarity@layer4.1", "similarity_mean"):
        np.testing.assert_allclose(df[k].to_numpy(), ref[k], rtol=1e-5, atol=1e-7)


def test_a_constant_map_is_undefined_not_an_error(demo):
    """A map that is constant on a stage (Grad-CAM's ReLU can leave nothing on a randomised
    model) has no rank correlation: NaN at that stage, flagged, the mean over the others."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    calls = []

    def flat_on_the_second_stage(m, xx, t, ids):
        calls.append(1)
        return torch.zeros_like(xx) if len(calls) == 2 else xx.clone()
    out = model_randomisation(demo, x, x.clone(), 0, flat_on_the_second_stage,
                              layers=["fc", "layer4.1", "layer4.0"])
    assert np.isnan(out["similarity@layer4.1"]).all() and out["similarity_undefined"].all()
    np.testing.assert_allclose(out["similarity@fc"], 1.0)
    np.testing.assert_allclose(out["similarity_mean"], 1.0)       # over the defined stages
    np.testing.assert_allclose(out["similarity_last"], 1.0)


def _changed(a, b) -> set[str]:
    """Names of the parameters that differ between two copies of a model."""
    pb = dict(b.named_parameters())
    return {n for n, p in a.named_parameters() if not torch.equal(p, pb[n])}


@pytest.mark.parametrize("kind", ["transformers", "torchvision"])
def test_vision_transformer_cascades_go_block_by_block(kind, tmp_path):
    """A ViT's default cascade: the head, every encoder block from the last to the first, the
    patch embedding; each stage re-samples exactly its own block's linear layers (torchvision:
    the fused in_proj_weight/bias of its attention too) on top of the earlier stages'."""
    from helpers.vit import tiny_torchvision_vit, tiny_vit_folder
    from xaipipe.models import NormalizedModel
    from xaipipe.models.vit import inspectable_vit
    if kind == "transformers":
        model = load_model("hf_vit", weights=str(tiny_vit_folder(tmp_path, layers=3)))
        blocks = [f"hf.vit.{'layers' if hasattr(model.net.hf.vit, 'layers') else 'encoder.layer'}"
                  f".{i}" for i in (2, 1, 0)]
        expect = ("hf.classifier", *blocks, "hf.vit.embeddings.patch_embeddings.projection")
    else:
        model = NormalizedModel(inspectable_vit(tiny_torchvision_vit(num_layers=3)),
                                (0.5,) * 3, (0.5,) * 3).eval()
        blocks = [f"encoder.layers.encoder_layer_{i}" for i in (2, 1, 0)]
        expect = ("heads.head", *blocks, "conv_proj")
    stages = default_cascade(model)
    assert stages == expect
    copies = dict(cascade(model, stages, seed=1))
    previous = copies["original"]
    for stage in stages:
        now = _changed(previous, copies[stage])
        own = {f"net.{stage}.{n}" for n, m in model.net.get_submodule(stage).named_parameters()}
        assert now and now <= own, (stage, now - own)
        if stage in blocks:
            assert any(n.endswith(("query.weight", "q_proj.weight", "in_proj_weight"))
                       for n in now), now
            if kind == "torchvision":
                assert {f"net.{stage}.self_attention.in_proj_weight",
                        f"net.{stage}.self_attention.in_proj_bias"} <= now
        previous = copies[stage]
