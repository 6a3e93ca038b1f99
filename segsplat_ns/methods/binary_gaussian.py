"""Binary-Gaussian (Yang et al., AAAI-26, arXiv 2512.00944): what the paper adds to the shared base.

- a D-dim latent f_i in [0, 1] per Gaussian (D = sum of the level widths D_l, default 12/10/10 = 32), rendered
  through the frozen geometry (Eq. 2); the rendered F_p is binarised per pixel with the straight-through
  estimator (Eq. 3) and Eq. 8 pushes F_p to 0/1. CHOICE: the latent is kept in [0, 1] by projection after each
  step (no sigmoid, so the paper's lr 0.005 acts on the value itself);
- L coarse-to-fine levels: level l's label is the concatenation of the bits of levels 1..l (Eq. 4), i.e. an
  integer *prefix* of the 32-bit code;
- progressive contrastive learning (Eq. 5-6), the virtual negative for positive-only groups (Eq. 7), the
  binarisation regulariser (Eq. 8), weights lambda_reg/guiding/con = 10/1/1 (Eq. 9);
- mask-balanced pixel sampling (Sec. 3.5: 2k random pixels + 8k from randomly chosen masks);
- opacity fine-tuned at 2% of its initial learning rate during the feature stage (Sec. 3.5 / 4.2);
- after training, each Gaussian keeps ONE 32-bit integer (buffer ``binary_codes``, int32 [N]); the float latent
  and its optimizer state are dropped from the final checkpoint. CHOICE (the paper stores f̄_i without saying how
  a continuous latent becomes bits): each bit is a render-weighted vote over the training views, the majority,
  weighted by the blending weight alpha_i T_i, of the binarised rendered bits (Eq. 3) of the pixels the Gaussian
  contributes to (:func:`render_weighted_votes`), so Class_i agrees with the Class_p it renders; Gaussians no
  training view renders (and exact ties) keep I(latent > 0.5). At inference the stored bits are rendered (Eq. 2)
  and the clicked pixel's binarised code gives the query Class_p (Sec. 3.6);
- CHOICE: lambda_reg ramps from 0 to 10 over the first ``reg_warmup_steps`` (500) feature steps.
- CHOICE: each level's Eq. 6 is scaled per anchor pixel (mean of its positive pairs + mean of its negative pairs,
  ``pair_normalisation="anchor"``), so a small object is pulled onto one code as strongly as it is pushed away;
- CHOICE: after the vote, a hierarchical code clean-up (:func:`snap_codes`, ``snap_radius`` 2) merges level-l bit
  strings within Hamming distance 2 of a heavier one in the same parent group, and a clicked prefix that no
  Gaussian stores is replaced by the nearest stored one, level by level (:class:`PrefixTable`).

Masks -> levels (the paper uses SAM's multi-granularity masks without saying how they become L levels; this
is our mapping, also in ``docs/binary-gaussian.md``). Per training image:

1. nesting: mask j is an *ancestor* of mask i when j has more pixels (ties by 3D scale) and covers at least
   ``nest_fraction`` (0.45) of i's pixels. A mask's nesting depth is its number of ancestors;
   its level is ``min(depth, L - 1)`` (0-based): top-level masks (whole objects) are level 1, masks inside one
   other mask (parts) level 2, deeper masks level 3 (all deeper ones are merged into the finest level);
2. a pixel's label at level l is the *smallest* mask of level <= l containing it, so a region with no finer
   mask keeps its coarser label (it is "indivisible" there: a positive-only group, Eq. 7);
3. group ids are made hierarchical (level-l id = (level-(l-1) id, label)), so M_p^l = M_q^l implies
   M_p^{l-1} = M_q^{l-1}, as Eq. 6's induction assumes even when noisy masks overlap without nesting;
4. pixels covered by no top-level mask (background, or the 1-2 px rim of a dilated part mask) take no part in
   the contrastive terms (as SAGA samples only pixels covered by a mask).

Scale -> level (the shared segmenter's ``scale`` in [0, 1] is the quantile of 3D mask sizes). During training the
model keeps, per level, a 20-bin histogram of the normalised scales of the masks assigned to it (buffer
``level_scale_hist`` [L, 20], plus ``level_scale_sum`` / ``level_scale_count``; all saved with the checkpoint). The
scale axis is cut into one range per level, coarser levels higher up (``level_of_bins``): the monotone cut that
maximises the summed *normalised* histograms, i.e. the balanced accuracy of "mask scale -> its level" on the
training masks, so a level with more masks does not win by count alone and moving the slider up never gives a
finer level. A level with under 5% of the masks gets no range; bins no mask fell in go to the level with the
nearest mean scale. (The first version took the highest normalised histogram per bin; it was not monotone and a
level with a few masks in one bin won that bin: on one bench seed the lamp's object click at 0.62 went to the part
level, object mIoU 0.51.)
With no statistics at all (an untrained model) the fallback is fixed bands: s >= 2/3 -> level 1 (coarse),
1/3 <= s < 2/3 -> level 2, s < 1/3 -> level 3.

Code layout: bit 31 (most significant) is latent channel 0, so level l's label is ``code >> (32 - B_l)`` with
B_l = D_1 + ... + D_l (unsigned view of the int32). Widths summing to less than 32 leave the low bits zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import (
    TrainingCallback,
    TrainingCallbackAttributes,
    TrainingCallbackLocation,
)
from torch import Tensor

from segsplat_ns.base_model import SegSplatModel, SegSplatModelConfig
from segsplat_ns.masks.sampling import mask_balanced_pixels  # noqa: F401  (re-exported: part of this method's recipe)

CODE_BITS = 32
SCALE_BINS = 20
# a level that received fewer than this share of the training masks is not offered on the scale axis
MIN_LEVEL_SHARE = 0.05
_SURROGATE_EPS = 1e-12


# ---------------------------------------------------------------------------------------------------------
# Pure functions (no model state): STE, codes, masks -> levels, sampling, losses
# ---------------------------------------------------------------------------------------------------------
def ste_binarize(x: Tensor) -> Tensor:
    """Eq. 3: ``stop_grad(I(x > 0.5) - x) + x``. Forward exactly {0, 1}; gradient the identity.

    Written as ``hard + (x - x.detach())`` so the forward value is bit-exact (``x - x.detach()`` is exactly 0).
    """
    hard = (x > 0.5).to(x.dtype)
    return hard + (x - x.detach())


def level_slices(widths: Sequence[int]) -> List[Tuple[int, int]]:
    """[start, end) channel range of each level in the concatenated latent."""
    bounds, start = [], 0
    for width in widths:
        bounds.append((start, start + int(width)))
        start += int(width)
    return bounds


def prefix_bits(widths: Sequence[int], level: int) -> int:
    """B_l = D_1 + ... + D_l for a 0-based level index."""
    return int(sum(widths[: level + 1]))


def pack_codes(bits: Tensor) -> Tensor:
    """Bits [..., D] (bool or {0,1}, D <= 32; channel 0 = most significant bit) -> unsigned code, int64 [...]."""
    d = bits.shape[-1]
    if d > CODE_BITS:
        raise ValueError(f"{d} bits do not fit a 32-bit code")
    weights = torch.tensor([1 << (CODE_BITS - 1 - j) for j in range(d)], dtype=torch.int64, device=bits.device)
    return (bits.to(torch.int64) * weights).sum(-1)


def unpack_codes(codes: Tensor, num_bits: int) -> Tensor:
    """Unsigned (int64) or int32 codes [...] -> bits [..., num_bits] as bool (channel 0 = MSB)."""
    unsigned = codes.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.tensor([CODE_BITS - 1 - j for j in range(num_bits)], dtype=torch.int64, device=codes.device)
    return ((unsigned[..., None] >> shifts) & 1).bool()


def to_int32(codes: Tensor) -> Tensor:
    """Unsigned codes in [0, 2^32) -> the same 32 bits as int32 (two's complement)."""
    codes = codes.to(torch.int64)
    return torch.where(codes >= (1 << 31), codes - (1 << 32), codes).to(torch.int32)


def code_prefix(codes: Tensor, num_prefix_bits: int) -> Tensor:
    """Class label at a level: the top ``num_prefix_bits`` bits, ``code >> (32 - B_l)`` on the unsigned view."""
    return (codes.to(torch.int64) & 0xFFFFFFFF) >> (CODE_BITS - num_prefix_bits)


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
    features: Tensor, groups: Tensor, widths: Sequence[int]
) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
    """Eq. 5-6 per pair: for each level, (values [P, P], positive [P, P] bool, negative [P, P] bool).

    value = ||F̄_p^l - F̄_q^l||_2 if M_p^l = M_q^l (positive); D_l - ||F̄_p^l - F̄_q^l||_2 if M_p^l != M_q^l but
    M_p^{l-1} = M_q^{l-1} (negative; at level 1 every valid pair has the same parent); 0 otherwise. The diagonal
    and excluded pixels (group -1) are in neither set. ``features`` are the continuous rendered F [P, D].
    """
    binary = ste_binarize(features)
    p = features.shape[0]
    valid = groups[0] >= 0
    pair_valid = valid[:, None] & valid[None, :] & ~torch.eye(p, dtype=torch.bool, device=features.device)
    values, positives, negatives = [], [], []
    for level, (start, end) in enumerate(level_slices(widths)):
        distance = _pair_distance(binary[:, start:end], features[:, start:end])
        same = groups[level][:, None] == groups[level][None, :]
        if level == 0:
            same_parent = torch.ones_like(same)
        else:
            same_parent = groups[level - 1][:, None] == groups[level - 1][None, :]
        positive = pair_valid & same
        negative = pair_valid & ~same & same_parent
        value = torch.where(positive, distance, torch.where(negative, float(end - start) - distance, torch.zeros_like(distance)))
        values.append(value)
        positives.append(positive)
        negatives.append(negative)
    return values, positives, negatives


