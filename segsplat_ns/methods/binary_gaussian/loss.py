"""Binary-Gaussian's training objective as pure functions (no nerfstudio imports).

Paper: Yang et al., AAAI-26 (arXiv 2512.00944), Sec. 3.3-3.5, Eq. 3 and 5-9:

- :func:`ste_binarize`: the straight-through binarisation of the rendered F_p (Eq. 3);
- :func:`progressive_pair_losses` / :func:`progressive_contrastive_loss`: progressive contrastive learning over the
  coarse-to-fine levels (Eq. 5-6), pairs from :func:`~segsplat_ns.methods.binary_gaussian.levels.pixel_level_groups`;
- :func:`positive_only_pixels` / :func:`virtual_negative_loss`: the virtual negative for positive-only groups (Eq. 7);
- :func:`binarization_loss`: the binarisation regulariser (Eq. 8).

Eq. 9 weighs them lambda_reg / lambda_guiding / lambda_con (the model's config). Where the paper leaves a choice
open, the choice is written next to the code (search for "CHOICE") and in docs/binary-gaussian.md.
"""

from __future__ import annotations

from typing import List, Literal, Sequence, Tuple

import torch
from torch import Tensor

from segsplat_ns.methods.binary_gaussian.codes import level_slices

__all__ = [
    "binarization_loss",
    "positive_only_pixels",
    "progressive_contrastive_loss",
    "progressive_pair_losses",
    "ste_binarize",
    "virtual_negative_loss",
    "PairNormalisation",
    "VirtualNegativePer",
    "PairDistance",
]

_SURROGATE_EPS = 1e-12

PairNormalisation = Literal["pairs", "anchor", "split"]
"""How each level's Eq. 6 sum is scaled (:func:`progressive_contrastive_loss`)."""
VirtualNegativePer = Literal["pixel", "group"]
"""What Eq. 7's sum is averaged over (:func:`virtual_negative_loss`)."""
PairDistance = Literal["l2", "squared"]
"""The distance of Eq. 5-6 (:func:`progressive_pair_losses`)."""

def ste_binarize(x: Tensor) -> Tensor:
    """Eq. 3: ``stop_grad(I(x > 0.5) - x) + x``. Forward exactly {0, 1}; gradient the identity.

    Written as ``hard + (x - x.detach())`` so the forward value is bit-exact (``x - x.detach()`` is exactly 0).
    """
    hard = (x > 0.5).to(x.dtype)
    return hard + (x - x.detach())

def _pair_distance(binary: Tensor, continuous: Tensor) -> Tensor:
    """||F̄_p - F̄_q||_2 for all pairs [P, P]: the forward value is the exact distance of the binarised features;
    the gradient is that of sqrt(||F_p - F_q||^2 + eps) on the continuous rendered features.

    CHOICE: the gradient of ||a - b|| evaluated at binary a = b is 0/0 (PyTorch gives 0), so two pixels of a
    negative pair whose bits collide would never be pushed apart. Evaluating the Jacobian at the continuous
    features (which the STE treats as identical to the binary ones) keeps a direction to separate them.
    """
    with torch.no_grad():
        exact = torch.cdist(binary.detach(), binary.detach())
    sq = (continuous * continuous).sum(-1)
    squared = (sq[:, None] + sq[None, :] - 2.0 * continuous @ continuous.T).clamp_min(0.0)
    surrogate = torch.sqrt(squared + _SURROGATE_EPS)
    return surrogate + (exact - surrogate).detach()


def progressive_pair_losses(
    features: Tensor, groups: Tensor, widths: Sequence[int], distance: PairDistance = "l2"
) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
    """Eq. 5-6 per pair: for each level, (values [P, P], positive [P, P] bool, negative [P, P] bool).

    value = ||F̄_p^l - F̄_q^l||_2 if M_p^l = M_q^l (positive); D_l - ||F̄_p^l - F̄_q^l||_2 if M_p^l != M_q^l but
    M_p^{l-1} = M_q^{l-1} (negative; at level 1 every valid pair has the same parent); 0 otherwise. The diagonal
    and excluded pixels (group -1) are in neither set. ``features`` are the continuous rendered F [P, D].

    The margin D_l is never reached: binary codes of D_l bits are at most sqrt(D_l) apart, so the negative case is
    D_l - ||.|| >= D_l - sqrt(D_l) > 0 and keeps pushing every negative pair apart, with a unit-size gradient (a
    constant offset, not a hinge). ``distance="squared"`` is the authors' partial code: the squared distance (the
    Hamming count of binary codes, at most D_l) with a hinge max(0, D_l - d^2), which likewise never clips before
    every bit differs; its gradient grows with the distance.
    """
    if distance not in ("l2", "squared"):
        raise ValueError(f"distance={distance!r}: choose 'l2' or 'squared'")
    binary = ste_binarize(features)
    p = features.shape[0]
    valid = groups[0] >= 0
    pair_valid = valid[:, None] & valid[None, :] & ~torch.eye(p, dtype=torch.bool, device=features.device)
    values, positives, negatives = [], [], []
    for level, (start, end) in enumerate(level_slices(widths)):
        dist = _pair_distance(binary[:, start:end], features[:, start:end])
        if distance == "squared":
            dist = dist * dist
        same = groups[level][:, None] == groups[level][None, :]
        if level == 0:
            same_parent = torch.ones_like(same)
        else:
            same_parent = groups[level - 1][:, None] == groups[level - 1][None, :]
        positive = pair_valid & same
        negative = pair_valid & ~same & same_parent
        margin = float(end - start) - dist
        if distance == "squared":
            margin = margin.clamp_min(0.0)
        value = torch.where(positive, dist, torch.where(negative, margin, torch.zeros_like(dist)))
        values.append(value)
        positives.append(positive)
        negatives.append(negative)
    return values, positives, negatives


