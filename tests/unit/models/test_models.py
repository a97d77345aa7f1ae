import json

import pytest
import torch

from xaipipe.data.datasets import build_image_store
from xaipipe.errors import ConfigError, WeightsNotFoundError
from xaipipe.models import Normalize, available_models, load_model
from xaipipe.models.train import train_demo_model

ISSUE_MODELS = ["resnet18", "resnet34", "resnet50", "vgg16", "vgg19", "mobilenet_v3_small",
                "vit_b_16"]


def test_registry_has_the_issue_architectures():
    assert set(ISSUE_MODELS) <= set(available_models())
    assert "demo_resnet18" in available_models()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_normalisation_is_the_first_module(name):
    m = load_model(name, weights="random")
    assert isinstance(list(m.children())[0], Normalize) and not m.training
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m(x), m.net((x - m.normalize.mean) / m.normalize.std))
    assert m.mean == pytest.approx((0.485, 0.456, 0.406))


def test_missing_weights_name_the_searched_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"never downloaded. Searched: .*hub/checkpoints/resnet50-11ad3fa6.pth"):
        load_model("resnet50")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_model("resnet18", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="unknown weights 'IMAGENET1K_V7'"):
        load_model("resnet18", weights="IMAGENET1K_V7")
    with pytest.raises(ConfigError, match="unknown model 'resnet7'"):
        load_model("resnet7")


