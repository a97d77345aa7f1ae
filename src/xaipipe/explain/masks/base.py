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

import torch

from ...maths.faithfulness import faithfulness_curves
from ...maths.information import HISTORY, target_log_prob
from ...maths.objectives import objective
from ...params import cli_scalar
from ...errors import ConfigError
from ...utils import derive_seed
from ..base import Attribution, Method
from .history import Histories
from .noise import Obfuscation
from .params import COMMON_PARAMS, init_label, run_setting  # noqa: F401 -- re-exported
from .schedules import lambda_factor, lr_at, normalize_gradients
from .startgrad import StartGradInit
from .state import State


class MaskMethod(StartGradInit, Obfuscation, Histories, Method):
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
        hp = {k: v for k, v in self.hparams.signature().items()
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
