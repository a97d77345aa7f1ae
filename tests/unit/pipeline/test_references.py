"""The LPI reference store: built from an image store's training split, read back exactly."""
import torch

from xaipipe.data.datasets import build_image_store
from xaipipe.data.image_store import open_images
from xaipipe.explain import lpi_references
from xaipipe.models import load_model
from xaipipe.pipeline.references import read_lpi_references, write_lpi_references


def test_reference_store_round_trip(tmp_path):
    cfg = {"kind": "shapes", "image_size": 32, "num_classes": 3, "train": 24, "val": 2}
    build_image_store("s", cfg, "original", {}, tmp_path / "o.zarr", progress=False)
    train = open_images(tmp_path / "o.zarr", "train")
    torch.manual_seed(0)
    model = load_model("demo_resnet18", weights="random", num_classes=3, width=4)
    ref = lpi_references(model, train, n_references=4, n_clusters=2, seed=0, batch_size=5)
    write_lpi_references(tmp_path / "r.zarr", ref, {"n_references": 4, "n_clusters": 2})
    back = read_lpi_references(tmp_path / "r.zarr")
    assert torch.equal(back["references"], ref["references"])     # training images: lossless
    assert torch.equal(back["references"][1, 2], train.tensor([int(ref["index"][1, 2])])[0])
    for k in ("density", "index", "centres", "counts"):
        assert torch.equal(back[k], ref[k]), k
    assert back["attrs"]["n_clusters"] == 2 and back["attrs"]["kind"] == "lpi_references"
    assert not any(p.name.startswith(".r.zarr") for p in tmp_path.iterdir())  # no temporaries
