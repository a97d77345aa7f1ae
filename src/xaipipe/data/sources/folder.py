"""The ``imagefolder`` data set kind: ``root/<split>/<class>/*``, the torchvision ImageFolder
layout (e.g. an ImageNet copy with class sub-folders in sorted WordNet-id order), with an
optional seeded subset per split."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError
from ...params import Param
from .base import (DATASETS, Source, check_subset, parse_background, read_image, read_positions,
                   subset_of)


@DATASETS.register
class FolderSource(Source):
    name = "imagefolder"
    params = {
        "kind": Param("imagefolder", str),
        "root": Param(None, str, doc="folder with one sub-folder per split"),
        "splits": Param({"val": "val"}, dict,
                        doc="split name -> sub-folder of root, or an absolute path (e.g. a "
                            "training folder elsewhere: {val: val, train: /data/train})"),
        "limit": Param(None, int, min=1, doc="use only the first N images (sorted) per split"),
        "subset": Param(None, dict,
                        doc="a seeded random subset of every split: {images: N, seed: S} or "
                            "{classes: K, per_class: M, seed: S}; or per split, e.g. "
                            "{train: {images: 10000, seed: 0}}; kept in path order"),
        "background": Param("white", (str, int, list),
                            doc="colour that transparent pixels are composited over"),
        "unreadable": Param("skip", str, ("skip", "error"),
                            doc="a file that cannot be decoded: skip it (reported) or stop"),
    }
    EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

    def __init__(self, name, **params):
        super().__init__(name, **params)
        if not self.p["root"]:
            raise ConfigError(f"datasets.{name}.root: required for kind {self.name!r}")
        self.root = Path(self.p["root"]).expanduser()
        self.p["subset"] = check_subset(self.p["subset"], f"datasets.{name}.subset",
                                        list(self.p["splits"]))
        self.background = parse_background(self.p["background"], f"datasets.{name}.background")
        self._files: dict[str, list[tuple[Path, int]]] = {}

    def check_files(self):
        if not self.root.is_dir():
            raise ConfigError(f"datasets.{self.dataset}.root: folder {str(self.root)!r} does "
                              f"not exist")
        for split, sub in self.p["splits"].items():
            if not (self.root / sub).is_dir():
                raise ConfigError(f"datasets.{self.dataset}.splits.{split}: folder "
                                  f"{str(self.root / sub)!r} does not exist")

    def folder_classes(self) -> list[str]:
        """Sorted sub-folder names of the first split folder that exists."""
        for sub in self.p["splits"].values():
            d = self.root / sub
            if d.is_dir():
                return sorted(c.name for c in d.iterdir() if c.is_dir())
        raise DataError(f"datasets.{self.dataset}: none of the split folders "
                        f"{[str(self.root / s) for s in self.p['splits'].values()]} exists")

    def classes(self):
        return self.folder_classes()

    def split_dir(self, split: str) -> Path:
        if split not in self.p["splits"]:
            raise ConfigError(f"datasets.{self.dataset}.splits: no split {split!r}")
        d = self.root / self.p["splits"][split]
        if not d.is_dir():
            raise DataError(f"datasets.{self.dataset}: split folder {str(d)!r} does not exist")
        return d

    def location(self, split):
        return f"folder {str(self.root / self.p['splits'].get(split, split))!r}"

    def is_image(self, f: Path) -> bool:
        return f.suffix.lower() in self.EXTENSIONS and f.is_file()

    def class_files(self, d: Path, classes: list[str]) -> list[tuple[Path, int]]:
        """``(file, class index)`` of ``d/<class>/*`` for the given classes, sorted by path."""
        index = {c: i for i, c in enumerate(classes)}
        return sorted((f, index[f.parent.name]) for f in d.glob("*/*")
                      if f.parent.name in index and self.is_image(f))

    def files(self, split):
        if split not in self._files:
            files = self.class_files(self.split_dir(split), self.classes())
            if self.p["limit"]:
                files = files[: self.p["limit"]]
            self._files[split] = self.subset(files, split)
        return self._files[split]

    def subset(self, files: list[tuple], split: str) -> list[tuple]:
        """``files`` (tuples whose second entry is the class index, in path order) reduced to
        the ``subset`` parameter's seeded random draw, in their original order:
        ``{images: N, seed: S}`` draws N files without replacement; ``{classes: K,
        per_class: M, seed: S}`` draws K of the classes present, then M files of each
        (the ShearletX paper's 20 classes × 5 images). ``numpy.random.default_rng(S)``; the
        draw depends only on the listed files, so it is the same on every machine.
        ``{positions: file}``: the files at the positions the file lists (GradMask's
        ``imgs_idx.yaml``; :func:`~.base.read_positions`)."""
        spec = subset_of(self.p.get("subset"), split)
        if not spec:
            return files
        where = f"datasets.{self.dataset}.subset"
        if "positions" in spec:
            return [files[i] for i in read_positions(spec["positions"], len(files), where)]
        rng = np.random.default_rng(int(spec["seed"]))
        if "images" in spec:
            n = int(spec["images"])
            if n > len(files):
                raise DataError(f"{where}: {n} images asked, split {split!r} has {len(files)}")
            keep = np.sort(rng.choice(len(files), n, replace=False))
            return [files[i] for i in keep]
        by_class: dict[int, list[int]] = {}
        for i, f in enumerate(files):
            by_class.setdefault(int(f[1]), []).append(i)
        k, m = int(spec["classes"]), int(spec["per_class"])
        present = sorted(by_class)
        if k > len(present):
            raise DataError(f"{where}: {k} classes asked, split {split!r} has {len(present)}")
        chosen = sorted(int(c) for c in rng.choice(present, k, replace=False))
        keep = []
        for c in chosen:
            if m > len(by_class[c]):
                raise DataError(f"{where}: {m} images per class asked, class {c} of split "
                                f"{split!r} has {len(by_class[c])}")
            keep += [by_class[c][i] for i in rng.choice(len(by_class[c]), m, replace=False)]
        return [files[i] for i in sorted(keep)]

    def split_sizes(self):
        return {s: len(self.files(s)) for s in self.p["splits"]}

    def item(self, split, i):
        path, label = self.files(split)[i][:2]
        return read_image(path, self.background), label, None
