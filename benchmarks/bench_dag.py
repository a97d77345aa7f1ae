"""How long Snakemake takes to build the DAG of an ImageNet-scale study (`snakemake -n`).

Makes a stand-in ImageNet validation folder of ``--images`` empty files (1000 class folders;
nothing is decoded by a dry run) and a stand-in weights file per model, then times
``snakemake -n idgi_tmlr --configfile presets/idgi_tmlr.yaml`` pointed at them: 10 models, IG /
Guided IG / Blur IG x {plain, IDGI} with step sweeps {8..128} (24 stores per model and
variant) plus the random control, 2 variants, 3 metrics, ``max_images`` = all images. Prints
the number of jobs and the wall time (best of ``--repeats``).

    .venv/bin/python benchmarks/bench_dag.py [--images 50000]
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50000)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        val = d / "imagenet" / "val"
        for c in range(1000):
            (val / f"n{c:08d}").mkdir(parents=True)
        for i in range(a.images):
            (val / f"n{i % 1000:08d}" / f"ILSVRC2012_val_{i + 1:08d}.JPEG").touch()
        preset = yaml.safe_load((ROOT / "presets" / "idgi_tmlr.yaml").read_text())
        preset["datasets"]["imagenet"]["root"] = str(d / "imagenet")
        preset["experiments"]["idgi_tmlr"]["max_images"] = a.images
        for m, spec in preset["models"].items():
            (d / f"{m}.pth").touch()
            spec["weights"] = str(d / f"{m}.pth")
        (d / "over.yaml").write_text(yaml.safe_dump(preset))
        shutil.copy(ROOT / "config.yaml", d / "config.yaml")
        cmd = [sys.executable, "-m", "snakemake", "idgi_tmlr", "-s", str(ROOT / "Snakefile"),
               "-n", "--configfile", str(d / "over.yaml")]
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            res = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
            times.append(time.perf_counter() - t)
            if res.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        total = re.search(r"^total\s+(\d+)", res.stdout + res.stderr, re.M)
        print(f"{a.images} images x 10 models x 25 method stores x 2 variants: "
              f"{total.group(1) if total else '?'} jobs; `snakemake -n` "
              f"{min(times):.1f} s (best of {a.repeats}; {', '.join(f'{t:.1f}' for t in times)})")
        print("\n".join(ln for ln in (res.stdout + res.stderr).splitlines()
                        if re.match(r"^(total|explain|score|image_store|predict|select)", ln)))


if __name__ == "__main__":
    main()
