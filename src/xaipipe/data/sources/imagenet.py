"""The ``imagenet`` data set kind: an ILSVRC2012 validation folder and its labels
(ILSVRC2012; the label formats of the TMLR study ``ShreeSinghi/TMLR-IDGI``, the devkit and
Kaggle's localisation challenge).

Images: ``root/<split folder>/`` either flat (``val/ILSVRC2012_val_00000001.JPEG``) or one
sub-folder per class (``val/<wnid>/*.JPEG``); ``layout: auto`` takes flat when image files lie
directly in the folder. Image ids are positions in the sorted file list (sorted by path).

Labels (``labels: <file>``; the format is detected from the content, or forced by
``labels_format``):

- ``tmlr``: TMLR's ``val_annotations.txt``, lines ``filename<TAB>wnid[<TAB>...]``; the file
  name is matched by its stem (``ILSVRC2012_val_00000001``), so an extension may differ
- ``devkit``: ``ILSVRC2012_validation_ground_truth.txt`` (one 1-based ILSVRC2012_ID per line,
  line k for ``ILSVRC2012_val_{k:08d}``) with the devkit's ``meta.mat`` (``meta``; default:
  ``meta.mat`` next to the ground truth) mapping the IDs of its leaf synsets
  (``num_children == 0``) to wnids
- ``kaggle``: ``LOC_val_solution.csv`` (``ImageId,PredictionString``, the string being
  repeated ``wnid xmin ymin xmax ymax`` groups); the label is the first wnid, and the boxes of
  that class become the image's mask
- ``folder``: no label file; the class is the sub-folder (per-class layout only)

Class index = position of the wnid in **sorted** wnid order (torchvision's order), never the
ILSVRC id. The class list is, in order of preference: the ``wnids`` file (first token of each
line, so Kaggle's ``LOC_synset_mapping.txt`` works too; sorted here whatever its order), the
1000 leaf wnids of ``meta.mat`` (devkit), the class sub-folders (folder), or else the sorted set
of wnids that appear as labels in the label file(s) -- right only when every class occurs, so
give ``wnids`` for a subset.

Boxes (ground truth of the Pointing Game): from the Kaggle CSV, or from ``boxes``, a folder of
per-image Pascal VOC XMLs (``ILSVRC2012_val_00000001.xml``, as the ILSVRC2012 ``val`` box
archive). Only the boxes of the image's label are kept. They are taken as pixel-edge
coordinates (x0, y0, x1, y1) of the decoded image, as torchvision's XYXY boxes, mapped through
exactly the resize and centre crop of the image (:func:`map_boxes`), clipped to it, and
rasterised to the union of the boxes (:func:`boxes_mask`): the pixels whose centres lie in a
box, plus the pixel under the centre of any box too small to cover a pixel centre. An image
without boxes gets an empty mask (the Pointing Game leaves it out).
"""
from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError
from ...params import Param
from .base import DATASETS, read_image
from .folder import FolderSource

WNID = re.compile(r"^n\d{8}$")
VAL_NUMBER = re.compile(r"_(\d{8})$")
FORMATS = ("auto", "tmlr", "devkit", "kaggle", "folder")


