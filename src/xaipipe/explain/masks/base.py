"""The mask-optimisation framework shared by ShearletX, WaveletX, CartoonX and the pixel mask
(Kolek et al., CVPR 2023; ``skmda37/ShearletX``), with the three initialisations (``ones``,
``uniform``, ``startgrad``) and the per-iteration histories of StartGrad (Uendes et al.,
ICLR 2025; ``BuelentUendes/StartGrad``).

A host method describes its representation as a list of *parts* (ShearletX: one part, the
(N, C, K, H, W) shearlet coefficients; WaveletX: yl and the J detail levels; the pixel mask:
the image itself). For each part it has a mask shared across colour channels, shape
(N, 1, ...), and noise statistics. The framework then runs, per step,

    c̃_s = m ⊙ c + (1 − m) ⊙ u_s,   x̃_s = T⁻¹(c̃_s) (clipped as the method says),
    L = Σ_images λ_D·(1/S)·Σ_s (y_ref − p_c(x̃_s))² + the method's regularisers,

followed by one Adam step and the projection m ← clamp(m, 0, 1).

Batching and randomness: the N images are optimised together, but every image has its own
mask, its own loss (the batch loss is their sum, and Adam is elementwise) and its own noise,
drawn per (seed, image id, method, hyper-parameters, step, sample) with a generator on the
images' device. So an image's result does not depend on its batch. The (image, sample)
points of a step are pushed through the transform and the model in chunks that fit the
memory budget (``memory_mb``); their gradients accumulate into the masks before the step.

Outputs: the maps are the explanation image x_E = clip(T⁻¹(m ⊙ c)) (N, 3, H, W). Extras:
``final_retained_l1`` / ``final_retained_entropy`` / ``final_retained_pixel`` (N,), ``mask``
(the mask in its own layout, when ``return_mask`` or ``steps=0``) and, with
``history_every=k``, T = ceil(steps / k) entries per image (entry 0 is the initial mask's,
before any update; entry j is taken at step j·k from that step's S noisy samples):
``retained_probability``, ``retained_l1``, ``retained_entropy``, ``retained_pixel``,
``cp_l1``, ``cp_pixel``, ``cp_entropy`` (StartGrad's CP_t: the noisy samples' retained
probability over each retained information), the Kolek-style CP of the clean explanation at
the same step (``clean_retained_probability``, ``clean_cp_l1_pixel``, ``clean_cp_l1``,
``clean_cp_entropy``: what the ``cp`` metric gives for the final map, one extra forward pass
per recorded step; :func:`clean_cp`) (N, T) and ``loss_terms`` (N, T, K) in the method's
``LOSS_TERMS`` order. A CP is NaN at a step where its retained information is zero (the mask
has gone to zero, e.g. under a large λ_1): undefined, as the ``cp`` metric leaves it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from ...errors import ConfigError
from ...params import Param, ParamSet, check_params, cli_scalar
from ...utils import derive_seed
from ..base import Attribution, Method
from ...maths.faithfulness import faithfulness_curves
from ...maths.information import (HISTORY, cp_ratio, entropy, explanation_image,
                                log_prob, pixel_l1_ratio, target_log_prob)
from ...maths.objectives import objective
from .startgrad import (ABLATIONS, SCORES, SMOOTHGRAD_SPREAD, TRANSFORMS, block_transform,
                        ranking_score, sampled_quantile_transform, shuffle_blocks)

INITS = ("ones", "uniform", "startgrad")
#: learning-rate schedules of the StartGrad repository (torch's CosineAnnealingLR, StepLR,
#: ExponentialLR, stepped once per iteration; :func:`lr_at`)
LR_SCHEDULES = ("constant", "cosine", "step", "exponential")
#: regulariser weights over the iterations: fixed, or λ_t = λ·δ^(1/t) (:func:`lambda_factor`)
LAMBDA_SCHEDULES = ("constant", "adaptive")

#: The parameters every mask method shares (a host adds its λs and may change defaults).
COMMON_PARAMS = {
    "steps": Param(300, int, min=0, doc="optimisation steps (Adam, then clamp to [0, 1])"),
    "lr": Param(0.1, float, min=0.0, doc="Adam learning rate"),
    "samples": Param(16, int, min=1, doc="noise samples S per step"),
    "noise": Param("uniform", str, ("uniform", "gaussian", "zeros"),
                   doc="perturbation u: U[μ−σ, μ+σ], N(μ, σ²) or 0"),
    "distortion": Param("maximize", str, ("maximize", "preserve"),
                        doc="y_ref = 1 (ShearletX code) or p_c of the clean image (StartGrad)"),
    "lambda_d": Param(1.0, float, min=0.0, doc="weight of the distortion term"),
    "init": Param("ones", str, INITS, doc="initial mask: all ones, U(0,1), or StartGrad"),
    "startgrad_score": Param("nll", str, SCORES,
                             doc="StartGrad score: −log p_c, p_c (same mask) or the logit"),
    "startgrad_transform": Param("qtf", str, TRANSFORMS,
                                 doc="|gradient| → mask per block: the QTF (StartGrad) or the "
                                     "ablations minmax, sqrt, log"),
    "startgrad_ablation": Param("none", str, ABLATIONS,
                                doc="StartGrad ablations: adversarial (1 − m₀), shuffle (m₀ "
                                    "permuted per block), noisy (N(0, σ²) added to the "
                                    "gradient), grad_x_input (|∂s/∂z ⊙ z|), smoothgrad (the "
                                    "gradient averaged over noisy copies of the image, σ = "
                                    "0.15·(max − min))"),
    "startgrad_noise": Param(0.05, float, min=0.0, doc="σ² of the noisy ablation"),
    "startgrad_samples": Param(None, (int, type(None)), min=1,
                               doc="noisy copies of the smoothgrad ablation; None: the "
                                   "host's (10 ShearletX/WaveletX, 250 pixel mask)"),
    "lr_schedule": Param("constant", str, LR_SCHEDULES,
                         doc="learning rate over the iterations (StartGrad repository "
                             "option; its settings are not published): cosine to 0 over "
                             "`steps`, ×lr_gamma every lr_step_size steps, or ×lr_gamma "
                             "per step"),
    "lr_gamma": Param(0.99, float, min=0.0, doc="factor of the step / exponential schedule"),
    "lr_step_size": Param(100, int, min=1, doc="iterations per factor of the step schedule"),
    "lambda_schedule": Param("constant", str, LAMBDA_SCHEDULES,
                             doc="regulariser weights: constant, or adaptive λ_t = "
                                 "λ·δ^(1/t) at iteration t = 1, 2, ... (StartGrad repository)"),
    "lambda_delta": Param(0.1, float, min=0.0, max=1.0,
                          doc="δ of the adaptive schedule (the first iteration's fraction of λ)"),
    "normalize_gradient": Param(False, bool,
                                doc="divide each image's mask gradient by its L2 norm "
                                    "(+1e-7) before the Adam step (StartGrad repository)"),
    "history_every": Param(0, int, min=0, doc="record the histories every N steps (0: off)"),
    "return_mask": Param(False, bool, doc="return the final mask in extras['mask']"),
    "faithfulness_at": Param((), (tuple, list),
                             doc="iterations at which to record the StartGrad faithfulness of "
                                 "the current mask (0: the initial mask; at most steps)"),
    "faithfulness_compat": Param(None, (str, type(None)), ("startgrad",),
                                 doc="startgrad: the reference's faithfulness (ties, per-array "
                                     "ranking, fresh noise)"),
}



#: parameters that only shape the initial mask or what a run records: runs of one method
#: that differ in nothing else are one *setting*, compared across their inits by the
#: StartGrad tables (:func:`run_setting`)
INIT_AND_OUTPUT = ("init", "startgrad_score", "startgrad_ablation", "startgrad_transform",
                   "startgrad_noise", "startgrad_samples", "rescaling_gradient",
                   "history_every", "return_mask", "faithfulness_at", "faithfulness_compat")
#: the StartGrad options that name a variant of the ``startgrad`` init (:func:`init_label`)
_INIT_VARIANT = ("startgrad_ablation", "startgrad_transform", "startgrad_score",
                 "rescaling_gradient")


def _as_dict(params) -> dict:
    return params.as_dict() if isinstance(params, ParamSet) else dict(params)


def run_setting(params: dict | ParamSet, declared: dict) -> str:
    """The run's setting: its parameters (defaults filled in from ``declared``, the method's
    ``params``) other than :data:`INIT_AND_OUTPUT`, as canonical JSON. Runs from the three
    inits of one λ pair share it; another λ pair, lr or noise is another setting."""
    import json
    full = check_params(declared, _as_dict(params), "run_setting")
    return json.dumps({k: v for k, v in sorted(full.items()) if k not in INIT_AND_OUTPUT},
                      sort_keys=True, default=str)


def init_label(params: dict | ParamSet, declared: dict) -> str:
    """``ones``, ``uniform``, ``startgrad``, or for a StartGrad variant ``startgrad[...]``
    naming its non-default options (``startgrad[ablation=adversarial]``,
    ``startgrad[transform=log, score=logit]``; the noisy ablation's σ² and the smoothgrad
    ablation's copies are named with it), so that ablations are inits of their own."""
    full = check_params(declared, _as_dict(params), "init_label")
    init = full.get("init", "ones")
    if init != "startgrad":
        return init
    parts = []
    for k in _INIT_VARIANT:
        if k in declared and full[k] != declared[k].default:
            parts.append(f"{k.removeprefix('startgrad_').removesuffix('_gradient')}="
                         f"{str(full[k]).lower()}")
    ablation = full.get("startgrad_ablation")
    if ablation == "noisy":
        parts.append(f"noise={full['startgrad_noise']}")
    elif ablation == "smoothgrad" and full.get("startgrad_samples") is not None:
        parts.append(f"samples={full['startgrad_samples']}")
    return f"startgrad[{', '.join(parts)}]" if parts else "startgrad"


@torch.no_grad()
def clean_cp(model, images, x_e, target, logp_clean, l1, ent, chunk: int | None = None) -> dict:
    """The CP scores of Kolek et al. (clean form) for the current explanation x_E of a
    mask method, as the ``cp`` metric computes them on the final one: RCP = p_c(x_E/max x_E) /
    p_c(x̃) for the fixed class c = ``target`` (``logp_clean``: log p_c(x̃), :func:`log_prob`),
    over the retained pixel ℓ1 of x_E/max (``clean_cp_l1_pixel``), the representation's
    retained ℓ1 ``l1`` (``clean_cp_l1``) and retained entropy ``ent`` (``clean_cp_entropy``);
    (N,) float64 on the CPU. One forward pass of the N explanations."""
    xe = explanation_image(x_e, images, normalize=True)
    rcp = torch.exp(log_prob(model, xe, target, chunk) - logp_clean.double().cpu())
    pix = pixel_l1_ratio(xe, images)
    return {"clean_retained_probability": rcp,
            "clean_cp_l1_pixel": cp_ratio(rcp, pix),
            "clean_cp_l1": cp_ratio(rcp, l1.double().cpu()),
            "clean_cp_entropy": cp_ratio(rcp, ent.double().cpu())}


@dataclass
class State:
    """What a host method prepares once per batch."""
    images: torch.Tensor                 # (N, C, H, W) in [0, 1]
    coeffs: list[torch.Tensor]           # per part (N, C, ...)
    mu: list[torch.Tensor]               # per part, broadcastable to (N, Cn, ...)
    sigma: list[torch.Tensor]
    extra: dict = field(default_factory=dict)


class MaskMethod(Method):
    """Base class of the transform-domain mask methods. Subclasses implement
    :meth:`prepare` (coefficients and noise statistics), :meth:`synthesize` (coefficients →
    image, differentiable, no clipping), :meth:`regularizers` and set ``LOSS_TERMS``
    (``"distortion"`` first), ``noise_shared_across_colour``, ``coefficient_clip``."""

    channels = "input"
    LOSS_TERMS: tuple[str, ...] = ("distortion",)
    #: one noise tensor for R, G and B (ShearletX) or one per channel (WaveletX, pixel)
    noise_shared_across_colour = False
    #: QTF block dims per part for StartGrad (the trailing dims that form one block)
    qtf_block_dims: tuple[int, ...] = (2,)
    #: bytes per (image, sample) point the transform needs, on top of the model's
    transform_point_bytes = 0
    #: :meth:`synthesize` is linear in the coefficients (see :meth:`split_synthesis`)
    linear_synthesis = False

    #: parameters left out of the seeds: they do not change what is drawn, so recording
    #: histories, returning the mask, running longer, scheduling the learning rate or the
    #: λs, or drawing more SmoothGrad copies never changes the draws of a step
    UNSEEDED = ("steps", "history_every", "return_mask", "faithfulness_at",
                "faithfulness_compat", "lr_schedule", "lr_gamma", "lr_step_size",
                "lambda_schedule", "lambda_delta", "startgrad_samples",
                # the initial mask: runs from ones, U(0,1) and StartGrad (any score, ablation
                # or transform) draw the same noise at every step, a paired comparison
                "init", "startgrad_score", "startgrad_ablation", "startgrad_transform",
                "startgrad_noise", "rescaling_gradient")
    #: parameters left out of the seeds while at their default: options added after a
    #: method's first release, so that its runs without them draw what they drew before
    SEED_OMIT_DEFAULT: tuple[str, ...] = ()
    #: noisy copies of the smoothgrad ablation when ``startgrad_samples`` is None (StartGrad paper)
    smoothgrad_samples = 10

    @classmethod
    def validate(cls, out: dict, where: str) -> dict:
        """``faithfulness_at``: distinct iterations in 0..steps, sorted."""
        out = super().validate(out, where)
        # `--config` passes list items as strings ("5"): read them as YAML scalars
        at = [cli_scalar(v) if isinstance(v, str) else v for v in out["faithfulness_at"]]
        bad = [v for v in at if isinstance(v, bool) or not isinstance(v, int) or v < 0
               or v > out["steps"]]
        if bad:
            raise ConfigError(f"{where}.faithfulness_at: {bad} are not iterations in "
                              f"0..steps={out['steps']} (give integers, e.g. [0, 5, 10, 50])")
        out["faithfulness_at"] = sorted(set(at))
        return out

    def seed_parts(self, image_id: int, *extra) -> tuple:
        hp = {k: v for k, v in self.hparams.as_dict().items()
              if k not in self.UNSEEDED and not isinstance(v, torch.Tensor)
              and not (k in self.SEED_OMIT_DEFAULT and v == self.params[k].default)}
        return (self.seed, int(image_id), self.name, hp, *extra)

    # -- hooks ----------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor) -> State:
        raise NotImplementedError

    def synthesize(self, state: State, parts: list[torch.Tensor]) -> torch.Tensor:
        """(n, C, ...) coefficients per part → (n, C, H, W) images, not clipped."""
        raise NotImplementedError

    def coefficients(self, state: State, images: torch.Tensor) -> list[torch.Tensor]:
        """T(images) per part with ``state``'s transform, nothing else of :meth:`prepare`
        (the smoothgrad ablation's noisy copies need no noise statistics or gray bands)."""
        return self.prepare(images).coeffs

    def regularizers(self, state: State, masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """(N,) per-image terms, already weighted, in ``LOSS_TERMS[1:]`` order."""
        raise NotImplementedError

    def mask_shapes(self, state: State) -> list[tuple]:
        """Per part, the mask shape of one image (1, ...) (shared across colour)."""
        return [(1, *c.shape[2:]) for c in state.coeffs]

    def normalizes_gradient(self) -> bool:
        return bool(self.hparams.normalize_gradient)

    def coefficient_clip(self) -> bool:
        """Clip the obfuscated coefficients (compat ShearletX) instead of the image."""
        return False

    def clips_image(self) -> bool:
        """Clip the obfuscated image x̃_s to [0, 1] (all but the StartGrad repository's pixel
        mask, ``pixel_mask`` with ``compat: startgrad``)."""
        return not self.coefficient_clip()

    # -- the loop -------------------------------------------------------------------------
    def attribute(self, images, target, image_ids=None):
        p = self.hparams
        n = images.shape[0]
        state = self.prepare(images)
        with torch.no_grad():
            p_clean, logp_clean = self._clean_probs(images, target)   # (N,) p_c(x̃), log p_c
        y_ref = torch.ones_like(p_clean) if p.distortion == "maximize" else p_clean
        masks = self.initial_masks(state, target, image_ids)
        extras = {}
        f_at = p.faithfulness_at
        faith = torch.zeros(n, len(f_at), dtype=torch.float64)
        if f_at:
            extras["faithfulness_step"] = torch.tensor(f_at, dtype=torch.int64).repeat(n, 1)
        if p.steps == 0:
            if f_at:
                faith[:, 0] = self.faithfulness(state, masks, target, p_clean, image_ids)
                extras["faithfulness"] = faith.float()
            extras["mask"] = self.export_mask(masks)
            return Attribution(self.explanation(state, masks), {
                **extras, **self.final_extras(state, masks)})

        every = p.history_every
        t_hist = math.ceil(p.steps / every) if every else 0
        hist = {k: torch.zeros(n, t_hist, dtype=torch.float64) for k in HISTORY}
        terms = torch.zeros(n, t_hist, len(self.LOSS_TERMS), dtype=torch.float64)
        params = [m.requires_grad_(True) for m in masks]
        opt = torch.optim.Adam(params, lr=p.lr)
        for step in range(p.steps):
            opt.zero_grad(set_to_none=False)
            record = bool(every) and step % every == 0
            if step in f_at:
                faith[:, f_at.index(step)] = self.faithfulness(state, params, target, p_clean,
                                                               image_ids)
            probs = self._distortion_pass(state, params, target, y_ref, image_ids, step)
            with torch.enable_grad():
                regs = self.regularizers(state, params)
                if p.lambda_schedule != "constant":
                    w = lambda_factor(step, p.lambda_schedule, p.lambda_delta)
                    regs = [w * r for r in regs]
                total = sum(r.sum() for r in regs) if regs else None
                if total is not None and total.requires_grad:
                    total.backward(inputs=params)
            if record:
                j = step // every
                dist = p.lambda_d * ((y_ref[:, None] - probs) ** 2).mean(1)
                terms[:, j] = torch.stack([dist, *[r.detach() for r in regs]], 1).double().cpu()
                self._record(hist, j, state, params, probs, p_clean, target, logp_clean)
            if self.normalizes_gradient():
                normalize_gradients(params)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, p.lr, p.lr_schedule, p.steps,
                                    p.lr_gamma, p.lr_step_size)
            opt.step()
            with torch.no_grad():
                for m in params:
                    m.clamp_(0.0, 1.0)
        masks = [m.detach() for m in params]
        if p.steps in f_at:
            faith[:, -1] = self.faithfulness(state, masks, target, p_clean, image_ids)
        if f_at:
            extras["faithfulness"] = faith.float()
        if every:
            extras.update({k: v.float() for k, v in hist.items()})
            extras["loss_terms"] = terms.float()
        if p.return_mask:
            extras["mask"] = self.export_mask(masks)
        extras.update(self.final_extras(state, masks))
        return Attribution(self.explanation(state, masks), extras)

    def _clean_probs(self, x: torch.Tensor, target: torch.Tensor):
        """(p_c(x) float32 on x's device, log p_c(x) float64 on the CPU, as :func:`log_prob`)
        from one forward pass of the images."""
        chunk = self.chunk_size(x.shape[1:], x.device)
        probs, logps = [], []
        for s in range(0, x.shape[0], chunk):
            logits, t = self.model(x[s:s + chunk]), target[s:s + chunk]
            probs.append(objective(logits.float(), t, "prob"))
            logps.append(target_log_prob(logits, t))
        return torch.cat(probs), torch.cat(logps)

    def _point_chunk(self, images: torch.Tensor) -> int:
        """(image, sample) points per pass: the model's chunk, and what the transform's
        buffers of one point (``transform_point_bytes``) allow under the same budget
        (``memory_mb``, else :func:`default_memory_mb` of the device)."""
        from ..base import default_memory_mb
        chunk = self.chunk_size(images.shape[1:], images.device)
        if self.transform_point_bytes:
            budget = (self.memory_mb or default_memory_mb(images.device)) * 2**20
            chunk = min(chunk, max(1, int(budget // self.transform_point_bytes)))
        return chunk

    def _generator(self, image_id: int, *extra, device="cpu") -> torch.Generator:
        """A generator on ``device`` seeded by (seed, image id, method, hyper-parameters,
        *extra): every draw of an image is its own, whatever its batch."""
        return torch.Generator(device=device).manual_seed(
            derive_seed(*self.seed_parts(int(image_id), *extra)))

    def _noise_shape(self, c: torch.Tensor) -> tuple:
        """One point's noise of a part with coefficients c (N, C, ...): (Cn, ...), Cn = 1
        when the noise is shared across colour."""
        return (1 if self.noise_shared_across_colour else c.shape[1], *c.shape[2:])

    def _noise_affine(self, state: State, k: int, i: int):
        """(a, b) of part k for image i: the noise is u = a + b·r with r the standard draws
        of :meth:`_draw` (U[0, 1) or N(0, 1)); b is None for ``noise: zeros`` (u = 0)."""
        mu, sd = state.mu[k][i], state.sigma[k][i]
        kind = self.hparams.noise
        if kind == "zeros":
            return torch.zeros_like(mu), None
        if kind == "uniform":
            return mu - sd, 2 * sd                          # U[μ − σ, μ + σ)
        return mu, sd

    def _draw(self, state: State, g: torch.Generator, outs: list[torch.Tensor]) -> None:
        """Fill ``outs`` (one tensor per part, in part order) with the standard draws of one
        (image, step, sample) from its generator ``g``."""
        kind = self.hparams.noise
        for out in outs:
            if kind == "uniform":
                out.uniform_(generator=g)
            elif kind == "gaussian":
                out.normal_(generator=g)

    def _noise(self, state: State, i: int, image_id: int, step: int, s: int) -> list:
        """Noise of image i, sample s at ``step``: per part (Cn, ...) with Cn = 1 or C."""
        g = self._generator(image_id, "noise", step, s, device=state.images.device)
        draws = [torch.empty(self._noise_shape(c), device=c.device, dtype=c.dtype)
                 for c in state.coeffs]
        self._draw(state, g, draws)
        out = []
        for k, r in enumerate(draws):
            a, b = self._noise_affine(state, k, i)
            out.append(torch.zeros_like(r) if b is None else a + b * r)
        return out

    def _draw_chunk(self, state: State, pts, image_ids, step: int) -> list[torch.Tensor]:
        """The standard draws of the chunk's points, per part (n_points, Cn, ...), the same
        values as :meth:`_noise` draws. On CPU the points are drawn by as many threads as
        torch uses (each point has its own generator, so the values do not depend on the
        threads; the draws are serial per generator and were 10% of a ShearletX step)."""
        dev = state.images.device
        bufs = [torch.empty((len(pts), *self._noise_shape(c)), device=dev, dtype=c.dtype)
                for c in state.coeffs]
        if self.hparams.noise == "zeros":
            return bufs

        def fill(j):
            i, s = pts[j]
            self._draw(state, self._generator(image_ids[i], "noise", step, s, device=dev),
                       [b[j] for b in bufs])

        workers = min(torch.get_num_threads(), len(pts)) if dev.type == "cpu" else 1
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(workers) as ex:
                list(ex.map(fill, range(len(pts))))
        else:
            for j in range(len(pts)):
                fill(j)
        return bufs

    @staticmethod
    def _runs(img_i: list[int]) -> list[tuple[int, int, int]]:
        """(image, start, stop) of each run of one image's points."""
        runs, start = [], 0
        for j in range(1, len(img_i) + 1):
            if j == len(img_i) or img_i[j] != img_i[start]:
                runs.append((img_i[start], start, j))
                start = j
        return runs

    def _obfuscate(self, state: State, masks: list, img_i: list[int], noises: list[list]):
        """The direct form (no split): c̃ = u + m ⊙ (c − u) (= m ⊙ c + (1 − m) ⊙ u) for the
        chunk's points, then T⁻¹ and the clip. Points come image by image: each run of one
        image's samples takes that image's mask as a slice broadcast over the samples, whose
        backward is a sum, not the scatter of an index (the obfuscation of a ShearletX step:
        2.7 s -> 1.7 s on CPU)."""
        runs = self._runs(img_i)
        parts = []
        for k, (c, m) in enumerate(zip(state.coeffs, masks)):
            chunk = []
            for i, a, b in runs:
                u = torch.stack([nz[k] for nz in noises[a:b]])
                chunk.append(torch.addcmul(u, m[i:i + 1], c[i:i + 1] - u))
            parts.append(torch.cat(chunk) if len(chunk) > 1 else chunk[0])
        if self.coefficient_clip():
            parts = [q.clamp(0.0, 1.0) for q in parts]
        x = self.synthesize(state, parts)
        return x.clamp(0.0, 1.0) if self.clips_image() else x

    def split_synthesis(self) -> bool:
        """Whether :meth:`_obfuscate` may use T⁻¹(m ⊙ c + (1 − m) ⊙ u_s) = T⁻¹(m ⊙ c) +
        T⁻¹((1 − m) ⊙ u_s): valid for a linear synthesis with the clip on the image (not on
        the coefficients), and cheaper where the noise is shared across colour: per image
        T⁻¹(m ⊙ c) once for its C channels and T⁻¹((1 − m) ⊙ u_s) on one channel per sample,
        (C + S) transforms of K bands instead of C·S (ShearletX: 19 instead of 48 at S = 16).
        Equal up to float rounding (tested against the direct form)."""
        return (self.linear_synthesis and self.noise_shared_across_colour
                and not self.coefficient_clip() and self.clips_image())

    def synthesize_product(self, state: State, w: list[torch.Tensor],
                           r: list[torch.Tensor]) -> torch.Tensor:
        """T⁻¹(w ⊙ r) per part: w (1, 1, ...) one image's weights, r (B, 1, ...) draws that
        need no gradient → (B, 1, H, W). A method may override it with a leaner backward
        (ShearletX: :meth:`ShearletTransform.reconstruct_product`)."""
        return self.synthesize(state, [wk * rk for wk, rk in zip(w, r)])

    def _kept(self, state: State, masks: list, i: int) -> torch.Tensor:
        """T⁻¹(a + m ⊙ (c − a)) of image i, (1, C, H, W): the part of the split form that
        all of its samples share."""
        kept = []
        for k, (c, m) in enumerate(zip(state.coeffs, masks)):
            a, _ = self._noise_affine(state, k, i)
            kept.append(torch.addcmul(a, m[i:i + 1], c[i:i + 1] - a))
        return self.synthesize(state, kept)

    def _obfuscate_split(self, state: State, masks: list, runs, draws: list[torch.Tensor],
                         kept: dict | None = None):
        """The split form with u_s = a + b·r_s: T⁻¹(a + m ⊙ (c − a)) once per image for its C
        channels (:meth:`_kept`, or ``kept[i]`` when given) plus T⁻¹(((1 − m)·b) ⊙ r_s) on
        one channel per sample (the terms of T⁻¹(m ⊙ c + (1 − m) ⊙ u_s), regrouped;
        ``draws`` per part (n_points, 1, ...))."""
        out = []
        for i, a0, b0 in runs:
            x = kept[i] if kept is not None else self._kept(state, masks, i)
            weights = []
            for k, m in enumerate(masks):
                _, b = self._noise_affine(state, k, i)
                weights.append(None if b is None else (1 - m[i:i + 1]) * b)
            if weights[0] is None:
                out.append(x.expand(b0 - a0, *x.shape[1:]))
            else:
                out.append(x + self.synthesize_product(state, weights,
                                                       [d[a0:b0] for d in draws]))
        x = torch.cat(out) if len(out) > 1 else out[0]
        return x.clamp(0.0, 1.0)

    def _distortion_pass(self, state, masks, target, y_ref, image_ids, step) -> torch.Tensor:
        """Accumulate ∂(λ_D·D)/∂m into the masks' grads; returns p_c of every sample (N, S)."""
        p = self.hparams
        n, s_count = state.images.shape[0], p.samples
        points = [(i, s) for i in range(n) for s in range(s_count)]
        chunk = self._point_chunk(state.images)
        probs = torch.zeros(n, s_count, device=state.images.device)
        split = self.split_synthesis()
        # split form: each image's shared part T⁻¹(a + m ⊙ (c − a)) is synthesised once per
        # step, whatever the chunks; the chunks back-propagate into a detached copy of it,
        # and that gradient goes through its synthesis once, after the image's last chunk
        kept, kept_leaf = {}, {}
        last = {i: j for j, (i, _) in enumerate(points)}
        for start in range(0, len(points), chunk):
            pts = points[start:start + chunk]
            img_i = [i for i, _ in pts]
            inputs = list(masks)
            with torch.enable_grad():
                if split:
                    runs = self._runs(img_i)
                    for i, _, _ in runs:
                        if i not in kept:
                            kept[i] = self._kept(state, masks, i)
                            kept_leaf[i] = kept[i].detach().requires_grad_(True)
                        inputs.append(kept_leaf[i])
                    x = self._obfuscate_split(state, masks, runs,
                                              self._draw_chunk(state, pts, image_ids, step),
                                              kept_leaf)
                else:
                    x = self._obfuscate(state, masks, img_i, [
                        self._noise(state, i, int(image_ids[i]), step, s) for i, s in pts])
                logits = self.model(x)
                t = target[torch.tensor(img_i, device=target.device)]
                pc = objective(logits.float(), t, "prob")
                yr = y_ref[torch.tensor(img_i, device=y_ref.device)]
                loss = p.lambda_d * ((yr - pc) ** 2).sum() / s_count
                # only into the masks: no weight gradients of the model (a third of its
                # backward), and its parameters' .grad are left as they were
                loss.backward(inputs=inputs)
                for i in {i for i in img_i if split and last[i] < start + len(pts)}:
                    kept[i].backward(kept_leaf[i].grad, inputs=list(masks))
                    del kept[i], kept_leaf[i]
            probs[img_i, [s for _, s in pts]] = pc.detach()
        return probs

    def faithfulness(self, state: State, masks, target, p_clean, image_ids) -> torch.Tensor:
        """(N,) StartGrad faithfulness of the current masks in the method's own domain
        (:mod:`xaipipe.metrics.faithfulness`): the mask ranks the coefficient positions, the
        noise uses the method's statistics, seeded by (seed, image id, method name) only, so
        that runs with other inits or λs see the same noise."""
        p = self.hparams
        seeds = [derive_seed(self.seed, int(i), "faithfulness", self.name) for i in image_ids]
        with torch.no_grad():
            out = faithfulness_curves(
                self.model, target, p_clean.double().cpu(), state.coeffs,
                [m.detach() for m in masks], state.mu, state.sigma,
                lambda parts: self.synthesize(state, parts), seeds,
                shared_colour=self.noise_shared_across_colour,
                compat=p.faithfulness_compat, batch_size=self._point_chunk(state.images))
        return out["faithfulness"]

    # -- initialisation -------------------------------------------------------------------
    def initial_masks(self, state: State, target, image_ids) -> list[torch.Tensor]:
        p = self.hparams
        n, dev = state.images.shape[0], state.images.device
        shapes = self.mask_shapes(state)
        if p.init == "ones":
            return [torch.ones((n, *sh), device=dev) for sh in shapes]
        if p.init == "uniform":
            out = []
            for k, sh in enumerate(shapes):
                out.append(torch.stack([torch.rand(sh, generator=self._generator(i, "init", k))
                                        for i in image_ids]).to(dev))
            return out
        return self.startgrad_masks(state, target, image_ids)

    def startgrad_masks(self, state: State, target, image_ids=None) -> list[torch.Tensor]:
        """StartGrad: z = T(x̃) as a leaf, x′ = T⁻¹(z), a = |∂s/∂z|, max over colour, QTF per
        block. The gradient runs through the inverse transform (no clipping). The ablations
        (``startgrad_ablation``, ``startgrad_transform``) change one step each; their draws
        are seeded per image id."""
        p = self.hparams
        ablation = p.startgrad_ablation
        ids = (list(range(state.images.shape[0])) if image_ids is None
               else [int(i) for i in image_ids])
        if ablation == "smoothgrad":
            grads = self._smoothgrad_gradients(state, target, ids)
        else:
            grads = self._coefficient_gradients(state, target)
        # the reference's order: noise, then the rescaling, then × input (one ablation at a
        # time, so only the rescaling's place matters)
        if ablation == "noisy":
            sd = math.sqrt(p.startgrad_noise)
            grads = [g + sd * torch.stack([torch.randn(
                g.shape[1:], generator=self._generator(i, "startgrad_noise", k), dtype=g.dtype)
                for i in ids]).to(g.device) for k, g in enumerate(grads)]
        scale = self.gradient_scale(state)
        if scale is not None:
            grads = [g * scale.to(g.device, g.dtype) for g in grads]
        if ablation == "grad_x_input":
            grads = [g * c for g, c in zip(grads, state.coeffs)]
        out = []
        for k, (g, sh, bd) in enumerate(zip(grads, self.startgrad_shapes(state),
                                            self.qtf_block_dims)):
            a = g.abs().amax(1, keepdim=True)              # max over colour → (N, 1, ...)
            a = a.expand(a.shape[0], *sh) if a.shape[1:] != sh else a
            m0 = self._block_transform(a, bd, k, ids).to(g.device)
            if ablation == "adversarial":
                m0 = 1.0 - m0
            elif ablation == "shuffle":
                m0 = torch.stack([shuffle_blocks(m0[j], bd,
                                                 self._generator(i, "startgrad_shuffle", k))
                                  for j, i in enumerate(ids)])
            out.append(m0)
        return out

    def compat_qtf(self, part: int, n: int) -> tuple[int, int | None] | None:
        """(n_quantiles, subsample) of the scikit-learn QuantileTransformer that the StartGrad
        repository fits to each block of ``n`` values of ``part`` (``compat: startgrad``,
        :func:`~xaipipe.explain.masks.startgrad.sampled_quantile_transform`); None: the clean QTF."""
        return None

    def _block_transform(self, a: torch.Tensor, block_dims: int, part: int,
                         ids: list[int]) -> torch.Tensor:
        """|gradient| (N, ...) of one part → its initial mask, block by block: the
        ``startgrad_transform``, or for ``qtf`` under a compat profile the sampled QTF, whose
        subsample draws are seeded per (image id, part, block)."""
        kind = self.hparams.startgrad_transform
        n = math.prod(a.shape[a.ndim - block_dims:])
        sk = self.compat_qtf(part, n) if kind == "qtf" else None
        if sk is None:
            return block_transform(a, block_dims, kind)
        seeds = None
        if sk[1] is not None and sk[1] < n:          # subsampled: one seed per block
            per_image = math.prod(a.shape[1:a.ndim - block_dims])
            seeds = [derive_seed(*self.seed_parts(i, "startgrad_qtf", part, b))
                     for i in ids for b in range(per_image)]
        return sampled_quantile_transform(a, block_dims, sk[0], sk[1], seeds)

    def gradient_scale(self, state: State) -> torch.Tensor | None:
        """A factor the StartGrad gradients of every part are multiplied by before the
        absolute value (the pixel mask's ``rescaling_gradient``); None: none."""
        return None

    def _coefficient_gradients(self, state: State, target) -> list[torch.Tensor]:
        """∂s/∂z per part for z = T(x̃) as a leaf, through x′ = T⁻¹(z) (StartGrad)."""
        z = [c.detach().clone().requires_grad_(True) for c in state.coeffs]
        with torch.enable_grad():
            chunk = self.chunk_size(state.images.shape[1:], state.images.device)
            grads = [torch.zeros_like(c) for c in z]
            for s in range(0, state.images.shape[0], chunk):
                zs = [c[s:s + chunk] for c in z]
                x = self.synthesize(state, zs)
                logits = self.model(x).float()
                sc = ranking_score(logits, target[s:s + chunk], self.hparams.startgrad_score)
                gs = torch.autograd.grad(sc.sum(), zs)
                if self._prob_magnitude():
                    # ∂p_c/∂z = p_c·∂log p_c/∂z: the gradient of p_c itself where its size,
                    # not only its ranking, reaches the mask
                    pc = torch.softmax(logits.detach().double(), 1).gather(
                        1, target[s:s + chunk].view(-1, 1).to(logits.device)).squeeze(1)
                    gs = [gi * pc.to(gi.dtype).view(-1, *[1] * (gi.ndim - 1)) for gi in gs]
                for g, gi in zip(grads, gs):
                    g[s:s + chunk] = gi
        return grads

    def _prob_magnitude(self) -> bool:
        """Whether ``startgrad_score: prob`` needs the gradient of p_c rather than that of
        log p_c, which :func:`ranking_score` takes for ``prob`` and ``nll`` alike. The
        per-block QTF, min–max and sqrt transforms of |∂s/∂z| (and the adversarial, shuffle and
        grad_x_input ablations of them) do not change when an image's gradient is scaled by
        p_c > 0, so there one gradient keeps the two scores' masks identical bit for bit.
        The ``noisy`` ablation (σ² added to the gradient), the ``smoothgrad`` one (an average
        over copies with different p_c) and the ``log`` transform (log(a + 1e-12)) see the
        size: there ``prob`` is ∂p_c/∂z."""
        p = self.hparams
        return p.startgrad_score == "prob" and (
            p.startgrad_ablation in ("noisy", "smoothgrad") or p.startgrad_transform == "log")

    def _smoothgrad_gradients(self, state: State, target, ids: list[int]) -> list[torch.Tensor]:
        """StartGrad's smoothgrad ablation: |∂s/∂z| averaged over S copies x̃ + ε of each image
        (the absolute value of each copy's gradient, as the StartGrad repository averages it),
        ε ~ N(0, σ²) per pixel with σ = 0.15·(max − min) of that image, z = T(x̃ + ε); each
        image's draws seeded by its id and the copy's index (so copies do not depend on the
        batch, and more copies extend the same sequence)."""
        images = state.images
        n_copies = self.hparams.startgrad_samples or self.smoothgrad_samples
        flat = images.flatten(1)
        sd = (SMOOTHGRAD_SPREAD * (flat.amax(1) - flat.amin(1))).view(-1, 1, 1, 1)
        total = None
        for s in range(n_copies):
            eps = torch.stack([torch.randn(images.shape[1:],
                                           generator=self._generator(i, "startgrad_smoothgrad",
                                                                     s))
                               for i in ids]).to(images.device)
            noisy = images + sd * eps
            grads = self._coefficient_gradients(
                replace(state, images=noisy, coeffs=self.coefficients(state, noisy)), target)
            grads = [g.abs() for g in grads]
            total = grads if total is None else [t + g for t, g in zip(total, grads)]
        return [t / n_copies for t in total]

    def startgrad_shapes(self, state: State) -> list[tuple]:
        """The StartGrad mask's shape per part (the same as every init's, unless a compat
        option makes the baselines smaller: ShearletX ``compat: startgrad``)."""
        return self.mask_shapes(state)

    # -- outputs --------------------------------------------------------------------------
    def export_mask(self, masks: list[torch.Tensor]) -> torch.Tensor:
        """The mask in its own layout for extras: one part → without the colour axis;
        several parts → flattened and concatenated (N, n_mask)."""
        if len(masks) == 1:
            return masks[0].detach().squeeze(1).float()
        return torch.cat([m.detach().flatten(1) for m in masks], 1).float()

    @torch.no_grad()
    def explanation(self, state: State, masks: list[torch.Tensor]) -> torch.Tensor:
        parts = [m * c for m, c in zip(masks, state.coeffs)]
        return self.synthesize(state, parts).clamp(0.0, 1.0).float()

    @torch.no_grad()
    def _retained(self, state: State, masks: list[torch.Tensor]):
        """(N,) float64: retained ℓ1 Σ|m ⊙ c|/Σ|c|, the entropies H(m ⊙ c) and H(c) (jointly
        over colour and parts), and the retained pixel ℓ1 Σ|x_E|/Σ|x̃|; and x_E itself."""
        num = sum((m * c).abs().flatten(1).sum(1) for m, c in zip(masks, state.coeffs))
        den = sum(c.abs().flatten(1).sum(1) for c in state.coeffs)
        l1 = num.double() / den.double().clamp_min(1e-300)
        kept = torch.cat([(m * c).flatten(1) for m, c in zip(masks, state.coeffs)], 1)
        full = torch.cat([c.flatten(1) for c in state.coeffs], 1)
        h_kept, h_full = entropy(kept, 1), entropy(full, 1)
        x_e = self.explanation(state, masks)
        pix = x_e.double().abs().flatten(1).sum(1) / \
            state.images.double().abs().flatten(1).sum(1).clamp_min(1e-300)
        return l1, h_kept, h_full, pix, x_e

    def final_extras(self, state: State, masks: list[torch.Tensor]) -> dict:
        """The final retained information, and the two entropies of the ratio (the `cp`
        metric's ``entropy_exp`` needs exp H of each, not their ratio)."""
        l1, h_kept, h_full, pix, _ = self._retained(state, masks)
        ent = h_kept / h_full.clamp_min(1e-300)
        return {"final_retained_l1": l1.float(), "final_retained_entropy": ent.float(),
                "final_retained_pixel": pix.float(),
                "final_entropy_explanation": h_kept.float(),
                "final_entropy_image": h_full.float()}

    def _record(self, hist, j, state, masks, probs, p_clean, target, logp_clean):
        l1, h_kept, h_full, pix, x_e = self._retained(state, [m.detach() for m in masks])
        ent = h_kept / h_full.clamp_min(1e-300)
        rcp = (probs / p_clean[:, None].clamp_min(1e-30)).mean(1).double().cpu()
        l1, ent, pix = l1.cpu(), ent.cpu(), pix.cpu()
        hist["retained_probability"][:, j] = rcp
        hist["retained_l1"][:, j] = l1
        hist["retained_entropy"][:, j] = ent
        hist["retained_pixel"][:, j] = pix
        hist["cp_l1"][:, j] = cp_ratio(rcp, l1)
        hist["cp_pixel"][:, j] = cp_ratio(rcp, pix)
        hist["cp_entropy"][:, j] = cp_ratio(rcp, ent)
        chunk = self.chunk_size(state.images.shape[1:], state.images.device)
        for k, v in clean_cp(self.model, state.images, x_e, target, logp_clean, l1, ent,
                             chunk).items():
            hist[k][:, j] = v


def lr_at(step: int, lr: float, schedule: str, steps: int, gamma: float,
          step_size: int) -> float:
    """The learning rate of iteration ``step`` (0-based) under ``schedule``, in closed form:
    what torch's CosineAnnealingLR(T_max=steps, eta_min=0), StepLR(step_size, gamma) and
    ExponentialLR(gamma) give when stepped once per iteration after the optimiser's step."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * (1.0 + math.cos(math.pi * step / max(steps, 1))) / 2.0
    if schedule == "step":
        return lr * gamma ** (step // step_size)
    if schedule == "exponential":
        return lr * gamma ** step
    raise ValueError(f"lr_schedule {schedule!r}: not one of {LR_SCHEDULES}")


def lambda_factor(step: int, schedule: str, delta: float) -> float:
    """The regularisers' weight factor at iteration ``step`` (0-based): 1, or δ^(1/t) with
    t = step + 1 (adaptive: λ_t = λ·δ^(1/t) grows from δ·λ to λ)."""
    if schedule == "constant":
        return 1.0
    if schedule == "adaptive":
        return delta ** (1.0 / (step + 1))
    raise ValueError(f"lambda_schedule {schedule!r}: not one of {LAMBDA_SCHEDULES}")


def normalize_gradients(params: list[torch.Tensor]) -> None:
    """Each image's mask gradient (all parts together) divided by its L2 norm + 1e-7, in
    place (the StartGrad repository's ``normalize_gradient``)."""
    with torch.no_grad():
        sq = sum(m.grad.flatten(1).double().pow(2).sum(1) for m in params)
        norm = sq.sqrt() + 1e-7
        for m in params:
            m.grad.div_(norm.to(m.grad.dtype).view(-1, *([1] * (m.grad.ndim - 1))))


def gray(images: torch.Tensor, kind: str = "mean") -> torch.Tensor:
    """``mean``: (R+G+B)/3, as the ShearletX repository; ``luminance``: 0.299R + 0.587G +
    0.114B, as the StartGrad repository (``BuelentUendes/StartGrad``). (N, 1, H, W)."""
    if kind == "luminance":
        w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
        return (images * w.view(1, 3, 1, 1)).sum(1, keepdim=True)
    return images.mean(1, keepdim=True)


def sparsity(m: torch.Tensor, lp_p: float | None) -> torch.Tensor:
    """(N,) mean|m| (ℓ1), or with ``lp_p`` the StartGrad repository's ``lp`` option
    mean((|m| + 1e-7)^p)."""
    a = m.abs().flatten(1)
    return a.mean(1) if lp_p is None else (a + 1e-7).pow(lp_p).mean(1)