def progressive_contrastive_loss(
    features: Tensor, groups: Tensor, widths: Sequence[int], normalisation: str = "pairs"
) -> Tensor:
    """sum_l L_level-l of Eq. 6. ``normalisation`` (the paper sums over pairs without saying how it is scaled):
    "pairs": the mean over the ordered pairs (p != q) the level constrains (cases 1 and 2);
    "anchor": per pixel p, the mean over its positive pairs plus the mean over its negative pairs, averaged over
    the pixels that have such pairs, so every pixel is pulled towards its group as strongly as it is pushed away
    from the others, whatever the group's size."""
    values, positives, negatives = progressive_pair_losses(features, groups, widths)
    total = features.new_zeros(())
    for value, positive, negative in zip(values, positives, negatives):
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


def virtual_negative_loss(features: Tensor, groups: Tensor, widths: Sequence[int], per: str = "pixel") -> Tensor:
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


def render_weighted_votes(render: Callable[[Tensor], Tensor], latent: Tensor) -> Tuple[Tensor, Tensor]:
    """One view's render-weighted bit votes: (votes [N, D], weight [N]).

    ``render`` maps per-Gaussian vectors [N, C] to the view's map [..., C] and is linear in them (alpha
    blending, Eq. 2: F_p = sum_i w_ip c_i with w_ip = alpha_i T_i). The latent is rendered, the rendered map is
    binarised (Eq. 3, F̄_p = I(F_p > 0.5)), and each Gaussian collects ``votes[i, d] = sum_p w_ip (2 F̄_p,d - 1)``
    (positive: the pixels it contributes to mostly read bit d as 1) and ``weight[i] = sum_p w_ip``. Both are
    vector-Jacobian products of the render, so one render and one backward give them for every Gaussian; an
    extra all-one channel renders the alpha and yields the weights.
    """
    num, dim = latent.shape
    colors = torch.cat([latent.detach(), latent.new_ones(num, 1)], dim=-1).requires_grad_(True)
    with torch.enable_grad():
        rendered = render(colors)
        flat = rendered.reshape(-1, dim + 1)
        signs = (flat[:, :dim].detach() > 0.5).to(flat.dtype) * 2.0 - 1.0
        upstream = torch.cat([signs, torch.ones_like(flat[:, dim:])], dim=-1).reshape(rendered.shape)
        (grad,) = torch.autograd.grad(rendered, colors, upstream)
    return grad[:, :dim], grad[:, dim]


