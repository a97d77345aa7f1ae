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

A config cannot give a tensor yet, so the config check stops on ``expected_gradients``
without ``references`` (:meth:`ExpectedGradients.check_model`).
"""
from ...errors import ConfigError
from ..base import register_method
from .multiref import MultiReferenceMethod, multiref_params

NEEDS_REFERENCES = ("needs references: a pool of training images (R, C, H, W), preprocessed "
                    "like the inputs, or (N, B, C, H, W) per image (references=...)")


@register_method
class ExpectedGradients(MultiReferenceMethod):
    name = "expected_gradients"
    params = multiref_params(
        "uniform", (None, "ypeiyu", "ypeiyu_lpi"),
        references_doc="training images: a pool (R, C, H, W), B drawn per image without "
                       "replacement, or (N, B, C, H, W) used in order (required)")

    @classmethod
    def check_model(cls, params, model, where):
        if cls.check(params).references is None:
            raise ConfigError(f"{where}: method 'expected_gradients' {NEEDS_REFERENCES}")

    def draw_references(self, images, image_ids, i):
        raise ValueError(f"method 'expected_gradients' {NEEDS_REFERENCES}")
