"""The explained scalar f of a model output: logit, probability, log-probability, or the
class-contrastive potential (Wang & Wang, NeurIPS 2022)."""
from __future__ import annotations

import torch

OBJECTIVES = ("logit", "prob", "logprob", "contrast")


def objective(logits: torch.Tensor, target: torch.Tensor, name: str = "logit") -> torch.Tensor:
    """f per sample, shape (N,), for logits (N, K) and integer targets (N,).

    - ``logit``: z_y
    - ``prob``: softmax(z)_y
    - ``logprob``: log softmax(z)_y
    - ``contrast``: the class-contrastive potential C = z_y - log sum_{s != y} exp(z_s), whose
      gradient is grad z_y - sum_{s != y} w_s grad z_s with w = softmax over the non-target logits.
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
    raise ValueError(f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}")
