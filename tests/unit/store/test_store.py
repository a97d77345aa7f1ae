import numpy as np
import pytest
import torch

from xaipipe.errors import DataError
from xaipipe.store import SaliencyWriter, open_saliency, write_saliency


def test_round_trip_float32(tmp_path):
    maps = torch.randn(5, 3, 8, 8)
    ids, tg = np.array([4, 8, 15, 16, 23]), np.array([0, 1, 2, 1, 0])
    path = write_saliency(tmp_path / "s.zarr", maps, ids, tg, attrs={"method": "ig"},
                          extras={"completeness_gap": torch.arange(5.0)}, chunk_n=2)
    s = open_saliency(path)
    assert s.saliency.chunks[0] == (2, 2, 1)
    np.testing.assert_array_equal(s.saliency.compute(), maps.numpy())
    np.testing.assert_array_equal(s.index, ids)
    np.testing.assert_array_equal(s.target, tg)
    np.testing.assert_array_equal(s.extras["completeness_gap"], np.arange(5.0))
    assert s.attrs["method"] == "ig" and s.attrs["dtype"] == "float32"
    assert "xaipipe_version" in s.attrs and "created" in s.attrs


def test_float16_keeps_tiny_gradients(tmp_path):
    maps = torch.randn(3, 1, 4, 4) * torch.tensor([1e-9, 1.0, 1e4]).view(3, 1, 1, 1)
    s = open_saliency(write_saliency(tmp_path / "h.zarr", maps, [0, 1, 2], [0, 0, 0],
                                     dtype="float16"))
    back = s.saliency.compute()
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, maps.numpy(), rtol=1e-3, atol=0)


def test_xarray_opens_with_index_coordinate(tmp_path):
    xr = pytest.importorskip("xarray")
    write_saliency(tmp_path / "x.zarr", torch.zeros(2, 3, 4, 4), [7, 9], [1, 1])
    ds = xr.open_zarr(tmp_path / "x.zarr", consolidated=False)
    assert ds["saliency"].dims == ("index", "channel", "y", "x")
    assert ds["index"].values.tolist() == [7, 9]
    assert ds["saliency"].sel(index=9).shape == (3, 4, 4)


def test_failed_write_leaves_no_store(tmp_path):
    path = tmp_path / "fail.zarr"
    with pytest.raises(RuntimeError, match="boom"):
        with SaliencyWriter(path, 4) as w:
            w.write(torch.ones(2, 3, 4, 4), [0, 1], [0, 0])
            raise RuntimeError("boom")
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_incomplete_or_nan_store_is_refused(tmp_path):
    path = tmp_path / "short.zarr"
    with pytest.raises(DataError, match="2 of 4 images"):
        with SaliencyWriter(path, 4) as w:
            w.write(torch.ones(2, 3, 4, 4), [0, 1], [0, 0])
    assert not path.exists()
    bad = torch.ones(2, 3, 4, 4)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match=r"non-finite saliency for image ids \[6\]"):
        write_saliency(tmp_path / "nan.zarr", bad, [5, 6], [0, 0])
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_old_store_atomically(tmp_path):
    path = tmp_path / "s.zarr"
    write_saliency(path, torch.zeros(2, 3, 4, 4), [0, 1], [0, 0])
    with pytest.raises(RuntimeError):
        with SaliencyWriter(path, 2) as w:
            w.write(torch.ones(1, 3, 4, 4), [0], [0])
            raise RuntimeError("x")
    assert open_saliency(path).saliency.compute().max() == 0      # old store intact
    write_saliency(path, torch.ones(2, 3, 4, 4), [0, 1], [0, 0])
    assert open_saliency(path).saliency.compute().min() == 1


def test_shards_read_back_as_one_array(tmp_path):
    a = write_saliency(tmp_path / "a.zarr", torch.zeros(2, 3, 4, 4), [0, 1], [0, 0],
                       attrs={"method": "m", "shard": 0})
    b = write_saliency(tmp_path / "b.zarr", torch.ones(3, 3, 4, 4), [2, 3, 4], [1, 1, 1],
                       attrs={"method": "m", "shard": 1})
    s = open_saliency([a, b])
    assert s.saliency.shape == (5, 3, 4, 4) and s.index.tolist() == [0, 1, 2, 3, 4]
    c = write_saliency(tmp_path / "c.zarr", torch.ones(1, 3, 4, 4), [9], [1],
                       attrs={"method": "other"})
    with pytest.raises(DataError, match="differ"):
        open_saliency([a, c])
    with pytest.raises(DataError, match="does not exist"):
        open_saliency(tmp_path / "missing.zarr")


