"""From a trained latent to stored bits, and the code clean-up (pure functions, no nerfstudio imports).

CHOICE (the paper stores f̄_i without saying how a continuous latent becomes bits): each bit is a render-weighted
vote over the training views, the majority, weighted by the blending weight alpha_i T_i, of the binarised rendered
bits (Eq. 3) of the pixels the Gaussian contributes to (:func:`render_weighted_votes`, :func:`voted_bits`), so
Class_i agrees with the Class_p it renders; Gaussians no training view renders (and exact ties) keep
I(latent > 0.5). Then a hierarchical clean-up (:func:`snap_codes`, ours) merges level-l bit strings within a small
Hamming distance of a heavier one in the same parent group, and (:func:`absorb_small_segments`, ours) gives a
sub-segment held by very few of its parent's Gaussians the nearest code of a large one.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch
from torch import Tensor

from segsplat_ns.methods.binary_gaussian.codes import CODE_BITS, code_prefix, level_slices, unpack_codes

__all__ = ["absorb_small_segments", "render_weighted_votes", "snap_codes", "voted_bits"]

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


def absorb_small_segments(codes: Tensor, widths: Sequence[int], min_fraction: float) -> Tensor:
    """Small-segment clean-up (ours; the paper has no such step): at every level below the first, coarse to fine,
    inside each level-(l-1) group, a level-l bit string held by fewer than ``min_fraction`` of the group's Gaussians
    takes the bits of the nearest (Hamming; ties: more Gaussians, then the smaller string) string held by at least
    that many. A group with no such string is left as it is; finer bits are kept and cleaned at the next level.
    Level 1 is left alone: its group is the whole scene, where a small string is a floater or background, not a
    piece of an object. ``codes`` unsigned int64 [N]; returns int64 [N]; ``min_fraction`` 0 returns them unchanged.

    Why: a thin line of Gaussians inside a part can settle on a code of its own (measured: 10 of a mushroom stem's
    343 Gaussians, 3 bits from the stem's code); a click that lands on it selects those 10 (docs/binary-gaussian.md).
    """
    codes = codes.to(torch.int64) & 0xFFFFFFFF
    if min_fraction <= 0 or codes.numel() == 0:
        return codes
    for start, end in level_slices(widths)[1:]:
        width = end - start
        level_mask = ((1 << width) - 1) << (CODE_BITS - end)
        parent = code_prefix(codes, start)
        field_ = (codes & level_mask) >> (CODE_BITS - end)
        key = torch.stack([parent, field_], dim=-1)
        unique, inverse, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
        replacement = unique[:, 1].clone()
        for group in torch.unique(unique[:, 0]).tolist():
            members = (unique[:, 0] == group).nonzero().squeeze(-1)
            member_counts = counts[members]
            large = member_counts >= min_fraction * float(member_counts.sum())
            if bool(large.all()) or not bool(large.any()):
                continue
            bits = unpack_codes(unique[members, 1] << (CODE_BITS - width), width)
            distance = (bits[:, None, :] != bits[None, large, :]).sum(-1)  # [members, large]
            # nearest large string; ties: more Gaussians (unique() sorted the strings ascending, argmin keeps the first)
            rank = distance * (counts.max() + 1) - member_counts[large][None, :]
            target = members[large][rank.argmin(dim=1)]
            small = members[~large]
            replacement[small] = unique[target[~large], 1]
        codes = (codes & ~level_mask & 0xFFFFFFFF) | (replacement[inverse] << (CODE_BITS - end))
    return codes
