import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from xaipipe.data.datasets import build_image_store, make_source
from xaipipe.data.filters import select
from xaipipe.data.predictions import predict
from xaipipe.data.sources.shapes import ShapesConfig, generate, render
from xaipipe.data.image_store import open_images
from xaipipe.data.variants import apply_variant
from xaipipe.errors import ConfigError, DataError
from xaipipe.models import NormalizedModel


def test_shapes_deterministic_and_order_independent():
    cfg = ShapesConfig(image_size=48, num_classes=6, seed=3)
    imgs, masks, labels = generate(cfg, "val", 6, start=10)
    again = render(cfg, "val", 13)
    np.testing.assert_array_equal(imgs[3], again[0].transpose(2, 0, 1))
    np.testing.assert_array_equal(masks[3], again[1])
    other = render(ShapesConfig(image_size=48, num_classes=6, seed=4), "val", 13)
    assert not np.array_equal(again[0], other[0])
    train = render(cfg, "train", 13)
    assert not np.array_equal(again[0], train[0])
    assert imgs.shape == (6, 3, 48, 48) and imgs.dtype == np.uint8
    assert set(labels) <= set(range(6))


def test_shapes_masks_are_the_object_and_background_is_cluttered():
    cfg = ShapesConfig()
    imgs, masks, labels = generate(cfg, "train", 40)
    area = masks.mean((1, 2))
    assert (area > 0.02).all() and (area < 0.5).all()
    for img, m in zip(imgs.astype(float), masks):
        inside = img[:, m]          # one flat colour plus mild noise
        outside = img[:, ~m]        # background field + distractors
        assert inside.std(1).max() < 20
        assert outside.std(1).mean() > 2 * inside.std(1).mean()
    assert len(set(labels.tolist())) == 10       # all classes appear


def test_shapes_rejects_bad_config():
    with pytest.raises(ValueError, match="num_classes"):
        ShapesConfig(num_classes=11)
    with pytest.raises(ConfigError, match="datasets.s.image_size.*minimum"):
        make_source("s", {"kind": "shapes", "image_size": 8})


def test_variants():
    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
                        .resize((64, 64), Image.BICUBIC))
    img = Image.fromarray(smooth)
    assert np.array_equal(np.asarray(apply_variant("original", img)), smooth)
    jpeg = np.asarray(apply_variant("jpeg", img, quality=75)).astype(float)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75)
    np.testing.assert_array_equal(jpeg, np.asarray(Image.open(buf).convert("RGB")))
    mse = ((jpeg - smooth) ** 2).mean()
    assert 0 < mse and 10 * np.log10(255**2 / mse) > 25                 # lossy but close
    q100 = np.asarray(apply_variant("jpeg", img, quality=100)).astype(float)
    assert ((q100 - smooth) ** 2).mean() < mse
    blur = np.asarray(apply_variant("blur", img, radius=20)).astype(float)
    assert blur.std() < 0.5 * smooth.std()
    assert np.array_equal(np.asarray(apply_variant("blur", img, radius=0.0)), smooth)
    with pytest.raises(ConfigError, match="unknown variant 'sharp'.*jpeg"):
        apply_variant("sharp", img)
    with pytest.raises(ConfigError, match="quality.*maximum"):
        apply_variant("jpeg", img, quality=101)


def test_image_store_round_trip_and_variants(tmp_path):
    cfg = {"kind": "shapes", "image_size": 32, "num_classes": 3, "train": 5, "val": 7}
    build_image_store("s", cfg, "original", {}, tmp_path / "original.zarr", progress=False,
                      chunk=3)
    build_image_store("s", cfg, "jpeg", {"quality": 75}, tmp_path / "jpeg.zarr", ["val"],
                      progress=False)
    orig = open_images(tmp_path / "original.zarr", "val")
    ref, mref, yref = generate(ShapesConfig(image_size=32, num_classes=3), "val", 7)
    np.testing.assert_array_equal(orig.read(np.arange(7)), ref)
    np.testing.assert_array_equal(orig.read_masks([4, 1]), mref[[4, 1]])
    np.testing.assert_array_equal(orig.labels, yref)
    assert orig.classes == ["circle", "ring", "triangle"] and len(open_images(
        tmp_path / "original.zarr", "train")) == 5
    jp = open_images(tmp_path / "jpeg.zarr", "val")
    assert jp.attrs["variant"] == "jpeg" and np.array_equal(jp.labels, orig.labels)
    assert not np.array_equal(jp.read([0]), orig.read([0]))
    assert orig.tensor([2, 0]).shape == (2, 3, 32, 32)
    with pytest.raises(DataError, match="no split 'train'.*val"):
        open_images(tmp_path / "jpeg.zarr", "train")
    with pytest.raises(DataError, match="no image with id 99"):
        orig.positions([1, 99])


