"""Compact saliency stores: float16 with a per-image scale, and maps kept at a method's native
(lower) resolution and upsampled when read."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr

from xaipipe.jobs import ExplainJob, ModelSpec
from xaipipe.data.datasets import build_image_store
from xaipipe.data.predictions import predict
from xaipipe.data.image_store import open_images
from xaipipe.explain import explain
from xaipipe.explain.cams.gradcam import GradCAM
from xaipipe.pipeline.attribution import explain_to_store
from xaipipe.models import load_model
from xaipipe.store import open_saliency, write_saliency

HALF_EPS = 2.0 ** -11            # unit roundoff of float16 (10-bit mantissa)
BILINEAR = {"mode": "bilinear", "align_corners": False}
SPEC = ModelSpec("demo_resnet18", None, {"num_classes": 3, "width": 4})


def store_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_float16_error_is_relative_to_each_images_max_even_for_tiny_maps(tmp_path):
    rng = np.random.default_rng(0)
    mags = np.array([1e-9, 1e-6, 1.0, 3e4], dtype=np.float32)
    maps = (rng.standard_normal((4, 3, 16, 16)) * mags[:, None, None, None]).astype(np.float32)
    # plain float16 flushes the 1e-9 map to zero (smallest subnormal is ~6e-8)
    assert not np.any(maps[0].astype(np.float16))
    s = open_saliency(write_saliency(tmp_path / "h.zarr", maps, [0, 1, 2, 3], [0] * 4,
                                     dtype="float16", chunk_n=3))
    back = s.saliency.compute()
    assert back.dtype == np.float32 and s.saliency.chunks[0] == (3, 1)
    peak = np.abs(maps).reshape(4, -1).max(1)
    err = np.abs(back - maps).reshape(4, -1).max(1) / peak
    assert (err <= HALF_EPS).all(), err
    assert np.count_nonzero(back[0]) == np.count_nonzero(maps[0])     # nothing underflowed
    # stored values are the maps divided by their max |value|, so they lie in [-1, 1]
    g = zarr.open_group(str(tmp_path / "h.zarr"), mode="r")
    np.testing.assert_allclose(g["scale"][:], peak, rtol=1e-7)
    stored = g["saliency"][:]
    assert stored.dtype == np.float16 and np.abs(stored).reshape(4, -1).max(1).tolist() == [1] * 4
    xr = pytest.importorskip("xarray")                    # other tools read it as well
    ds = xr.open_zarr(tmp_path / "h.zarr")
    np.testing.assert_array_equal((ds["saliency"].astype("float32") * ds["scale"]).values, back)


def test_all_zero_map_round_trips_with_scale_one(tmp_path):
    maps = np.zeros((2, 1, 4, 4), np.float32)
    maps[1, 0, 1, 2] = -0.5
    s = open_saliency(write_saliency(tmp_path / "z.zarr", maps, [3, 4], [0, 0], dtype="float16"))
    np.testing.assert_array_equal(s.saliency.compute(), maps)
    g = zarr.open_group(str(tmp_path / "z.zarr"), mode="r")
    assert g["scale"][:].tolist() == [1.0, 0.5]


def test_scale_array_and_attrs_only_for_float16(tmp_path):
    maps = torch.randn(3, 2, 5, 5)
    for dtype in ("float32", "float16"):
        write_saliency(tmp_path / f"{dtype}.zarr", maps, [0, 1, 2], [0, 1, 0], dtype=dtype)
        g = zarr.open_group(str(tmp_path / f"{dtype}.zarr"), mode="r")
        assert ("scale" in g) == (dtype == "float16")
        assert g["saliency"].dtype == np.dtype(dtype)
        s = open_saliency(tmp_path / f"{dtype}.zarr")
        assert s.attrs["dtype"] == dtype and s.attrs.get("scale") == (
            "max_abs" if dtype == "float16" else None)
        assert "scale" not in s.extras
    np.testing.assert_array_equal(open_saliency(tmp_path / "float32.zarr").saliency.compute(),
                                  maps.numpy())


def test_float16_shards_read_as_one(tmp_path):
    a = torch.randn(3, 1, 6, 6) * 1e-8
    b = torch.randn(2, 1, 6, 6) * 1e3
    write_saliency(tmp_path / "a.zarr", a, [0, 1, 2], [0, 0, 0], dtype="float16", chunk_n=2)
    write_saliency(tmp_path / "b.zarr", b, [3, 4], [1, 1], dtype="float16", chunk_n=2)
    s = open_saliency([tmp_path / "a.zarr", tmp_path / "b.zarr"])
    assert s.index.tolist() == [0, 1, 2, 3, 4] and s.saliency.chunks[0] == (2, 1, 2)
    want = torch.cat([a, b]).numpy()
    back = s.saliency.compute()
    peak = np.abs(want).reshape(5, -1).max(1)
    assert (np.abs(back - want).reshape(5, -1).max(1) <= HALF_EPS * peak).all()


def test_native_maps_are_upsampled_when_read_and_shards_too(tmp_path):
    cams = torch.rand(5, 1, 3, 4)
    kw = dict(image_size=(12, 16), upsample=BILINEAR)
    write_saliency(tmp_path / "a.zarr", cams[:3], [0, 1, 2], [0] * 3, chunk_n=2, **kw)
    write_saliency(tmp_path / "b.zarr", cams[3:], [3, 4], [0] * 2, dtype="float32", **kw)
    s = open_saliency([tmp_path / "a.zarr", tmp_path / "b.zarr"])
    assert s.attrs["image_size"] == [12, 16] and s.attrs["upsample"] == BILINEAR
    assert s.saliency.shape == (5, 1, 12, 16) and s.saliency.chunks[0] == (2, 1, 2)
    want = F.interpolate(cams, size=(12, 16), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(s.saliency.compute(), want.numpy(), atol=1e-6)
    np.testing.assert_array_equal(open_saliency(tmp_path / "a.zarr", native=True)
                                  .saliency.compute(), cams[:3].numpy())
    with pytest.raises(ValueError, match="upsample"):
        write_saliency(tmp_path / "c.zarr", cams, range(5), [0] * 5, image_size=(12, 16))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A 64x64 shapes split and a random demo model (its GradCAM layer is 4x4 there)."""
    d = tmp_path_factory.mktemp("compact")
    cfg = {"kind": "shapes", "image_size": 64, "num_classes": 3, "train": 0, "val": 5}
    build_image_store("s", cfg, "original", {}, d / "images.zarr", None, progress=False)
    torch.manual_seed(0)
    model = load_model("demo_resnet18", weights="random", num_classes=3, width=4)
    torch.save(model.net.state_dict(), d / "w.pt")
    predict(model, open_images(d / "images.zarr"), progress=False).to_parquet(d / "all.parquet")
    return d, model