# -- box geometry ------------------------------------------------------------------------
def map_boxes(boxes: np.ndarray, size_hw: tuple[int, int], pp: dict) -> tuple[np.ndarray,
                                                                             tuple[int, int]]:
    """Boxes (k, 4) ``x0, y0, x1, y1`` in an (H, W) image -> the same boxes after the
    preprocessing ``pp`` (:func:`xaipipe.data.preprocess.preprocess`), unclipped, and the
    output (H, W). Same arithmetic as torchvision's ``Resize`` (output size) and
    ``CenterCrop`` (offset ``int(round((in - out) / 2))``, or zero padding when the crop is
    larger than the image)."""
    from torchvision.transforms.functional import _compute_resized_output_size

    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    h, w = size_hw
    if pp.get("resize") is not None:
        s = pp["resize"]
        nh, nw = _compute_resized_output_size((h, w), [s, s] if pp.get("mode") == "squash"
                                              else [s])
        b[:, [0, 2]] *= nw / w
        b[:, [1, 3]] *= nh / h
        h, w = nh, nw
    if pp.get("crop") is not None:
        c = pp["crop"]
        top = int(round((h - c) / 2.0)) if c <= h else -((c - h) // 2)
        left = int(round((w - c) / 2.0)) if c <= w else -((c - w) // 2)
        b[:, [0, 2]] -= left
        b[:, [1, 3]] -= top
        h, w = c, c
    return b, (h, w)


def boxes_mask(boxes: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Union of boxes (pixel-edge coordinates, clipped to the image) as a bool (H, W) mask:
    pixel (y, x) is in a box iff its centre (x + 0.5, y + 0.5) is; a box of positive clipped
    area that covers no pixel centre marks the pixel under its own centre."""
    h, w = size_hw
    mask = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        x0, x1 = np.clip([x0, x1], 0, w)
        y0, y1 = np.clip([y0, y1], 0, h)
        if x1 <= x0 or y1 <= y0:
            continue
        # centres c + 0.5 in [x0, x1)  <=>  c in [ceil(x0 - 0.5), ceil(x1 - 0.5))
        cx0, cx1 = int(np.ceil(x0 - 0.5)), int(np.ceil(x1 - 0.5))
        cy0, cy1 = int(np.ceil(y0 - 0.5)), int(np.ceil(y1 - 0.5))
        if cx1 > cx0 and cy1 > cy0:
            mask[cy0:cy1, cx0:cx1] = True
        else:
            mask[min(int((y0 + y1) / 2), h - 1), min(int((x0 + x1) / 2), w - 1)] = True
    return mask


@dataclass(frozen=True)
class Boxes:
    """An image's ground-truth boxes (k, 4), in the decoded image's pixel coordinates; the
    store builder turns them into a mask at the stored resolution."""
    boxes: np.ndarray

    def to_mask(self, image_size: tuple[int, int], pp: dict) -> np.ndarray:
        """``image_size``: PIL's (W, H) of the decoded image; ``pp``: the preprocessing."""
        w, h = image_size
        mapped, out = map_boxes(self.boxes, (h, w), pp)
        return boxes_mask(mapped, out)


# -- label files -------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {str(path)!r}: {e}") from e


def detect_format(path: Path) -> str:
    """``tmlr``, ``devkit`` or ``kaggle`` from the first lines of a label file."""
    lines = [ln.strip() for ln in _lines(path)[:50] if ln.strip()]
    if not lines:
        raise DataError(f"label file {str(path)!r} is empty")
    head = [c.strip() for c in lines[0].split(",")]
    if head[:2] == ["ImageId", "PredictionString"]:
        return "kaggle"
    if all(ln.isdigit() for ln in lines):
        return "devkit"
    if all(len(ln.split()) >= 2 and WNID.match(ln.split()[1]) for ln in lines):
        return "tmlr"
    raise DataError(f"label file {str(path)!r}: format not recognised (first line "
                    f"{lines[0][:80]!r}); expected TMLR 'filename<TAB>wnid' lines, devkit "
                    f"ILSVRC2012_IDs, or a Kaggle 'ImageId,PredictionString' CSV; set "
                    f"labels_format to force one")


def read_tmlr(path: Path) -> dict[str, str]:
    """``val_annotations.txt`` -> {file stem: wnid}."""
    out = {}
    for k, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) < 2 or not WNID.match(cols[1].strip()):
            raise DataError(f"{str(path)!r} line {k}: expected 'filename<TAB>wnid', got "
                            f"{line[:80]!r}")
        out[Path(cols[0].strip()).stem] = cols[1].strip()
    return out


def read_kaggle(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """``LOC_val_solution.csv`` -> ({image id: first wnid}, {image id: boxes of that wnid})."""
    labels, boxes = {}, {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or [c.strip() for c in header[:2]] != ["ImageId", "PredictionString"]:
            raise DataError(f"{str(path)!r}: expected the header 'ImageId,PredictionString'")
        for k, row in enumerate(reader, 2):
            if not row:
                continue
            tokens = row[1].split() if len(row) > 1 else []
            if not tokens or len(tokens) % 5 or not WNID.match(tokens[0]):
                raise DataError(f"{str(path)!r} line {k}: expected 'wnid xmin ymin xmax ymax' "
                                f"groups, got {','.join(row)[:80]!r}")
            groups = [tokens[j:j + 5] for j in range(0, len(tokens), 5)]
            try:
                b = [[float(v) for v in g[1:]] for g in groups if g[0] == tokens[0]]
            except ValueError:
                raise DataError(f"{str(path)!r} line {k}: non-numeric box coordinate in "
                                f"{row[1][:80]!r}") from None
            stem = Path(row[0].strip()).stem
            labels[stem], boxes[stem] = tokens[0], np.array(b, np.float64).reshape(-1, 4)
    return labels, boxes


def read_devkit_ids(path: Path) -> list[int]:
    """``ILSVRC2012_validation_ground_truth.txt`` -> ILSVRC2012_IDs, line k = image k."""
    ids = []
    for k, line in enumerate(_lines(path), 1):
        if line.strip():
            if not line.strip().isdigit():
                raise DataError(f"{str(path)!r} line {k}: expected an ILSVRC2012_ID, got "
                                f"{line[:80]!r}")
            ids.append(int(line))
    return ids


def read_meta(path: Path) -> dict[int, str]:
    """Devkit ``meta.mat`` -> {ILSVRC2012_ID: wnid} of the leaf synsets (num_children == 0)."""
    import scipy.io
    try:
        syn = scipy.io.loadmat(str(path), squeeze_me=True)["synsets"]
        syn = np.atleast_1d(syn)
        ids, wnids, kids = syn["ILSVRC2012_ID"], syn["WNID"], syn["num_children"]
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read the devkit meta file {str(path)!r} (a 'synsets' struct "
                        f"with ILSVRC2012_ID, WNID, num_children): {e}") from e
    return {int(i): str(w) for i, w, n in zip(ids, wnids, kids) if int(n) == 0}


def read_wnids(path: Path) -> list[str]:
    """A wnid list (first token of each non-empty line), sorted: the class order."""
    wnids = [ln.split()[0] for ln in _lines(path) if ln.strip()]
    bad = [w for w in wnids if not WNID.match(w)]
    if bad:
        raise DataError(f"wnids file {str(path)!r}: {bad[0]!r} is not a WordNet id (n########)")
    return sorted(set(wnids))


def read_xml_boxes(path: Path, wnid: str) -> np.ndarray | None:
    """Boxes of class ``wnid`` in a Pascal VOC XML, or None if there is no such file."""
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
        b = [[float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
             for o in root.iter("object") if (o.findtext("name") or "").strip() == wnid]
    except (ET.ParseError, TypeError, ValueError) as e:
        raise DataError(f"cannot read the box file {str(path)!r}: {e}") from e
    return np.array(b, np.float64).reshape(-1, 4)


# -- the data set kind -------------------------------------------------------------------
@DATASETS.register
class ImageNetSource(FolderSource):
    name = "imagenet"
    params = {
        **FolderSource.params,
        "kind": Param("imagenet", str),
        "layout": Param("auto", str, ("auto", "flat", "classes"),
                        doc="flat folder, or one sub-folder per class"),
        "labels": Param(None, (str, dict), doc="label file (or split -> file)"),
        "labels_format": Param("auto", str, FORMATS, doc="auto: detected from the content"),
        "wnids": Param(None, str, doc="file listing the class wnids (sorted = class index)"),
        "meta": Param(None, str, doc="devkit meta.mat (default: next to the labels file)"),
        "boxes": Param(None, (str, dict), doc="folder of per-image VOC XML boxes (or split ->)"),
        "unreadable": Param("skip", str, ("skip", "error"),
                            doc="a file that cannot be decoded: skip it (reported) or stop"),
    }

    def __init__(self, name, **params):
        super().__init__(name, **params)
        self._classes: list[str] | None = None
        self._labels: dict[str, tuple] = {}
        self._boxes: dict[str, dict] = {}
        self.has_masks = bool(self.p["boxes"]) or any(
            self.label_format(s) == "kaggle" for s in self.p["splits"]
            if self.label_file(s) is not None and self.label_file(s).is_file())

    # configuration ----------------------------------------------------------------------
    def _per_split(self, key: str, split: str) -> Path | None:
        v = self.p[key]
        if isinstance(v, dict):
            v = v.get(split)
        return Path(v).expanduser() if v else None

    def label_file(self, split: str) -> Path | None:
        return self._per_split("labels", split)

    def label_format(self, split: str) -> str:
        f = self.label_file(split)
        if f is None:
            if self.p["labels_format"] not in ("auto", "folder"):
                raise ConfigError(f"datasets.{self.dataset}.labels: required for labels_format "
                                  f"{self.p['labels_format']!r}")
            return "folder"
        return detect_format(f) if self.p["labels_format"] == "auto" else self.p["labels_format"]

    def meta_file(self, split: str) -> Path:
        if self.p["meta"]:
            return Path(self.p["meta"]).expanduser()
        return self.label_file(split).with_name("meta.mat")

    def check_files(self):
        super().check_files()
        where = f"datasets.{self.dataset}"
        for split in self.p["splits"]:
            for key in ("labels", "boxes"):
                f = self._per_split(key, split)
                if f is not None and not f.exists():
                    raise ConfigError(f"{where}.{key}: {str(f)!r} does not exist")
            if self.label_format(split) == "devkit" and not self.meta_file(split).is_file():
                raise ConfigError(f"{where}.meta: devkit meta file "
                                  f"{str(self.meta_file(split))!r} does not exist")
        if self.p["wnids"] and not Path(self.p["wnids"]).expanduser().is_file():
            raise ConfigError(f"{where}.wnids: {self.p['wnids']!r} does not exist")

    # labels -----------------------------------------------------------------------------
    def _label_data(self, split: str) -> tuple:
        """(format, labels, boxes): labels {stem: wnid} (tmlr, kaggle), [wnid by line]
        (devkit) or None (folder); boxes {stem: array} or None."""
        if split not in self._labels:
            fmt, f = self.label_format(split), self.label_file(split)
            if fmt == "tmlr":
                data = (fmt, read_tmlr(f), None)
            elif fmt == "kaggle":
                data = (fmt, *read_kaggle(f))
            elif fmt == "devkit":
                meta = read_meta(self.meta_file(split))
                ids = read_devkit_ids(f)
                unknown = sorted(set(ids) - set(meta))
                if unknown:
                    raise DataError(f"{str(f)!r}: ILSVRC2012_ID(s) {unknown[:5]} are not leaf "
                                    f"synsets of {str(self.meta_file(split))!r}")
                data = (fmt, [meta[i] for i in ids], sorted(meta.values()))
            else:
                data = (fmt, None, None)
            self._labels[split] = data
        return self._labels[split]

    def classes(self):
        if self._classes is None:
            if self.p["wnids"]:
                self._classes = read_wnids(Path(self.p["wnids"]).expanduser())
            else:
                found: set[str] = set()
                for split in self.p["splits"]:
                    fmt, labels, extra = self._label_data(split)
                    if fmt == "folder":
                        found |= set(self.folder_classes())
                    elif fmt == "devkit":
                        found |= set(extra)          # all 1000 leaves of meta.mat
                    else:
                        found |= set(labels.values())
                self._classes = sorted(found)
        return self._classes

    # files ------------------------------------------------------------------------------
    def _layout(self, d: Path) -> str:
        if self.p["layout"] != "auto":
            return self.p["layout"]
        return "flat" if any(self.is_image(f) for f in d.iterdir()) else "classes"

    def files(self, split):
        """``(file, label, boxes or None)`` of every image of ``split``, sorted by path."""
        if split in self._files:
            return self._files[split]
        d, where = self.split_dir(split), f"datasets.{self.dataset}"
        fmt, labels, extra = self._label_data(split)
        classes = self.classes()
        index = {c: i for i, c in enumerate(classes)}
        if self._layout(d) == "flat":
            if fmt == "folder":
                raise ConfigError(f"{where}.labels: required for the flat folder {str(d)!r} "
                                  f"(no class sub-folders)")
            paths = sorted(f for f in d.iterdir() if self.is_image(f))
        else:
            if fmt == "folder":
                stray = sorted({f.parent.name for f in d.glob("*/*") if self.is_image(f)}
                               - set(index))
                if stray:
                    raise DataError(f"{where}: class folder(s) {stray[:5]} of {str(d)!r} are "
                                    f"not in the wnids file {self.p['wnids']!r}")
                paths = [f for f, _ in self.class_files(d, classes)]
            else:
                paths = sorted(f for f in d.glob("*/*") if self.is_image(f))
        if self.p["limit"]:
            paths = paths[: self.p["limit"]]
        wnids = self._wnids_of(paths, fmt, labels, split)
        missing = sorted({w for w in wnids if w not in index})
        if missing:
            raise DataError(f"{where}: label wnid(s) {missing[:5]} are not in the class list "
                            f"({len(classes)} classes from "
                            f"{self.p['wnids'] or 'the label file'!r})")
        boxes_dir = self._per_split("boxes", split)
        out = []
        for f, w in zip(paths, wnids):
            if boxes_dir is not None:
                b = read_xml_boxes(boxes_dir / f"{f.stem}.xml", w)
            else:
                b = extra.get(f.stem) if fmt == "kaggle" else None
            out.append((f, index[w], b))
        self._files[split] = out = self.subset(out, split)
        return out

    def _wnids_of(self, paths: list[Path], fmt: str, labels, split: str) -> list[str]:
        """The label wnid of each file (error naming the files without one)."""
        where = f"datasets.{self.dataset}"
        if fmt == "folder":
            return [f.parent.name for f in paths]
        if fmt == "devkit":
            numbers = [VAL_NUMBER.search(f.stem) for f in paths]
            if all(numbers):
                pos = [int(m.group(1)) - 1 for m in numbers]
            elif len(paths) == len(labels):
                pos = list(range(len(paths)))
            else:
                raise DataError(f"{where}: {len(paths)} files in {str(self.split_dir(split))!r}"
                                f" are not named ILSVRC2012_val_<8 digits> and do not match the "
                                f"{len(labels)} lines of {str(self.label_file(split))!r}")
            bad = [f.name for f, p in zip(paths, pos) if not 0 <= p < len(labels)]
            if bad:
                raise DataError(f"{where}: {len(bad)} file(s) have no line in "
                                f"{str(self.label_file(split))!r}, e.g. {bad[:5]}")
            return [labels[p] for p in pos]
        bad = [f.name for f in paths if f.stem not in labels]
        if bad:
            raise DataError(f"{where}: {len(bad)} file(s) have no label in "
                            f"{str(self.label_file(split))!r}, e.g. {bad[:5]}")
        return [labels[f.stem] for f in paths]

    def item(self, split, i):
        path, label, boxes = self.files(split)[i]
        img = read_image(path, self.background)
        if not self.has_masks:
            return img, label, None
        return img, label, Boxes(np.zeros((0, 4)) if boxes is None else boxes)


__all__ = ["Boxes", "ImageNetSource", "boxes_mask", "detect_format", "map_boxes",
           "read_devkit_ids", "read_kaggle", "read_meta", "read_tmlr", "read_wnids",
           "read_xml_boxes"]
