"""ImageNet ingestion: folder layouts, label formats, image modes, unreadable files, boxes."""
import logging

import numpy as np
import pytest
import scipy.io
from PIL import Image

from helpers.workflow import write_box_xml
from xaipipe.data.datasets import build_image_store, make_source, read_image, to_rgb
from xaipipe.data.sources.imagenet import boxes_mask, detect_format, map_boxes
from xaipipe.data.image_store import open_images
from xaipipe.errors import ConfigError, DataError

W, H = 40, 30                                    # every stand-in image is 40 x 30
WNIDS = ["n03000003", "n01000001", "n02000002"]  # label of image k (1-based): WNIDS[k % 3]
SORTED = sorted(WNIDS)
BAD = {5: "truncated", 7: "empty", 10: "text"}   # 1-based numbers of the unreadable files
GOOD_IDS = [k - 1 for k in range(1, 13) if k not in BAD]


def name(k: int) -> str:
    return f"ILSVRC2012_val_{k:08d}"


def wnid(k: int) -> str:
    return WNIDS[k % 3]


def _half(left, right, mode="RGB"):
    """A W x H image of ``mode``: left half one value, right half another."""
    a = np.empty((H, W, len(left)), np.uint8)
    a[:, : W // 2], a[:, W // 2:] = left, right
    return Image.fromarray(a if len(left) > 1 else a[..., 0], mode)


def _write_images(d):
    """The 12 stand-in files (one per mode and kind of bad file) and the expected RGB
    (H, W, 3) of each readable one (None: compare with a tolerance, see the test)."""
    d.mkdir(parents=True, exist_ok=True)
    want = {}
    Image.new("RGB", (W, H), (10, 200, 30)).save(d / f"{name(1)}.png")
    want[1] = np.full((H, W, 3), (10, 200, 30))
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(d / f"{name(2)}.JPEG", quality=95)
    want[2] = None                                          # red, up to JPEG error
    Image.new("L", (W, H), 77).save(d / f"{name(3)}.png")
    want[3] = np.full((H, W, 3), 77)
    p = _half((0,), (1,), "L").convert("P")                 # palette indices 0 | 1
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.info["transparency"] = 0
    p.save(d / f"{name(4)}.png", transparency=0)
    want[4] = np.concatenate([np.full((H, W // 2, 3), 255),  # transparent -> white
                              np.full((H, W // 2, 3), (200, 100, 50))], 1)
    noise = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(noise).save(d / f"{name(5)}.JPEG", quality=90)
    data = (d / f"{name(5)}.JPEG").read_bytes()
    (d / f"{name(5)}.JPEG").write_bytes(data[: len(data) // 2])          # truncated
    g16 = np.zeros((H, W), np.uint16)
    g16[10:20], g16[20:] = 32767, 65535                     # 65535 * 0.5 (rounded down)
    Image.fromarray(g16).save(d / f"{name(6)}.png")
    want[6] = np.repeat(np.where(g16 == 0, 0, np.where(g16 == 32767, 127, 255))[..., None], 3, 2)
    (d / f"{name(7)}.JPEG").write_bytes(b"")                               # zero bytes
    _half((200, 10, 20, 0), (200, 10, 20, 255), "RGBA").save(d / f"{name(8)}.png")
    want[8] = np.concatenate([np.full((H, W // 2, 3), 255),
                              np.full((H, W // 2, 3), (200, 10, 20))], 1)
    _half((50, 0), (50, 255), "LA").save(d / f"{name(9)}.png")
    want[9] = np.concatenate([np.full((H, W // 2, 3), 255), np.full((H, W // 2, 3), 50)], 1)
    (d / f"{name(10)}.JPEG").write_text("this is not an image\n")
    Image.new("RGB", (W, H), (1, 2, 3)).save(d / f"{name(11)}.JPEG", format="PNG")  # PNG
    want[11] = np.full((H, W, 3), (1, 2, 3))                # in a .JPEG: readable, kept
    Image.new("RGB", (W, H), (128, 128, 128)).save(d / f"{name(12)}.JPEG", quality=95)
    want[12] = None
    return want


def _files(d):
    return {int(f.stem[-8:]): f.name for f in d.iterdir() if f.stem.startswith("ILSVRC")}


def _tmlr(path, files):
    path.write_text("".join(f"{files[k]}\t{wnid(k)}\t0\t0\t{W}\t{H}\n"
                            for k in sorted(files, reverse=True)))   # order does not matter


def _devkit(d):
    """Ground truth + meta.mat whose ILSVRC ids are NOT in sorted-wnid order, with one
    non-leaf synset that must not become a class."""
    ilsvrc = {"n02000002": 1, "n03000003": 2, "n01000001": 3}
    d.mkdir(parents=True, exist_ok=True)
    (d / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{ilsvrc[wnid(k)]}\n" for k in range(1, 13)))
    syn = np.zeros(4, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"),
                             ("num_children", "O")])
    for i, (w, n) in enumerate([("n02000002", 0), ("n03000003", 0), ("n01000001", 0),
                                ("n09999999", 2)]):
        syn[i] = (i + 1, w, f"synset {w}", n)
    scipy.io.savemat(d / "meta.mat", {"synsets": syn})
    return d / "ILSVRC2012_validation_ground_truth.txt"


def _kaggle(path, files, boxes=None):
    rows = ["ImageId,PredictionString"]
    for k in sorted(files):
        b = (boxes or {}).get(k, f"{wnid(k)} 0 0 {W} {H}")
        rows.append(f"{name(k)},{b}")
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture
def imagenet(tmp_path):
    want = _write_images(tmp_path / "val")
    return tmp_path, want


def _build(tmp_path, cfg, out="o.zarr", pp=None, **kw):
    build_image_store("inet", cfg, "original", {}, tmp_path / out, progress=False,
                      preprocess_params=pp, chunk=4, **kw)
    return open_images(tmp_path / out, "val")


def test_modes_labels_and_skipped_files_tmlr(imagenet, caplog):
    tmp, want = imagenet
    _tmlr(tmp / "val_annotations.txt", _files(tmp / "val"))
    cfg = {"kind": "imagenet", "root": str(tmp), "labels": str(tmp / "val_annotations.txt")}
    with caplog.at_level(logging.WARNING, logger="xaipipe"):
        s = _build(tmp, cfg)
    # ids: positions in the sorted file list, with gaps where files were skipped
    assert s.index.tolist() == GOOD_IDS
    assert s.classes == SORTED
    assert s.labels.tolist() == [SORTED.index(wnid(i + 1)) for i in GOOD_IDS]
    imgs = s.read(np.arange(len(s))).transpose(0, 2, 3, 1).astype(int)
    got = dict(zip((i + 1 for i in GOOD_IDS), imgs))
    for k, w in want.items():
        if w is not None:
            np.testing.assert_array_equal(got[k], w, err_msg=f"image {k}")
    assert np.abs(got[2] - (255, 0, 0)).max() <= 8          # CMYK red, not inverted
    assert np.abs(got[12] - 128).max() <= 3
    assert s.masks is None
    # skipped files: named with their error, counted, logged
    attrs = s.attrs
    assert attrs["n_skipped"] == 3
    skipped = {x["file"].rsplit("/", 1)[-1]: x for x in attrs["skipped"]}
    assert sorted(skipped) == sorted(f"{name(k)}.JPEG" for k in BAD)
    assert [x["index"] for x in attrs["skipped"]] == [k - 1 for k in sorted(BAD)]
    assert "truncated" in skipped[f"{name(5)}.JPEG"]["error"]
    assert "empty" in skipped[f"{name(7)}.JPEG"]["error"]
    assert "identify" in skipped[f"{name(10)}.JPEG"]["error"]
    assert "skipped 3 unreadable images" in caplog.text
    assert all(f"{name(k)}.JPEG" in caplog.text for k in BAD)
    # an id is found by position lookup, whatever was skipped before it
    assert s.positions([11, 5]).tolist() == [8, 4]


def test_wnids_file_sets_the_sorted_class_order(imagenet):
    tmp, _ = imagenet
    _tmlr(tmp / "val_annotations.txt", _files(tmp / "val"))
    (tmp / "wnids.txt").write_text("n03000003\nn00000009\nn02000002\nn01000001\n")  # unsorted
    cfg = {"kind": "imagenet", "root": str(tmp), "labels": str(tmp / "val_annotations.txt"),
           "wnids": str(tmp / "wnids.txt"), "limit": 4}
    s = _build(tmp, cfg)
    classes = ["n00000009", "n01000001", "n02000002", "n03000003"]
    assert s.classes == classes
    assert s.index.tolist() == [0, 1, 2, 3]
    assert s.labels.tolist() == [classes.index(wnid(k)) for k in (1, 2, 3, 4)]
    (tmp / "wnids.txt").write_text("n03000003\nn02000002\n")        # n01000001 missing
    with pytest.raises(DataError, match="n01000001.*not in the class list"):
        _build(tmp, cfg, "b.zarr")


def test_devkit_ground_truth_with_meta_mat(imagenet):
    tmp, _ = imagenet
    gt = _devkit(tmp / "devkit" / "data")
    assert detect_format(gt) == "devkit"
    cfg = {"kind": "imagenet", "root": str(tmp), "labels": str(gt)}   # meta.mat next to it
    s = _build(tmp, cfg)
    assert s.classes == SORTED                        # leaves only, in sorted wnid order
    assert s.index.tolist() == GOOD_IDS
    assert s.labels.tolist() == [SORTED.index(wnid(i + 1)) for i in GOOD_IDS]
    src = make_source("inet", {**cfg, "meta": str(tmp / "nowhere.mat")})
    with pytest.raises(ConfigError, match="meta.*nowhere.mat"):
        src.check_files()


def test_kaggle_boxes_become_masks_after_resize_and_crop(imagenet):
    tmp, _ = imagenet
    files = _files(tmp / "val")
    other = WNIDS[0] if wnid(1) != WNIDS[0] else WNIDS[1]
    # image 1: two boxes of its class (one maps partly outside the crop) and a whole-image
    # box of another class, which must be dropped
    _kaggle(tmp / "LOC_val_solution.csv", files,
            {1: f"{wnid(1)} 10 5 30 25 {other} 0 0 {W} {H} {wnid(1)} 30 26 40 30"})
    assert detect_format(tmp / "LOC_val_solution.csv") == "kaggle"
    cfg = {"kind": "imagenet", "root": str(tmp), "labels": str(tmp / "LOC_val_solution.csv")}
    s = _build(tmp, cfg, pp={"resize": 20, "crop": 16})
    assert s.labels.tolist() == [SORTED.index(wnid(i + 1)) for i in GOOD_IDS]
    assert s.masks is not None and s.images.shape[1:] == (3, 16, 16)
    # 30x40 -> Resize(20) -> 20x26 (x * 0.65, y * 2/3) -> CenterCrop(16): offset (top 2,
    # left 5). Box (10, 5, 30, 25) -> x [1.5, 14.5), y [1.33, 14.67): pixel centres in it are
    # columns 1..13, rows 1..14. Box (30, 26, 40, 30) -> x [14.5, 21), y [15.33, 18),
    # clipped to 16: columns 14, 15 of row 15.
    want = np.zeros((16, 16), bool)
    want[1:15, 1:14] = True
    want[15, 14:16] = True
    np.testing.assert_array_equal(s.read_masks([0])[0], want)
    # every other image: one whole-image box of its class -> the whole crop
    assert s.read_masks(np.arange(1, len(s))).all()


def test_map_boxes_matches_torchvision_box_transforms():
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as TF
    boxes = np.array([[10.0, 5.0, 30.0, 25.0], [0.0, 3.0, 7.5, 29.0]])
    for pp in ({"resize": 20, "crop": 16}, {"resize": 50, "mode": "squash"},
               {"resize": 25, "crop": 27}, {"crop": 35}):
        b = tv_tensors.BoundingBoxes(torch.tensor(boxes), format="XYXY", canvas_size=(H, W))
        if "resize" in pp:
            s = pp["resize"]
            b = TF.resize(b, [s, s] if pp.get("mode") == "squash" else [s])
        if "crop" in pp:
            b = TF.center_crop(b, [pp["crop"]] * 2)
        got, size = map_boxes(boxes, (H, W), pp)
        assert size == tuple(b.canvas_size)
        # torchvision clamps to the canvas; so do masks (boxes_mask clips)
        np.testing.assert_allclose(np.clip(got, 0, [size[1], size[0]] * 2), b.numpy(),
                                   atol=1e-5, err_msg=str(pp))


def test_boxes_mask_rasterisation():
    m = boxes_mask(np.array([[1.0, 2.0, 4.0, 3.0]]), (5, 6))
    want = np.zeros((5, 6), bool)
    want[2, 1:4] = True
    np.testing.assert_array_equal(m, want)
    tiny = boxes_mask(np.array([[3.2, 1.1, 3.4, 1.3]]), (5, 6))     # covers no pixel centre
    assert tiny.sum() == 1 and tiny[1, 3]
    assert not boxes_mask(np.array([[-5.0, -5.0, -1.0, 9.0]]), (5, 6)).any()   # outside


def test_xml_boxes_folder(imagenet):
    tmp, _ = imagenet
    _tmlr(tmp / "val_annotations.txt", _files(tmp / "val"))
    (tmp / "boxes").mkdir()
    write_box_xml(tmp / "boxes" / f"{name(3)}.xml",
                  [(wnid(3), (10, 5, 30, 25)), ("n09999999", (0, 0, 40, 30))])
    cfg = {"kind": "imagenet", "root": str(tmp), "labels": str(tmp / "val_annotations.txt"),
           "boxes": str(tmp / "boxes"), "limit": 4}
    s = _build(tmp, cfg)
    want = np.zeros((H, W), bool)
    want[5:25, 10:30] = True
    np.testing.assert_array_equal(s.read_masks([2])[0], want)
    assert not s.read_masks([0, 1, 3]).any()            # no XML: empty mask


def test_per_class_folders_and_imagefolder_use_to_rgb(tmp_path):
    for c, k in (("n02000002", 0), ("n01000001", 1), ("n01000001", 2)):
        (tmp_path / "val" / c).mkdir(parents=True, exist_ok=True)
        g16 = np.full((H, W), 32767 if k == 1 else 65535, np.uint16)
        Image.fromarray(g16).save(tmp_path / "val" / c / f"img{k}.png")
    (tmp_path / "val" / "n02000002" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cfg = {"kind": "imagenet", "root": str(tmp_path)}              # labels from the folders
    s = _build(tmp_path, cfg)
    # sorted paths: n01/img1, n01/img2, n02/bad, n02/img0
    assert s.classes == ["n01000001", "n02000002"]
    assert s.index.tolist() == [0, 1, 3] and s.labels.tolist() == [0, 0, 1]
    assert s.attrs["n_skipped"] == 1 and s.attrs["skipped"][0]["file"].endswith("bad.png")
    assert s.read([0, 1, 2])[:, :, 0, 0].tolist() == [[127] * 3, [255] * 3, [255] * 3]
    # imagefolder: same conversion (not white); unreadable files stop it unless skipped
    fcfg = {"kind": "imagefolder", "root": str(tmp_path), "unreadable": "skip"}
    f = _build(tmp_path, fcfg, "f.zarr")
    assert f.index.tolist() == [0, 1, 3]
    np.testing.assert_array_equal(f.read([0, 1, 2]), s.read([0, 1, 2]))
    with pytest.raises(DataError, match="bad.png"):
        _build(tmp_path, {**fcfg, "unreadable": "error"}, "e.zarr")
    assert not (tmp_path / "e.zarr").exists()


def test_all_unreadable_and_error_mode(imagenet):
    tmp, _ = imagenet
    files = _files(tmp / "val")
    _tmlr(tmp / "val_annotations.txt", files)
    cfg = {"kind": "imagenet", "root": str(tmp), "labels": str(tmp / "val_annotations.txt"),
           "unreadable": "error"}
    with pytest.raises(DataError, match=f"3 unreadable.*{name(5)}.*{name(7)}.*{name(10)}"):
        _build(tmp, cfg)
    assert not (tmp / "o.zarr").exists()
    for k in set(files) - set(BAD):
        (tmp / "val" / files[k]).unlink()
    with pytest.raises(DataError, match=r"all 3 images of split 'val' in folder .*val'"):
        _build(tmp, {**cfg, "unreadable": "skip"})


def test_to_rgb_conversions():
    bg = (16, 32, 48)
    rgba = Image.fromarray(np.array([[[200, 10, 20, 0], [200, 10, 20, 255],
                                      [200, 10, 20, 128]]], np.uint8), "RGBA")
    out = np.asarray(to_rgb(rgba, bg)).astype(int)[0]
    assert out[0].tolist() == list(bg) and out[1].tolist() == [200, 10, 20]
    assert np.abs(out[2] - (np.array([200, 10, 20]) * 128 + np.array(bg) * 127) / 255).max() <= 1
    big = np.array([[0, 257, 32767, 65535]], np.uint16)
    for img in (Image.fromarray(big),
                Image.frombytes("I;16B", (4, 1), big.astype(">u2").tobytes()),
                Image.fromarray(big.astype(np.int32))):
        assert np.asarray(to_rgb(img))[0, :, 0].tolist() == [0, 1, 127, 255], img.mode
    p = Image.new("P", (2, 1))
    p.putpalette([9, 8, 7, 1, 2, 3] + [0] * 762)
    p.putdata([0, 1])                                  # no transparency: the palette colours
    assert np.asarray(to_rgb(p, bg))[0].tolist() == [[9, 8, 7], [1, 2, 3]]
    assert np.asarray(to_rgb(Image.new("1", (1, 1), 1)))[0, 0].tolist() == [255, 255, 255]


def _png16(a: np.ndarray) -> bytes:
    """A minimal PNG of 16 bits per channel (PIL writes none with colour): ``a`` is uint16
    H x W x 3 (colour type 2, RGB) or H x W x 4 (6, RGBA); filter 0 on every row."""
    import struct
    import zlib
    h, w, c = a.shape

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in a)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def test_16_bit_rgb_png_is_scaled_not_clipped(tmp_path):
    """A 48-bit RGB PNG (and a 64-bit RGBA one) through read_image: every channel scaled to
    8 bits (65535 -> 255, 32768 -> 128, within 1 of round(v * 255 / 65535)), not clipped to
    white; alpha composited over the background."""
    levels = np.array([0, 255, 256, 1000, 32767, 32768, 50000, 65280, 65535], np.uint16)
    a = np.stack([levels, levels[::-1], np.roll(levels, 3)], -1)[None].repeat(2, 0)  # 2 x 9 x 3
    f = tmp_path / "rgb48.png"
    f.write_bytes(_png16(a))
    with Image.open(f) as im:               # PIL decodes it as 16 bits a channel
        assert im.size == (9, 2) and im.tile[0][3] == "RGB;16B"
    img = read_image(f)
    got = np.asarray(img).astype(int)
    want = np.rint(a.astype(np.float64) * 255 / 65535).astype(int)
    assert img.mode == "RGB" and got.shape == a.shape
    assert np.abs(got - want).max() <= 1, (got[0], want[0])
    assert got[0, -1].tolist() == [255, 0, 128] and got[0, 0].tolist() == [0, 255, 195]
    assert abs(got[0, 5, 0] - 128) <= 1 and (got < 250).mean() > 0.5       # not all white
    # 16-bit RGBA: alpha 0 gives the background, 65535 the colour, 32768 about half of each
    bg = (16, 32, 48)
    rgba = np.zeros((1, 3, 4), np.uint16)
    rgba[..., :3] = [65535, 32768, 0]
    rgba[0, :, 3] = [0, 65535, 32768]
    (tmp_path / "rgba64.png").write_bytes(_png16(rgba))
    out = np.asarray(read_image(tmp_path / "rgba64.png", bg)).astype(int)[0]
    assert out[0].tolist() == list(bg) and np.abs(out[1] - [255, 128, 0]).max() <= 1
    assert np.abs(out[2] - (np.array([255, 128, 0]) + np.array(bg)) / 2).max() <= 1.5


def test_label_format_detection_and_errors(imagenet):
    tmp, _ = imagenet
    files = _files(tmp / "val")
    _tmlr(tmp / "ann.txt", files)
    assert detect_format(tmp / "ann.txt") == "tmlr"
    (tmp / "odd.txt").write_text("hello world\n")
    cfg = {"kind": "imagenet", "root": str(tmp), "labels": str(tmp / "odd.txt")}
    with pytest.raises(DataError, match="odd.txt.*not recognised"):
        _build(tmp, cfg)
    with pytest.raises(DataError, match="odd.txt.*line 1"):
        _build(tmp, {**cfg, "labels_format": "tmlr"})
    _tmlr(tmp / "part.txt", {k: v for k, v in files.items() if k != 4})
    with pytest.raises(DataError, match=f"1 file.*no label.*part.txt.*{name(4)}"):
        _build(tmp, {**cfg, "labels": str(tmp / "part.txt")})
    with pytest.raises(ConfigError, match="labels: required for the flat folder"):
        _build(tmp, {"kind": "imagenet", "root": str(tmp)})
    with pytest.raises(ConfigError, match="background"):
        make_source("inet", {**cfg, "background": "no-such-colour"})
