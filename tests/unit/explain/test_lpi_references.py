"""LPI's reference set (Yang et al., AAAI 2023): representatives of k-means sub-clusters of the
training logits, with density weights; scikit-learn's KMeans is the clustering."""
import numpy as np
import pytest
import torch
from torch import nn

from xaipipe.explain.paths.lpi_references import assign_clusters, lpi_references
from xaipipe.models import NormalizedModel


class Logits(nn.Module):
    """Logits = the first K pixel values of the flattened image: the clustering's input is
    known exactly."""

    def __init__(self, k=4):
        super().__init__()
        self.k = k
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x.flatten(1)[:, : self.k] + 0 * self.w


def model():
    return NormalizedModel(Logits(), mean=(0.0,) * 3, std=(1.0,) * 3).eval()


def blobs(centres, per, spread=0.01, seed=0):
    """Training images whose 4 logits scatter around the given centres (4-vectors)."""
    g = torch.Generator().manual_seed(seed)
    imgs = []
    for c in centres:
        x = torch.rand(per, 3, 4, 4, generator=g) * 0.1
        x.view(per, -1)[:, :4] = torch.tensor(c) + spread * torch.randn(per, 4, generator=g)
        imgs.append(x)
    return torch.cat(imgs).clamp(0, 1)


def test_one_cluster_references_are_nearest_to_sub_centres_and_densities_sum_to_one():
    from sklearn.cluster import KMeans
    imgs = torch.cat([blobs([(0.1, 0.1, 0.1, 0.1)], 5, seed=1),
                      blobs([(0.9, 0.1, 0.1, 0.1)], 10, seed=2),
                      blobs([(0.1, 0.9, 0.1, 0.1)], 15, seed=3)])
    out = lpi_references(model(), imgs, n_references=3, n_clusters=1, seed=0, batch_size=7)
    assert out["references"].shape == (1, 3, 3, 4, 4)
    assert torch.allclose(out["density"].sum(1), torch.ones(1, dtype=torch.float64))
    # three well separated blobs of 5, 10 and 15 images: densities 1/6, 1/3, 1/2
    assert sorted(out["density"][0].tolist()) == pytest.approx([5 / 30, 10 / 30, 15 / 30])
    # the references are training images, and each is the member nearest to its sub-centre
    z = imgs.flatten(1)[:, :4].double().numpy()
    km = KMeans(n_clusters=3, n_init=3, max_iter=600, random_state=1).fit(z)
    want = sorted(int(np.argmin(((z - c) ** 2).sum(1))) for c in km.cluster_centers_)
    assert sorted(out["index"][0].tolist()) == want
    assert torch.equal(out["references"][0], imgs[out["index"][0]])


def test_global_clusters_assignment_and_determinism():
    imgs = torch.cat([blobs([(0.1, 0.1, 0.1, 0.1)], 8, seed=1),
                      blobs([(0.9, 0.9, 0.1, 0.1)], 8, seed=2)])
    a = lpi_references(model(), imgs, n_references=2, n_clusters=2, seed=3)
    b = lpi_references(model(), imgs, n_references=2, n_clusters=2, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["counts"].tolist() == [8, 8]
    # each global cluster's references come from its own blob
    for c in range(2):
        members = set(range(8)) if a["index"][c, 0] < 8 else set(range(8, 16))
        assert set(a["index"][c].tolist()) <= members
    z = imgs.flatten(1)[:, :4]
    got = assign_clusters(z, a["centres"])
    first = int(got[0])
    assert (got[:8] == first).all() and (got[8:] == 1 - first).all()


def test_too_few_training_images_is_an_error():
    from xaipipe.errors import DataError
    with pytest.raises(DataError, match="cannot give 1 cluster"):
        lpi_references(model(), blobs([(0.1,) * 4], 3), n_references=5)