def test_imagefolder_source(tmp_path):
    for split, n in (("train", 2), ("val", 3)):
        for c in ("n02", "n01"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((40, 60, 3), 40 * i, np.uint8)).save(
                    tmp_path / split / c / f"img{i}.JPEG")
    (tmp_path / "val" / "n01" / "notes.txt").write_text("ignored")
    cfg = {"kind": "imagefolder", "root": str(tmp_path), "splits": {"val": "val"}}
    pp = {"resize": 36, "crop": 32}
    build_image_store("folder", cfg, "original", {}, tmp_path / "o.zarr", progress=False,
                      preprocess_params=pp)
    s = open_images(tmp_path / "o.zarr", "val")
    assert len(s) == 6 and s.images.shape[1:] == (3, 32, 32)
    assert s.classes == ["n01", "n02"] and s.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert s.masks is None
    Image.new("RGB", (10, 10)).save(tmp_path / "val" / "n01" / "broken.png")
    (tmp_path / "val" / "n01" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        build_image_store("folder", {**cfg, "unreadable": "error"}, "original", {},
                          tmp_path / "b.zarr", progress=False, preprocess_params=pp)
    assert not (tmp_path / "b.zarr").exists()


def _class_folders(root, classes: int, per_class: int) -> dict:
    """``root/val/n00 ...`` with ``per_class`` 8x8 PNGs each: the config of an imagefolder
    data set on it."""
    for c in range(classes):
        (root / "val" / f"n{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8)).save(root / "val" / f"n{c:02d}" / f"i{i}.png")
    return {"kind": "imagefolder", "root": str(root)}


def test_seeded_random_subsets(tmp_path):
    """``subset``: a seeded draw of images, or of classes and images per class (the ShearletX
    paper's 20 classes × 5), in path order; errors name the key."""
    from xaipipe.data.datasets import make_source
    from xaipipe.errors import ConfigError
    cfg = _class_folders(tmp_path, classes=6, per_class=4)
    full = make_source("f", cfg).files("val")
    pick = make_source("f", {**cfg, "subset": {"images": 7, "seed": 3}}).files("val")
    assert len(pick) == 7 and pick == sorted(pick) and set(pick) <= set(full)
    assert pick == make_source("f", {**cfg, "subset": {"images": "7", "seed": "3"}}).files("val")
    assert pick != make_source("f", {**cfg, "subset": {"images": 7, "seed": 4}}).files("val")
    per = make_source("f", {**cfg, "subset": {"classes": 3, "per_class": 2, "seed": 0}})
    got = per.files("val")
    labels = [lab for _, lab in got]
    assert len(got) == 6 and len(set(labels)) == 3
    assert all(labels.count(lab) == 2 for lab in set(labels)) and got == sorted(got)
    with pytest.raises(DataError, match=r"datasets\.f\.subset: 5 images per class"):
        make_source("f", {**cfg, "subset": {"classes": 2, "per_class": 5, "seed": 0}}).files("val")
    with pytest.raises(DataError, match=r"datasets\.f\.subset: 30 images asked"):
        make_source("f", {**cfg, "subset": {"images": 30, "seed": 0}}).files("val")
    with pytest.raises(ConfigError, match=r"datasets\.f\.subset: give"):
        make_source("f", {**cfg, "subset": {"images": 3}})
    with pytest.raises(ConfigError, match=r"datasets\.f\.subset\.classes: a positive"):
        make_source("f", {**cfg, "subset": {"classes": 0, "per_class": 1, "seed": 0}})


def test_a_listed_subset_of_positions(tmp_path):
    """``subset: {positions: file}`` keeps the files at the listed 0-based positions of the
    sorted list (GradMask's ``imgs_idx.yaml``), in path order, from a YAML list, a mapping
    holding one list, or plain text; bad files are errors naming the file."""
    from xaipipe.data.datasets import make_source
    from xaipipe.errors import ConfigError
    cfg = _class_folders(tmp_path, classes=3, per_class=4)
    full = make_source("f", cfg).files("val")
    want = [full[i] for i in (1, 7, 11)]
    forms = {"list.yaml": "- 11\n- 1\n- 7\n", "map.yaml": "indices: [7, 11, 1]\n",
             "plain.txt": "11 1\n7\n", "commas.txt": "1, 7, 11"}
    for name, text in forms.items():
        (tmp_path / name).write_text(text)
        src = make_source("f", {**cfg, "subset": {"positions": str(tmp_path / name)}})
        assert src.files("val") == want, name
    bad = {"out.yaml": ("[0, 12]", r"12 is not a position in \[0, 12\)"),
           "twice.yaml": ("[3, 3]", "twice"), "empty.yaml": ("[]", "no positions"),
           "two.yaml": ("{a: [1], b: [2]}", "exactly one list")}
    for name, (text, msg) in bad.items():
        (tmp_path / name).write_text(text)
        src = make_source("f", {**cfg, "subset": {"positions": str(tmp_path / name)}})
        with pytest.raises(DataError, match=rf"datasets\.f\.subset\.positions: .*{name}.*{msg}"):
            src.files("val")
    with pytest.raises(DataError, match="cannot read"):
        make_source("f", {**cfg, "subset": {"positions": str(tmp_path / "nope.yaml")}}).files("val")
    with pytest.raises(ConfigError, match=r"datasets\.f\.subset\.positions: a file"):
        make_source("f", {**cfg, "subset": {"positions": 3}})


def test_a_subset_per_split_and_a_split_folder_elsewhere(tmp_path):
    """``subset: {train: draw}`` draws from the training split only (a seeded pool of training
    images for references) and keeps every validation image; a split's folder may be an
    absolute path outside ``root`` (a training folder elsewhere)."""
    from xaipipe.data.datasets import make_source
    from xaipipe.errors import ConfigError
    for split, root in (("val", tmp_path / "r" / "val"), ("train", tmp_path / "elsewhere")):
        for c in range(3):
            (root / f"n{c:02d}").mkdir(parents=True)
            for i in range(5):
                Image.new("RGB", (8, 8)).save(root / f"n{c:02d}" / f"{split}{i}.png")
    cfg = {"kind": "imagefolder", "root": str(tmp_path / "r"),
           "splits": {"val": "val", "train": str(tmp_path / "elsewhere")}}
    full = make_source("f", cfg)
    assert full.split_sizes() == {"val": 15, "train": 15}
    assert all(p.parent.parent == tmp_path / "elsewhere" for p, _ in full.files("train"))
    src = make_source("f", {**cfg, "subset": {"train": {"images": 4, "seed": 1}}})
    assert src.split_sizes() == {"val": 15, "train": 4}
    assert set(src.files("train")) <= set(full.files("train")) and src.files("val") == \
        full.files("val")
    same = make_source("f", {**cfg, "subset": {"images": 4, "seed": 1}})   # every split
    assert same.files("train") == src.files("train") and len(same.files("val")) == 4
    with pytest.raises(ConfigError, match=r"datasets\.f\.subset\.train: give"):
        make_source("f", {**cfg, "subset": {"train": {"images": 4}}})
    with pytest.raises(ConfigError, match=r"per split \(val, train\)"):
        make_source("f", {**cfg, "subset": {"test": {"images": 4, "seed": 0}}})


class Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[: x.shape[0]].clone()


def test_predict_and_filters(tmp_path):
    cfg = {"kind": "shapes", "image_size": 32, "num_classes": 3, "train": 0, "val": 4}
    build_image_store("s", cfg, "original", {}, tmp_path / "o.zarr", progress=False)
    imgs = open_images(tmp_path / "o.zarr", "val")
    y = imgs.labels
    logits = torch.full((4, 3), -5.0)
    logits[0, y[0]] = 5.0                   # correct, confident
    logits[1, y[1]] = 0.5                   # correct, not confident
    logits[1, (y[1] + 1) % 3] = 0.0
    logits[2, (y[2] + 1) % 3] = 5.0         # wrong
    logits[3] = torch.tensor([0.0, 0.0, 0.0])
    logits[3, y[3]] = np.log(0.8 / 0.1)     # p = 0.8 exactly: not > 0.8
    model = NormalizedModel(Fixed(logits)).eval()
    pred = predict(model, imgs, batch_size=4, progress=False)
    assert pred["image_id"].tolist() == [0, 1, 2, 3]
    assert pred["prob_label"][3] == pytest.approx(0.8, abs=1e-6)
    assert select(pred, "all")["image_id"].tolist() == [0, 1, 2, 3]
    assert select(pred, "correct")["image_id"].tolist() == [0, 1, 3]
    conf = select(pred, "confident", threshold=0.8)["image_id"].tolist()
    assert conf == [0] or (conf == [0, 3] and pred["prob_label"][3] > 0.8)
    with pytest.raises(ConfigError, match="unknown filter 'best'"):
        select(pred, "best")
    with pytest.raises(DataError, match="prob_label"):
        select(pd.DataFrame({"image_id": [1]}), "correct")


def test_preprocess_matches_torchvision_transforms():
    from torchvision import transforms as T

    from xaipipe.data.preprocess import preprocess
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    for params, ref in (
            ({"resize": 40, "crop": 32}, T.Compose([T.ToTensor(), T.Resize(40), T.CenterCrop(32)])),
            ({"resize": 36, "mode": "squash"}, T.Compose([T.ToTensor(), T.Resize((36, 36))])),
            ({"resize": 44, "crop": 40, "interpolation": "bicubic"},
             T.Compose([T.ToTensor(), T.Resize(44, T.InterpolationMode.BICUBIC),
                        T.CenterCrop(40)]))):
        want = (ref(img).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        np.testing.assert_array_equal(preprocess(img, **params), want)
    np.testing.assert_array_equal(preprocess(img), np.asarray(img).transpose(2, 0, 1))
