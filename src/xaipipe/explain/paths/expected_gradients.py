"""Expected Gradients (Erion, Janizek, Sturmfels, Lundberg, Lee, *Improving performance of deep
learning models with axiomatic attribution priors and expected gradients*, Nature Machine
Intelligence 2021), with attribution re-calibration (Yang, Akhtar, Wen, Shah, Mian, ICLR 2023;
``ypeiyu/attribution_recalibration`` @5b745d4, ``saliency_methods/expected_grad.py``, run by its
``main.py`` with ``random_alpha=True``).

References: training images, preprocessed like the input, given as ``references``: a pool
(R, C, H, W), from which B are drawn per image without replacement (seeded by the image id), or
(N, B, C, H, W) used in order. Coefficients α ~ U(0, 1) i.i.d. per (b, j) by default
(``alphas="uniform"``); B = 10, k = 5; ``recalibrate="valid_ip"`` by default, the paper's
default estimator (``none``: Erion et al.'s estimator, (1/(Bk)) Σ_{b,j} (x̃ − r_b) ⊙ ∇f(p_{b,j}),
which is Captum's ``GradientShap`` with n_samples = B·k over the same draws). The estimator
and shared parameters: :class:`~.multiref.MultiReferenceMethod`.

``compat="ypeiyu"`` / ``"ypeiyu_lpi"`` (``ypeiyu/LPI`` @6ff4785,
``saliency_methods/expected_grad.py``): the sample pairing of :mod:`.multiref`. The reference
codes draw references from a shuffled training loader with batch size B·batch (whose last,
shorter validation batch cannot be reshaped); per-image draws avoid that, so it is not
reproduced.

In the workflow (where a config cannot hold a tensor) the pool is the training split of the
model's image store (``needs_references = "train"``), read lazily: each image reads only its B
references.
"""
from ..base import register_method
from .multiref import MultiReferenceMethod, multiref_params

NEEDS_REFERENCES = ("needs references: a pool of training images (R, C, H, W), preprocessed "
                    "like the inputs, or (N, B, C, H, W) per image (references=...)")


@register_method
class ExpectedGradients(MultiReferenceMethod):
    name = "expected_gradients"
    needs_references = "train"
    params = multiref_params(
        "uniform", (None, "ypeiyu", "ypeiyu_lpi"),
        references_doc="training images: a pool (R, C, H, W), B drawn per image without "
                       "replacement, or (N, B, C, H, W) used in order (required)")

    def draw_references(self, images, image_ids, i):
        raise ValueError(f"method 'expected_gradients' {NEEDS_REFERENCES}")
