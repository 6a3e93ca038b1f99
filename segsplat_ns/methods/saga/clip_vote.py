"""SAGA's open-vocabulary mode (supplement A.3; the authors' ``prompt_segmenting.ipynb``, v2): CLIP voting.

The notebook answers a text prompt with SAGA's own click machinery: the training views' SAM masks, each with a
CLIP embedding, are grouped across views into 3D-consistent clusters; the clusters are scored against the text;
the best mask of the best cluster becomes a SAGA query (its rendered feature, at its 3D scale) and every Gaussian
whose affinity passes 0.85 is selected. Here, split into what depends on the text and what does not:

Text-independent (once per model and views, :class:`MaskQueries`):

1. every cached mask of every training view (all three levels) becomes a query: the mean rendered affinity
   feature over the mask's pixels, gated at the mask's 3D scale (measured with the splat's depth and
   quantile-normalised, exactly as training masks are) and normalised;
2. each query's 3D selection (affinity > threshold) is estimated on a fixed subsample of the Gaussians, and the
   masks are grouped by average-linkage clustering of ``1 - IoU`` of those selections, cut at ``1 - min_iou``
   (:func:`group_masks`): a group is one 3D segment seen as masks in many views.

Per prompt (:func:`vote`):

3. every mask's relevancy to the text (its cached CLIP embedding, LERF's relevancy); each view votes for the group
   of its most relevant mask, if that mask beats every canonical phrase (relevancy > 0.5); the group with most
   votes wins, ties by the mean relevancy of its masks;
4. the winner's most relevant mask is the query, over all Gaussians.

Differences from the notebook, each documented in docs/saga.md: masks are grouped by the overlap of their 3D
selections (average linkage) instead of HDBSCAN on the overlap of rendered mask identifiers; clusters are ranked
by views' votes instead of the mean CLIP score with a 0.45 floor (a view votes only above relevancy 0.5); the
cached per-mask embeddings are used instead of re-encoding crops (they are the crops' embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch


def group_masks(selections: torch.Tensor, min_iou: float = 0.5) -> np.ndarray:
    """Group queries whose 3D selections overlap: average-linkage clustering of ``1 - IoU``, cut at ``1 - min_iou``.

    Args:
        selections: bool [Q, S], each query's selection on the same S Gaussians.
    Returns:
        int [Q] group ids 0..G-1, numbered by first appearance.
    """
    num = int(selections.shape[0])
    if num == 0:
        return np.zeros(0, dtype=np.int64)
    if num == 1:
        return np.zeros(1, dtype=np.int64)
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    member = selections.float()
    inter = member @ member.T
    size = member.sum(dim=1)
    union = size[:, None] + size[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))  # two empty selections: equal
    distance = (1.0 - iou).clamp(min=0.0).double().cpu().numpy()
    np.fill_diagonal(distance, 0.0)
    distance = 0.5 * (distance + distance.T)
    clusters = fcluster(linkage(squareform(distance, checks=False), method="average"), t=1.0 - min_iou,
                        criterion="distance")
    _, first = np.unique(clusters, return_index=True)
    order = {c: i for i, c in enumerate(clusters[np.sort(first)])}
    return np.array([order[c] for c in clusters], dtype=np.int64)


@dataclass
class MaskQueries:
    """The text-independent part of CLIP voting for one model and set of views: one query per cached mask."""

    queries: torch.Tensor
    """[Q, D] gated, normalised query features."""
    scales: torch.Tensor
    """[Q] each mask's quantile-normalised 3D scale (the query's scale)."""
    view: np.ndarray
    """[Q] the training view of each mask."""
    mask: np.ndarray
    """[Q] the mask's index in its view's language record (into its CLIP features)."""
    group: np.ndarray
    """[Q] the 3D group of each mask (:func:`group_masks`)."""

    @property
    def num_groups(self) -> int:
        return int(self.group.max()) + 1 if self.group.size else 0


@dataclass
class VoteResult:
    winner: Optional[int]
    """The winning group, or None when no view has a mask relevant to the text."""
    votes: np.ndarray
    """[G] votes per group."""
    mean_relevancy: np.ndarray
    """[G] mean relevancy of each group's masks."""
    best: Optional[int]
    """The winner's most relevant mask (an index into the queries)."""
    voters: List[int] = field(default_factory=list)
    """The masks that voted for the winner, one per view (indices into the queries)."""


def vote(relevancy: np.ndarray, view: np.ndarray, group: np.ndarray, num_groups: int,
         min_relevancy: float = 0.5) -> VoteResult:
    """Each view votes for the group of its most relevant mask (if above ``min_relevancy``); most votes wins, ties
    by mean relevancy, then the lower group id. ``relevancy``, ``view``, ``group``: [Q], one entry per mask."""
    relevancy = np.asarray(relevancy, dtype=np.float64)
    view, group = np.asarray(view), np.asarray(group)
    votes = np.zeros(num_groups, dtype=np.int64)
    ballots = []
    for v in np.unique(view):
        members = np.flatnonzero(view == v)
        best = members[int(np.argmax(relevancy[members]))]
        if relevancy[best] > min_relevancy:
            votes[group[best]] += 1
            ballots.append(int(best))
    counts = np.bincount(group, minlength=num_groups)
    mean = np.bincount(group, weights=relevancy, minlength=num_groups) / np.maximum(counts, 1)
    if votes.max(initial=0) == 0:
        return VoteResult(None, votes, mean, None)
    tied = np.flatnonzero(votes == votes.max())
    winner = int(tied[np.argmax(mean[tied])])
    members = np.flatnonzero(group == winner)
    voters = [b for b in ballots if group[b] == winner]
    return VoteResult(winner, votes, mean, int(members[np.argmax(relevancy[members])]), voters)
