"""References read from files: the LPI reference store (built from an image store's training
split, read back exactly) and the explain runner's references (Expected Gradients' training
pool, LPI's reference set)."""
import numpy as np
import pandas as pd
import pytest
import torch

from helpers.jobs import SPEC, explain_job
from xaipipe.data.datasets import build_image_store
from xaipipe.data.image_store import open_images
from xaipipe.data.predictions import predict
from xaipipe.explain import explain, get_method, lpi_references
from xaipipe.jobs import ReferenceSetJob
from xaipipe.models import load_model
from xaipipe.pipeline import explain_store, lpi_reference_set
from xaipipe.pipeline.references import (TrainingPool, read_lpi_references, reference_params,
                                         write_lpi_references)
from xaipipe.store import open_saliency


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


# -- the explain runner with references read from files ----------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("refs")
    cfg = {"kind": "shapes", "image_size": 32, "num_classes": 3, "train": 30, "val": 4}
    build_image_store("s", cfg, "original", {}, d / "o.zarr", progress=False)
    torch.manual_seed(0)
    model = load_model("demo_resnet18", weights="random", num_classes=3, width=4)
    torch.save(model.net.state_dict(), d / "w.pt")
    predict(model, open_images(d / "o.zarr"), progress=False).to_parquet(d / "all.parquet")
    return d, model


def stored(path):
    s = open_saliency(path)
    return torch.from_numpy(np.asarray(s.saliency[...])), s


def test_expected_gradients_draws_from_the_training_split(data, tmp_path):
    """The workflow's pool (the store's training split, read lazily) gives the maps the API
    gives with the same training images as a tensor pool; only the drawn rows are read."""
    d, model = data
    params = get_method("expected_gradients").check({"samples": 4, "steps": 3})
    job = explain_job(method="expected_gradients", params=params, seed=3)
    explain_store(tmp_path / "eg.zarr", d / "o.zarr", [d / "all.parquet"], [d / "w.pt"], job,
                  progress=False, references=[str(d / "o.zarr")])
    maps, s = stored(tmp_path / "eg.zarr")
    assert s.attrs["references"] == str(d / "o.zarr")
    assert s.attrs["parameters"]["references"] is None       # plain data in the attributes
    val, train = open_images(d / "o.zarr", "val"), open_images(d / "o.zarr", "train")
    x = val.tensor(np.arange(4))
    t = torch.tensor(pd.read_parquet(d / "all.parquet")["label"].to_numpy())
    ref = explain("expected_gradients", model, x, t, image_ids=val.index, seed=3, samples=4,
                  steps=3, references=train.tensor(np.arange(len(train))))
    assert torch.allclose(maps, ref, rtol=1e-5, atol=1e-7)

    class Counting(TrainingPool):
        rows = []

        def take(self, rows):
            self.rows.append(len(rows))
            return super().take(rows)

    pool = Counting(train)
    explain("expected_gradients", model, x, t, image_ids=val.index, seed=3, samples=4, steps=3,
            references=pool)
    assert pool.rows == [4] * 4 and pool.shape == (30, 3, 32, 32)
    with pytest.raises(ValueError, match="needs references"):
        explain_store(tmp_path / "x.zarr", d / "o.zarr", [d / "all.parquet"], [d / "w.pt"],
                      job, progress=False, references=[])
    assert not (tmp_path / "x.zarr").exists()


def test_lpi_reference_set_then_lpi_maps(data, tmp_path):
    """Rule lpi_references then an LPI job: the set is the API's on the training split (ids in
    ``index``), and the maps are the API's with that set."""
    d, model = data
    job = ReferenceSetJob(SPEC, n_references=5, n_clusters=1, seed=0, device="cpu",
                          batch_size=7)
    lpi_reference_set(str(tmp_path / "r.zarr"), str(d / "o.zarr"), [str(d / "w.pt")], job)
    back = read_lpi_references(tmp_path / "r.zarr")
    train = open_images(d / "o.zarr", "train")
    api = lpi_references(model, train, 5, 1, 0)
    assert torch.equal(back["references"], api["references"])
    assert torch.equal(back["index"], torch.from_numpy(train.index[api["index"].numpy()]))
    assert torch.allclose(back["density"], api["density"])
    assert back["attrs"]["n_training_images"] == 30

    params = get_method("lpi").check({"samples": 5, "steps": 3, "recalibrate": "valid_ip"})
    ejob = explain_job(method="lpi", params=params, seed=1)
    explain_store(tmp_path / "lpi.zarr", d / "o.zarr", [d / "all.parquet"], [d / "w.pt"], ejob,
                  progress=False, references=str(tmp_path / "r.zarr"))
    maps, _ = stored(tmp_path / "lpi.zarr")
    val = open_images(d / "o.zarr", "val")
    t = torch.tensor(pd.read_parquet(d / "all.parquet")["label"].to_numpy())
    ref = explain("lpi", model, val.tensor(np.arange(4)), t, image_ids=val.index, seed=1,
                  **{**params.as_dict(), **reference_params("lpi", tmp_path / "r.zarr")})
    assert torch.allclose(maps, ref, rtol=1e-5, atol=1e-7) and (maps >= 0).all()


def test_score_jobs_read_a_reference_store_once_per_process(data, tmp_path, monkeypatch):
    """The randomisation metric's rebuilt method (one per Dask chunk) reads the LPI reference
    store once per process and device, and again after the store is rewritten; the maps are
    the same either way."""
    import shutil

    from xaipipe.pipeline import references as refs_mod
    from xaipipe.pipeline import scoring
    d, model = data
    train = open_images(d / "o.zarr", "train")
    ref = lpi_references(model, train, n_references=3, n_clusters=1, seed=0, batch_size=8)
    write_lpi_references(tmp_path / "r.zarr", ref, {"n_references": 3, "n_clusters": 1})
    reads = []
    real = refs_mod.reference_params

    def counted(*a, **kw):
        reads.append(a[1])
        return real(*a, **kw)
    monkeypatch.setattr(refs_mod, "reference_params", counted)
    scoring._references.cache_clear()
    explainer = ("lpi", '{"samples": 2, "steps": 2}', 0, str(tmp_path / "r.zarr"))
    x = open_images(d / "o.zarr").tensor([0, 1])
    t, ids = torch.tensor([0, 1]), np.array([0, 1])
    first = scoring._attribute_fn(explainer, "cpu")(model, x, t, ids)
    again = scoring._attribute_fn(explainer, "cpu")(model, x, t, ids)
    assert len(reads) == 1 and torch.equal(first, again)
    shutil.rmtree(tmp_path / "r.zarr")                 # rewritten: a new folder, read again
    write_lpi_references(tmp_path / "r.zarr", ref, {"n_references": 3, "n_clusters": 1})
    third = scoring._attribute_fn(explainer, "cpu")(model, x, t, ids)
    assert len(reads) == 2 and torch.equal(first, third)
    scoring._references.cache_clear()