def test_extras_keep_trailing_dims_and_kinds_across_shards(tmp_path):
    xr = pytest.importorskip("xarray")
    hist = torch.rand(4, 3, 2)                                    # e.g. a (T, K) history
    extras = {"gap": torch.arange(4.0, dtype=torch.float64), "curve": torch.rand(4, 5),
              "history": hist, "steps": np.array([1, 2, 3, 4], np.int32),
              "converged": np.array([True, False, True, True])}
    with SaliencyWriter(tmp_path / "a.zarr", 4, {"method": "m"}, chunk_n=2) as w:
        for sl in (slice(0, 3), slice(3, 4)):
            w.write(torch.zeros(sl.stop - sl.start, 1, 4, 4), np.arange(4)[sl], np.zeros(4)[sl],
                    {k: v[sl] for k, v in extras.items()})
    b = write_saliency(tmp_path / "b.zarr", torch.zeros(2, 1, 4, 4), [4, 5], [0, 0],
                       {"method": "m"}, {k: v[:2] for k, v in extras.items()})
    s = open_saliency(tmp_path / "a.zarr")
    assert {k: (v.shape, v.dtype) for k, v in s.extras.items()} == {
        "gap": ((4,), np.float32), "curve": ((4, 5), np.float32),
        "history": ((4, 3, 2), np.float32), "steps": ((4,), np.int64),
        "converged": ((4,), np.bool_)}
    np.testing.assert_array_equal(s.extras["history"], hist.numpy())
    np.testing.assert_array_equal(s.extras["converged"], extras["converged"])
    both = open_saliency([tmp_path / "a.zarr", b])
    assert both.extras["history"].shape == (6, 3, 2)
    np.testing.assert_array_equal(both.extras["steps"], [1, 2, 3, 4, 1, 2])
    ds = xr.open_zarr(tmp_path / "a.zarr")
    assert ds["history"].dims == ("index", "history_dim1", "history_dim2")
    assert ds["curve"].sel(index=2).shape == (5,)


def test_extras_must_agree_between_batches(tmp_path):
    with pytest.raises(DataError, match="extra 'curve' is float32"):
        with SaliencyWriter(tmp_path / "s.zarr", 2) as w:
            w.write(torch.zeros(1, 1, 2, 2), [0], [0], {"curve": torch.zeros(1, 5)})
            w.write(torch.zeros(1, 1, 2, 2), [1], [0], {"curve": torch.zeros(1, 6)})
    with pytest.raises(DataError, match="differ from the first batch"):
        with SaliencyWriter(tmp_path / "s.zarr", 2) as w:
            w.write(torch.zeros(1, 1, 2, 2), [0], [0], {"gap": torch.zeros(1)})
            w.write(torch.zeros(1, 1, 2, 2), [1], [0])
    with pytest.raises(DataError, match="bad batch shapes"):
        write_saliency(tmp_path / "s.zarr", torch.zeros(2, 1, 2, 2), [0, 1], [0, 0],
                       extras={"gap": torch.zeros(3)})
    with pytest.raises(DataError, match="reserved"):
        write_saliency(tmp_path / "s.zarr", torch.zeros(2, 1, 2, 2), [0, 1], [0, 0],
                       extras={"scale": torch.zeros(2)})
    assert list(tmp_path.iterdir()) == []


def test_stores_open_in_xarray_without_warnings(tmp_path):
    import json
    import warnings

    xr = pytest.importorskip("xarray")
    from xaipipe.data.datasets import build_image_store

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_saliency(tmp_path / "s.zarr", torch.zeros(2, 3, 4, 4), [7, 9], [1, 1],
                       extras={"curve": torch.zeros(2, 3)}, dtype="float16")
        build_image_store("s", {"kind": "shapes", "image_size": 32, "train": 2, "val": 3},
                          "original", {}, tmp_path / "o.zarr", progress=False)
        (tmp_path / "s.zarr" / ".snakemake_timestamp").touch()     # as Snakemake leaves it
        ds = xr.open_zarr(tmp_path / "s.zarr")
        val = xr.open_zarr(tmp_path / "o.zarr", group="val")
        sal = open_saliency(tmp_path / "s.zarr")
    assert ds["index"].values.tolist() == [7, 9] and ds["curve"].shape == (2, 3)
    assert val["index"].values.tolist() == [0, 1, 2]
    assert val["images"].dims == ("index", "channel", "y", "x")
    assert sal.extras["curve"].shape == (2, 3)
    for store in ("s.zarr", "o.zarr"):                    # consolidated into the root zarr.json
        meta = json.loads((tmp_path / store / "zarr.json").read_text())
        assert meta["consolidated_metadata"]["metadata"]


def test_provenance_records_versions(tmp_path):
    import torchvision
    import zarr

    from xaipipe import __version__
    from xaipipe.zarrio import provenance, versions

    v = versions()
    assert v == {"xaipipe_version": __version__, "torch_version": torch.__version__,
                 "torchvision_version": torchvision.__version__,
                 "zarr_version": zarr.__version__, "numpy_version": np.__version__}
    assert provenance().keys() == {*v, "created"}
    s = open_saliency(write_saliency(tmp_path / "s.zarr", torch.zeros(1, 1, 2, 2), [0], [0]))
    assert {k: s.attrs[k] for k in v} == v and "created" in s.attrs
