"""The explained scalar f of a model output: logit, probability, log-probability, or the
class-contrastive potential (Wang & Wang, NeurIPS 2022).

A reference code's own variant of an objective is a separate name outside
:data:`OBJECTIVES` (a config cannot choose it directly): a method reaches it through its
``compat`` profile with :func:`objective_for`, and the name then travels through the chunked
gradient code like any other. One such variant exists:

- ``contrast_ypeiyu``: the class-contrastive objective as every method file of
  ``ypeiyu/attribution_recalibration`` @5b745d4 (``saliency_methods/``, ``exp_obj=contrast``)
  computes it: the value z_y − Σ_{s≠y} w_s z_s with w = softmax over the non-target logits,
  the weights *not* detached, so its gradient is ∇z_y − Σ_{s≠y} w_s (1 + z_s − z̄) ∇z_s
  (z̄ = Σ_t w_t z_t) instead of the clean ∇z_y − Σ_{s≠y} w_s ∇z_s. The two agree when all
  non-target logits are equal (and with two classes).
"""
from __future__ import annotations

import torch

OBJECTIVES = ("logit", "prob", "logprob", "contrast")
#: reference-code variants, reached through a method's compat profile (:func:`objective_for`)
COMPAT_OBJECTIVES = {("contrast", "ypeiyu"): "contrast_ypeiyu"}


def objective_for(name: str, compat: str | None) -> str:
    """The objective a method with compat profile ``compat`` explains when configured with
    ``name``: the reference code's variant where it has one, ``name`` otherwise."""
    return COMPAT_OBJECTIVES.get((name, compat), name)


def objective(logits: torch.Tensor, target: torch.Tensor, name: str = "logit") -> torch.Tensor:
    """f per sample, shape (N,), for logits (N, K) and integer targets (N,).

    - ``logit``: z_y
    - ``prob``: softmax(z)_y
    - ``logprob``: log softmax(z)_y
    - ``contrast``: the class-contrastive potential C = z_y - log sum_{s != y} exp(z_s), whose
      gradient is grad z_y - sum_{s != y} w_s grad z_s with w = softmax over the non-target logits.
    - ``contrast_ypeiyu`` (compat only): z_y - sum_{s != y} w_s z_s with the same w, not
      detached (``ypeiyu/attribution_recalibration``; see the module docstring)
    """
    target = target.to(device=logits.device, dtype=torch.long).view(-1, 1)
    if name == "logit":
        return logits.gather(1, target).squeeze(1)
    if name == "prob":
        return torch.softmax(logits, 1).gather(1, target).squeeze(1)
    if name == "logprob":
        return torch.log_softmax(logits, 1).gather(1, target).squeeze(1)
    if name == "contrast":
        z_y = logits.gather(1, target).squeeze(1)
        others = logits.scatter(1, target, float("-inf"))
        return z_y - torch.logsumexp(others, 1)
    if name == "contrast_ypeiyu":
        z_y = logits.gather(1, target).squeeze(1)
        w = torch.softmax(logits.scatter(1, target, float("-inf")), 1)   # w_y = 0
        return z_y - (w * logits).sum(1)
    raise ValueError(f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}")
