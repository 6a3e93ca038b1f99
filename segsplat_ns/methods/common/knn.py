"""k nearest Gaussians and local feature smoothing over them (pure torch; scikit-learn's KD-tree on CPU)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["knn_indices", "knn_smooth"]


def knn_indices(means: Tensor, k: int = 16, chunk_elems: int = 1 << 26) -> Tensor:
    """Indices ``[N, k]`` of each point's k nearest neighbours, the point itself in column 0.

    Never allocates N x N: CUDA tensors use ``torch.cdist`` + ``topk`` in row chunks of at most
    ``chunk_elems`` distances (64M floats = 256 MB); CPU tensors use scikit-learn's
    ``NearestNeighbors`` (KD-tree, all cores), O(N log N). Computed once per scene (the geometry is
    frozen while features train), as the code's ``feature_smooth_map``.
    """
    n = means.shape[0]
    k = min(k, n)
    if means.is_cuda:
        pts = means.detach().float()
        rows = max(1, chunk_elems // max(n, 1))
        out = []
        for i in range(0, n, rows):
            d = torch.cdist(pts[i : i + rows], pts)
            out.append(d.topk(k, dim=1, largest=False).indices)
        idx = torch.cat(out, 0)
    else:
        from sklearn.neighbors import NearestNeighbors

        x = means.detach().cpu().double().numpy()
        nn_ = NearestNeighbors(n_neighbors=k, algorithm="kd_tree", n_jobs=-1).fit(x)
        idx = torch.from_numpy(nn_.kneighbors(x, return_distance=False)).long()
    # Put the point itself first (duplicated positions can order ties arbitrarily).
    ar = torch.arange(n, device=idx.device)[:, None]
    is_self = idx == ar
    missing = ~is_self.any(dim=1)
    if missing.any():
        idx[missing, -1] = ar[missing, 0]
        is_self = idx == ar
    order = torch.argsort((~is_self).to(torch.int8), dim=1, stable=True)
    return torch.gather(idx, 1, order).to(means.device)


def knn_smooth(
    features: Tensor,
    means: Tensor,
    k: int = 16,
    dropout: float = 0.5,
    generator: Optional[torch.Generator] = None,
    idx: Optional[Tensor] = None,
) -> Tensor:
    """f_g <- mean of f over g's kept k nearest neighbours (self included): Sec. 3.3.

    ``idx``: precomputed :func:`knn_indices` ``[N, >=k]`` (computed from ``means`` if None; pass it
    in during training). ``dropout``: fraction of the k neighbour slots dropped, as in the code the
    same randomly chosen slots for every Gaussian (so it is one gather; the self slot can be dropped
    too), keeping ``max(1, round(k * (1 - dropout)))``. ``dropout <= 0`` (evaluation) keeps all k
    and is deterministic.

    This is a plain mean; the code normalises features to unit length before smoothing and again
    after (Eq. 10 renders unit features), which is the caller's job.
    """
    if k <= 1:
        return features
    if idx is None:
        idx = knn_indices(means, k)
    idx = idx[:, :k].to(features.device)
    kk = idx.shape[1]
    if dropout > 0:
        n_keep = max(1, int(round(kk * (1.0 - dropout))))
        slots = torch.randperm(kk, generator=generator)[:n_keep].to(idx.device)
        idx = idx[:, slots]
    return features[idx].mean(dim=1)
