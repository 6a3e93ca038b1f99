"""The views' masks associated into 3D instances through the Gaussians they label: pure torch.

FlashSplat lifts masks whose ids already agree across views (it takes them from a video tracker); the cache holds
each view's own SAM masks. Two masks of different views are the same instance when they label mostly the same
Gaussians: for views u, v, over the Gaussians seen in both (each labelled by :func:`.labels.view_labels`), the
Jaccard index of "labelled m in u" and "labelled n in v". Pairs are merged greedily from the highest index down while
it is at least ``threshold``, never joining two masks of one view (they are different segments there): a
constrained single-linkage clustering, deterministic. A mask matched with nothing is an instance of its own.

Cost: one bincount over the co-visible Gaussians per pair of views, O(V^2 N) (V = 12..48 views here).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

from segsplat_ns.methods.lift.labels import BACKGROUND, UNSEEN

__all__ = ["associate", "pair_scores"]


def pair_scores(labels_u: Tensor, labels_v: Tensor, masks_u: int, masks_v: int) -> Tensor:
    """Jaccard index [M_u, M_v] of every mask pair of two views over the Gaussians seen in both."""
    both = (labels_u != UNSEEN) & (labels_v != UNSEEN)
    a = torch.where(labels_u[both] == BACKGROUND, torch.full_like(labels_u[both], masks_u), labels_u[both])
    b = torch.where(labels_v[both] == BACKGROUND, torch.full_like(labels_v[both], masks_v), labels_v[both])
    joint = torch.bincount(a * (masks_v + 1) + b, minlength=(masks_u + 1) * (masks_v + 1))
    joint = joint.reshape(masks_u + 1, masks_v + 1).double()
    union = joint.sum(1, keepdim=True) + joint.sum(0, keepdim=True) - joint
    return (joint / union.clamp_min(1.0))[:masks_u, :masks_v]


def associate(view_labels: Sequence[Tensor], mask_counts: Sequence[int], threshold: float = 0.5) -> Tensor:
    """Instance id of every mask of every view, long [sum(mask_counts)] (view 0's masks first), 0..K-1 in order of
    first appearance. ``view_labels[v]``: long [N], each Gaussian's mask in view v (or BACKGROUND / UNSEEN)."""
    offsets = [0]
    for count in mask_counts:
        offsets.append(offsets[-1] + int(count))
    pairs: List[tuple] = []
    for u in range(len(view_labels)):
        for v in range(u + 1, len(view_labels)):
            if mask_counts[u] == 0 or mask_counts[v] == 0:
                continue
            scores = pair_scores(view_labels[u], view_labels[v], mask_counts[u], mask_counts[v])
            for m, n in (scores >= threshold).nonzero().tolist():
                pairs.append((-float(scores[m, n]), offsets[u] + m, offsets[v] + n))
    total = offsets[-1]
    view_of = [v for v, count in enumerate(mask_counts) for _ in range(int(count))]
    parent = list(range(total))
    views = [1 << view_of[g] for g in range(total)]  # each cluster's views as a bit set

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for _, g, h in sorted(pairs):
        a, b = root(g), root(h)
        if a != b and not views[a] & views[b]:
            parent[max(a, b)] = min(a, b)
            views[min(a, b)] |= views[max(a, b)]
    ids = torch.empty(total, dtype=torch.long)
    numbering: dict = {}
    for g in range(total):
        ids[g] = numbering.setdefault(root(g), len(numbering))
    return ids
