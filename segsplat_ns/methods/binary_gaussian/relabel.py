"""Mask-consistent relabelling of stored codes (ours; the paper has no such step). Pure functions, no nerfstudio
imports; the model renders, these functions decide.

Why: training can freeze part of a segment on a sibling's code. On the five-object bench scene (seed 0) half of
a table's pedestal renders with the table foot's level-2 code in every view that sees its back, even in views
whose masks separate pedestal and foot cleanly: once Eq. 8 has pushed the latent to 0/1, the contrastive gradient
no longer flips the bits (docs/binary-gaussian.md, "Mask-consistent relabelling"). The training masks still say
which pixels belong together, so after training, level by level (coarse to fine, levels 2..L), we ask them again:

1. per training view, the rendered level-l codes of each level-l mask's pixels (a pixel's mask is the smallest
   mask of level <= l containing it, :func:`.levels.smallest_masks`, as in training) give an overlap table
   ``overlap[m, k]`` (pixels of mask m rendering code k); a one-to-one assignment (Hungarian, maximum overlap)
   gives each mask at most one code, accepted when the code covers at least ``ACCEPT`` of the mask
   (:func:`match_masks`). One-to-one is the point: in a view where pedestal and foot are two masks, the foot's
   code can label only one of them, and the pedestal mask takes the pedestal's code if enough of it is there;
2. evidence between codes over all views (:class:`CodeEvidence`): *together* when two codes each cover at least
   ``SHARE`` of one mask, *apart* when they label two different masks of one view (both weighted by the smaller
   pixel count);
3. each Gaussian takes the code of the masks it renders into, weighted by its blending weights (a
   vector-Jacobian product of the render, as the vote of :mod:`.vote`), among the codes of its own parent group
   (:class:`VoteTally`). A mask that merges codes other views keep apart (a code with ``SHARE`` of it, or most of
   whose pixels in the view it holds, labelling no mask of this view, and more often apart from the mask's code
   than together with it) gives no votes (:func:`pixel_labels`): SAM often merges small parts into their
   neighbour, and such a mask must not pull a part into it. Repeated ``rounds`` times (a fix in one view changes
   the overlaps of the next);
4. a mask left without a code because a larger mask of its view took the code that covers it (the head of a
   snowman whose head and body trained onto one code: the body mask takes it) is evidence for a code of its own
   (:func:`taken_masks`): each Gaussian of that code weighs how much it renders into such masks against how much
   into the masks that keep the code, over all views, and those with more of the first move to a new sibling code
   (:func:`split_codes`, at least ``MIN_SPLIT_VIEWS`` views with such a mask); after a split the rounds of step
   3 run again, so the new code takes the rest of the part;
5. sibling codes whose *together* evidence exceeds ``MERGE_RATIO`` times their *apart* evidence are merged
   (:func:`merge_siblings`; cluster sums, so two fragments of the head cannot drag the body along): a part that
   trained onto two codes, each present in the same masks and never in two masks of one view, becomes one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import torch
from torch import Tensor

from segsplat_ns.methods.binary_gaussian.codes import with_prefix

__all__ = [
    "ACCEPT",
    "CONTAINED",
    "CONTAINED_FLOOR",
    "MERGE_RATIO",
    "MIN_SPLIT_VIEWS",
    "TAKEN_SHARE",
    "SHARE",
    "CodeEvidence",
    "MaskMatch",
    "match_masks",
    "merge_siblings",
    "pixel_labels",
    "VoteTally",
    "render_chunks",
    "split_codes",
    "taken_masks",
]

ACCEPT = 0.25
"""A mask takes a code when the code covers at least this fraction of the mask's rendered pixels."""
SHARE = 0.1
"""A code counts as present in a mask when it covers at least this fraction of the mask."""
CONTAINED = 0.5
"""A code is also part of a mask's merge when the mask holds at least this fraction of the code's pixels in the view..."""
CONTAINED_FLOOR = 0.02
"""...and the code covers at least this fraction of the mask (a few stray pixels never make a merge)."""
TAKEN_SHARE = 0.5
"""An unlabelled mask is "taken" when one code covers at least this fraction of it and labels another mask."""
MIN_SPLIT_VIEWS = 2
"""A code splits only when at least this many views have a mask taken from it."""
MERGE_RATIO = 3.0
"""Siblings merge when they are together in masks at least this many times as often as apart (pixel-weighted)."""


