"""AGI, adversarial gradient integration (Pan, Li, Zhu, *Explaining Deep Neural Network Models
with Adversarial Gradient Integration*, IJCAI 2021; code ``pd90506/AGI`` @41488431,
``AGI_main.py``, ``AGI_quantitive.py``), with the attribution re-calibration of Yang, Akhtar,
Wen, Shah, Mian (*Re-calibrating Feature Attributions for Model Interpretation*, ICLR 2023;
code ``ypeiyu/attribution_recalibration`` @5b745d4, ``saliency_methods/adv_grad_integration.py``)
and the variant of Yang, Akhtar, Wen, Mian (*Local Path Integration for Attribution*, AAAI 2023;
code ``ypeiyu/LPI`` @6ff4785, ``saliency_methods/adv_grad_integration.py``). The three codes
were read, not copied.

Clean algorithm, in pixel space. Per image x̃ with explained class y, B target classes T are
drawn uniformly without replacement from {0 … K−1} \\ {y} (K the model's number of classes;
``samples`` = B, or all K − 1 others where K − 1 < B: the map then sums over K − 1 targets).
For each t ∈ T, x⁰ = x̃ and for i = 1 … k (``steps``)::

    x^i = clip(x̃ + ε·sign(∇ s_t(x^{i−1})), 0, 1)     (anchored at x̃, not at x^{i−1})
    δ_i = x̃ − x^i,   c_{t,i} = ∇f(x^i) ⊙ δ_i

with s_t the target score (``target_score``: logit z_t or softmax probability) and f the
explained objective of y (``objective``). So ‖x^i − x̃‖_∞ ≤ ε, x^i ∈ [0, 1], and c_{t,i} = 0
wherever δ_i = 0 (a pixel already at the clip boundary in the sign's direction, or a zero
gradient). The gradient is paired with the point it is taken at, as re-calibration's validity
criterion (x̃ − r) ⊙ ∇f(r) requires.

Estimators (``recalibrate``, the ICLR 2023 paper's ``est_method``):

- ``none``: vanilla AGI, φ = Σ_t Σ_i c_{t,i} (a sum over targets, no 1/B, as all three codes);
- ``valid_ip``: per feature, the mean of the kept c_{t,i} ≥ 0 over the count of kept (t, i);
- ``valid_ref``: a_t = Σ_i c_{t,i}; per feature the mean of the kept a_t ≥ 0 over the count of
  kept targets. Where every a_t ≥ 0 this is vanilla / B.

The default is ``valid_ip``, the re-calibration paper's default estimator and the one its
preset runs (B = 10, k = 5, ε = 0.05, label logit); ``recalibrate: none`` gives Pan et al.'s
vanilla AGI. Zero products count as kept (they add 0 and raise the count). Re-calibrated maps
are ≥ 0.

Cost, clean: 2·B·k backward passes per image in k + 1 forwards per target (one forward at
x^i serves ∇f(x^i) and ∇s_t(x^i) for the next step), plus one forward of one image for K. All
(image, target) pairs are flattened and walk their k steps together in chunks that fit the
memory budget; sums are float64, so an image's map does not depend on its batch.

Targets are drawn from a generator seeded by (seed, image id, method, ``samples``, ``compat``):
vanilla and re-calibrated runs, and any ε, k or objective, explain an image against the same
classes. ``adv_targets`` fixes them: an int tensor (B,) for every image or (N, B) per image.
Extras: ``adv_targets`` (N, B') int64, the classes walked towards (−1: a slot ``pan`` skips);
under ``pan`` also ``adv_iterations`` (N, B') int64, the steps each walk made before it stopped.

``compat`` reproduces a reference code (with ``recalibrate: none`` where that code has no
re-calibration: ``pan``, ``ypeiyu_lpi``):

- ``ypeiyu`` (``attribution_recalibration``, rewritten in c8a517e): as clean, except that the
  target-class passes feed the pixel tensor to the network *without* its normalisation
  (s_t(x) = s_t(net(x)); the model must be a :class:`~xaipipe.models.NormalizedModel`, whose
  ``net`` is the network after ``normalize``), and the targets come from ``select_id``: B
  classes drawn without replacement from range(0, K − 2) with the label not excluded
  (range(0, 998) for ImageNet: the code's ``cls_num - 1`` with ``cls_num = 1000 - 1``; its
  per-dataset class counts give range(0, K − 2) for K classes, which is what is used here).
  B > K − 2 is a :class:`~xaipipe.errors.ConfigError` naming ``samples`` (the code's
  ``random.sample`` fails there).
- ``ypeiyu_lpi`` (``LPI``): the walk lives in the normalised tensor x = (x̃ − μ)/σ and the clamp
  is applied there: x^i = clamp(x + ε·sign(∇_x s_t), 0, 1), c = ∇_x f(x^i) ⊙ (x − x^i); logits
  (``target_score``), B (``samples``, the code's ``top_k = bg_size``) targets drawn as
  ``ypeiyu``'s ``select_id``, k steps with no early stop. ``LPI``'s code also pairs each
  displacement with the gradient at the previous iterate and explains its prediction: those two
  are not reproduced here (the ``target`` given is explained, at x^i).
- ``pan`` (``pd90506/AGI``): targets the fixed ids ``range(0, K − 1, max(1, K // B))``
  (``AGI_main.py``'s ``range(0, 999, int(1000/topk))``), skipping the predicted class ŷ;
  s_t and f are softmax probabilities (``target_score`` and ``objective`` are not used) and f
  explains ŷ whatever ``target`` says; each walk makes at most k = ``steps`` iterations and
  stops before iteration i when argmax(x^{i−1}) = t; the contribution takes the gradient at the
  previous iterate: c_{t,i} = ∇p_ŷ(x^{i−1}) ⊙ (x̃ − x^i). ``AGI_main.py``'s defaults at
  41488431, ``--topk 20 --iter 50`` (the 20 ids range(0, 999, 50), at most 50 iterations), are
  ``samples: 20, steps: 50`` here (later commits default to 15 and 15).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ...errors import ConfigError
from ...maths.objectives import objective
from ...params import Param
from ...utils import generator
from ..base import OBJECTIVE_PARAM, Attribution, Method, register_method
from .recalibration import RECALIBRATIONS, ValidMean

COMPATS = (None, "ypeiyu", "ypeiyu_lpi", "pan")
TARGET_SCORES = ("logit", "prob")
#: the hyper-parameters the draw of the targets depends on (besides seed, image id, method)
DRAW_PARAMS = ("samples", "compat")


@dataclass
class AGIStep:
    """One iteration i of the walks of a chunk's pairs (only those still walking, under
    ``pan``). Tensors on the images' device; ``point``, ``delta``, ``product`` (m, C, H, W) in
    the walk's space (pixel; the normalised tensor under ``ypeiyu_lpi``)."""
    rows: torch.Tensor       # (m,) positions of the pairs' images in the batch
    pairs: torch.Tensor      # (m,) positions of the pairs in their chunk
    classes: torch.Tensor    # (m,) target classes t
    iteration: int           # i, from 1
    point: torch.Tensor      # x^i
    delta: torch.Tensor      # x̃ − x^i
    product: torch.Tensor    # c_{t,i}


