"""Running the workflow from tests: the snakemake command on the repository's Snakefile, a
working folder as a user has it, the tiny overlay, dry-run parsing, and ImageNet stand-ins."""
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd

from xaipipe.config import ROOT

CONFIGS = ROOT / "tests" / "configs"


SNAKEMAKE = [sys.executable, "-m", "snakemake"]


TINY = CONFIGS / "tiny.yaml"


def snakemake(*args, cwd, check=True, timeout=None):
    cmd = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "--directory", str(cwd), *args]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


def workdir(tmp):
    """A working directory as a user has it: the repository's config.yaml (the catalogs and
    the default experiment) and the overlays given with --configfile."""
    shutil.copy(ROOT / "config.yaml", tmp / "config.yaml")
    return tmp


def planned_outputs(res) -> list[str]:
    return re.findall(r"^\s+output: (.*)$", res.stdout, flags=re.M)


def dry_run_jobs(stdout: str) -> list[tuple[str, str]]:
    """(rule, text) of every job a dry run prints (`rule X:` then its indented fields)."""
    parts = re.split(r"^\s*(?:local)?rule (\w+):$", stdout, flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


def imagenet_stand_in(root, per_class: int = 1, train_per_class: int = 0):
    """A tiny ImageNet val folder under ``root / "imagenet"`` (two wnids, ``per_class``
    random 300x260 JPEGs each; with ``train_per_class``, a train folder of the same layout)
    and ``root / "resnet18-stand-in.pth"``, the weights of a random torchvision ResNet-18
    (1000 classes): (imagenet root, weights path)."""
    import torch
    from PIL import Image

    from xaipipe.models import load_model

    rng = np.random.default_rng(0)
    for split, n in (("val", per_class), ("train", train_per_class)):
        for c in ("n01440764", "n01443537") if n else ():
            (root / "imagenet" / split / c).mkdir(parents=True)
            for i in range(n):
                name = f"ILSVRC2012_val_{c}_{i}" if split == "val" else f"{c}_{i}"
                Image.fromarray(rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)).save(
                    root / "imagenet" / split / c / f"{name}.JPEG")
    weights = root / "resnet18-stand-in.pth"
    torch.save(load_model("resnet18", weights="random").net.state_dict(), weights)
    return root / "imagenet", weights


def write_box_xml(path, boxes) -> None:
    """A Pascal VOC XML (the ILSVRC2012 validation box files) at ``path``: one object per
    (wnid, (xmin, ymin, xmax, ymax)) in ``boxes``, the file name its stem."""
    objs = "".join(
        f"<object><name>{w}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for w, b in boxes)
    path.write_text(f"<annotation><filename>{path.stem}</filename>{objs}</annotation>")


def frames_equal(a: pd.DataFrame, b: pd.DataFrame, path: str):
    """Per-image score tables equal, array cells (curves) included."""
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0, path
    for c in a.columns:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        if x.dtype == object and len(x) and isinstance(x[0], np.ndarray):
            x, y = np.stack(x), np.stack(y)
        np.testing.assert_array_equal(x, y, err_msg=f"{path}: column {c}")


def slurm_submissions(workdir) -> dict[str, str]:
    """SLURM job id -> log folder (`rule_<rule>` or `group_<group>_...`) of every job the
    run submitted, from Snakemake's log (the plugin deletes logs of successful jobs)."""
    text = "".join(p.read_text() for p in (workdir / ".snakemake/log").glob("*.snakemake.log"))
    return dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: .*?/slurm_logs/([^/]+)/",
                           text))
