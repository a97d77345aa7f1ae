"""The GradMask preset end to end: on a tiny demo ViT (conv stem) with the documented
override pointed at it, and its ImageNet path on local stand-ins (tiny saved Hugging Face ViT
and DeiT folders, per-image box XMLs, a listed subset of positions)."""
import numpy as np
import pandas as pd
import pytest

from helpers.vit import tiny_vit_folder
from helpers.workflow import imagenet_stand_in, snakemake, workdir, write_box_xml
from xaipipe.config import ROOT
from xaipipe.store import open_saliency

TINY64 = ROOT / "tests" / "configs" / "tiny64.yaml"
GRADMASK = ROOT / "presets" / "gradmask.yaml"
METRICS = ["insertion_gm", "deletion_gm", "insertion_gm_clean", "deletion_gm_clean",
           "pointing_game_gm"]

pytestmark = pytest.mark.integration


def test_gradmask_preset_on_a_tiny_vit(tmp_path):
    """The preset's transformer runs on a ViT trained by the pipeline (GradMask, rollout,
    Grad-CAM over tokens, and the random control; the gradient methods run on ViTs in the
    contract test), explaining the prediction; the protocol's AUCs on 0-100 (compat) and on
    [0, 1] (clean) side by side; the pointing game on the object masks; the summary table and
    the grid of maps."""
    wd = workdir(tmp_path)
    runs = ["gradmask", "attention_rollout", "gradcam_vit", "random"]
    snakemake("--configfile", str(GRADMASK), str(TINY64), "--cores", "2", "gradmask",
              "--config", "experiments={gradmask: {models: [tiny64_vit], max_images: 3, "
              f"methods: [{', '.join(runs)}]}}}}", cwd=wd)
    res = wd / "results"
    out = res / "papers/gradmask"
    assert (out / "figures/saliency_grid.png").read_bytes()[:4] == b"\x89PNG"
    summary = pd.read_csv(out / "tables/summary.csv")
    assert set(summary["method"]) == set(runs)
    assert set(summary["metric"]) == set(METRICS)
    md = (out / "tables/summary.md").read_text()
    assert all(f"{m} " in md for m in METRICS) and "tiny64_vit" in md
    sal = res / "saliency/tiny_shapes64/tiny64_vit"
    gm = open_saliency(sal / "gradmask/original.zarr")
    maps = np.asarray(gm.saliency[...])
    assert maps.shape == (3, 1, 64, 64) and (maps >= 0).all()
    # nearest-upsampled patch map: constant on every 8x8 patch
    assert np.array_equal(maps, np.repeat(np.repeat(maps[:, :, ::8, ::8], 8, 2), 8, 3))
    per = pd.read_parquet(out / "per_image.parquet")
    for metric, top in (("insertion_gm", 100), ("deletion_gm", 100),
                        ("insertion_gm_clean", 1), ("deletion_gm_clean", 1)):
        d = per[per["metric"] == metric]
        assert len(d) == 3 * len(runs) and d["auc"].between(0, top).all(), metric
        assert len(np.stack(d["curve"].to_numpy())[0]) == (12 if top == 100 else 13)
    ins = per[per["metric"] == "insertion_gm"].set_index(["method", "image_id"])["auc"]
    clean = per[per["metric"] == "insertion_gm_clean"].set_index(
        ["method", "image_id"])["auc"]
    assert not np.allclose(ins.sort_index().to_numpy() / 100, clean.sort_index().to_numpy())
    pg = per[per["metric"] == "pointing_game_gm"]
    assert len(pg) == 3 * len(runs) and pg["hit"].isin([0.0, 1.0]).all()


def test_gradmask_preset_on_imagenet_stand_ins(tmp_path):
    """presets/gradmask.yaml's ImageNet path as it is, with local stand-ins: an ImageNet val
    folder of non-square JPEGs squashed to 224x224, one box XML per image (a box of the
    image's class and one of another class, which is left out), a positions file choosing 3
    of the 4 images, and tiny saved ViT (mean = std = 0.5) and DeiT-distilled (ImageNet's)
    folders as the two checkpoints; GradMask and the random control, the reference's insertion
    and the pointing game (the tiny-ViT test runs the rest)."""
    (tmp_path / "wd").mkdir()
    d = workdir(tmp_path / "wd")
    root, _ = imagenet_stand_in(tmp_path, per_class=2)
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    wnids = sorted(p.name for p in (root / "val").iterdir())
    for w in wnids:
        other = next(o for o in wnids if o != w)
        for img in (root / "val" / w).iterdir():
            write_box_xml(boxes / f"{img.stem}.xml", [(w, (20, 30, 120, 150)),
                                                      (other, (200, 250, 259, 299))])
    (tmp_path / "idx.yaml").write_text("- 0\n- 2\n- 3\n")
    vit = tiny_vit_folder(tmp_path / "vit", image_size=224, patch_size=16, hidden=16,
                          layers=2, heads=2, classes=10)
    deit = tiny_vit_folder(tmp_path / "deit", kind="deit", image_size=224, patch_size=16,
                           hidden=16, layers=2, heads=2, classes=10,
                           mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    override = [
        f"datasets={{imagenet_gradmask: {{root: {root}, boxes: {boxes}, "
        f"subset: {{positions: {tmp_path / 'idx.yaml'}}}}}}}",
        f"models={{gm_vit_b16: {{weights: {vit}}}, gm_deit_b16: {{weights: {deit}}}}}",
        "device=cpu",
        "experiments={gradmask: {methods: [gradmask, random], "
        "metrics: [insertion_gm, pointing_game_gm]}}"]
    snakemake("--configfile", str(GRADMASK), "--cores", "2", "gradmask", "--config", *override,
              cwd=d)
    for model in ("gm_vit_b16", "gm_deit_b16"):
        s = open_saliency(d / f"results/saliency/imagenet_gradmask/{model}/gradmask/"
                          "original.zarr")
        maps = np.asarray(s.saliency[...])
        assert maps.shape == (3, 1, 224, 224) and (maps >= 0).all() and maps.max() > 0
    per = pd.read_parquet(d / "results/papers/gradmask/per_image.parquet")
    pg = per[per["metric"] == "pointing_game_gm"]
    assert len(pg) == 2 * 2 * 3 and pg["hit"].notna().all()       # every image has a box
    summary = pd.read_csv(d / "results/papers/gradmask/tables/summary.csv")
    assert set(summary["model"]) == {"gm_vit_b16", "gm_deit_b16"}
    assert not (d / "results/models").exists()          # no demo model trained
