"""GAGS's granularity-aware distillation (Sec. 3.2, Eq. 3-7), as pure functions of rendered maps.

Shapes: ``P`` pixels (a flattened image), ``D`` the CLIP width (512), ``C`` the rendered feature width, three
granularity levels in the order subpart / part / whole (the language cache's ``s`` / ``m`` / ``l`` rows).

* :func:`level_targets`: the per-level CLIP targets ``f_s, f_p, f_w`` of every pixel from a language record's
  index maps (-1: no mask at that level).
* :func:`present_alpha`: alpha as a softmax over the levels a pixel has a mask at (where a level is missing);
* :func:`distill_map` (Eq. 3, the paper): ``sum_n alpha_n ||f_clip - f_n||^2`` per pixel; :func:`distill_map_code`
  (the authors' code): the L1 distance to the alpha-weighted target ``sum_n alpha_n f_n``, averaged over channels.
* :func:`level_distill` (``decoded-levels every``, not the paper): one decoded feature per level, each distilled
  towards its own level's target, Eq. 5-balanced over that level's masks, averaged over the levels present.
* :func:`entropy` (Eq. 4): ``-sum_n alpha_n log alpha_n``, averaged over pixels.
* :func:`region_map`: m_f, each pixel's mask at its argmax level (after the authors' 5x5 mean smoothing of alpha).
* :func:`region_average` (Eq. 5): the loss averaged per region, then over regions (beta_r's balancing: every
  region counts once, whatever its size).
* :func:`consistency` (Eq. 6, the paper): ``sum_i sum_{p in R_i} ||f_p - mean_{R_i} f||^2 / S(R_i)``;
  :func:`consistency_code` (the authors' code): per-region channel variance weighted by region size over the
  image size.

No nerfstudio imports; ``tests/test_gags.py`` checks each against hand-computed examples.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

NUM_LEVELS = 3
LEVEL_NAMES = ("subpart", "part", "whole")


def level_targets(index_maps: torch.Tensor, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``index_maps`` long [3, P] (-1: none), ``features`` [M, D] -> targets [3, P, D] (zeros where invalid) and
    valid bool [3, P]."""
    valid = index_maps >= 0
    safe = index_maps.clamp_min(0)
    if features.shape[0] == 0:
        return features.new_zeros(*index_maps.shape, features.shape[1]), valid & False
    targets = features[safe] * valid[..., None].to(features.dtype)
    return targets, valid


