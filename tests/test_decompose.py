"""SAGA-style decomposition: HDBSCAN on a subsample, nearest-centre assignment for everyone."""

import time

import numpy as np
import pytest
import torch

from segsplat_ns.decompose import assign_to_centers, decompose


def blobs(n_per=1000, d=16, k=3, sigma=0.08, n_outliers=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=-1)
    feats, truth = [], []
    for i in range(k):
        feats.append(centres[i] + sigma * torch.randn(n_per, d, generator=g))
        truth.append(torch.full((n_per,), i))
    feats.append(torch.randn(n_outliers, d, generator=g))  # uniform-direction noise points
    truth.append(torch.full((n_outliers,), -1))
    x = torch.cat(feats)
    # features are not unit length in a trained model: random positive scales must not matter
    x = x * (0.5 + torch.rand(x.shape[0], 1, generator=g))
    perm = torch.randperm(x.shape[0], generator=g)
    return x[perm], torch.cat(truth)[perm], centres


def purity_and_ari(pred, truth):
    """Purity (each predicted cluster votes its majority true class) and ARI, both on the blob points."""
    keep = truth >= 0
    p, t = pred[keep].numpy(), truth[keep].numpy()
    contingency = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(contingency, (p, t), 1)
    purity = contingency.max(axis=1).sum() / len(p)
    comb2 = lambda x: x * (x - 1) / 2  # noqa: E731
    sum_ij = comb2(contingency).sum()
    sum_a, sum_b = comb2(contingency.sum(1)).sum(), comb2(contingency.sum(0)).sum()
    expected = sum_a * sum_b / comb2(len(p))
    ari = (sum_ij - expected) / ((sum_a + sum_b) / 2 - expected)
    return purity, ari


def test_three_blobs_are_recovered():
    x, truth, _ = blobs()
    labels = decompose(x)
    assert labels.dtype == torch.long and labels.shape == (x.shape[0],)
    assert labels.min() >= 0
    assert len(torch.unique(labels)) == 3
    purity, ari = purity_and_ari(labels, truth)
    assert purity > 0.95 and ari > 0.95
    # labels are ordered by segment size and compact
    counts = torch.bincount(labels)
    assert (counts[:-1] >= counts[1:]).all()


def test_deterministic_and_scale_invariant():
    x, _, _ = blobs(seed=3)
    a = decompose(x, seed=7)
    b = decompose(x.clone(), seed=7)
    assert torch.equal(a, b)
    c = decompose(x * 3.0, seed=7)  # features are L2-normalised first
    assert torch.equal(a, c)


def test_small_scene_uses_at_least_a_few_hundred_samples():
    # 2% of 600 is 12 points, too few for min_cluster_size=10 clusters of 3 blobs; the floor makes it work
    x, truth, _ = blobs(n_per=200, n_outliers=0, seed=5)
    labels = decompose(x, sample_fraction=0.02)
    assert len(torch.unique(labels)) == 3
    purity, ari = purity_and_ari(labels, truth)
    assert purity > 0.95 and ari > 0.95


def test_no_cluster_gives_zeros_with_warning():
    x = torch.randn(5, 16)
    with pytest.warns(UserWarning, match="no cluster"):
        labels = decompose(x)
    assert torch.equal(labels, torch.zeros(5, dtype=torch.long))
    assert decompose(torch.zeros(0, 8)).shape == (0,)


def test_chunked_assignment_matches_dense():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 12, generator=g)
    centres = torch.randn(7, 12, generator=g)
    dense = (torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(centres, dim=-1).T).argmax(-1)
    assert torch.equal(assign_to_centers(x, centres, chunk_size=333), dense)
    assert torch.equal(assign_to_centers(x, centres), dense)


def test_million_gaussians_time(capsys):
    """1M x 32 features: HDBSCAN on a 2000-point subsample, then the chunked assignment of all 1M."""
    g = torch.Generator().manual_seed(0)
    k, d, n = 4, 32, 1_000_000
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=-1)
    truth = torch.randint(0, k, (n,), generator=g)
    x = centres[truth] + 0.08 * torch.randn(n, d, generator=g)
    t0 = time.perf_counter()
    labels = decompose(x, sample_fraction=0.002)
    elapsed = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n[decompose] N=1M, D=32, 2000 HDBSCAN samples: {elapsed:.2f} s")
    assert labels.shape == (n,)
    purity, _ = purity_and_ari(labels, truth)
    assert purity > 0.95


def test_rank_by_size_renumbers_by_decreasing_size():
    from segsplat_ns.decompose import rank_by_size

    labels = torch.tensor([7, 3, 7, 9, 3, 7, 9, 2])  # sizes: 7 -> 3, 3 -> 2, 9 -> 2, 2 -> 1
    assert rank_by_size(labels).tolist() == [0, 1, 0, 2, 1, 0, 2, 3]  # ties: the smaller label first
