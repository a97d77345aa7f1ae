"""SmoothGrad (Smilkov, Thorat, Kim, Viégas, Wattenberg 2017).

φ = (1/N) Σ_n ∇f(x̃ + ε_n), ε_n ~ N(0, (s·(max x̃ − min x̃))² I) with the range taken per image;
``squared=True`` averages ∇f^2 (SmoothGrad-squared). Noisy inputs are not clipped. Each noise
draw is seeded per (seed, image id, method, hyper-parameters, sample), so maps do not depend
on batch size or order.
"""
import torch

from ...params import Param
from ...utils import generator
from ..base import GRAD_SPACE_PARAM, OBJECTIVE_PARAM, Attribution, Method, register_method


@register_method
class SmoothGrad(Method):
    name = "smoothgrad"
    params = {
        "samples": Param(25, int, min=1, doc="number of noisy samples N"),
        "noise": Param(0.15, float, min=0.0, doc="noise std relative to the image's value range"),
        "noise_space": Param("pixel", str, ("pixel", "normalized"),
                             doc="add the noise to the pixel image or the normalised tensor"),
        "squared": Param(False, bool, doc="average squared gradients"),
        "objective": OBJECTIVE_PARAM,
        "grad_space": GRAD_SPACE_PARAM,
    }

    def attribute(self, images, target, image_ids=None):
        p = self.hparams
        n, k = images.shape[0], p.samples
        space_x = self.model.normalize(images) if p.noise_space == "normalized" else images
        rng = space_x.flatten(1)
        sigma = p.noise * (rng.amax(1) - rng.amin(1))              # (N,)
        if p.noise_space == "normalized":
            # noise ε in normalised space is σ_c·ε in pixel space
            scale = self.model.normalize.std.to(images.dtype)
        else:
            scale = torch.ones((1, images.shape[1], 1, 1), dtype=images.dtype,
                               device=images.device)
        acc = torch.zeros_like(images)
        chunk = self.chunk_size(images.shape[1:], images.device)
        for start in range(0, n * k, chunk):
            idx = torch.arange(start, min(n * k, start + chunk))
            img_i, s_i = idx // k, idx % k
            eps = torch.stack([
                torch.randn(images.shape[1:], generator=generator(
                    *self.seed_parts(int(image_ids[i]), "noise", int(s))))
                for i, s in zip(img_i.tolist(), s_i.tolist())]).to(images.device, images.dtype)
            img_i = img_i.to(images.device)
            pts = images[img_i] + eps * sigma[img_i].view(-1, 1, 1, 1) * scale
            g, _ = self.gradient(pts, target[img_i], p.grad_space)
            acc.index_add_(0, img_i, g * g if p.squared else g)
        return Attribution(acc / k)
