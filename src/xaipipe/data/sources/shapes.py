"""The offline demo data set ``shapes``.

Every image holds one class-defining object (a filled shape at a random position, scale,
rotation and colour) on top of a cluttered background: a smooth random colour field, fine
noise and several *distractors* (strokes, small irregular blobs and small shapes of any
class). Distractors are always clearly smaller than the object, so the label is well
defined, but a model has to find and look at the object to get it right. The
ground-truth object mask is exact: the object is drawn last and nothing covers it.

Generation is deterministic: image ``i`` of split ``s`` depends only on
``(seed, split, i)`` and the parameters, never on the order in which images are made.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ...params import Param
from .base import DATASETS, Source

CLASSES = (
    "circle", "ring", "triangle", "square", "star",
    "cross", "crescent", "heart", "arrow", "semicircle",
)
SPLITS = {"train": 0, "val": 1, "test": 2}
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapesConfig:
    image_size: int = 64
    num_classes: int = 10
    seed: int = 0
    min_scale: float = 0.38       # object diameter as a fraction of the image side
    max_scale: float = 0.62
    distractors: tuple[int, int] = (3, 6)
    distractor_max_scale: float = 0.24
    noise: float = 0.03

    def __post_init__(self):
        if not 2 <= self.num_classes <= len(CLASSES):
            raise ValueError(f"shapes: num_classes must be in [2, {len(CLASSES)}], got {self.num_classes}")
        if self.image_size < 32:
            raise ValueError(f"shapes: image_size must be >= 32, got {self.image_size}")
        if not 0 < self.distractor_max_scale < self.min_scale <= self.max_scale < 1:
            raise ValueError("shapes: need 0 < distractor_max_scale < min_scale <= max_scale < 1")

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASSES[: self.num_classes]


def _unit_polygon(kind: str) -> list[list[tuple[float, float]]]:
    """Outline(s) of a polygonal shape in a unit box centred at 0 (radius ~1)."""
    if kind == "triangle":
        return [[(math.cos(a), math.sin(a)) for a in np.linspace(-math.pi / 2, 1.5 * math.pi, 4)[:-1]]]
    if kind == "square":
        s = 0.8
        return [[(-s, -s), (s, -s), (s, s), (-s, s)]]
    if kind == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        return [pts]
    if kind == "cross":
        w = 0.32
        return [[(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1),
                 (-w, w), (-1, w), (-1, -w), (-w, -w)]]
    if kind == "arrow":
        return [[(-1, -0.25), (0.1, -0.25), (0.1, -0.7), (1, 0), (0.1, 0.7), (0.1, 0.25), (-1, 0.25)]]
    if kind == "heart":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [list(zip(x / 17.0, (y + 2.5) / 17.0))]
    if kind == "semicircle":
        t = np.linspace(0, math.pi, 33)
        return [list(zip(np.cos(t), np.sin(t) - 0.45))]
    raise ValueError(f"shapes: no outline for {kind!r}")


def _shape_mask(kind: str, big: int, cx: float, cy: float, radius: float, angle: float) -> Image.Image:
    """A filled shape as an 'L' image of side ``big`` (255 inside, 0 outside)."""
    m = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(m)

    def disc(x, y, r, v):
        d.ellipse([x - r, y - r, x + r, y + r], fill=v)

    c, s = math.cos(angle), math.sin(angle)
    if kind in ("circle", "ring"):
        disc(cx, cy, radius, 255)
        if kind == "ring":
            disc(cx, cy, 0.55 * radius, 0)
    elif kind == "crescent":
        disc(cx, cy, radius, 255)
        disc(cx + 0.45 * radius * c, cy + 0.45 * radius * s, 0.85 * radius, 0)
    else:
        for poly in _unit_polygon(kind):
            d.polygon([(cx + radius * (c * x - s * y), cy + radius * (s * x + c * y)) for x, y in poly],
                      fill=255)
    return m


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.round(colour * 255))


def _paste(canvas: Image.Image, mask: Image.Image, colour: np.ndarray) -> None:
    canvas.paste(_rgb(colour), (0, 0, *canvas.size), mask)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random colour field in [0,1], (size, size, 3)."""
    coarse = rng.uniform(0.1, 0.9, size=(4, 4, 3)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8), "RGB").resize((size, size), Image.BICUBIC)
    bg = np.asarray(img, dtype=np.float32) / 255.0
    return bg


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=3).astype(np.float32)