@dataclass
class AGIChunk:
    """The (image, target) pairs that walk together: their images' positions ``rows``, their
    target slots ``slots`` and classes ``classes`` (P,), and ``steps``, the iterations as they
    are computed. ``iterations`` (P,) counts each pair's steps once ``steps`` is exhausted."""
    rows: torch.Tensor
    slots: torch.Tensor
    classes: torch.Tensor
    steps: Iterator[AGIStep] | None = field(default=None, repr=False)
    iterations: torch.Tensor | None = None


@dataclass
class AGITargets:
    """``classes`` (N, B') int64 on the CPU, −1 where a slot is skipped; ``explained`` (N,) the
    class f explains (the given target; ŷ under ``pan``); ``num_classes`` K."""
    classes: torch.Tensor
    explained: torch.Tensor
    num_classes: int


def _gradients(model, x: torch.Tensor, objectives) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Gradients w.r.t. ``x`` of each (target, objective name) in ``objectives`` (summed over
    the batch), from one forward pass; and the logits."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = model(x)
        outs = [objective(z, t, name).sum() for t, name in objectives]
        grads = [torch.autograd.grad(o, x, retain_graph=j < len(outs) - 1)[0].detach()
                 for j, o in enumerate(outs)]
    return grads, z.detach()


def _split_model(model, where: str):
    """(normalize, net) of a NormalizedModel-like model, or a ConfigError naming ``where``."""
    norm, net = getattr(model, "normalize", None), getattr(model, "net", None)
    if norm is None or net is None:
        raise ConfigError(f"{where}: needs a model whose first module is its normalisation "
                          f"('normalize') followed by 'net' (xaipipe.models.NormalizedModel); "
                          f"got {type(model).__name__}")
    return norm, net


