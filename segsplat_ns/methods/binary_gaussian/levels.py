"""Binary-Gaussian's granularity levels: training masks -> levels, and the segmenter's scale -> a level.

Pure functions (no nerfstudio imports). The paper uses SAM's multi-granularity masks without saying how they
become L levels; this is our mapping (docs/binary-gaussian.md, "From masks to levels"). Per training image:

1. nesting: mask j is an *ancestor* of mask i when j has more pixels (ties by 3D scale) and covers at least
   ``nest_fraction`` (0.45) of i's pixels. A mask's nesting depth is its number of ancestors;
   its level is ``min(depth, L - 1)`` (0-based): top-level masks (whole objects) are level 1, masks inside one
   other mask (parts) level 2, deeper masks level 3 (all deeper ones are merged into the finest level)
   (:func:`mask_levels`);
2. a pixel's label at level l is the *smallest* mask of level <= l containing it, so a region with no finer
   mask keeps its coarser label (it is "indivisible" there: a positive-only group, Eq. 7);
3. group ids are made hierarchical (level-l id = (level-(l-1) id, label)), so M_p^l = M_q^l implies
   M_p^{l-1} = M_q^{l-1}, as Eq. 6's induction assumes even when noisy masks overlap without nesting
   (:func:`pixel_level_groups`);
4. pixels covered by no top-level mask (background, or the 1-2 px rim of a dilated part mask) take no part in
   the contrastive terms (as SAGA samples only pixels covered by a mask).

The authors' partial code (``train_binary_feature.py``) assigns levels per *pixel* instead, the ``area-rank`` rule
(:func:`area_rank_groups`): masks sorted by 2D area, largest first, a pixel's level-l mask is the l-th largest
mask containing it, and a pixel with fewer than l masks keeps its level-(l-1) mask.

Scale -> level (the shared segmenter's ``scale`` in [0, 1] is the quantile of 3D mask sizes): during training the
model keeps, per level, a histogram of the normalised scales of the masks assigned to it, and the scale axis is
cut into one range per level by :func:`segsplat_ns.methods.common.scale_levels.level_of_bins` (shared with
``lift``; re-exported here). With no statistics at all (an untrained model) the fallback is fixed bands:
s >= 2/3 -> level 1 (coarse), 1/3 <= s < 2/3 -> level 2, s < 1/3 -> level 3.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from segsplat_ns.methods.common.scale_levels import (  # noqa: F401 - re-exported
    MIN_LEVEL_SHARE,
    SCALE_BINS,
    fallback_level,
    level_of_bins,
    scale_bin,
)

__all__ = [
    "MIN_LEVEL_SHARE",
    "SCALE_BINS",
    "fallback_level",
    "level_of_bins",
    "area_rank_groups",
    "area_rank_levels",
    "mask_levels",
    "pixel_level_groups",
    "scale_bin",
    "smallest_masks",
]


def mask_levels(
    masks: Tensor, mask_scales: Tensor, num_levels: int, nest_fraction: float = 0.45, max_pixels: int = 16384
) -> Tensor:
    """Level (0-based) of each mask of one image: ``min(nesting depth, L - 1)`` (see the module docstring).

    ``masks`` bool [M, H, W]; ``mask_scales`` [M]. Containment is measured on a strided copy of at most
    ``max_pixels`` pixels (cheap on large images).
    """
    m = masks.shape[0]
    if m == 0:
        return torch.zeros(0, dtype=torch.long, device=masks.device)
    h, w = masks.shape[1:]
    stride = max(1, int(math.ceil(math.sqrt(h * w / max_pixels))))
    flat = masks[:, ::stride, ::stride].reshape(m, -1).float()
    area = flat.sum(-1)
    if bool((area == 0).any()):  # a tiny mask the stride missed: use full resolution for exactness
        flat = masks.reshape(m, -1).float()
        area = flat.sum(-1)
    inter = flat @ flat.T  # [M, M], inter[i, j] = |M_i & M_j|
    scales = mask_scales.to(flat.device, torch.float32).reshape(-1)
    # a containing mask has more pixels: order by area (ties by 3D scale); the 3D scale of a thin part can exceed
    # that of its (incompletely masked) object, so it is only the tie-break
    larger = (area[None, :] > area[:, None]) | ((area[None, :] == area[:, None]) & (scales[None, :] > scales[:, None]))
    covers = inter >= nest_fraction * area[:, None].clamp_min(1.0)
    ancestors = larger & covers  # [i, j]: j is an ancestor of i
    depth = ancestors.sum(-1)
    return depth.clamp(max=num_levels - 1).long()


def smallest_masks(membership: Tensor, mask_scales: Tensor, levels: Tensor, level: int, chunk: int = 1 << 15) -> Tensor:
    """Each pixel's label at 0-based ``level``: the smallest mask (by scale, ties by index) of level <= ``level``
    containing it, long [P], -1 where none does (step 2 of the module docstring).

    ``membership`` bool [P, M] (pixel p inside mask i; a transposed view of [M, H*W] masks works), ``levels`` [M]
    from :func:`mask_levels`. Pixels are taken ``chunk`` at a time, so a whole image never builds a [H*W, M]
    integer table."""
    p, m = membership.shape
    device = membership.device
    out = torch.full((p,), -1, dtype=torch.long, device=device)
    if m == 0:
        return out
    # rank masks by scale so "smallest" is an argmin over integer ranks (ties broken by index)
    rank = torch.empty(m, dtype=torch.long, device=device)
    rank[torch.argsort(mask_scales.to(device, torch.float32).reshape(-1), stable=True)] = torch.arange(m, device=device)
    allowed = (levels.to(device) <= level)[None, :]
    big = torch.iinfo(torch.long).max
    for start in range(0, p, chunk):
        candidate = membership[start : start + chunk].bool() & allowed
        keyed = torch.where(candidate, rank[None, :], torch.full_like(rank[None, :], big))
        best = keyed.argmin(-1)
        out[start : start + chunk] = torch.where(candidate.any(-1), best, torch.full_like(best, -1))
    return out


def pixel_level_groups(membership: Tensor, mask_scales: Tensor, levels: Tensor, num_levels: int) -> Tensor:
    """Hierarchical group id of each sampled pixel at each level: long [L, P], -1 for excluded pixels.

    ``membership`` bool [P, M] (pixel p inside mask i); ``levels`` [M] from :func:`mask_levels`. The label at
    level l is the smallest mask (by scale, ties by index) of level <= l containing the pixel
    (:func:`smallest_masks`); the id at level l encodes the ids of all coarser levels too.
    """
    p, m = membership.shape
    if m == 0:
        return torch.full((num_levels, p), -1, dtype=torch.long, device=membership.device)
    labels = torch.stack([smallest_masks(membership, mask_scales, levels, level) for level in range(num_levels)])
    return _hierarchical(labels, m)


def _hierarchical(labels: Tensor, m: int) -> Tensor:
    """Labels [L, P] (mask index, -1 none) -> hierarchical group ids: level-l id = (level-(l-1) id, label)."""
    groups = torch.full_like(labels, -1)
    previous = None
    for level in range(labels.shape[0]):
        label = labels[level]
        if level == 0:
            current = label
        else:
            current = torch.where(previous >= 0, previous * (m + 1) + label + 1, torch.full_like(previous, -1))
        groups[level] = current
        previous = current
    return groups


def _area_order(areas: Tensor) -> Tensor:
    """rank [M]: 0 for the largest mask (ties by index)."""
    m = areas.shape[0]
    rank = torch.empty(m, dtype=torch.long, device=areas.device)
    rank[torch.argsort(-areas.to(torch.float64), stable=True)] = torch.arange(m, device=areas.device)
    return rank


def area_rank_groups(membership: Tensor, areas: Tensor, num_levels: int) -> Tensor:
    """The authors' code's levels (``sam_masks_level = cumsum(masks) * masks`` over masks sorted by area,
    largest first): a pixel's level-l mask is the l-th largest mask containing it; with fewer masks it keeps its
    level-(l-1) mask. Hierarchical group ids long [L, P] as :func:`pixel_level_groups`, -1 where no mask covers
    the pixel. ``membership`` bool [P, M], ``areas`` [M] (2D pixel counts)."""
    p, m = membership.shape
    device = membership.device
    if m == 0:
        return torch.full((num_levels, p), -1, dtype=torch.long, device=device)
    rank = _area_order(areas.to(device))
    by_rank = torch.empty(m, dtype=torch.long, device=device)
    by_rank[rank] = torch.arange(m, device=device)  # mask index of each rank
    big = torch.iinfo(torch.long).max
    keyed = torch.where(membership.bool(), rank[None, :], torch.full_like(rank[None, :], big))
    ordered = torch.sort(keyed, dim=-1).values  # [P, M]: the covering masks' ranks, largest mask first
    labels = torch.full((num_levels, p), -1, dtype=torch.long, device=device)
    for level in range(num_levels):
        if level < m:
            here = ordered[:, level]
            label = torch.where(here < big, by_rank[here.clamp(max=m - 1)], torch.full_like(here, -1))
        else:
            label = torch.full((p,), -1, dtype=torch.long, device=device)
        labels[level] = label if level == 0 else torch.where(label >= 0, label, labels[level - 1])
    return _hierarchical(labels, m)


def area_rank_levels(masks: Tensor, num_levels: int, max_pixels: int = 16384) -> Tensor:
    """One level per mask (0-based) under the area-rank rule, for the scale -> level statistics: the most common
    level the mask is over its pixels (its position among the masks covering each pixel, largest first, capped at
    L - 1). ``masks`` bool [M, H, W]; measured on a strided copy of at most ``max_pixels`` pixels."""
    m = masks.shape[0]
    if m == 0:
        return torch.zeros(0, dtype=torch.long, device=masks.device)
    h, w = masks.shape[1:]
    stride = max(1, int(math.ceil(math.sqrt(h * w / max_pixels))))
    flat = masks[:, ::stride, ::stride].reshape(m, -1)
    if bool((flat.sum(-1) == 0).any()):
        flat = masks.reshape(m, -1)
    areas = masks.reshape(m, -1).sum(-1)
    rank = _area_order(areas)
    larger = (rank[None, :] < rank[:, None]).float()  # [i, j]: mask j is larger than mask i
    position = larger @ flat.float()  # [i, pixel]: larger masks covering the pixel
    position = position.clamp(max=num_levels - 1).long()
    counts = torch.zeros(m, num_levels, device=masks.device)
    counts.scatter_add_(1, torch.where(flat, position, torch.zeros_like(position)), flat.float())
    return counts.argmax(-1)
