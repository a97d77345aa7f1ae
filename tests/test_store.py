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


def test_empty_selection_gives_empty_store_and_scores(tmp_path):
    import torch as _t

    from xaipipe.data.datasets import build_image_store
    from xaipipe.metrics.runner import score_store

    path = write_saliency(tmp_path / "e.zarr", _t.zeros(0, 3, 32, 32), [], [])
    assert open_saliency(path).saliency.shape[0] == 0
    build_image_store("s", {"kind": "shapes", "image_size": 32, "train": 0, "val": 2},
                      "original", {}, tmp_path / "o.zarr", progress=False)
    df = score_store("insertion", {}, path, tmp_path / "o.zarr",
                     {"name": "demo_resnet18", "weights": "random", "width": 4},
                     tmp_path / "s.parquet", scheduler="synchronous")
    assert len(df) == 0 and (tmp_path / "s.parquet").exists()
