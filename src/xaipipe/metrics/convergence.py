"""Per-iteration curves of a mask method (Uendes et al., StartGrad): the histories a mask method
records with ``history_every=k`` (:mod:`xaipipe.explain.masks.base`), passed through from the
saliency store's extras to the per-image score table, so that the StartGrad report (curves,
speed-up, Wilcoxon tests: :mod:`xaipipe.metrics.statistics`, :mod:`xaipipe.report.startgrad`)
reads them like any other metric output.

Per image: the curves ``retained_probability``, ``retained_l1``, ``retained_entropy``,
``retained_pixel``, ``cp_l1``, ``cp_pixel`` (N, T), where the store has them ``cp_entropy``
and the clean explanation's ``clean_retained_probability``, ``clean_cp_l1_pixel``,
``clean_cp_l1``, ``clean_cp_entropy`` (N, T), and ``loss_terms`` (N, T·K, flattened) as
recorded, and the scalars at the last recorded step (``final_cp_l1``, ``final_cp_pixel``,
``final_retained_probability``, ``final_retained_l1``).

Undefined CP: at a step where a CP's retained information is zero (≤ 1e-30: the mask has
gone to zero, as a large λ_1 does) the CP is undefined, NaN, as the ``cp`` metric has it
(stores written before the methods recorded NaN there hold inf, or a float32 overflow: those
entries become NaN too). Such images are flagged in ``undefined_cp`` (any step of any CP
curve), and ``undefined_final_cp_l1`` / ``undefined_final_cp_pixel`` where the final value is
undefined (the summary leaves them out of that column). The curve statistics of the report
skip NaN per step. A non-finite CP where the information is positive, or a non-finite
retained probability, is still an error (a broken model).
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..maths.information import HISTORY
from .base import Metric, MetricInputs, extras_as_numpy, register_metric

CURVES = ("retained_probability", "retained_l1", "retained_entropy", "retained_pixel",
          "cp_l1", "cp_pixel")
#: the retained information each CP curve divides by (the clean pixel CP: x_E's, which is
#: zero exactly when the noisy samples' retained pixel information is)
CP_INFORMATION = {"cp_l1": "retained_l1", "cp_pixel": "retained_pixel",
                  "cp_entropy": "retained_entropy", "clean_cp_l1": "retained_l1",
                  "clean_cp_l1_pixel": "retained_pixel", "clean_cp_entropy": "retained_entropy"}
#: retained information at or below this is zero (CP undefined)
ZERO_INFORMATION = 1e-30
#: the mask methods' other histories, passed through when the store has them (stores
#: written before they were recorded do not)
OPTIONAL_CURVES = tuple(k for k in HISTORY if k not in CURVES)


@register_metric
class Convergence(Metric):
    name = "convergence"
    needs = frozenset({"extras"})
    direction = "higher"
    scalars = ("final_cp_l1", "final_cp_pixel", "final_retained_probability",
               "final_retained_l1")
    excludes = {"final_cp_l1": "undefined_final_cp_l1",
                "final_cp_pixel": "undefined_final_cp_pixel",
                **{k: "undefined_cp" for k in CP_INFORMATION}}

    def applies_to_method(self, method: str, params: dict) -> bool:
        """Only mask methods run with ``history_every`` > 0 have histories: an experiment that
        also has IG or GradCAM (StartGrad's faithfulness baselines) scores those with its
        other metrics only. ``params`` are the method's validated parameters (defaults
        filled in), so a method without ``history_every`` has none."""
        return bool(getattr(params, "history_every", 0))

    def compute(self, inputs: MetricInputs) -> dict:
        ex = inputs.extras
        missing = [k for k in CURVES if k not in ex or np.asarray(ex[k]).ndim != 2]
        if missing:
            raise DataError(
                f"metric 'convergence' reads the histories of a mask method, but the store's "
                f"extras lack {missing} (have: {sorted(ex)}); run the method with "
                "history_every: N (e.g. {method: shearletx, history_every: 1})")
        out = {k: np.asarray(ex[k], np.float64) for k in CURVES}
        out.update({k: np.asarray(ex[k], np.float64) for k in OPTIONAL_CURVES
                    if k in ex and np.asarray(ex[k]).ndim == 2})
        undefined = np.zeros(len(inputs.ids), bool)
        for k, info in CP_INFORMATION.items():
            if k in out and info in out:
                hit = ~(out[info] > ZERO_INFORMATION) & ~np.isfinite(out[k])
                out[k] = np.where(hit, np.nan, out[k])
                undefined |= hit.any(1)
        out["undefined_cp"] = undefined
        for k in ("cp_l1", "cp_pixel", "retained_probability", "retained_l1"):
            out[f"final_{k}"] = out[k][:, -1]
        for k in ("cp_l1", "cp_pixel"):
            out[f"undefined_final_{k}"] = np.isnan(out[f"final_{k}"]) & \
                ~(out[CP_INFORMATION[k]][:, -1] > ZERO_INFORMATION)
        if "loss_terms" in ex:
            lt = np.asarray(ex["loss_terms"], np.float64)
            out["loss_terms"] = lt.reshape(lt.shape[0], -1)
        return out


def convergence(extras: dict) -> dict:
    """The per-image curves of a mask method's ``extras`` (``history_every`` set)."""
    extras = extras_as_numpy(extras)
    n = len(extras["retained_probability"])
    import torch
    return Convergence()(MetricInputs(ids=np.arange(n), target=torch.zeros(n, dtype=torch.long),
                                      maps=torch.zeros(n, 1, 1, 1), extras=extras))