@pytest.mark.parametrize("dtype,keepbits", [("float32", None), ("float16", None),
                                            ("float16", 7)])
def test_gradcam_store_keeps_native_maps_and_reads_back_todays_maps(shapes, tmp_path, dtype,
                                                                    keepbits):
    d, model = shapes
    job = ExplainJob(method="gradcam", params=GradCAM.check({}), model=SPEC, target="label",
                     max_images=(None,), split="val", seed=0, device="cpu", batch_size=2,
                     dtype=dtype, provenance={"method": "gradcam"}, keepbits=keepbits)
    explain_to_store(tmp_path / "g.zarr", d / "images.zarr", [d / "all.parquet"], [d / "w.pt"],
                     job, progress=False)
    s = open_saliency(tmp_path / "g.zarr")
    images = open_images(d / "images.zarr")
    x = images.tensor(images.positions(s.index))
    today = explain("gradcam", model, x, torch.from_numpy(s.target))
    assert today.shape == (5, 1, 64, 64)                       # public API: upsampled
    assert s.attrs["image_size"] == [64, 64] and s.attrs["upsample"] == BILINEAR
    assert s.saliency.shape == (5, 1, 64, 64) and s.saliency.chunks[0] == (2, 2, 1)
    native = open_saliency(tmp_path / "g.zarr", native=True).saliency.compute()
    assert native.shape == (5, 1, 4, 4)
    back = s.saliency.compute()
    if dtype == "float32":
        np.testing.assert_allclose(back, today.numpy(), atol=1e-6, rtol=0)
        # the native store is smaller than the same maps stored upsampled
        write_saliency(tmp_path / "full.zarr", today, s.index, s.target, chunk_n=2)
        assert store_bytes(tmp_path / "g.zarr") < store_bytes(tmp_path / "full.zarr")
        big = 4 * 64 * 64 * 5
        assert store_bytes(tmp_path / "g.zarr") < big / 10
    else:
        peak = today.abs().flatten(1).max(1).values.numpy()
        err = np.abs(back - today.numpy()).reshape(5, -1).max(1)
        tol = HALF_EPS if keepbits is None else 2.0 ** -(keepbits + 1) + HALF_EPS
        assert (err <= tol * peak + 1e-6).all()
        assert s.attrs.get("keepbits") == keepbits


