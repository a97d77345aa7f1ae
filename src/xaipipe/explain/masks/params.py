"""The parameters every mask method shares (:data:`COMMON_PARAMS`; a host adds its λs and may
change defaults), and the labels the StartGrad report groups runs by: a run's *setting*
(:func:`run_setting`) and its *init* (:func:`init_label`)."""
from __future__ import annotations

from ...params import Param, ParamSet, check_params
from .startgrad import ABLATIONS, SCORES, TRANSFORMS

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
