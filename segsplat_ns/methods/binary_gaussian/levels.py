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

Scale -> level (the shared segmenter's ``scale`` in [0, 1] is the quantile of 3D mask sizes). During training the
model keeps, per level, a ``SCALE_BINS``-bin histogram of the normalised scales of the masks assigned to it, plus
their sum and count. The scale axis is cut into one range per level, coarser levels higher up
(:func:`level_of_bins`): the monotone cut that maximises the summed *normalised* histograms, i.e. the balanced
accuracy of "mask scale -> its level" on the training masks, so a level with more masks does not win by count
alone and moving the slider up never gives a finer level. A level with under ``MIN_LEVEL_SHARE`` of the masks gets
no range; bins no mask fell in go to the level with the nearest mean scale. With no statistics at all (an
untrained model) the fallback is fixed bands (:func:`fallback_level`): s >= 2/3 -> level 1 (coarse),
1/3 <= s < 2/3 -> level 2, s < 1/3 -> level 3.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "MIN_LEVEL_SHARE",
    "SCALE_BINS",
    "fallback_level",
    "level_of_bins",
    "mask_levels",
    "pixel_level_groups",
    "scale_bin",
]

SCALE_BINS = 20
"""Bins of the per-level histograms of training-mask scales (the scale axis is cut at bin edges)."""
MIN_LEVEL_SHARE = 0.05
"""A level that received fewer than this share of the training masks is not offered on the scale axis."""


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


def pixel_level_groups(membership: Tensor, mask_scales: Tensor, levels: Tensor, num_levels: int) -> Tensor:
    """Hierarchical group id of each sampled pixel at each level: long [L, P], -1 for excluded pixels.

    ``membership`` bool [P, M] (pixel p inside mask i); ``levels`` [M] from :func:`mask_levels`. The label at
    level l is the smallest mask (by scale, ties by index) of level <= l containing the pixel; the id at level
    l encodes the ids of all coarser levels too.
    """
    p, m = membership.shape
    device = membership.device
    if m == 0:
        return torch.full((num_levels, p), -1, dtype=torch.long, device=device)
    order_key = mask_scales.to(device, torch.float32).reshape(-1)
    # rank masks by scale so "smallest" is an argmin over integer ranks (ties broken by index)
    rank = torch.empty(m, dtype=torch.long, device=device)
    rank[torch.argsort(order_key, stable=True)] = torch.arange(m, device=device)
    big = torch.iinfo(torch.long).max
    groups = torch.full((num_levels, p), -1, dtype=torch.long, device=device)
    previous = None
    for level in range(num_levels):
        candidate = membership.bool() & (levels.to(device) <= level)[None, :]
        keyed = torch.where(candidate, rank[None, :], torch.full_like(rank[None, :], big))
        best = keyed.argmin(-1)
        label = torch.where(candidate.any(-1), best, torch.full_like(best, -1))
        if level == 0:
            current = label
        else:
            current = torch.where(previous >= 0, previous * (m + 1) + label + 1, torch.full_like(previous, -1))
        groups[level] = current
        previous = current
    return groups


def scale_bin(scale: float) -> int:
    """The histogram bin (0..SCALE_BINS-1) of a scale in [0, 1]."""
    return min(max(int(float(scale) * SCALE_BINS), 0), SCALE_BINS - 1)


def fallback_level(scale: float, num_levels: int) -> int:
    """The level of a scale with no training statistics: equal bands, coarsest at the top."""
    band = int(math.floor((1.0 - float(scale)) * num_levels))
    return min(max(band, 0), num_levels - 1)


@torch.no_grad()
def level_of_bins(hist: Tensor, scale_sum: Tensor, scale_count: Tensor) -> Tensor:
    """The level of each of the SCALE_BINS scale bins: long [SCALE_BINS], non-increasing (coarser upwards).

    ``hist`` [L, SCALE_BINS]: per level, how many training masks fell in each scale bin; ``scale_sum`` /
    ``scale_count`` [L]: the sum and number of those masks' scales (their mean breaks ties).

    The monotone partition of the scale axis that maximises the summed per-level *normalised* histogram
    (the balanced accuracy of "a mask's scale -> its level" on the training masks), by dynamic programming.
    Levels holding less than ``MIN_LEVEL_SHARE`` of the masks get no range. Ties (bins no mask fell in)
    go to the level whose mean mask scale is nearest to the bin centre.
    """
    hist = hist.double().cpu()
    counts = hist.sum(-1)
    eligible = counts >= max(1.0, MIN_LEVEL_SHARE * float(counts.sum()))
    if not bool(eligible.any()):  # statistics from before the histograms existed: means only
        counts = scale_count.double().cpu()
        eligible = counts > 0
    density = hist / counts.clamp_min(1.0).unsqueeze(-1)
    means = scale_sum.double().cpu() / scale_count.double().cpu().clamp_min(1.0)
    centres = (torch.arange(SCALE_BINS, dtype=torch.float64) + 0.5) / SCALE_BINS
    tie_break = -1e-6 * (means.unsqueeze(-1) - centres).abs()  # [L, B]: far below one mask's weight
    score = torch.where(eligible.unsqueeze(-1), density + tie_break, torch.full_like(density, -math.inf))
    num_levels = score.shape[0]
    # best[l]: best total over bins 0..b with bin b at level l; bins go up in scale, levels down (coarser)
    best = score[:, 0].clone()
    came_from = torch.zeros(SCALE_BINS, num_levels, dtype=torch.long)
    for b in range(1, SCALE_BINS):
        new = torch.empty(num_levels, dtype=torch.float64)
        for level in range(num_levels):
            finer = best[level:]  # the previous bin's level is this one or a finer one
            k = int(torch.argmax(finer))
            came_from[b, level] = level + k
            new[level] = finer[k] + score[level, b]
        best = new
    level = int(torch.argmax(best))
    path = torch.empty(SCALE_BINS, dtype=torch.long)
    for b in range(SCALE_BINS - 1, -1, -1):
        path[b] = level
        level = int(came_from[b, level])
    return path