def render(cfg: ShapesConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Render one image. Returns (image uint8 HxWx3, mask bool HxW, label)."""
    if split not in SPLITS:
        raise ValueError(f"shapes: unknown split {split!r}; allowed: {sorted(SPLITS)}")
    rng = np.random.default_rng([cfg.seed, SPLITS[split], index])
    size = cfg.image_size
    big = size * _SUPERSAMPLE
    label = int(rng.integers(cfg.num_classes))
    kind = cfg.classes[label]

    bg = _background(rng, size)
    canvas = Image.fromarray((bg * 255).round().astype(np.uint8), "RGB").resize((big, big), Image.BILINEAR)
    draw = ImageDraw.Draw(canvas)

    # Object geometry and colour (drawn last, after the distractors).
    scale = rng.uniform(cfg.min_scale, cfg.max_scale)
    radius = 0.5 * scale * big
    margin = radius * 1.02
    cx = rng.uniform(margin, big - margin)
    cy = rng.uniform(margin, big - margin)
    angle = rng.uniform(0, 2 * math.pi)
    colour = _random_colour(rng)
    mean_bg = bg.mean(axis=(0, 1))
    for _ in range(20):  # ensure the object stands out from the background
        if np.linalg.norm(colour - mean_bg) >= 0.35:
            break
        colour = _random_colour(rng)

    n_dis = int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))
    for _ in range(n_dis):
        kind_d = int(rng.integers(3))
        col = _random_colour(rng)
        r = 0.5 * rng.uniform(0.08, cfg.distractor_max_scale) * big
        x, y = rng.uniform(0, big, size=2)
        if kind_d == 0:  # stroke
            x2, y2 = x + rng.normal(0, big / 4), y + rng.normal(0, big / 4)
            width = int(rng.integers(1, 4)) * _SUPERSAMPLE
            draw.line([(x, y), (x2, y2)], fill=_rgb(col), width=width)
        elif kind_d == 1:  # irregular blob
            k = int(rng.integers(5, 9))
            ang = np.sort(rng.uniform(0, 2 * math.pi, k))
            rad = r * rng.uniform(0.5, 1.0, k)
            draw.polygon([(x + a * math.cos(t), y + a * math.sin(t)) for a, t in zip(rad, ang)],
                         fill=_rgb(col))
        else:  # a small shape of any class
            other = cfg.classes[int(rng.integers(cfg.num_classes))]
            _paste(canvas, _shape_mask(other, big, x, y, r, rng.uniform(0, 2 * math.pi)), col)

    # The object last, so that its mask is exact.
    mask_img = _shape_mask(kind, big, cx, cy, radius, angle)
    _paste(canvas, mask_img, colour)

    img = np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32) / 255.0
    mask = np.asarray(mask_img.resize((size, size), Image.BOX), dtype=np.float32) / 255.0 >= 0.5
    img = img + rng.normal(0, cfg.noise, size=img.shape).astype(np.float32)
    img = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return img, mask, label


def generate(cfg: ShapesConfig, split: str, n: int, start: int = 0):
    """Render images ``start .. start+n-1`` of a split as arrays:
    images (n, 3, H, W) uint8, masks (n, H, W) bool, labels (n,) int64."""
    s = cfg.image_size
    images = np.empty((n, 3, s, s), np.uint8)
    masks = np.empty((n, s, s), bool)
    labels = np.empty((n,), np.int64)
    for k in range(n):
        img, m, y = render(cfg, split, start + k)
        images[k] = img.transpose(2, 0, 1)
        masks[k] = m
        labels[k] = y
    return images, masks, labels


@DATASETS.register
class ShapesSource(Source):
    name = "shapes"
    has_masks = True
    params = {
        "kind": Param("shapes", str),
        "image_size": Param(64, int, min=32, doc="side of the square images"),
        "num_classes": Param(10, int, min=2, max=10),
        "train": Param(8000, int, min=0, doc="number of training images"),
        "val": Param(1000, int, min=0, doc="number of validation images"),
        "seed": Param(0, int),
    }

    def __init__(self, name, **params):
        super().__init__(name, **params)
        self.cfg = ShapesConfig(image_size=self.p["image_size"],
                                num_classes=self.p["num_classes"], seed=self.p["seed"])

    def split_sizes(self):
        return {s: self.p[s] for s in ("train", "val")}

    def classes(self):
        return list(self.cfg.classes)

    def item(self, split, i):
        img, mask, label = render(self.cfg, split, i)
        return Image.fromarray(img, "RGB"), label, mask