def voted_bits(votes: Tensor, weight: Tensor, fallback: Tensor) -> Tensor:
    """Per-Gaussian bits [N, D] bool from summed votes: the weighted majority of the rendered bits of the pixels
    each Gaussian contributes to; ``fallback`` (I(latent > 0.5)) for Gaussians never rendered and for exact ties."""
    seen = (weight > 0)[:, None]
    decided = votes != 0
    return torch.where(seen & decided, votes > 0, fallback.bool())



def _cluster_codes(bits: Tensor, weight: Tensor, radius: int) -> Tensor:
    """Greedy weighted clustering of distinct bit strings [U, b] (weights [U]): heaviest first, each string not
    yet claimed becomes a centre and claims every unclaimed string within Hamming distance ``radius``. Returns the
    index of each string's centre [U] (a string within reach of several centres goes to the heaviest)."""
    count = bits.shape[0]
    centre = torch.full((count,), -1, dtype=torch.long, device=bits.device)
    order = torch.argsort(weight, descending=True, stable=True)
    for index in order.tolist():
        if centre[index] >= 0:
            continue
        near = ((bits != bits[index]).sum(-1) <= radius) & (centre < 0)
        centre[near] = index
    return centre


def snap_codes(codes: Tensor, weight: Tensor, widths: Sequence[int], radius: int) -> Tensor:
    """Hierarchical code clean-up (ours; the paper has no such step): level by level, coarse to fine, within
    each level-(l-1) group (the whole scene at level 1), each distinct level-l bit string is replaced by the
    heaviest string within Hamming distance ``radius`` (greedy, :func:`_cluster_codes`); a string's weight is the
    summed render weight of the Gaussians holding it. Finer bits are kept and cleaned at the next level, inside
    the (possibly new) parent group. ``codes`` unsigned int64 [N]; returns the cleaned codes, int64 [N].
    ``radius`` 0 returns the codes unchanged."""
    codes = codes.to(torch.int64) & 0xFFFFFFFF
    if radius <= 0 or codes.numel() == 0:
        return codes
    weight = weight.to(torch.float64).reshape(-1).to(codes.device)
    for level, (start, end) in enumerate(level_slices(widths)):
        level_mask = ((1 << (end - start)) - 1) << (CODE_BITS - end)
        parent = code_prefix(codes, start) if start > 0 else torch.zeros_like(codes)
        field_ = (codes & level_mask) >> (CODE_BITS - end)
        key = torch.stack([parent, field_], dim=-1)
        unique, inverse = torch.unique(key, dim=0, return_inverse=True)
        unique_weight = torch.zeros(unique.shape[0], dtype=torch.float64, device=codes.device).index_add_(0, inverse, weight)
        replacement = unique[:, 1].clone()
        for group in torch.unique(unique[:, 0]).tolist():
            members = (unique[:, 0] == group).nonzero().squeeze(-1)
            if members.numel() < 2:
                continue
            member_bits = unpack_codes(unique[members, 1] << (CODE_BITS - (end - start)), end - start)
            centre = _cluster_codes(member_bits, unique_weight[members], radius)
            replacement[members] = unique[members[centre], 1]
        new_field = replacement[inverse]
        codes = (codes & ~level_mask & 0xFFFFFFFF) | (new_field << (CODE_BITS - end))
    return codes