def present_alpha(eta: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """softmax of eta [P, 3] over the levels each pixel has a mask at (valid [3, P]); zeros where it has none.
    (A softmax over present levels, not a renormalised alpha: alpha can underflow to 0 on every present level.)"""
    masked = eta.masked_fill(~valid.T, float("-inf"))
    out = torch.softmax(masked, dim=-1)
    return torch.nan_to_num(out, nan=0.0)


def distill_map(f_clip: torch.Tensor, targets: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Eq. 3 per pixel: ``sum_n alpha_n ||f_clip - f_n||^2``. f_clip [P, D], targets [3, P, D], alpha [P, 3]."""
    squared = (f_clip[None] - targets).square().sum(-1)  # [3, P]
    return (alpha.T * squared).sum(0)


def distill_map_code(f_clip: torch.Tensor, targets: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The authors' ``read_sam_clip_feature`` + ``l1_loss_map``: ``mean_d |f_clip - sum_n alpha_n f_n|`` per pixel."""
    target = (alpha.T[..., None] * targets).sum(0)  # [P, D]
    return (f_clip - target).abs().mean(-1)


def level_distances(f_levels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``||f_clip^(n) - f_n||^2`` per level and pixel [3, P]: f_levels [P, 3, D] (one decoded feature per level),
    targets [3, P, D]."""
    return (f_levels.transpose(0, 1) - targets).square().sum(-1)


def level_distill(distances: torch.Tensor, index_maps: torch.Tensor) -> torch.Tensor:
    """``decoded-levels every``: each level's distances [3, P] averaged per mask of that level (Eq. 5's balancing,
    ``index_maps`` [3, P], -1 where a pixel has no mask at the level), then over the levels with any mask."""
    per_level = [region_average(distances[n], index_maps[n]) for n in range(distances.shape[0])
                 if bool((index_maps[n] >= 0).any())]  # fmt: skip
    return torch.stack(per_level).mean() if per_level else distances.sum() * 0.0


def entropy(alpha: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 4, averaged over pixels: ``mean_p -sum_n alpha_n log(alpha_n + eps)`` (eps as the authors' code)."""
    return -(alpha * torch.log(alpha + eps)).sum(-1).mean()


def region_map(index_maps: torch.Tensor, alpha: torch.Tensor, height: int, width: int, smooth: int = 5) -> torch.Tensor:
    """m_f: every pixel's mask id at the level alpha picks there (argmax after a ``smooth`` x ``smooth`` mean
    filter of alpha, as the authors' ``get_trained_seg``). index_maps long [3, P], alpha [P, 3] -> long [P]."""
    a = alpha.detach().T.reshape(1, NUM_LEVELS, height, width)
    if smooth > 1:
        kernel = a.new_ones(NUM_LEVELS, 1, smooth, smooth) / smooth**2
        a = F.conv2d(a, kernel, padding=smooth // 2, groups=NUM_LEVELS)
    level = a[0].reshape(NUM_LEVELS, -1).argmax(0)  # [P]
    return index_maps.gather(0, level[None])[0]


def region_average(values: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Eq. 5: the mean of ``values`` [P] within each region (ids >= 0 of ``regions`` [P]), averaged over regions.
    Equal to ``beta_r * mean`` with ``beta_r`` = mean region size / region size, pixel by pixel. No region: 0."""
    inside = regions >= 0
    if not bool(inside.any()):
        return values.sum() * 0.0
    ids, inverse = torch.unique(regions[inside], return_inverse=True)
    sums = values.new_zeros(ids.shape[0]).index_add(0, inverse, values[inside])
    counts = torch.bincount(inverse, minlength=ids.shape[0]).to(values.dtype)
    return (sums / counts).mean()


def _region_stats(features: torch.Tensor, regions: torch.Tensor):
    inside = regions >= 0
    ids, inverse = torch.unique(regions[inside], return_inverse=True)
    f = features[inside]
    counts = torch.bincount(inverse, minlength=ids.shape[0]).to(features.dtype)
    means = features.new_zeros(ids.shape[0], features.shape[1]).index_add(0, inverse, f) / counts[:, None]
    return f, inverse, counts, means


def consistency(features: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Eq. 6: ``sum_i sum_{p in R_i} ||f_p - mean_{R_i} f||^2 / S(R_i)`` (each region's mean squared deviation,
    summed over regions). features [P, C], regions long [P] (-1: no region)."""
    if not bool((regions >= 0).any()):
        return features.sum() * 0.0
    f, inverse, counts, means = _region_stats(features, regions)
    squared = (f - means[inverse]).square().sum(-1)
    return (features.new_zeros(counts.shape[0]).index_add(0, inverse, squared) / counts).sum()


def consistency_code(features: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """The authors' ``scale_region_regulation_loss``: ``sum_i S(R_i) mean_c var_c(R_i) / P`` over regions of two
    or more pixels (unbiased variance, as ``torch.var``), on whatever features it is given."""
    if not bool((regions >= 0).any()):
        return features.sum() * 0.0
    f, inverse, counts, means = _region_stats(features, regions)
    squared = (f - means[inverse]).square()  # [P_in, C]
    sums = features.new_zeros(counts.shape[0], features.shape[1]).index_add(0, inverse, squared)
    big = counts > 1
    variance = sums[big] / (counts[big, None] - 1)
    return (counts[big] * variance.mean(-1)).sum() / regions.shape[0]
