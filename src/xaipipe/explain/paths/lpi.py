"""Local Path Integration (Yang, Akhtar, Wen, Mian, *Local Path Integration for Attribution*,
AAAI 2023; code ``ypeiyu/LPI`` @6ff4785, ``saliency_methods/LPI.py``, read, not copied).

References: the R representative training images of the input's cluster with their density
weights ρ_r (Σ_r ρ_r = 1), built offline once per model by
:func:`~.lpi_references.lpi_references` (the workflow's ``lpi_references`` rule). Every image
uses all R references of its cluster, in order (no draw). Coefficients α ~ U(0.01, 0.99) i.i.d.
per (r, j) (``alphas="uniform"``; ``linspace`` or a tensor replace them); k = 5, R = 20
(``samples``).

- ``recalibrate="none"`` (default, the paper's estimator): φ = Σ_r ρ_r (x̃ − r_r) ⊙ ḡ_r, an
  expectation under the estimated density, ḡ_r the mean gradient of reference r's k points.
  With ``linspace`` coefficients (k ≥ 2) Σφ = f(x̃) − Σ_r ρ_r f(r_r) up to the Riemann error,
  reported as ``completeness_gap``.
- ``valid_ref`` / ``valid_ip``: attribution re-calibration (ICLR 2023) with the density as the
  products' weights: φ_i = Σ ρ·m·1[m ≥ 0] / Σ ρ·1[m ≥ 0] (:class:`~.recalibration.ValidMean`,
  weighted). The re-calibration code lists LPI but does not run it, so how ρ enters the valid
  mean is not published; this weighted mean is xaipipe's choice (equal ρ: the plain valid mean).

``references``: (R, C, H, W) (one cluster) or (C_k, R, C, H, W) with ``centres`` (C_k, K), the
global cluster centres in logit space: an input takes the references of its nearest centre
(one no-grad forward of the batch). ``density``: (R,) or (C_k, R); None gives equal weights.

``compat="ypeiyu_lpi"``: the reference code's sample pairing (:mod:`.multiref`: group b holds
the points of references (b·k … b·k + k − 1) mod R, each paired with x̃ − r_b) and its extra
factor 1/R (it averages the ρ-weighted terms over r; rank-neutral). Its stored references are
the training images 200 positions after the representatives (one loader batch off): that is a
property of the reference set, :func:`~.lpi_references.lpi_references` with ``offset=200``.
"""
from __future__ import annotations

import torch

from ...errors import ConfigError
from ...params import Param
from ..base import register_method
from .lpi_references import assign_clusters
from .multiref import MultiReferenceMethod, multiref_params
from .recalibration import RECALIBRATIONS

NEEDS_REFERENCES = ("needs its reference set: references (R, C, H, W) or (clusters, R, C, H, W) "
                    "and density, as lpi_references(model, training_images, R) returns them")


@register_method
class LPI(MultiReferenceMethod):
    name = "lpi"
    alpha_range = (0.01, 0.99)
    needs_references = "lpi"
    params = {
        **multiref_params(
            "uniform", (None, "ypeiyu_lpi"),
            references_doc="the reference set: (R, C, H, W), or (clusters, R, C, H, W) with "
                           "centres (built by the lpi_references rule in the workflow)"),
        "samples": Param(20, int, min=1, doc="references R per cluster (all used, in order)"),
        "recalibrate": Param("none", str, RECALIBRATIONS,
                             doc="estimator: none (LPI's ρ-weighted mean), valid_ref or "
                                 "valid_ip (re-calibration with ρ as weights)"),
        "clusters": Param(1, int, min=1,
                          doc="global clusters of the reference set (the workflow builds it "
                              "with this many)"),
        "density": Param(None, (torch.Tensor, type(None)),
                         doc="weights ρ (R,) or (clusters, R) (None: equal)"),
        "centres": Param(None, (torch.Tensor, type(None)),
                         doc="global cluster centres (clusters, K) in logit space"),
    }

    @classmethod
    def validate(cls, values, where):
        refs, b = values["references"], values["samples"]
        if refs is None:
            return super().validate(values, where)
        if not isinstance(refs, torch.Tensor) or refs.ndim not in (4, 5):
            raise ConfigError(f"{where}.references: (R, C, H, W) or (clusters, R, C, H, W) "
                              f"was expected, got {getattr(refs, 'shape', type(refs))}")
        c = refs.shape[0] if refs.ndim == 5 else 1
        if refs.shape[-4] != b:
            raise ConfigError(f"{where}.references: {refs.shape[-4]} references per cluster, "
                              f"samples = {b}")
        d = values["density"]
        if d is not None and tuple(d.reshape(c, -1).shape) != (c, b):
            raise ConfigError(f"{where}.density: shape {tuple(d.shape)} does not match "
                              f"{c} cluster(s) of {b} references")
        cen = values["centres"]
        if c > 1 and (cen is None or cen.ndim != 2 or cen.shape[0] != c):
            raise ConfigError(f"{where}.centres: {c} clusters need their centres (clusters, K)")
        return super().validate({**values, "references": refs.reshape(c, b, *refs.shape[-3:])[0]},
                                where) | {"references": refs}

    def seed_parts(self, image_id, *extra):
        """Without the reference set (tensors or None): an image's coefficients do not depend
        on whether its cluster's references come alone or with the other clusters'."""
        seed, iid, name, hp, *rest = super().seed_parts(image_id, *extra)
        hp = {k: v for k, v in hp.items() if k not in ("references", "density", "centres")}
        return (seed, iid, name, hp, *rest)

    def begin(self, images, image_ids):
        refs, cen = self.hparams.references, self.hparams.centres
        if refs is None:
            raise ValueError(f"method 'lpi' {NEEDS_REFERENCES}")
        if tuple(refs.shape[-3:]) != tuple(images.shape[1:]):
            raise ValueError(f"method 'lpi': references have images of shape "
                             f"{tuple(refs.shape[-3:])}, the inputs {tuple(images.shape[1:])}")
        self._refs = refs.reshape(-1, *refs.shape[-4:])
        if self._refs.shape[0] > 1:
            with torch.no_grad():
                logits = self.model(images)
            self._cluster = assign_clusters(logits, cen).cpu()
        else:
            self._cluster = torch.zeros(images.shape[0], dtype=torch.long)

    def cluster_of(self, images, image_ids) -> torch.Tensor:
        """(N,) the global cluster whose references each image uses."""
        self.begin(images, torch.as_tensor(image_ids).reshape(-1))
        return self._cluster

    def reference_stack(self, images, image_ids, i):
        return self._refs[int(self._cluster[i])].to(images.device, images.dtype)

    def reference_weights(self, images, image_ids):
        p = self.hparams
        c, b = self._refs.shape[:2]
        rho = torch.full((c, b), 1.0 / b, dtype=torch.float64) if p.density is None \
            else p.density.reshape(c, b).double().cpu()
        w = rho[self._cluster]
        return w / b if p.compat == "ypeiyu_lpi" else w