def test_round_mantissa_is_nearest_with_k_bits_ties_to_even():
    """Against float64 arithmetic over every finite float16: the nearest multiple of the
    k-bit spacing 2^(e − k) of the value's binade (subnormals: e = −14), ties to even."""
    from xaipipe.store import round_mantissa
    x = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    x = x[np.isfinite(x)]
    x64 = x.astype(np.float64)
    mag = np.abs(x64)
    e = np.where(mag > 0, np.floor(np.log2(np.where(mag > 0, mag, 1))), -14).clip(-14, None)
    for k in (1, 4, 8, 9):
        q = 2.0 ** (e - k)
        want = np.round(x64 / q) * q                  # numpy rounds halves to even
        got = round_mantissa(x, k)
        ok = np.isfinite(want) & (np.abs(want) <= 65504)
        np.testing.assert_array_equal(got.astype(np.float64)[ok], want[ok], err_msg=f"k={k}")
        assert not np.any(got.view(np.uint16) & ((1 << (10 - k)) - 1))   # low bits cleared
    assert round_mantissa(x, 10) is x


def test_keepbits_stores_are_smaller_within_their_error_and_say_so(tmp_path):
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((4, 3, 32, 32)).astype(np.float32) * np.float32(1e-4)
    full = write_saliency(tmp_path / "f.zarr", maps, [0, 1, 2, 3], [0] * 4, dtype="float16")
    kept = write_saliency(tmp_path / "k.zarr", maps, [0, 1, 2, 3], [0] * 4, dtype="float16",
                          keepbits=6)
    assert store_bytes(kept) < 0.85 * store_bytes(full)
    back = open_saliency(kept).saliency.compute()
    peak = np.abs(maps).reshape(4, -1).max(1)[:, None, None, None]
    # 2^-7 of each value from the mantissa rounding, plus float16's own 2^-11 of the max
    assert np.all(np.abs(back - maps) <= (2.0 ** -7 + 2.0 ** -11) * peak * (1 + 1e-6))
    assert zarr.open_group(str(kept), mode="r").attrs["keepbits"] == 6
    assert "keepbits" not in zarr.open_group(str(full), mode="r").attrs
    for bad in (dict(dtype="float32", keepbits=8), dict(dtype="float16", keepbits=0)):
        with pytest.raises(ValueError, match="keepbits"):
            write_saliency(tmp_path / "bad.zarr", maps, [0, 1, 2, 3], [0] * 4, **bad)
        assert not (tmp_path / "bad.zarr").exists()