@register_method
class AGI(Method):
    name = "agi"
    params = {
        "eps": Param(0.05, float, min=0.0, doc="step size ε of each sign step"),
        "steps": Param(5, int, min=1, doc="iterations k per target (pan: at most k)"),
        "samples": Param(10, int, min=1,
                         doc="number of target classes B (at most K−1 for a model of K "
                             "classes; pan: the ids 0, K // B, 2·(K // B), … below K−1)"),
        "target_score": Param("logit", str, TARGET_SCORES,
                              doc="score s_t whose gradient sign steps towards class t"),
        "objective": OBJECTIVE_PARAM,
        "recalibrate": Param("valid_ip", str, RECALIBRATIONS,
                             doc="estimator: none (vanilla AGI), valid_ip (the re-calibration "
                                 "paper's default), valid_ref"),
        "adv_targets": Param(None, (torch.Tensor, type(None)),
                             doc="fixed target classes: int tensor (B,) or (N, B); null: drawn"),
        "compat": Param(None, (str, type(None)), COMPATS,
                        doc="the quirks of a reference code: ypeiyu "
                            "(attribution_recalibration), ypeiyu_lpi (LPI), pan (pd90506/AGI); "
                            "see docs/methods.md"),
    }

    @classmethod
    def validate(cls, values, where):
        t = values.get("adv_targets")
        if t is not None and (t.dtype.is_floating_point or t.dtype.is_complex
                              or t.dtype == torch.bool or t.ndim not in (1, 2)
                              or t.shape[-1] == 0):
            raise ConfigError(f"{where}.adv_targets: expected an integer tensor (B,) or (N, B) "
                              f"with B ≥ 1, got {t.dtype} of shape {tuple(t.shape)}")
        return values

    @classmethod
    def check_model(cls, params, model, where):
        params = cls.check(params, where)
        if params.compat in ("ypeiyu", "ypeiyu_lpi"):
            _split_model(model, f"{where}: agi compat {params.compat!r}")

    # -- targets -------------------------------------------------------------------------
    def _where(self) -> str:
        return f"method {self.name!r}"

    def draw_generator(self, image_id: int) -> torch.Generator:
        """The generator of one image's targets: (seed, image id, method, ``samples``,
        ``compat``), so estimators, ε, k and objectives share the draw."""
        seed, iid, name, hp, *extra = self.seed_parts(image_id, "targets")
        return generator(seed, iid, name, {k: hp[k] for k in DRAW_PARAMS if k in hp}, *extra)

    def draw_targets(self, target: torch.Tensor, image_ids, num_classes: int,
                     pred: torch.Tensor | None = None) -> torch.Tensor:
        """The target classes (N, B') int64 on the CPU of images with explained classes
        ``target`` and ids ``image_ids`` for a model of ``num_classes`` classes (``pred``: the
        predictions, needed under ``pan``); −1 marks a slot ``pan`` skips."""
        p, k_cls = self.hparams, int(num_classes)
        target = torch.as_tensor(target).reshape(-1).cpu().long()
        n = target.numel()
        if p.compat == "pan":
            if pred is None:
                raise ValueError("compat 'pan' needs the predictions")
            pred = torch.as_tensor(pred).reshape(-1).cpu().long()
        if p.adv_targets is not None:
            out = p.adv_targets.detach().to("cpu", torch.long)
            out = out.expand(n, -1) if out.ndim == 1 else out
            if out.shape[0] != n:
                raise ConfigError(f"{self._where()}: adv_targets has {out.shape[0]} rows for "
                                  f"{n} images")
            if bool(((out < 0) | (out >= k_cls)).any()):
                raise ConfigError(f"{self._where()}: adv_targets must be classes in "
                                  f"[0, {k_cls}) of this model, got {out.unique().tolist()}")
            out = out.clone()
            if p.compat == "pan":
                out[out == pred.view(-1, 1)] = -1
            return out
        if p.compat == "pan":
            ids = torch.arange(0, k_cls - 1, max(1, k_cls // p.samples), dtype=torch.long)
            if ids.numel() == 0:
                raise ConfigError(f"{self._where()}: compat 'pan' has no target ids "
                                  f"range(0, {k_cls - 1}, …) on a model of {k_cls} classes")
            out = ids.expand(n, -1).clone()
            out[out == pred.view(-1, 1)] = -1
            return out
        if p.compat in ("ypeiyu", "ypeiyu_lpi"):
            pool = k_cls - 2
            if p.samples > pool:
                raise ConfigError(
                    f"{self._where()}: samples={p.samples} targets cannot be drawn under compat "
                    f"{p.compat!r} from range(0, {max(pool, 0)}) (select_id draws from "
                    f"range(0, K − 2), K = {k_cls} classes); use samples ≤ {max(pool, 0)} or a "
                    "model with more classes")
            return torch.stack([torch.randperm(pool, generator=self.draw_generator(int(i)))
                                [:p.samples] for i in image_ids]).long()
        if k_cls < 2:
            raise ConfigError(f"{self._where()}: needs a model with at least 2 classes, "
                              f"got {k_cls}")
        b = min(p.samples, k_cls - 1)
        rows = []
        for y, i in zip(target.tolist(), image_ids):
            perm = torch.randperm(k_cls - 1, generator=self.draw_generator(int(i)))[:b]
            rows.append(perm + (perm >= y).long())          # skip y: {0..K−1} \ {y}
        return torch.stack(rows).long()

    def targets_of(self, images: torch.Tensor, target: torch.Tensor,
                   image_ids) -> AGITargets:
        """The targets of prepared inputs (one forward of one image for K; under ``pan`` one
        forward of every image for ŷ)."""
        pan = self.hparams.compat == "pan"
        with torch.no_grad():
            if pan:
                chunk = self.chunk_size(images.shape[1:], images.device)
                logits = torch.cat([self.model(images[s:s + chunk])
                                    for s in range(0, images.shape[0], chunk)])
                pred = logits.argmax(1)
            else:
                logits, pred = self.model(images[:1]), None
        k_cls = int(logits.shape[1])
        classes = self.draw_targets(target, image_ids, k_cls,
                                    None if pred is None else pred.cpu())
        return AGITargets(classes, pred if pan else target, k_cls)

    # -- the walks -----------------------------------------------------------------------
    def _spaces(self):
        """(to the walk's space, the model of f, the model of s_t) for the compat mode."""
        compat = self.hparams.compat
        if compat == "ypeiyu":
            _, net = _split_model(self.model, f"{self._where()}: compat 'ypeiyu'")
            return (lambda x: x), self.model, net
        if compat == "ypeiyu_lpi":
            norm, net = _split_model(self.model, f"{self._where()}: compat 'ypeiyu_lpi'")
            return norm, net, net
        return (lambda x: x), self.model, self.model

    def walks(self, images: torch.Tensor, target: torch.Tensor, image_ids,
              targets: AGITargets | None = None) -> Iterator[AGIChunk]:
        """The chunks of (image, target) pairs of prepared inputs, in order (image-major),
        each with its iterations (:class:`AGIStep`) as they are computed."""
        if targets is None:
            targets = self.targets_of(images, target, image_ids)
        dev = images.device
        cls = targets.classes
        rows, slots = torch.nonzero(cls >= 0, as_tuple=True)
        if rows.numel() == 0:
            return
        classes = cls[rows, slots]
        rows_d, classes_d = rows.to(dev), classes.to(dev)
        explained = targets.explained.to(dev)
        to_walk, f_model, s_model = self._spaces()
        chunk = self.chunk_size(images.shape[1:], dev)
        for s in range(0, rows.numel(), chunk):
            r, t = rows_d[s:s + chunk], classes_d[s:s + chunk]
            with torch.no_grad():
                x0 = to_walk(images[r])
            out = AGIChunk(rows[s:s + chunk], slots[s:s + chunk], classes[s:s + chunk],
                           iterations=torch.zeros(r.numel(), dtype=torch.long))
            walk = self._walk_pan if self.hparams.compat == "pan" else self._walk
            out.steps = walk(x0, r, t, explained[r], f_model, s_model, out.iterations)
            yield out

    def _walk(self, x0, rows, classes, explained, f_model, s_model, iterations):
        p = self.hparams
        f_obj, s_obj = (explained, p.objective), (classes, p.target_score)
        shared = f_model is s_model
        pairs = torch.arange(rows.numel(), device=rows.device)
        (g_s,), _ = _gradients(s_model, x0, [s_obj])
        for i in range(1, p.steps + 1):
            with torch.no_grad():
                x = torch.clamp(x0 + p.eps * torch.sign(g_s), 0, 1)
                delta = x0 - x
            last = i == p.steps
            if shared and not last:
                (g_f, g_s), _ = _gradients(f_model, x, [f_obj, s_obj])
            else:
                (g_f,), _ = _gradients(f_model, x, [f_obj])
                if not last:
                    (g_s,), _ = _gradients(s_model, x, [s_obj])
            iterations += 1
            yield AGIStep(rows, pairs, classes, i, x, delta, g_f * delta)

    def _walk_pan(self, x0, rows, classes, explained, f_model, s_model, iterations):
        p = self.hparams
        x = x0.clone()
        active = torch.arange(rows.numel(), device=rows.device)
        for i in range(1, p.steps + 1):
            (g_s, g_f), z = _gradients(f_model, x[active], [(classes[active], "prob"),
                                                            (explained[active], "prob")])
            go = z.argmax(1) != classes[active]         # stop where the attack succeeded
            active, g_s, g_f = active[go], g_s[go], g_f[go]
            if active.numel() == 0:
                return
            with torch.no_grad():
                xi = torch.clamp(x0[active] + p.eps * torch.sign(g_s), 0, 1)
                delta = x0[active] - xi
                x[active] = xi
            iterations[active.cpu()] += 1
            yield AGIStep(rows[active], active, classes[active], i, xi, delta, g_f * delta)

    # -- the map -------------------------------------------------------------------------
    def attribute(self, images, target, image_ids=None):
        p = self.hparams
        n, shape, dev = images.shape[0], images.shape[1:], images.device
        targets = self.targets_of(images, target, image_ids)
        iters = torch.zeros(targets.classes.shape, dtype=torch.long)
        if p.recalibrate == "none":
            sums = torch.zeros((n, *shape), dtype=torch.float64, device=dev)
        else:
            valid = ValidMean(n, shape, dev)
        for ch in self.walks(images, target, image_ids, targets):
            per_target = (torch.zeros((ch.rows.numel(), *shape), dtype=torch.float64, device=dev)
                          if p.recalibrate == "valid_ref" else None)
            for st in ch.steps:
                if p.recalibrate == "none":
                    sums.index_add_(0, st.rows, st.product.double())
                elif p.recalibrate == "valid_ip":
                    valid.feed(st.rows, st.product)
                else:
                    per_target.index_add_(0, st.pairs, st.product.double())
            if per_target is not None:
                valid.feed(ch.rows.to(dev), per_target)
            iters[ch.rows, ch.slots] = ch.iterations
        maps = sums if p.recalibrate == "none" else valid.result()
        extras = {"adv_targets": targets.classes.to(dev)}
        if p.compat == "pan":
            extras["adv_iterations"] = iters.to(dev)
        return Attribution(maps.to(images.dtype), extras)