@dataclass
class MaskMatch:
    """One view's masks against one level's codes: ``overlap`` [M, K] pixel counts, ``label`` [M] (the code of
    each mask, -1 none), ``size`` [M] (rendered pixels per mask), ``home`` [K] (the mask each code labels, -1)."""

    overlap: Tensor
    label: Tensor
    size: Tensor
    home: Tensor


def match_masks(groups: Tensor, pixel_codes: Tensor, num_masks: int, num_codes: int, accept: float = ACCEPT) -> MaskMatch:
    """Overlap of masks and codes and their one-to-one assignment (step 1 of the module docstring).

    ``groups`` [P] mask of each pixel (-1 none), ``pixel_codes`` [P] index of each pixel's rendered code (-1: not
    rendered, or a code no Gaussian holds). The assignment maximises the summed overlap (Hungarian); a pair is kept
    when its overlap is positive and at least ``accept`` of the mask's pixels that render a known code."""
    valid = (groups >= 0) & (pixel_codes >= 0)
    overlap = torch.zeros(num_masks, num_codes, dtype=torch.float64)
    if bool(valid.any()):
        overlap.index_put_((groups[valid].cpu(), pixel_codes[valid].cpu()), torch.ones(int(valid.sum()), dtype=torch.float64),
                           accumulate=True)
    size = overlap.sum(-1)
    label = torch.full((num_masks,), -1, dtype=torch.long)
    home = torch.full((num_codes,), -1, dtype=torch.long)
    if num_masks and num_codes:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(overlap.numpy(), maximize=True)
        for mask, code in zip(rows.tolist(), cols.tolist()):
            if overlap[mask, code] > 0 and overlap[mask, code] >= accept * size[mask]:
                label[mask] = code
                home[code] = mask
    return MaskMatch(overlap, label, size, home)


def _present(match: MaskMatch, share: float) -> Tensor:
    """[M, K] bool: code k covers at least ``share`` of mask m."""
    return (match.overlap > 0) & (match.overlap >= share * match.size.clamp_min(1.0)[:, None])


@dataclass
class CodeEvidence:
    """Pixel-weighted evidence between the K codes of one level, summed over views (step 2): ``together[a, b]``
    (both present in one mask), ``apart[a, b]`` (labelling two masks of one view); both symmetric."""

    num_codes: int
    together: Tensor = field(init=False)
    apart: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.together = torch.zeros(self.num_codes, self.num_codes, dtype=torch.float64)
        self.apart = torch.zeros(self.num_codes, self.num_codes, dtype=torch.float64)

    def add(self, match: MaskMatch, share: float = SHARE) -> None:
        present = _present(match, share)
        for mask in torch.nonzero(present.any(-1)).flatten().tolist():
            codes = torch.nonzero(present[mask]).flatten()
            if codes.numel() > 1:
                counts = match.overlap[mask, codes]
                pair = torch.minimum(counts[:, None], counts[None, :])
                pair.fill_diagonal_(0.0)
                self.together[codes[:, None], codes[None, :]] += pair
        masks = torch.nonzero(match.label >= 0).flatten()
        if masks.numel() > 1:
            codes = match.label[masks]
            counts = match.overlap[masks, codes]
            pair = torch.minimum(counts[:, None], counts[None, :])
            pair.fill_diagonal_(0.0)
            self.apart[codes[:, None], codes[None, :]] += pair

    def kept_apart(self) -> Tensor:
        """[K, K] bool: more apart than together."""
        return self.apart > self.together


