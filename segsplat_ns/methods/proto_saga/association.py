"""Proto-SaGa's association (Sec. 3.2, Eq. 9-16): per-view SAM instances -> one set of instance ids for the scene.

Following Gaga's memory bank, with Proto-SaGa's semantic term:

* :func:`instance_gaussians` (Eq. 9): the Gaussians whose projected centre lies in instance t's pixels;
* :func:`front_set` (Eq. 10): of those, the ``delta_d`` fraction nearest the image plane;
* :func:`semantic_set` (Eq. 15): of those, the ``delta_s`` fraction with the highest classifier probability for t
  (Eq. 14's sigma_{i,k}(t));
* Eq. 16: their union (:func:`proto_saga_set`);
* :func:`associate` (Eq. 11-13): the memory bank, initialised from the first view, then view by view: each
  instance's overlap score gamma = #(G ∩ M(e)) / #G against every bank entry (Eq. 12); above ``delta`` it is
  merged into the best entry (Eq. 13), otherwise it becomes a new entry.

"Rank < delta E" with 0-based ranks keeps ceil(delta E) Gaussians. Gaga's released code differs (front 20 % per
32x32 patch of the mask, score |∩| / (|cur| + |∩|)); the paper's definitions are implemented here.
Pure torch, no nerfstudio; ``tests/test_proto_saga.py`` checks them by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch


def gaussian_labels(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The label under each Gaussian's projected centre ``pixels`` [N, 2] (x, y) in ``labels`` [H, W]; -1 for a
    centre outside the image (or behind the camera, given as any negative pixel)."""
    H, W = labels.shape
    x, y = pixels[:, 0].long(), pixels[:, 1].long()
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    label = torch.full((pixels.shape[0],), -1, dtype=labels.dtype, device=labels.device)
    label[inside] = labels[y[inside], x[inside]]
    return label


def instance_gaussians(pixels: torch.Tensor, labels: torch.Tensor, instance: int) -> torch.Tensor:
    """Eq. 9: indices of the Gaussians whose projected centre ``pixels`` [N, 2] (x, y; outside: any value < 0)
    falls on a pixel of ``labels`` [H, W] equal to ``instance``."""
    return (gaussian_labels(pixels, labels) == instance).nonzero().squeeze(1)


def _keep(count: int, fraction: float) -> int:
    return min(count, math.ceil(fraction * count))  # ranks 0.. with rank < fraction * count


def front_set(indices: torch.Tensor, depths: torch.Tensor, delta_d: float) -> torch.Tensor:
    """Eq. 10: the ``delta_d`` fraction of ``indices`` with the smallest ``depths`` (depths indexed by Gaussian)."""
    if indices.numel() == 0:
        return indices
    order = torch.argsort(depths[indices], stable=True)
    return indices[order[: _keep(indices.numel(), delta_d)]]


def semantic_set(indices: torch.Tensor, probabilities: torch.Tensor, delta_s: float) -> torch.Tensor:
    """Eq. 15: the ``delta_s`` fraction of ``indices`` with the highest ``probabilities`` (sigma_{i,k}(t), indexed
    by Gaussian)."""
    if indices.numel() == 0:
        return indices
    order = torch.argsort(-probabilities[indices], stable=True)
    return indices[order[: _keep(indices.numel(), delta_s)]]


def proto_saga_set(indices, depths, probabilities, delta_d: float, delta_s: float,
                   semantic_indices: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """Eq. 16: front set ∪ semantic set, sorted indices. ``semantic_indices``: the candidates Eq. 15 ranks (default
    ``indices``, the paper)."""
    candidates = indices if semantic_indices is None else semantic_indices
    both = torch.cat([front_set(indices, depths, delta_d), semantic_set(candidates, probabilities, delta_s)])
    return torch.unique(both)


@dataclass
class MemoryBank:
    """The bank's instances as Gaussian index sets, and each view's instance -> bank id."""

    entries: List[torch.Tensor] = field(default_factory=list)
    view_ids: List[List[int]] = field(default_factory=list)

    def view_counts(self) -> torch.Tensor:
        """How many views' instances joined each entry (the view that created it included): long [E]."""
        counts = torch.zeros(len(self.entries), dtype=torch.long)
        for ids in self.view_ids:
            if ids:
                counts[torch.unique(torch.tensor(ids, dtype=torch.long))] += 1
        return counts

    def labels(self, num_gaussians: int) -> torch.Tensor:
        """One id per Gaussian (the last entry holding it wins; -1: none) [N]."""
        out = torch.full((num_gaussians,), -1, dtype=torch.long)
        for e, members in enumerate(self.entries):
            out[members] = e
        return out


def entry_incidence(entries: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The bank's (Gaussian, entry) pairs as two flat tensors: every entry's members concatenated, and the entry
    each belongs to. Built once per view, it turns Eq. 12 for every entry into one bincount."""
    if not entries:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    sizes = torch.tensor([e.numel() for e in entries], dtype=torch.long)
    return torch.cat([e.long() for e in entries]), torch.repeat_interleave(torch.arange(len(entries)), sizes)


def overlap_scores(members: torch.Tensor, entries: Sequence[torch.Tensor], num_gaussians: int,
                   incidence: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:  # fmt: skip
    """Eq. 12: gamma(e) = #(members ∩ M(e)) / #members for every bank entry [E] (one bincount over the bank's
    (Gaussian, entry) pairs; ``incidence`` is :func:`entry_incidence` of ``entries`` when the caller keeps it)."""
    if members.numel() == 0 or not entries:
        return torch.zeros(len(entries), dtype=torch.float64)
    flat, owner = incidence if incidence is not None else entry_incidence(entries)
    inside = torch.zeros(num_gaussians, dtype=torch.bool)
    inside[members] = True
    counts = torch.bincount(owner[inside[flat]], minlength=len(entries))
    return counts.double() / members.numel()


def associate(views: Sequence[Sequence[torch.Tensor]], num_gaussians: int, delta: float = 0.1,
              bank: Optional[MemoryBank] = None) -> MemoryBank:  # fmt: skip
    """Eq. 11-13 over ``views``: per view, a list of Gaussian index sets (one per instance t). The first view
    initialises the bank; later instances merge into their best-overlapping entry when gamma > delta, else are
    appended. Instances are matched against the bank as it was before their view (a view's own instances do
    not merge with each other)."""
    bank = bank or MemoryBank()
    for sets in views:
        before = list(bank.entries)
        incidence = entry_incidence(before)
        ids: List[int] = []
        for members in sets:
            gamma = overlap_scores(members, before, num_gaussians, incidence)
            if gamma.numel() and float(gamma.max()) > delta:
                e = int(gamma.argmax())
                bank.entries[e] = torch.unique(torch.cat([bank.entries[e], members]))
            else:
                e = len(bank.entries)
                bank.entries.append(torch.unique(members))
            ids.append(e)
        bank.view_ids.append(ids)
    return bank


def kept_entries(view_counts: torch.Tensor, min_views: int) -> torch.Tensor:
    """Each entry's new id when entries joined by fewer than ``min_views`` views are dropped (-1: dropped): long
    [E]. ``min_views`` 1 keeps every entry (the paper). An entry one view alone created is a fragment that view's
    masks held and no other view's did (the first view's extra masks, Eq. 11, or a jittered sliver later)."""
    keep = view_counts >= min_views
    return torch.where(keep, torch.cumsum(keep.long(), 0) - 1, torch.full_like(view_counts, -1))

