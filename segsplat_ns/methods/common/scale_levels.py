"""From a continuous scale to one of L discrete levels: pure torch, naming no paper.

A method with discrete granularity levels (whose training masks each belong to one level) keeps, per level, a
``SCALE_BINS``-bin histogram of the quantile-normalised 3D scales of its masks, plus their sum and count.
:func:`level_of_bins` cuts the scale axis into one range per level, coarser levels higher up: the monotone cut that
maximises the summed *normalised* histograms, i.e. the balanced accuracy of "mask scale -> its level" on the
training masks, so a level with more masks does not win by count alone and moving the slider up never gives a
finer level. A level with under ``MIN_LEVEL_SHARE`` of the masks gets no range; bins no mask fell in go to the
level with the nearest mean scale. With no statistics at all the fallback is equal bands (:func:`fallback_level`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["MIN_LEVEL_SHARE", "SCALE_BINS", "fallback_level", "level_histograms", "level_of_bins", "scale_bin"]

SCALE_BINS = 20
"""Bins of the per-level histograms of training-mask scales (the scale axis is cut at bin edges)."""
MIN_LEVEL_SHARE = 0.05
"""A level that received fewer than this share of the training masks is not offered on the scale axis."""


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


def level_histograms(scales: Tensor, levels: Tensor, num_levels: int) -> "tuple[Tensor, Tensor, Tensor]":
    """The statistics :func:`level_of_bins` reads, from every training mask's normalised scale [M] and 0-based
    level [M]: ``(hist [L, SCALE_BINS], scale_sum [L], scale_count [L])``."""
    scales = scales.double().reshape(-1).cpu()
    levels = levels.long().reshape(-1).cpu()
    bins = (scales * SCALE_BINS).long().clamp(0, SCALE_BINS - 1)
    hist = torch.zeros(num_levels * SCALE_BINS, dtype=torch.float64)
    hist.index_add_(0, levels * SCALE_BINS + bins, torch.ones_like(scales))
    scale_sum = torch.zeros(num_levels, dtype=torch.float64).index_add_(0, levels, scales)
    scale_count = torch.zeros(num_levels, dtype=torch.float64).index_add_(0, levels, torch.ones_like(scales))
    return hist.reshape(num_levels, SCALE_BINS), scale_sum, scale_count