def progressive_contrastive_loss(
    features: Tensor, groups: Tensor, widths: Sequence[int], normalisation: PairNormalisation = "pairs",
    distance: PairDistance = "l2",
) -> Tensor:
    """sum_l L_level-l of Eq. 6. ``normalisation`` (the paper sums over pairs without saying how it is scaled):
    "pairs": the mean over the ordered pairs (p != q) the level constrains (cases 1 and 2);
    "split": the mean over the positive pairs plus the mean over the negative pairs (the authors' partial code,
    ``corr[pos].mean() + relu(...)[neg].mean()``);
    "anchor": per pixel p, the mean over its positive pairs plus the mean over its negative pairs, averaged over
    the pixels that have such pairs, so every pixel is pulled towards its group as strongly as it is pushed away
    from the others, whatever the group's size."""
    if normalisation not in ("pairs", "anchor", "split"):
        raise ValueError(f"normalisation={normalisation!r}: choose 'pairs', 'split' or 'anchor'")
    values, positives, negatives = progressive_pair_losses(features, groups, widths, distance)
    total = features.new_zeros(())
    for value, positive, negative in zip(values, positives, negatives):
        if normalisation == "split":
            for chosen in (positive, negative):
                count = int(chosen.sum())
                if count > 0:
                    total = total + (value * chosen).sum() / count
            continue
        if normalisation == "anchor":
            for chosen in (positive, negative):
                per_anchor = chosen.sum(-1)
                has = per_anchor > 0
                if bool(has.any()):
                    anchor_mean = (value * chosen).sum(-1)[has] / per_anchor[has]
                    total = total + anchor_mean.mean()
            continue
        count = int((positive | negative).sum())
        if count > 0:
            total = total + value.sum() / count
    return total


def positive_only_pixels(groups: Tensor, level: int, min_pixels: int = 2) -> Tensor:
    """Pixels [P] bool whose level-(l-1) group (the whole image at level 1) contains at least ``min_pixels``
    sampled pixels that all share one level-l group: a group with positive pairs only, no negative (Eq. 7)."""
    valid = groups[0] >= 0
    p = groups.shape[1]
    out = torch.zeros(p, dtype=torch.bool, device=groups.device)
    if not bool(valid.any()):
        return out
    parent = torch.zeros(p, dtype=torch.long, device=groups.device) if level == 0 else groups[level - 1]
    parent_v, child_v = parent[valid], groups[level][valid]
    parents, parent_index, parent_count = torch.unique(parent_v, return_inverse=True, return_counts=True)
    pairs = torch.unique(torch.stack([parent_index, child_v]), dim=1)
    children_per_parent = torch.bincount(pairs[0], minlength=parents.numel())
    only = (children_per_parent == 1) & (parent_count >= min_pixels)
    out[valid] = only[parent_index]
    return out


def virtual_negative_loss(
    features: Tensor, groups: Tensor, widths: Sequence[int], per: VirtualNegativePer = "pixel"
) -> Tensor:
    """sum_l L_VN-l: ||F̄_p^l||_2 (distance to nothing set, i.e. away from the all-one virtual negative) for the
    pixels of positive-only groups at level l (Eq. 7); 0 at levels with no such group.

    ``per`` is what the sum is averaged over (ours; the paper does not say): "group", the pixels it applies to
    (each step's positive-only pixels weigh 1 together, however few), or "pixel", every sampled pixel covered by a
    mask (each pixel weighs as much as in the other terms of Eq. 9, so the term scales with how many pixels are
    positive-only)."""
    if per not in ("group", "pixel"):
        raise ValueError(f"per={per!r}: choose 'group' or 'pixel'")
    binary = ste_binarize(features)
    total = features.new_zeros(())
    covered = max(1, int((groups[0] >= 0).sum()))
    for level, (start, end) in enumerate(level_slices(widths)):
        chosen = positive_only_pixels(groups, level)
        if bool(chosen.any()):
            part = binary[chosen, start:end]
            norms = torch.sqrt((part * part).sum(-1) + _SURROGATE_EPS)
            total = total + (norms.mean() if per == "group" else norms.sum() / covered)
    return total


def binarization_loss(features: Tensor) -> Tensor:
    """Eq. 8: ||I(F_p > 0.5) - F_p||_2^2, averaged over pixels."""
    if features.shape[0] == 0:
        return features.sum() * 0.0
    hard = (features.detach() > 0.5).to(features.dtype)
    return ((hard - features) ** 2).sum(-1).mean()