def test_weights_from_file_and_from_torchvision_cache(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ref = load_model("resnet18", weights="random")
    path = tmp_path / "stand_in.pth"
    torch.save(ref.net.state_dict(), path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x)
        assert torch.allclose(load_model("resnet18", weights=str(path))(x), expected)
        # a checkpoint dict with a state_dict entry
        torch.save({"state_dict": ref.net.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
        assert torch.allclose(load_model("resnet18", weights=str(tmp_path / "ckpt.pt"))(x),
                              expected)
        # torchvision's cache: $TORCH_HOME/hub/checkpoints/<file name of the enum's URL>
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        cache = tmp_path / "torch" / "hub" / "checkpoints"
        cache.mkdir(parents=True)
        torch.save(ref.net.state_dict(), cache / "resnet18-f37072fd.pth")
        assert torch.allclose(load_model("resnet18")(x), expected)
        assert torch.allclose(load_model("resnet18", weights="IMAGENET1K_V1")(x), expected)


def test_weights_only_loading_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": Normalize()}, path)
    with pytest.raises(WeightsNotFoundError, match="cannot load weights"):
        load_model("resnet18", weights=str(path))
    torch.save(load_model("resnet34", weights="random").net.state_dict(), tmp_path / "r34.pth")
    with pytest.raises(WeightsNotFoundError, match="do not fit model 'resnet18'"):
        load_model("resnet18", weights=str(tmp_path / "r34.pth"))


def test_train_demo_model_writes_weights_and_accuracy(tmp_path):
    cfg = {"kind": "shapes", "image_size": 32, "num_classes": 3, "train": 96, "val": 32}
    build_image_store("s", cfg, "original", {}, tmp_path / "o.zarr", progress=False)
    out = tmp_path / "m"
    res = train_demo_model("demo_resnet18", tmp_path / "o.zarr", out / "weights.pt",
                           out / "model.json", epochs=1, batch_size=32, width=4, log=lambda s: None)
    info = json.loads((out / "model.json").read_text())
    assert info["val_accuracy"] == res["val_accuracy"] and 0 <= info["val_accuracy"] <= 1
    assert info["kwargs"] == {"num_classes": 3, "width": 4}
    state = torch.load(out / "weights.pt", weights_only=True)
    assert "fc.weight" in state
    model = load_model("demo_resnet18", weights=str(out / "weights.pt"))   # kwargs from json
    assert model.net.fc.out_features == 3
    assert model.layer("layer4.1.conv2") is model.net.layer4[1].conv2
    with pytest.raises(RuntimeError, match="min_accuracy"):
        train_demo_model("demo_resnet18", tmp_path / "o.zarr", out / "w2.pt", out / "j2.json",
                         epochs=1, batch_size=32, width=4, min_accuracy=1.0, log=lambda s: None)
    assert not (out / "w2.pt").exists()


def test_training_is_deterministic(tmp_path):
    cfg = {"kind": "shapes", "image_size": 32, "num_classes": 3, "train": 64, "val": 16}
    build_image_store("s", cfg, "original", {}, tmp_path / "o.zarr", progress=False)
    states = []
    for run in ("a", "b"):
        train_demo_model("demo_resnet18", tmp_path / "o.zarr", tmp_path / run / "w.pt",
                         tmp_path / run / "m.json", epochs=1, batch_size=16, width=4,
                         log=lambda s: None)
        states.append(torch.load(tmp_path / run / "w.pt", weights_only=True))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def _torchvision_small_resnet(layers, widths, num_classes):
    """The demo network built from torchvision's own ResNet/BasicBlock (what models/demo.py
    subclassed before it was written out to keep torchvision out of every job's start-up)."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock, ResNet

    class TV(ResNet):
        def __init__(self):
            nn.Module.__init__(self)
            self._norm_layer, self.inplanes, self.dilation = nn.BatchNorm2d, widths[0], 1
            self.groups, self.base_width = 1, 64
            self.conv1 = nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False)
            self.bn1, self.relu = nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
            self.maxpool = nn.Identity()
            self.layer1 = self._make_layer(BasicBlock, widths[0], layers[0])
            self.layer2 = self._make_layer(BasicBlock, widths[1], layers[1], stride=2)
            self.layer3 = self._make_layer(BasicBlock, widths[2], layers[2], stride=2)
            self.layer4 = self._make_layer(BasicBlock, widths[3], layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(widths[3], num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
    return TV()


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_demo_net_is_torchvision_resnet_bit_for_bit(arch):
    """Same seed -> the same modules, weights, outputs and gradients as torchvision's classes."""
    import sys

    from xaipipe.models.demo import DEMO_LAYOUTS, build_demo_net
    width, classes = 8, 5
    torch.manual_seed(3)
    ours = build_demo_net(arch, classes, width)
    torch.manual_seed(3)
    ref = _torchvision_small_resnet(DEMO_LAYOUTS[arch], [width * 2**k for k in range(4)], classes)
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in ref.named_modules()]
    sa, sb = ours.state_dict(), ref.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ya, yb = ours.train()(x), ref.train()(x)       # train mode: batch statistics
    assert torch.equal(ya, yb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad), n
    assert torch.equal(ours.eval()(x), ref.eval()(x))
    assert "xaipipe.models.demo" in sys.modules


def test_the_demo_model_path_imports_no_torchvision():
    """Importing torchvision imports torch._dynamo (~2.6 s per job); a run on the demo models
    must not pay it (torchvision architectures and resizing import it where they need it);
    the stores' provenance still records torchvision's version."""
    import subprocess
    import sys
    code = ("import sys; import xaipipe.pipeline; from xaipipe.models import load_model; "
            "load_model('demo_resnet18', weights='random', num_classes=3, width=4); "
            "from xaipipe.zarrio import provenance; "
            "assert provenance()['torchvision_version']; "
            "print(sorted(m for m in ('torchvision', 'torch._dynamo', 'scipy.interpolate') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_load_spec_loads_each_model_once_per_process(tmp_path, monkeypatch):
    """Dask workers call load_spec for every chunk: one load per (spec, weights file,
    device), whatever the path's spelling; another file or spec is another model."""
    import torch

    from xaipipe.jobs import ModelSpec
    from xaipipe.models import load_model
    from xaipipe.models.spec import _cached, load_spec
    for name in ("a.pt", "b.pt"):
        torch.save(load_model("demo_resnet18", weights="random", num_classes=4,
                              width=4).net.state_dict(), tmp_path / name)
    _cached.cache_clear()
    spec = ModelSpec("demo_resnet18", None, {"num_classes": 4, "width": 4})
    first = load_spec(spec, [tmp_path / "a.pt"], "cpu")
    monkeypatch.chdir(tmp_path)
    assert load_spec(spec, ["a.pt"], "cpu") is first                 # relative: the same file
    assert _cached.cache_info().misses == 1
    assert load_spec(spec, [tmp_path / "b.pt"], "cpu") is not first
    other = ModelSpec("demo_resnet18", None, {"num_classes": 4, "width": 8})
    torch.save(load_model("demo_resnet18", weights="random", num_classes=4,
                          width=8).net.state_dict(), tmp_path / "c.pt")
    assert load_spec(other, [tmp_path / "c.pt"], "cpu") is not first
    assert _cached.cache_info().misses == 3 and not first.training


def test_the_demo_vit_trains_with_adamw_and_loads_for_the_vit_methods(tmp_path):
    """``optimizer: adamw`` (the demo ViT's recipe) is deterministic for a seed, differs from
    SGD, and the weights load back as a ViT the transformer methods read (conv stem, patch
    grid of the config); the plan leaves the option out of a job at its default, so the demo
    CNNs' training jobs keep their signature."""
    from xaipipe.config import ROOT, load_config
    from xaipipe.config.plan import Plan
    from xaipipe.models.vit import ConvStem, vit_structure
    cfg = {"kind": "shapes", "image_size": 64, "num_classes": 3, "train": 32, "val": 8}
    build_image_store("s", cfg, "original", {}, tmp_path / "o.zarr", progress=False)
    states = {}
    for run, opt in (("a", "adamw"), ("b", "adamw"), ("c", "sgd")):
        info = train_demo_model("demo_vit", tmp_path / "o.zarr", tmp_path / run / "w.pt",
                                tmp_path / run / "model.json", epochs=1, batch_size=16, width=16,
                                lr=1e-3, weight_decay=0.05, optimizer=opt, log=lambda s: None)
        assert info["params"]["optimizer"] == opt
        states[run] = torch.load(tmp_path / run / "w.pt", weights_only=True)
    assert all(torch.equal(states["a"][k], states["b"][k]) for k in states["a"])
    assert not all(torch.equal(states["a"][k], states["c"][k]) for k in states["a"])
    vit = load_model("demo_vit", weights=str(tmp_path / "a" / "w.pt"))
    assert isinstance(vit.net.hf.vit.embeddings.patch_embeddings.projection, ConvStem)
    st = vit_structure(vit)
    assert (st.layers, st.heads, st.patch_size, st.grid(64, 64)) == (4, 4, 8, (8, 8))
    assert vit(torch.rand(2, 3, 64, 64)).shape == (2, 3)
    plan = Plan(load_config(ROOT / "config.yaml"))
    assert "optimizer" not in plan.train_job("shapes_resnet18").params
    c = load_config(ROOT / "config.yaml", overrides={"models": {"shapes_resnet18": {
        "train": {"optimizer": "adamw"}}}})
    assert Plan(c).train_job("shapes_resnet18").params["optimizer"] == "adamw"