def _merged_in(match: MaskMatch, share: float, contained: float, floor: float) -> Tensor:
    """[M, K] bool: code k is part of mask m's merge: it covers ``share`` of the mask, or the mask holds at least
    ``contained`` of the code's pixels in this view while the code covers at least ``floor`` of the mask (a small
    part inside a large neighbour's mask: a pedestal is 7-9 % of the table top's mask that swallows it)."""
    code_pixels = match.overlap.sum(0, keepdim=True).clamp_min(1.0)
    size = match.size.clamp_min(1.0)[:, None]
    held = (match.overlap > 0) & (match.overlap >= contained * code_pixels) & (match.overlap >= floor * size)
    return _present(match, share) | held


def pixel_labels(groups: Tensor, match: MaskMatch, kept_apart: Tensor, share: float = SHARE,
                 contained: float = CONTAINED, floor: float = CONTAINED_FLOOR) -> Tensor:
    """The code each pixel votes for (step 3): its mask's label, -1 for pixels of unlabelled masks and of masks
    that merge codes other views keep apart (a code in the merge, :func:`_merged_in`, that labels no mask of this
    view and is ``kept_apart`` from the mask's label). long [P]."""
    label = match.label.clone()
    present = _merged_in(match, share, contained, floor)
    unhoused = match.home < 0
    for mask in torch.nonzero(label >= 0).flatten().tolist():
        code = int(label[mask])
        merged = present[mask] & unhoused & kept_apart[code]
        merged[code] = False
        if bool(merged.any()):
            label[mask] = -1
    label = label.to(groups.device)
    return torch.where(groups >= 0, label[groups.clamp_min(0)], torch.full_like(groups, -1))


class VoteTally:
    """Step 3's decision, one chunk of codes at a time (memory [N, chunk], not [N, K]): each Gaussian's best-voted
    prefix among those of its own parent group.

    ``codes`` unsigned int64 [N]; ``prefixes`` [K] the distinct level prefixes (sorted), ``inverse`` [N] each
    Gaussian's index into them; :meth:`add` takes the summed blending weights [N, end - start] that vote for
    prefixes ``start..end``."""

    def __init__(self, codes: Tensor, prefixes: Tensor, inverse: Tensor, prefix_bits: int, parent_bits: int) -> None:
        self.codes, self.prefixes, self.inverse, self.prefix_bits = codes, prefixes, inverse, prefix_bits
        self.parent_of = prefixes >> (prefix_bits - parent_bits)
        self.own_parent = self.parent_of[inverse]
        self.best_vote = torch.zeros(codes.numel(), dtype=torch.float64)
        self.best = inverse.clone()

    def add(self, start: int, votes: Tensor) -> None:
        end = start + votes.shape[1]
        allowed = self.parent_of[start:end][None, :] == self.own_parent[:, None]
        votes = torch.where(allowed, votes.to(torch.float64), torch.zeros((), dtype=torch.float64))
        value, index = votes.max(-1)
        better = value > self.best_vote  # strict: the earlier (smaller) prefix keeps a tie
        self.best_vote[better] = value[better]
        self.best[better] = index[better] + start

    def result(self) -> Tuple[Tensor, int]:
        """(codes with each voted Gaussian's level prefix replaced, finer bits kept; number changed). Gaussians with
        no vote for a prefix of their own parent keep theirs."""
        change = (self.best_vote > 0) & (self.best != self.inverse)
        new = torch.where(change, with_prefix(self.codes, self.prefixes[self.best], self.prefix_bits), self.codes)
        return new, int(change.sum())


def taken_masks(match: MaskMatch, share: float = TAKEN_SHARE) -> Tensor:
    """Step 4: the code each mask is taken by, long [M] (-1: none): an unlabelled mask whose largest code covers at
    least ``share`` of it while labelling another mask of the view."""
    taken = torch.full_like(match.label, -1)
    if match.overlap.numel() == 0:
        return taken
    count, code = match.overlap.max(-1)
    home = match.home[code]
    hit = (match.label < 0) & (count > 0) & (count >= share * match.size.clamp_min(1.0)) & (home >= 0)
    taken[hit] = code[hit]
    return taken