class PrefixTable:
    """The distinct stored prefixes of one level with their Gaussian counts, for :meth:`lookup`."""

    def __init__(self, codes: Tensor, widths: Sequence[int], level: int) -> None:
        self.widths = tuple(widths)
        self.level = level
        prefixes = code_prefix(codes, prefix_bits(widths, level))
        self.prefixes, self.counts = torch.unique(prefixes, return_counts=True)
        self._stored_bits: Optional[Tensor] = None

    def lookup(self, queries: Tensor) -> Tensor:
        """Each query prefix [K] -> the nearest stored prefix, level by level (ours): among the stored prefixes,
        keep those whose level-1 bits are nearest (Hamming) to the query's, then among those the ones whose
        level-2 bits are nearest, and so on; ties: the prefix held by most Gaussians. A query that is stored
        maps to itself."""
        queries = queries.to(torch.int64).reshape(-1)
        out = queries.clone()
        if self.prefixes.numel() == 0:
            return out
        # the common case, a stored query, costs one binary search (the prefixes are sorted by torch.unique)
        on_device = queries.to(self.prefixes.device)
        index = torch.searchsorted(self.prefixes, on_device).clamp(max=self.prefixes.numel() - 1)
        missing = (self.prefixes[index] != on_device).nonzero().reshape(-1).tolist()
        if not missing:
            return out
        total = prefix_bits(self.widths, self.level)
        if self._stored_bits is None:
            self._stored_bits = unpack_codes(self.prefixes << (CODE_BITS - total), total)
        stored_bits = self._stored_bits
        query_bits = unpack_codes(on_device << (CODE_BITS - total), total)
        for k in missing:
            alive = torch.ones(self.prefixes.numel(), dtype=torch.bool, device=self.prefixes.device)
            for start, end in level_slices(self.widths)[: self.level + 1]:
                distance = (stored_bits[:, start:end] != query_bits[k, start:end]).sum(-1)
                distance = torch.where(alive, distance, torch.full_like(distance, CODE_BITS + 1))
                alive = distance == distance.min()
            counts = torch.where(alive, self.counts, torch.full_like(self.counts, -1))
            out[k] = self.prefixes[int(torch.argmax(counts))]
        return out.to(queries.device)


def stored_prefixes(codes: Tensor, widths: Sequence[int], level: int) -> PrefixTable:
    return PrefixTable(codes, widths, level)


def signed_prefix(codes: Tensor, num_prefix_bits: int) -> Tensor:
    """The level label in int32 (half the bytes of :func:`code_prefix`'s int64): the arithmetic shift of the
    int32 code. Equal for two codes exactly when their top ``num_prefix_bits`` bits are equal."""
    return to_int32(codes) >> (CODE_BITS - num_prefix_bits)


