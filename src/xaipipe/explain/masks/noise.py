"""The obfuscation step of the mask methods: each (image, sample) point's noise, drawn from its
own generator (seeded by seed, image id, method, hyper-parameters, step and sample, so a
result never depends on the batch), the obfuscated images c̃ = m ⊙ c + (1 − m) ⊙ u (direct,
or split into a shared and a per-sample synthesis where the transform is linear), and the
distortion pass that accumulates the masks' gradients chunk by chunk under the memory budget.
:class:`Obfuscation` is a part of :class:`~xaipipe.explain.masks.base.MaskMethod`."""
from __future__ import annotations

import torch

from ...maths.objectives import objective
from ...utils import derive_seed
from .state import State


class Obfuscation:
    """Noise, obfuscation and the distortion pass (``self`` is the mask method)."""

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