def split_codes(codes: Tensor, prefixes: Tensor, inverse: Tensor, prefix_bits: int, parent_bits: int, split_weight: Tensor,
                stay_weight: Tensor, taken_views: Tensor, min_views: int = MIN_SPLIT_VIEWS) -> Tuple[Tensor, int]:
    """Step 4's decision: every Gaussian whose ``split_weight`` (its blending weight into masks taken from its code,
    summed over views) exceeds its ``stay_weight`` (into the masks its code labels) moves to a new level prefix,
    one per code, a sibling of it (same parent) as far in Hamming distance from the others as a search finds, when
    ``taken_views`` [K] (views with a mask taken from the code) reaches ``min_views``. Finer bits are kept.
    Returns (codes, number of codes split)."""
    width = prefix_bits - parent_bits
    moving = (split_weight > stay_weight) & (split_weight > 0) & (taken_views[inverse] >= min_views)
    if not bool(moving.any()):
        return codes, 0
    parent_of = prefixes >> width
    used = {int(p) for p in prefixes.tolist()}
    new_codes = codes.clone()
    splits = 0
    for k in torch.unique(inverse[moving]).tolist():
        members = moving & (inverse == k)
        if int(members.sum()) == int((inverse == k).sum()):
            continue  # the whole code would move: nothing to split
        parent = int(parent_of[k])
        siblings = [int(p) & ((1 << width) - 1) for p in used if (int(p) >> width) == parent]
        field_ = _far_field(siblings, width)
        if field_ is None:
            continue
        prefix = (parent << width) | field_
        used.add(prefix)
        new_codes[members] = with_prefix(codes[members], torch.tensor(prefix), prefix_bits)
        splits += 1
    return new_codes, splits


def _far_field(siblings: List[int], width: int, tries: int = 256) -> "int | None":
    """A ``width``-bit field no sibling uses, with the largest minimum Hamming distance to the siblings among the
    complements of the siblings and ``tries`` fixed pseudo-random fields (deterministic)."""
    mask = (1 << width) - 1
    taken = set(siblings)
    generator = torch.Generator().manual_seed(width * 7919 + len(siblings))
    candidates = [~s & mask for s in siblings]
    candidates += torch.randint(0, 1 << width, (tries,), generator=generator).tolist()
    best, best_distance = None, -1
    for field_ in candidates:
        if field_ in taken:
            continue
        distance = min((bin(field_ ^ s).count("1") for s in siblings), default=width)
        if distance > best_distance:
            best, best_distance = field_, distance
    return best


def merge_siblings(prefixes: Tensor, counts: Tensor, prefix_bits: int, parent_bits: int, evidence: CodeEvidence,
                   ratio: float = MERGE_RATIO) -> Tensor:
    """Step 4: the prefix each distinct prefix becomes [K] (itself if not merged). Greedy, largest *together*
    first: two clusters of the same parent merge when their summed together evidence exceeds ``ratio`` times
    their summed apart evidence; the cluster with more Gaussians gives its prefix."""
    k = prefixes.numel()
    parent_of = prefixes >> (prefix_bits - parent_bits)
    together, apart = evidence.together.clone(), evidence.apart.clone()
    alive = torch.ones(k, dtype=torch.bool)
    size = counts.to(torch.float64).clone()
    root = torch.arange(k)
    same = parent_of[:, None] == parent_of[None, :]
    eye = torch.eye(k, dtype=torch.bool)
    while True:
        ok = alive[:, None] & alive[None, :] & same & ~eye & (together > 0) & (together > ratio * apart)
        if not bool(ok.any()):
            break
        a, b = divmod(int(torch.where(ok, together, torch.full_like(together, -1.0)).argmax()), k)
        if size[a] < size[b] or (size[a] == size[b] and b < a):
            a, b = b, a
        root[root == b] = a
        alive[b] = False
        size[a] += size[b]
        for table in (together, apart):
            table[a, :] += table[b, :]
            table[:, a] += table[:, b]
            table[a, a] = 0.0
    return prefixes[root]


def render_chunks(num_codes: int, chunk: int = 32) -> List[Tuple[int, int]]:
    """Channel ranges for rendering one-hot votes over ``num_codes`` codes ``chunk`` channels at a time."""
    return [(start, min(start + chunk, num_codes)) for start in range(0, num_codes, chunk)]