def prefix_scores(prefixes: Tensor, queries: Tensor, num_prefix_bits: int) -> Tensor:
    """True for every Gaussian whose level label (:func:`signed_prefix`, [N]) equals one of the queried unsigned
    prefixes (:func:`code_prefix`, [K]): bool [N], the selection itself.

    The whole per-Gaussian cost of a click (``segsplat bench-latency`` times it against SAGA's float path): one
    int32 compare, no float scores written."""
    queries = queries.to(prefixes.device, torch.int64)
    signed = torch.where(queries >= (1 << (num_prefix_bits - 1)), queries - (1 << num_prefix_bits), queries)
    if signed.numel() == 1:
        return prefixes == int(signed.reshape(()))
    return torch.isin(prefixes, signed.to(torch.int32))


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------
@dataclass
class BinaryGaussianModelConfig(SegSplatModelConfig):
    """Binary-Gaussian's 32-bit coarse-to-fine codes on top of splatfacto."""

    _target: Type = field(default_factory=lambda: BinaryGaussianModel)
    level_bits: Tuple[int, ...] = (12, 10, 10)
    """D_l: bits of each granularity level l = 1..L, coarse to fine (paper: 12/10/10, D = sum D_l <= 32)."""
    feature_dim: int = 32
    """D = sum of level-bits (set from level-bits; any value given here is replaced)."""
    num_random_pixels: int = 2000
    """Pixels sampled uniformly per image (paper: 2k)."""
    num_mask_pixels: int = 8000
    """Pixels sampled by mask-balanced sampling per image (paper: 8k), split evenly over num-balanced-masks."""
    num_balanced_masks: int = 16
    """Masks drawn at random per image for mask-balanced sampling."""
    nest_fraction: float = 0.45
    """A larger mask (more pixels) covering at least this fraction of a mask is its ancestor (masks -> levels by
    nesting depth). On the default scene's folder masks the coverages of a smaller mask by a larger one split into
    <= 0.41 (neighbours) and >= 0.49 (parts of an incompletely masked object)."""
    reg_warmup_steps: int = 500
    """lambda_reg ramps linearly from 0 to its value over the first steps of the feature stage (the paper gives
    only the final weight): with the full weight at once, Eq. 8 drives the rendered F (about 0.5 * alpha at
    initialisation) to all-zero before the contrastive terms can separate the masks."""
    lambda_reg: float = 10.0
    """lambda_reg: weight of the binarisation regulariser L_reg (Eq. 8-9; paper 10)."""
    lambda_guiding: float = 1.0
    """lambda_guiding: weight of the virtual-negative guidance sum_l L_VN-l (Eq. 7, 9; paper 1)."""
    lambda_con: float = 1.0
    """lambda_con: weight of the progressive contrastive loss sum_l L_level-l (Eq. 5-6, 9; paper 1)."""
    opacity_finetune: bool = True
    """Let the opacities receive gradients in the feature stage (Sec. 3.5)."""
    opacity_lr_factor: float = 0.02
    """Opacity learning rate in the feature stage as a fraction of its initial one (paper: 2%, 0.05 -> 0.001)."""
    finalize_codes: bool = True
    """At the last training step, store each Gaussian's code as one int32 and drop the float latent."""
    vote_codes: bool = True
    """At finalisation, set each Gaussian's bits by a render-weighted vote of the binarised rendered bits of the
    training-view pixels it contributes to (so stored codes agree with what is rendered); off: I(latent > 0.5)."""

    snap_radius: int = 2
    """At finalisation, hierarchical code clean-up (:func:`snap_codes`, ours): within each parent group, a level's
    bit strings within this Hamming distance of a heavier one (by render weight) take its bits; 0: off."""
    snap_query: bool = True
    """At a click, replace the clicked pixel's rendered prefix by the nearest prefix some Gaussian stores
    (:class:`PrefixTable`, ours), level by level; off: the rendered prefix as is (Sec. 3.6)."""
    virtual_negative_per: str = "pixel"
    """What Eq. 7's term is averaged over (ours): "pixel" (every sampled pixel covered by a mask, so each pixel
    weighs as in the other terms of Eq. 9) or "group" (only the positive-only pixels; see
    :func:`virtual_negative_loss` and docs/binary-gaussian.md)."""
    pair_normalisation: str = "anchor"
    """Scaling of each level's Eq. 6 sum (ours): "pairs" (mean over constrained pairs) or "anchor" (per pixel,
    mean over its positives + mean over its negatives; see :func:`progressive_contrastive_loss`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.level_bits = tuple(int(b) for b in self.level_bits)
        if not self.level_bits or any(b <= 0 for b in self.level_bits) or sum(self.level_bits) > CODE_BITS:
            raise ValueError(f"level-bits {self.level_bits}: need positive widths summing to at most {CODE_BITS}")
        self.feature_dim = sum(self.level_bits)


class BinaryGaussianModel(SegSplatModel):
    config: BinaryGaussianModelConfig
    feature_key = "binary_latent"

    # ---- construction -----------------------------------------------------------------------------
    def populate_method_modules(self) -> None:
        num_levels = len(self.config.level_bits)
        self.register_buffer("binary_codes", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("codes_finalized", torch.tensor(False))
        self.register_buffer("level_scale_sum", torch.zeros(num_levels))
        self.register_buffer("level_scale_count", torch.zeros(num_levels))
        self.register_buffer("level_scale_hist", torch.zeros(num_levels, SCALE_BINS))
        self._cache: Dict[Any, Tensor] = {}
        self._level_bins: List[int] = []
        self._level_bins_key: Optional[Tuple[float, ...]] = None
        self._opacity_base_lr: Optional[List[float]] = None

    def initial_features(self, num_points: int) -> Tensor:
        # near the 0.5 threshold: random initial bits that the first few hundred steps can still flip
        return 0.5 + 0.1 * (torch.rand(num_points, self.config.feature_dim) - 0.5)

    @property
    def widths(self) -> Tuple[int, ...]:
        return self.config.level_bits

    @property
    def num_levels(self) -> int:
        return len(self.config.level_bits)

    # ---- codes --------------------------------------------------------------------------------------
    @property
    def latent(self) -> Tensor:
        return self.gauss_params[self.feature_key]

    def _codes_key(self) -> Tuple:
        """Changes whenever the codes may have (latent updated, codes stored, Gaussians resized)."""
        if bool(self.codes_finalized):
            return ("codes", self.binary_codes._version, self.binary_codes.data_ptr(), self.binary_codes.shape[0])
        return ("latent", self.latent._version, self.latent.data_ptr(), self.num_points)

    def _memo(self, key, compute) -> Tensor:
        state = self._codes_key()
        if self._cache.get("__state") != state:
            self._cache = {"__state": state}
        if key not in self._cache:
            with torch.no_grad():
                self._cache[key] = compute()
        return self._cache[key]

    def gaussian_codes(self) -> Tensor:
        """Unsigned 32-bit code of every Gaussian, int64 [N]: the stored int32 once finalised, else I(latent > 0.5)."""
        if bool(self.codes_finalized):
            return self._memo("codes", lambda: self.binary_codes.to(torch.int64) & 0xFFFFFFFF)
        return self._memo("codes", lambda: pack_codes(self.latent.detach() > 0.5))

    def gaussian_prefixes(self, level: int) -> Tensor:
        """Class_i^l = Bin2Dec(f̄_i^{1:l}) for every Gaussian, int64 [N] (0-based level)."""
        return self._memo(("prefix", level), lambda: code_prefix(self.gaussian_codes(), prefix_bits(self.widths, level)))

    @torch.no_grad()
    def vote_bits(self, cameras: Optional[Cameras], with_weight: bool = False):
        """Each Gaussian's bits [N, D] bool: the render-weighted majority of the binarised rendered bits (Eq. 3)
        of the pixels it contributes to, over ``cameras`` (the training views); I(latent > 0.5) for Gaussians
        that no view renders (and for exact ties). Without cameras: I(latent > 0.5)."""
        latent = self.latent.detach().clamp(0.0, 1.0)
        fallback = latent > 0.5
        if cameras is None or len(cameras) == 0 or latent.shape[0] == 0:
            return (fallback, latent.new_ones(latent.shape[0])) if with_weight else fallback
        votes = torch.zeros_like(latent)
        weight = latent.new_zeros(latent.shape[0])
        for index in range(len(cameras)):
            camera = cameras[index : index + 1].to(self.device)
            view_votes, view_weight = render_weighted_votes(lambda colors: self.render_features(colors, camera)[0], latent)
            votes += view_votes
            weight += view_weight
        bits = voted_bits(votes, weight, fallback)
        return (bits, weight) if with_weight else bits

    @torch.no_grad()
    def finalize_codes(self, optimizers=None, cameras: Optional[Cameras] = None) -> None:
        """Store one int32 code per Gaussian (``vote_bits`` over ``cameras``, else I(latent > 0.5)); drop the float
        latent and its optimizer state."""
        if bool(self.codes_finalized) and self.latent.shape[1] == 0:
            return
        bits, weight = self.vote_bits(cameras if self.config.vote_codes else None, with_weight=True)
        # without views the weight of a code is its number of Gaussians
        codes = snap_codes(pack_codes(bits), weight, self.widths, self.config.snap_radius)
        self._buffers["binary_codes"] = to_int32(codes).to(self.latent.device)
        self.codes_finalized.fill_(True)
        self.latent.data = self.latent.data.new_zeros((self.num_points, 0))
        self.latent.grad = None
        if optimizers is not None:
            optimizer = optimizers.optimizers.get(self.feature_key) if hasattr(optimizers, "optimizers") else optimizers.get(self.feature_key)
            if optimizer is not None:
                optimizer.state.clear()
        self._cache = {}

    def _restore_latent(self) -> None:
        """Training again after finalisation (resume): the latent restarts from the stored bits."""
        if self.latent.shape[1] == 0 and bool(self.codes_finalized):
            bits = unpack_codes(self.binary_codes, self.config.feature_dim).float()
            self.latent.data = bits.to(self.latent.device)
            self.codes_finalized.fill_(False)
            self._cache = {}

    def load_state_dict(self, dict, **kwargs):  # type: ignore[override]
        latent_key = f"gauss_params.{self.feature_key}"
        if latent_key in dict:
            self.latent.data = self.latent.data.new_zeros(dict[latent_key].shape)
        if "binary_codes" in dict:
            self._buffers["binary_codes"] = torch.zeros_like(dict["binary_codes"]).to(self.binary_codes.device)
        super().load_state_dict(dict, **kwargs)
        self._cache = {}

    # ---- stage two: opacity fine-tuning and finalisation ---------------------------------------------
    def _geometry(self, crop_ids: Optional[Tensor], detach: bool) -> Dict[str, Tensor]:
        geometry = super()._geometry(crop_ids, detach)
        if detach and self.config.opacity_finetune and self.training and self.in_feature_stage:
            opacities = self.gauss_params["opacities"]
            if crop_ids is not None:
                opacities = opacities[crop_ids]
            geometry["opacities"] = torch.sigmoid(opacities).squeeze(-1)  # the only geometry with a gradient
        return geometry

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        callbacks.append(
            TrainingCallback(
                [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                self._set_opacity_lr,
                args=[training_callback_attributes.optimizers],
            )
        )
        callbacks.append(
            TrainingCallback(
                [TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                self._finalize_at_last_step,
                args=[training_callback_attributes],
            )
        )
        return callbacks

    def _set_opacity_lr(self, optimizers, step: int) -> None:
        optimizer = optimizers.optimizers.get("opacities")
        if optimizer is None:
            return
        if self._opacity_base_lr is None:
            self._opacity_base_lr = [group["lr"] for group in optimizer.param_groups]
        factor = self.config.opacity_lr_factor if self.in_feature_stage else 1.0
        for group, base in zip(optimizer.param_groups, self._opacity_base_lr):
            group["lr"] = base * factor

    def _finalize_at_last_step(self, attributes: TrainingCallbackAttributes, step: int) -> None:
        trainer = attributes.trainer
        if trainer is None or not self.config.finalize_codes or not self.in_feature_stage:
            return
        last = trainer._start_step + trainer.config.max_num_iterations - 1
        if step >= last:
            cameras = None
            pipeline = attributes.pipeline
            datamanager = getattr(pipeline, "datamanager", None) if pipeline is not None else None
            dataset = getattr(datamanager, "train_dataset", None)
            if dataset is not None:
                cameras = dataset.cameras
            self.finalize_codes(attributes.optimizers, cameras)

    # ---- rendering ----------------------------------------------------------------------------------
    def feature_colors(self) -> Tensor:
        if self.training and self.in_feature_stage:
            self._restore_latent()
            # Eq. 2-3 in training: the continuous latent f_i in [0, 1] is rendered and the *rendered* F_p is
            # binarised with the STE (Eq. 3, in the losses); Eq. 8 pushes F_p to 0/1. The latent is projected
            # back onto [0, 1] before each render (projected gradient descent), so it stays a soft bit.
            with torch.no_grad():
                self.latent.clamp_(0.0, 1.0)
            return self.latent
        return self._memo("bits", lambda: unpack_codes(self.gaussian_codes(), self.config.feature_dim).float())

    def segmentation_outputs(self, camera: Cameras, crop_ids: Optional[Tensor]) -> Dict[str, Tensor]:
        features, alpha = self.render_features(self.feature_colors(), camera, crop_ids)
        outputs = {"features": features, "feature_alpha": alpha}
        if not self.training:
            with torch.no_grad():
                codes = pack_codes(features > 0.5)
                covered = alpha > 0.5
                background = torch.ones(3, device=features.device)
                for level in range(self.num_levels):
                    colors = prefix_colors(code_prefix(codes, prefix_bits(self.widths, level)), level)
                    outputs[f"panoptic_level{level + 1}"] = torch.where(covered, colors, background)
        return outputs

    # ---- training -----------------------------------------------------------------------------------
    def feature_loss_dict(self, outputs: Dict[str, Tensor], batch: Dict[str, Any]) -> Dict[str, Tensor]:
        features = outputs["features"]  # [H, W, D] continuous rendered latent F
        height, width = features.shape[:2]
        masks = batch["masks"].to(self.device).bool()
        scales = batch["mask_scales"].to(self.device).float()
        if masks.shape[1:] != (height, width):
            raise ValueError(f"masks are {tuple(masks.shape[1:])} but the feature map is {(height, width)}")
        flat = features.reshape(-1, features.shape[-1])
        if masks.shape[0] == 0:
            zero = flat.sum() * 0.0
            return {"binarization_loss": zero, "virtual_negative_loss": zero, "progressive_contrastive_loss": zero}
        levels = mask_levels(masks, scales, self.num_levels, self.config.nest_fraction)
        with torch.no_grad():
            self.level_scale_sum.index_add_(0, levels, scales.to(self.level_scale_sum))
            self.level_scale_count.index_add_(0, levels, torch.ones_like(scales).to(self.level_scale_count))
            bins = (scales.clamp(0.0, 1.0) * SCALE_BINS).long().clamp(max=SCALE_BINS - 1)
            self.level_scale_hist.index_put_((levels, bins), torch.ones_like(scales).to(self.level_scale_hist), accumulate=True)
        pixel_ids = mask_balanced_pixels(
            masks, self.config.num_random_pixels, self.config.num_mask_pixels, self.config.num_balanced_masks
        )
        membership = masks.reshape(masks.shape[0], -1)[:, pixel_ids].T  # [P, M]
        groups = pixel_level_groups(membership, scales, levels, self.num_levels)
        sampled = flat[pixel_ids]
        return {
            "binarization_loss": self.reg_weight() * binarization_loss(sampled),
            "virtual_negative_loss": self.config.lambda_guiding
            * virtual_negative_loss(sampled, groups, self.widths, self.config.virtual_negative_per),
            "progressive_contrastive_loss": self.config.lambda_con
            * progressive_contrastive_loss(sampled, groups, self.widths, self.config.pair_normalisation),
        }

    def reg_weight(self) -> float:
        """lambda_reg, ramped linearly from 0 over ``reg_warmup_steps`` feature steps."""
        warmup = self.config.reg_warmup_steps
        if warmup <= 0:
            return self.config.lambda_reg
        done = max(0, self.step - self.feature_start_step)
        return self.config.lambda_reg * min(1.0, done / warmup)

    # ---- inference (the segmenter's interface) -------------------------------------------------------
    def level_for_scale(self, scale: float) -> int:
        """0-based level for a quantile-normalised scale in [0, 1] (see the module docstring)."""
        bin_index = min(max(int(float(scale) * SCALE_BINS), 0), SCALE_BINS - 1)
        if float(self.level_scale_count.sum()) > 0:
            key = tuple(torch.cat([self.level_scale_hist.flatten(), self.level_scale_sum, self.level_scale_count]).tolist())
            if self._level_bins_key != key:
                self._level_bins, self._level_bins_key = self.level_of_bins().tolist(), key
            return self._level_bins[bin_index]
        band = int(math.floor((1.0 - float(scale)) * self.num_levels))
        return min(max(band, 0), self.num_levels - 1)

    def scale_for_level(self, level: int) -> Optional[float]:
        """A scale that selects 0-based ``level`` (the middle of its range; the viewer's level selector), or None
        when the level has no range (it received under ``MIN_LEVEL_SHARE`` of the training masks)."""
        if not 0 <= level < self.num_levels:
            raise ValueError(f"level {level + 1} does not exist: this model has levels 1..{self.num_levels}")
        bins = [b for b in range(SCALE_BINS) if self.level_for_scale((b + 0.5) / SCALE_BINS) == level]
        if not bins:
            return None
        middle = bins[len(bins) // 2]
        return (middle + 0.5) / SCALE_BINS

    @torch.no_grad()
    def level_of_bins(self) -> Tensor:
        """The level of each of the SCALE_BINS scale bins: long [SCALE_BINS], non-increasing (coarser upwards).

        The monotone partition of the scale axis that maximises the summed per-level *normalised* histogram
        (the balanced accuracy of "a mask's scale -> its level" on the training masks), by dynamic programming.
        Levels holding less than ``MIN_LEVEL_SHARE`` of the masks get no range. Ties (bins no mask fell in)
        go to the level whose mean mask scale is nearest to the bin centre.
        """
        hist = self.level_scale_hist.double().cpu()
        counts = hist.sum(-1)
        eligible = counts >= max(1.0, MIN_LEVEL_SHARE * float(counts.sum()))
        if not bool(eligible.any()):  # statistics from before the histograms existed: means only
            counts = self.level_scale_count.double().cpu()
            eligible = counts > 0
        density = hist / counts.clamp_min(1.0).unsqueeze(-1)
        means = self.level_scale_sum.double().cpu() / self.level_scale_count.double().cpu().clamp_min(1.0)
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

    @torch.no_grad()
    def prompt_query(self, feature_map: Tensor, pixels: Tensor, scale: float) -> Tensor:
        """Class_p^l of the clicked pixels [K, 2] (x, y): the rendered code binarised (Eq. 3), its level prefix."""
        level = self.level_for_scale(scale)
        rendered = feature_map[pixels[:, 1], pixels[:, 0]]
        query = code_prefix(pack_codes(rendered > 0.5), prefix_bits(self.widths, level))
        if self.config.snap_query:
            query = self._memo(("stored", level), lambda: stored_prefixes(self.gaussian_codes(), self.widths, level)).lookup(query)
        return query

    @torch.no_grad()
    def gaussian_scores(self, queries: Tensor, scale: float, exact_near: Optional[float] = None) -> Tensor:
        """True for Gaussians whose level prefix equals a queried one: bool [N], the selection itself (the
        segmenter applies no threshold to boolean scores)."""
        bits = prefix_bits(self.widths, self.level_for_scale(scale))
        prefixes = self._memo(("signed prefix", bits), lambda: signed_prefix(self.gaussian_codes(), bits))
        return prefix_scores(prefixes, queries, bits)

    @torch.no_grad()
    def labels_at_scale(self, scale: float) -> Tensor:
        """Every Gaussian's label at the level of ``scale``: long [N], 0..K-1 by decreasing segment size."""
        prefixes = self.gaussian_prefixes(self.level_for_scale(scale))
        _, inverse, counts = torch.unique(prefixes, return_inverse=True, return_counts=True)
        order = torch.argsort(counts, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        return rank[inverse]

    @torch.no_grad()
    def decomposition_features(self, scale: float) -> Tensor:
        """The prefix bits at the level of ``scale`` as floats [N, B_l] (for feature-based tools)."""
        level = self.level_for_scale(scale)
        bits = unpack_codes(self.gaussian_codes(), prefix_bits(self.widths, level))
        return bits.float()


def prefix_colors(prefixes: Tensor, level: int = 0) -> Tensor:
    """A deterministic colour [..., 3] in [0.15, 0.95] per integer label (hashing, so no palette size limit)."""
    h = (prefixes.to(torch.int64) * 2654435761 + (level + 1) * 40503) & 0xFFFFFFFF
    h = (h ^ (h >> 15)) * 2246822519 & 0xFFFFFFFF
    h = h ^ (h >> 13)
    rgb = torch.stack([(h >> 16) & 255, (h >> 8) & 255, h & 255], dim=-1).float() / 255.0
    return 0.15 + 0.8 * rgb
