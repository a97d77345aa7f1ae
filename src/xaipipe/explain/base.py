"""Shared base of all attribution methods (one class per method, Captum style) and their
registry (timm style: ``@register_method`` on a class in a module of one of the method families,
``xaipipe/explain/{gradients,paths,cams,masks,controls}/``; :data:`METHODS` imports them all
the first time it is asked for a name).

Conventions (``docs/methods.md``): methods receive pixel images in [0, 1] and a model
whose first module is its normalisation; they return *raw* maps (no abs, no channel reduction,
no normalisation) as float32 on the images' device: (N, C, H, W) for pixel attributions,
(N, 1, H, W) for single-channel maps.
"""
from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..errors import ON_NONFINITE, ConfigError, NonFiniteError
from ..registry import Registry
from ..utils import PRECISIONS, autocast, eval_mode, full_precision, nonfinite_rows
from ..params import Param, Parametrised, ParamSet, params_class
from ..maths.objectives import OBJECTIVES, objective

OBJECTIVE_PARAM = Param("logit", str, OBJECTIVES, doc="explained scalar f of the logits")
GRAD_SPACE_PARAM = Param("pixel", str, ("pixel", "normalized"),
                         doc="take gradients w.r.t. the pixel image or the normalised tensor")


@dataclass
class Attribution:
    """What a method returns: the maps and per-image extras.

    ``maps``: float32 on the images' device, (N, C, H, W) for pixel attributions or
    (N, 1, H, W) for single-channel maps (``Method.channels == "single"``).

    ``extras``: name -> tensor whose leading dim is N (one entry per image, in the order of
    the images), with any trailing dims: a completeness gap (N,), a mask history (N, T),
    per-step loss terms (N, T, K). Like the maps, extras do not depend on how the images are
    split into batches, so the store can write them next to the maps chunk by chunk.
    """
    maps: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class Method(Parametrised):
    """Base class. Subclasses set ``name``, ``params`` and implement :meth:`attribute`.

    Hyper-parameters: ``params`` declares them (:class:`~xaipipe.params.Param`: default,
    type, allowed values, doc); from those declarations every subclass gets ``Params``, a
    frozen dataclass with one typed field each (:func:`~xaipipe.params.params_class`).
    :meth:`check` turns a config's mapping into a validated ``Params``, and the method reads
    ``self.hparams.steps``, never a string key. A job carries the same object from the
    config to the kernel.

    Execution settings are not hyper-parameters: ``seed`` (random draws are seeded per
    (seed, image id, method, hyper-parameters)), ``memory_mb`` (budget for one forward/backward
    chunk; steps x samples are split so that it is not exceeded; None = :func:`default_memory_mb`)
    and ``max_batch`` (a hard cap on points per chunk).
    """

    kind = "method"
    channels: ClassVar[str] = "input"   # "input": C of the image; "single": 1

    def __init__(self, model: nn.Module, params: ParamSet | dict | None = None, *,
                 seed: int = 0, memory_mb: float | None = None, max_batch: int | None = None,
                 precision: str = "float32", **kwargs):
        """``params``: the hyper-parameters as a checked ``Params`` (what a job carries) or
        a mapping; or give them as keyword arguments (``steps=32``), not both."""
        self.model = model
        self.seed = seed
        self.memory_mb = memory_mb
        self.max_batch = max_batch
        if precision not in PRECISIONS:
            raise ConfigError(f"method {self.name!r}: precision {precision!r} is not one of "
                              f"{', '.join(map(repr, PRECISIONS))}")
        self.precision = precision
        self.set_params(params, kwargs)

    @classmethod
    def check_model(cls, params: ParamSet, model: nn.Module, where: str) -> None:
        """Whether this method (with ``params``) can run on ``model`` at all, checked before
        any job runs; raises :class:`~xaipipe.errors.ConfigError` naming ``where`` and the
        model if not (GradCAM on a model without the named layer, GradMask on a CNN).
        Must only inspect the model's structure, never run it: the model may be built on the
        meta device. Default: every model works."""
        return None

    # -- to implement ---------------------------------------------------------------------
    def attribute(self, images: torch.Tensor, target: torch.Tensor,
                  image_ids: torch.Tensor | None = None) -> Attribution:
        """Raw maps of prepared inputs: float32 images (N, C, H, W), long targets (N,) on the
        images' device and int64 image ids (N,) on the CPU (see :meth:`run`)."""
        raise NotImplementedError

    def run(self, images: torch.Tensor, target, image_ids=None) -> Attribution:
        """:meth:`attribute` with its inputs checked and completed: a scalar target applies to
        every image; without ``image_ids`` each image's id is a hash of its bytes
        (:func:`content_ids`), so random draws never depend on batching. The model runs in eval
        mode and every module is left in the mode it was in."""
        images, target, image_ids = _prepare(images, target, image_ids)
        with eval_mode(self.model), autocast(images.device, self.precision):
            out = self.attribute(images, target, image_ids)
        out.maps = out.maps.float()
        return out

    # -- step sweeps (sub-paths of one path, as the TMLR study of IDGI) ---------------------
    #: True where one path evaluation serves every step count of a nested sweep
    #: (:meth:`sweep_attribute` is overridden); otherwise a sweep runs each count on its own.
    sweepable: ClassVar[bool] = False

    @classmethod
    def shares_path(cls, params: ParamSet, steps) -> bool:
        """Whether one path evaluation serves all of ``steps`` with these ``params``: a
        ``sweepable`` method and nested step counts (each divides the largest)."""
        if not cls.sweepable:
            return False
        steps = sorted({int(n) for n in steps})
        return all(steps[-1] % n == 0 for n in steps)

    def sweep_attribute(self, images: torch.Tensor, target: torch.Tensor, image_ids,
                        steps: list[int]) -> dict[int, Attribution]:
        """{n: Attribution} for each step count ``n`` (prepared inputs, as :meth:`attribute`).
        Default: one run per count with ``steps`` replaced."""
        out = {}
        saved = self.hparams
        try:
            for n in steps:
                self.hparams = saved.replace(steps=int(n))
                out[int(n)] = self.attribute(images, target, image_ids)
        finally:
            self.hparams = saved
        return out

    def run_sweep(self, images: torch.Tensor, target, image_ids=None,
                  steps=(8, 16, 32, 64, 128)) -> dict[int, Attribution]:
        """:meth:`sweep_attribute` with the inputs checked and completed as in :meth:`run`."""
        if "steps" not in self.params:
            raise ValueError(f"method {self.name!r} has no 'steps' to sweep")
        steps = sorted({int(n) for n in steps})
        images, target, image_ids = _prepare(images, target, image_ids)
        with eval_mode(self.model), autocast(images.device, self.precision):
            if self.shares_path(self.hparams, steps):
                out = self.sweep_attribute(images, target, image_ids, steps)
            else:
                out = Method.sweep_attribute(self, images, target, image_ids, steps)
        for a in out.values():
            a.maps = a.maps.float()
        return out

    # -- shared helpers -------------------------------------------------------------------
    def seed_parts(self, image_id: int, *extra) -> tuple:
        """What a random draw for one image depends on (never the batch)."""
        hp = {k: v for k, v in self.hparams.signature().items()
              if not isinstance(v, torch.Tensor)}
        return (self.seed, int(image_id), self.name, hp, *extra)

    def chunk_size(self, sample_shape: torch.Size, device, forward_only: bool = False) -> int:
        """Points per forward/backward pass under the memory budget; ``forward_only``: per
        no-grad forward pass (:func:`estimate_forward_bytes`)."""
        estimate = estimate_forward_bytes if forward_only else estimate_point_bytes
        per_point = estimate(self.model, tuple(sample_shape), device)
        budget = self.memory_mb or default_memory_mb(device)
        n = max(1, int(budget * 2**20 // per_point))
        return min(n, self.max_batch) if self.max_batch else n

    def input_gradient(self, images: torch.Tensor, target: torch.Tensor,
                       grad_space: str = "pixel") -> torch.Tensor:
        """∇f at the images themselves, in memory-bounded chunks."""
        out = torch.empty_like(images)
        chunk = self.chunk_size(images.shape[1:], images.device)
        for s in range(0, images.shape[0], chunk):
            out[s:s + chunk], _ = self.gradient(images[s:s + chunk], target[s:s + chunk],
                                                grad_space)
        return out

    @property
    def objective_name(self) -> str:
        """The objective :meth:`outputs` and :meth:`gradient` explain: the ``objective``
        parameter (``logit`` without one). A method whose compat profile changes the objective
        overrides this (:func:`~xaipipe.maths.objectives.objective_for`)."""
        return getattr(self.hparams, "objective", "logit")

    def outputs(self, points: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """f at a batch of points (no gradient), in memory-bounded chunks."""
        chunk = self.chunk_size(points.shape[1:], points.device)
        return torch.cat([
            forward_objective(self.model, points[s:s + chunk], target[s:s + chunk],
                              self.objective_name)
            for s in range(0, points.shape[0], chunk)])

    def gradient(self, points: torch.Tensor, target: torch.Tensor,
                 grad_space: str = "pixel") -> tuple[torch.Tensor, torch.Tensor]:
        """(∇f, f) at a batch of points for the configured objective."""
        return gradient(self.model, points, target, self.objective_name, grad_space)


Method.Params = params_class(Method, {})


def _prepare(images: torch.Tensor, target, image_ids):
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    images = images.float()
    n = images.shape[0]
    target = torch.as_tensor(target, device=images.device).long().reshape(-1)
    if target.numel() == 1 and n > 1:
        target = target.expand(n)
    if target.numel() != n:
        raise ValueError(f"target has {target.numel()} entries for {n} images")
    if image_ids is None:
        image_ids = content_ids(images)
    image_ids = torch.as_tensor(image_ids).long().reshape(-1).cpu()
    if image_ids.numel() != n:
        raise ValueError(f"image_ids has {image_ids.numel()} entries for {n} images")
    return images, target, image_ids


def content_ids(images: torch.Tensor) -> torch.Tensor:
    """One id per image from its content: the first 63 bits of the SHA-256 of the image's
    shape and float32 bytes (taken on the CPU, so the same on every device and in every run).
    Identical images get identical ids, whatever batch they come in. int64 (N,) on the CPU."""
    cpu = images.detach().to("cpu", torch.float32).contiguous()
    head = repr(tuple(cpu.shape[1:])).encode()
    ids = [int.from_bytes(hashlib.sha256(head + img.numpy().tobytes()).digest()[:8], "little")
           >> 1 for img in cpu]
    return torch.tensor(ids, dtype=torch.long).reshape(-1)


def gradient(model: nn.Module, points: torch.Tensor, target: torch.Tensor, objective_name: str,
             grad_space: str = "pixel") -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of f = objective(model(points), target) w.r.t. the pixel points, or w.r.t. the
    normalised tensor (``grad_space="normalized"``: σ_c · ∇_pixel f). Returns (grads, f)."""
    x = points.detach().requires_grad_(True)
    with torch.enable_grad():
        f = objective(model(x), target, objective_name)
        (g,) = torch.autograd.grad(f.sum(), x)
    if grad_space == "normalized":
        std = getattr(model, "normalize", None)
        if std is None:
            raise ValueError("grad_space='normalized' needs a model with a Normalize first module")
        g = g * model.normalize.std
    return g.detach(), f.detach()


def forward_objective(model: nn.Module, points: torch.Tensor, target: torch.Tensor,
                      objective_name: str) -> torch.Tensor:
    with torch.no_grad():
        return objective(model(points), target, objective_name)


def default_memory_mb(device) -> float:
    """Chunk budget when none is given: 512 MB on CPU (measured fastest on the demo and on
    ResNet-18 at 224: larger chunks fall out of the caches, see benchmarks/), a quarter of the
    GPU's memory on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 4 / 2**20
    return 512.0


_BYTES_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


@full_precision
def _activation_sizes(model: nn.Module, sample_shape: tuple, device) -> tuple[int, int]:
    """(sum, max) of the bytes of all leaf-module outputs on one sample, in float32 whatever
    autocast is active; cached per (model, shape)."""
    cache = _BYTES_CACHE.setdefault(model, {})
    key = tuple(sample_shape)
    if key not in cache:
        total, largest = [0], [0]

        def hook(_m, _i, out):
            if isinstance(out, torch.Tensor):
                b = out.numel() * out.element_size()
                total[0] += b
                largest[0] = max(largest[0], b)

        handles = [m.register_forward_hook(hook) for m in model.modules()
                   if not list(m.children())]
        try:
            with torch.no_grad():
                model(torch.zeros((1, *key), device=device))
        finally:
            for h in handles:
                h.remove()
        cache[key] = (total[0], largest[0])
    return cache[key]


def estimate_point_bytes(model: nn.Module, sample_shape: tuple, device) -> int:
    """Memory one input point costs in a forward+backward pass, estimated from the sizes of
    all leaf-module outputs on one sample (x3: saved activations, their gradients, slack).
    Device independent and cached per (model, shape); measured in float32 whatever autocast
    is active (a mixed-precision run gets float32-sized chunks, never a later float32 run
    chunks sized by a first run in half precision)."""
    total, _ = _activation_sizes(model, sample_shape, device)
    in_bytes = 4 * int(torch.tensor(tuple(sample_shape)).prod())
    return 3 * total + 4 * in_bytes


def estimate_forward_bytes(model: nn.Module, sample_shape: tuple, device) -> int:
    """Memory one input point costs in a no-grad forward pass: nothing is kept for a
    backward pass, so a few activations are alive at a time, estimated as 6x the largest
    leaf-module output (its input and output, a residual stream, the attention scores and
    probabilities that eager attention makes outside any module) plus 2x the input. Never
    more than :func:`estimate_point_bytes`. Cached with it."""
    _, largest = _activation_sizes(model, sample_shape, device)
    in_bytes = 4 * int(torch.tensor(tuple(sample_shape)).prod())
    return min(6 * largest + 2 * in_bytes, estimate_point_bytes(model, sample_shape, device))


# -- registry ----------------------------------------------------------------------------
METHODS = Registry("method", package="xaipipe.explain")
register_method = METHODS.register


def available_methods() -> list[str]:
    return METHODS.names()


def get_method(name: str, where: str | None = None) -> type[Method]:
    return METHODS.get(name, where)




def _on_nonfinite(value: str) -> str:
    if value not in ON_NONFINITE:
        raise ConfigError(f"on_nonfinite: {value!r} is not allowed; allowed values: "
                          f"{', '.join(map(repr, ON_NONFINITE))}")
    return value


def check_finite(name: str, att: Attribution, on_nonfinite: str = "raise",
                 image_ids=None) -> Attribution:
    """Stop on maps that hold NaN/Inf (a broken model, exploding gradients) instead of
    returning them silently: raise :class:`~xaipipe.errors.NonFiniteError` naming the batch
    positions (and the ``image_ids`` given) of those images. ``on_nonfinite="record"`` returns
    ``att`` as it is, with ``extras["nonfinite"]`` (N,) bool on the maps' device (present in
    every batch, so a store gets the same extras throughout). One ``isfinite`` reduction."""
    _on_nonfinite(on_nonfinite)
    bad = nonfinite_rows(att.maps)
    if on_nonfinite == "record":
        att.extras["nonfinite"] = bad
    elif bool(bad.any()):
        pos = torch.nonzero(bad).flatten().cpu().tolist()
        ids = None if image_ids is None else \
            torch.as_tensor(image_ids).reshape(-1).cpu()[pos].tolist()
        which = f"batch positions {pos}" + ("" if ids is None else f" (image ids {ids})")
        raise NonFiniteError(f"method {name!r}: the maps of the images at {which} hold NaN/Inf "
                             "(the model's outputs or gradients are not finite there); pass "
                             "on_nonfinite='record' to keep them, flagged in "
                             "extras['nonfinite']", pos if ids is None else ids)
    return att


def explain(name: str, model: nn.Module, images: torch.Tensor, target, *,
            image_ids=None, seed: int = 0, memory_mb: float | None = None,
            max_batch: int | None = None, on_nonfinite: str = "raise",
            return_extras: bool = False, precision: str = "float32", **params):
    """Attribution maps of ``images`` for ``target`` by the method ``name``.

    Returns a float32 tensor on ``images.device``: (N, C, H, W) for pixel attributions,
    (N, 1, H, W) for single-channel maps (the :class:`Attribution` with its extras if
    ``return_extras``). See :func:`available_methods`.

    ``image_ids`` (N ints) seed each image's random draws together with ``seed``, the method
    and its hyper-parameters; without them an image's id is a hash of its bytes. Either way
    the maps of an image do not depend on the batch it comes in, its position or the memory
    budget (``memory_mb``, ``max_batch``).

    Maps with NaN/Inf raise :class:`~xaipipe.errors.NonFiniteError` naming the batch positions
    (and ``image_ids``); ``on_nonfinite="record"`` returns them as they are, flagged per image
    in ``extras["nonfinite"]`` (see ``return_extras``; :func:`check_finite`).

    ``precision="bfloat16"`` or ``"float16"`` runs the model under ``torch.autocast`` (mixed
    precision, an opt-in; the maps stay float32): faster on GPUs, with the differences the
    README reports; ``"float32"`` (default) leaves the arithmetic alone."""
    out = run_method(name, model, images, target, image_ids=image_ids, seed=seed,
                     memory_mb=memory_mb, max_batch=max_batch, on_nonfinite=on_nonfinite,
                     precision=precision, **params)
    return out if return_extras else out.maps


def explain_sweep(name: str, model: nn.Module, images: torch.Tensor, target, *,
                  steps=(8, 16, 32, 64, 128), image_ids=None, seed: int = 0,
                  memory_mb: float | None = None, max_batch: int | None = None,
                  return_extras: bool = False, on_nonfinite: str = "raise",
                  precision: str = "float32", **params) -> dict:
    """{n: maps} for every step count ``n`` in ``steps`` (maps as :func:`explain` returns them
    for ``steps=n``; the Attributions with their extras if ``return_extras``).

    Where the method allows it (``get_method(name).sweepable``: IG and Blur IG on nested grids,
    e.g. 8, 16, …, 128) all counts come from one evaluation of the path of ``max(steps)``
    points; Guided IG's path depends on its step count, so it runs once per count. IDGI
    (``idgi=True``) applies per count. Non-finite maps: as :func:`explain`, per count."""
    _on_nonfinite(on_nonfinite)
    method = get_method(name)(model, seed=seed, memory_mb=memory_mb, max_batch=max_batch,
                              precision=precision, **params)
    out = method.run_sweep(images, target, image_ids, steps)
    for n, a in out.items():
        check_finite(f"{name}@{n}", a, on_nonfinite, image_ids)
    return out if return_extras else {n: a.maps for n, a in out.items()}


def run_method(name: str, model: nn.Module, images: torch.Tensor, target, *, image_ids=None,
               seed: int = 0, memory_mb: float | None = None, max_batch: int | None = None,
               on_nonfinite: str = "raise", precision: str = "float32",
               **params) -> Attribution:
    """Like :func:`explain` but returns the :class:`Attribution` with its diagnostics."""
    _on_nonfinite(on_nonfinite)
    method = get_method(name)(model, seed=seed, memory_mb=memory_mb, max_batch=max_batch,
                              precision=precision, **params)
    return check_finite(name, method.run(images, target, image_ids), on_nonfinite, image_ids)
