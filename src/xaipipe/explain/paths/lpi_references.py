"""The reference set of Local Path Integration (Yang, Akhtar, Wen, Mian, *Local Path Integration
for Attribution*, AAAI 2023; code ``ypeiyu/LPI`` @6ff4785, ``distribution_estimation.py`` and
``generation_by_optimization/representation_clustering.py``, read, not copied).

Built once per (model, training images), offline:

1. the model's logits of every training image (batched forwards, no gradients);
2. global clusters: ``KMeans(n_clusters=C, n_init=3, max_iter=600)`` on the logits (C = 1 by
   default: one cluster of everything);
3. within each global cluster, ``KMeans(n_clusters=R, n_init=3, max_iter=600)``; the training
   image whose logits are nearest (L2) to each sub-centre is a reference, with the density
   weight ρ = |sub-cluster| / |global cluster| (Σ_r ρ_r = 1 per cluster).

The k-means are scikit-learn's, seeded (``random_state``), so the same images give the same
references. An input is explained with the references of its nearest global centre
(:func:`assign_clusters`).
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import DataError


@torch.no_grad()
def training_logits(model, images, batch_size: int = 200) -> torch.Tensor:
    """(N, K) float32 logits of ``images`` on the CPU: a tensor (N, 3, H, W) in [0, 1], or an
    object with ``__len__`` and ``tensor(positions, device)`` (an image store's split), read
    ``batch_size`` images at a time."""
    dev = next(model.parameters()).device
    n = len(images)
    out = []
    for a in range(0, n, batch_size):
        pos = np.arange(a, min(n, a + batch_size))
        x = images[a:a + batch_size].to(dev) if isinstance(images, torch.Tensor) \
            else images.tensor(pos, dev)
        out.append(model(x.float()).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def _kmeans(x: np.ndarray, k: int, seed: int):
    from sklearn.cluster import KMeans          # scikit-learn: imported where it is used
    return KMeans(n_clusters=k, n_init=3, max_iter=600, random_state=seed).fit(x)


def lpi_references(model, images, n_references: int = 20, n_clusters: int = 1, seed: int = 0,
                   batch_size: int = 200, logits: torch.Tensor | None = None,
                   offset: int = 0) -> dict:
    """The LPI reference set of ``images`` (the training images: a tensor (N, 3, H, W) in
    [0, 1], or an image store's split, see :func:`training_logits`) for ``model``.

    Returns a dict: ``references`` (C, R, 3, H, W) float32 images, ``density`` (C, R) float64
    (each row sums to 1), ``index`` (C, R) int64 positions in ``images``, ``centres`` (C, K)
    float64 (the global centres in logit space; :func:`assign_clusters`), ``counts`` (C,) the
    training images of each cluster. ``logits``: the training logits if already computed.
    ``offset``: store the training image ``offset`` positions after each representative
    (modulo N) instead of the representative itself, as ``ypeiyu/LPI``'s stored reference sets
    do with 200 (one loader batch off; ``compat="ypeiyu_lpi"``); ``index`` holds the positions
    of the images stored."""
    z = training_logits(model, images, batch_size) if logits is None else logits
    z = z.double().numpy()
    n = z.shape[0]
    if n_clusters < 1 or n_references < 1:
        raise ValueError("lpi_references: n_clusters and n_references must be positive")
    if n < n_clusters * n_references:
        raise DataError(f"lpi_references: {n} training images cannot give {n_clusters} "
                        f"cluster(s) of {n_references} references each")
    if n_clusters == 1:
        labels, centres = np.zeros(n, np.int64), z.mean(0, keepdims=True)
    else:
        km = _kmeans(z, n_clusters, seed)
        labels, centres = km.labels_.astype(np.int64), km.cluster_centers_
    index = np.zeros((n_clusters, n_references), np.int64)
    density = np.zeros((n_clusters, n_references))
    counts = np.bincount(labels, minlength=n_clusters)
    for c in range(n_clusters):
        members = np.flatnonzero(labels == c)
        if len(members) < n_references:
            raise DataError(f"lpi_references: cluster {c} has {len(members)} training images, "
                            f"fewer than the {n_references} references asked")
        sub = _kmeans(z[members], n_references, seed + 1 + c)
        d = ((z[members][:, None, :] - sub.cluster_centers_[None]) ** 2).sum(-1)
        index[c] = members[d.argmin(0)]
        density[c] = np.bincount(sub.labels_, minlength=n_references) / len(members)
    index = (index + offset) % n
    flat = index.reshape(-1)
    if isinstance(images, torch.Tensor):
        refs = images[torch.as_tensor(flat)].float().cpu()
    else:
        refs = images.tensor(flat, "cpu").float()
    return {"references": refs.reshape(n_clusters, n_references, *refs.shape[1:]),
            "density": torch.from_numpy(density), "index": torch.from_numpy(index),
            "centres": torch.from_numpy(np.asarray(centres, np.float64)),
            "counts": torch.from_numpy(counts)}


def assign_clusters(logits: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N,) the nearest global centre (L2 in logit space) of each input's logits."""
    d = torch.cdist(logits.double(), centres.double().to(logits.device))
    return d.argmin(1)
