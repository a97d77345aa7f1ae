"""The re-calibration / LPI preset end to end: on a tiny 64x64 model with the documented
override pointed at it, and its ImageNet path on local stand-ins (with a training folder)."""
import numpy as np
import pandas as pd
import pytest

from helpers.workflow import imagenet_stand_in, snakemake, workdir
from xaipipe.config import ROOT
from xaipipe.pipeline.references import read_lpi_references
from xaipipe.store import open_saliency

TINY64 = ROOT / "tests" / "configs" / "tiny64.yaml"
RECAL = ROOT / "presets" / "recal_lpi.yaml"

pytestmark = pytest.mark.integration


def test_recal_lpi_preset_on_a_tiny_model(tmp_path):
    """Vanilla and re-calibrated IG, Expected Gradients (references from the tiny data set's
    training split) and LPI (one reference set built for both of its runs), AGI re-calibrated,
    FullGrad and the random control; DiffID, Sensitivity-n and the model-randomisation check
    (which reruns each method, EG and LPI with their references, on every stage); the
    re-calibration table and the three figures."""
    wd = workdir(tmp_path)
    runs = ["ig_k5", "ig_k5_recal", "eg_k5", "eg_recal", "lpi_k5", "lpi_recal", "agi_recal",
            "fullgrad", "gradcam", "random"]
    snakemake("--configfile", str(RECAL), str(TINY64), "--cores", "2", "recal_lpi", "--config",
              f"experiments={{recal_lpi: {{models: [tiny64_resnet18], max_images: 3, "
              f"methods: [{', '.join(runs)}]}}}}", "methods={agi_recal: {samples: 3}}", cwd=wd)
    res = wd / "results"
    out = res / "papers/recal_lpi"
    for f in ("diffid_curves", "saliency_grid", "randomisation_curves"):
        assert (out / f"figures/{f}.png").read_bytes()[:4] == b"\x89PNG"
    t = pd.read_csv(out / "tables/by_recalibration.csv")
    pairs = set(zip(t["method_name"], t["recalibrate"].fillna("")))
    for m in ("integrated_gradients", "expected_gradients", "lpi"):
        assert {(m, "none"), (m, "valid_ip")} <= pairs, pairs
    assert ("random", "") in pairs and ("agi", "valid_ip") in pairs
    assert set(t["score"]) >= {"diffid_logit_mean", "diffid_acc_mean", "diffid_logit_auc",
                               "correlation_mean",                 # and Sensitivity-n
                               "similarity_mean", "similarity_last"}  # model randomisation
    # one reference set for both LPI runs, from the 256 training images of the tiny data set
    (refset,) = (res / "references/tiny_shapes64/tiny64_resnet18").iterdir()
    assert refset.name == "lpi_r20_c1.zarr"
    ref = read_lpi_references(refset)
    assert ref["references"].shape == (1, 20, 3, 64, 64)
    assert ref["attrs"]["n_training_images"] == 256
    assert np.isclose(float(ref["density"].sum()), 1.0)
    sal = res / "saliency/tiny_shapes64/tiny64_resnet18"
    for run in ("lpi_k5", "lpi_recal"):                  # paths as the rules give them
        assert open_saliency(sal / run / "original.zarr").attrs["references"] == \
            str(refset.relative_to(wd))
    eg = open_saliency(sal / "eg_recal/original.zarr")
    assert eg.attrs["references"].endswith("data/tiny_shapes64/native/original.zarr")
    for run in ("ig_k5_recal", "eg_recal", "lpi_recal", "agi_recal"):
        maps = np.asarray(open_saliency(sal / run / "original.zarr").saliency[...])
        assert maps.shape[0] == 3 and (maps >= 0).all() and maps.max() > 0, run
    per = pd.read_parquet(out / "per_image.parquet")
    d = per[per["metric_name"] == "diffid"]
    assert len(d) == 3 * len(runs) and np.isfinite(d["diffid_acc_mean"]).all()
    mr = per[per["metric_name"] == "model_randomisation"]
    assert len(mr) == 3 * len(runs)
    assert mr["similarity_last"].dropna().between(-1, 1).all()    # NaN: a constant map
    assert mr["similarity_last"].notna().sum() >= 3 * (len(runs) - 1)
    summary = pd.read_csv(out / "summary.csv")
    stages = summary.loc[(summary["method"] == "ig_k5") &
                         summary["score"].str.startswith("similarity@"), "score"].tolist()
    assert stages[0] == "similarity@fc" and stages[-1] == "similarity@conv1"


def test_recal_lpi_preset_on_imagenet_stand_ins(tmp_path):
    """presets/recal_lpi.yaml's ImageNet path as it is, with local stand-ins: val and train
    ImageFolders (non-square JPEGs squashed to 224x224; a seeded training pool of 4 images in
    place of the preset's 10,000) and a random torchvision ResNet-18 as recal_resnet34's
    weights file; Expected Gradients re-calibrated and LPI with CI-sized counts."""
    (tmp_path / "wd").mkdir()
    d = workdir(tmp_path / "wd")
    root, weights = imagenet_stand_in(tmp_path, per_class=1, train_per_class=3)
    override = [
        f"datasets={{imagenet_recal: {{root: {root}, subset: {{train: {{images: 4, seed: 0}}}}}}}}",
        f"models={{recal_resnet34: {{arch: resnet18, weights: {weights}}}}}", "device=cpu",
        "experiments={recal_lpi: {models: [recal_resnet34], max_images: 2, "
        "methods: [eg_recal, lpi_k5, random], figures: [diffid_curves]}}",
        "methods={eg_recal: {samples: 2, steps: 2}, lpi_k5: {samples: 3, steps: 2}}"]
    snakemake("--configfile", str(RECAL), "--cores", "2", "recal_lpi", "--config", *override,
              cwd=d)
    sal = d / "results/saliency/imagenet_recal/recal_resnet34"
    for run in ("eg_recal", "lpi_k5"):
        s = open_saliency(sal / run / "original.zarr")
        assert s.saliency.shape == (2, 3, 224, 224) and np.isfinite(s.saliency[...]).all()
    ref = read_lpi_references(d / "results/references/imagenet_recal/recal_resnet34/"
                              "lpi_r3_c1.zarr")
    assert ref["attrs"]["n_training_images"] == 4 and ref["references"].shape[1:3] == (3, 3)
    assert (d / "results/papers/recal_lpi/tables/by_recalibration.md").is_file()
    assert not (d / "results/models").exists()          # no demo model trained
