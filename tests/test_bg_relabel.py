"""Binary-Gaussian's mask-consistent relabelling (segsplat_ns/methods/binary_gaussian/relabel.py), by hand."""

from __future__ import annotations

import torch

from segsplat_ns.methods.binary_gaussian.levels import smallest_masks
from segsplat_ns.methods.binary_gaussian.relabel import (
    CodeEvidence,
    VoteTally,
    _far_field,
    match_masks,
    merge_siblings,
    pixel_labels,
    render_chunks,
    split_codes,
    taken_masks,
)


def _t(values):
    return torch.tensor(values, dtype=torch.long)


def test_smallest_masks_takes_the_smallest_mask_of_the_level_or_coarser():
    # 1 x 5 image: mask 0 (object, level 0) covers all; mask 1 (part, level 1) pixels 0-1; mask 2 (level 2) pixel 0
    masks = torch.tensor([[[1, 1, 1, 1, 0]], [[1, 1, 0, 0, 0]], [[1, 0, 0, 0, 0]]], dtype=torch.bool)
    scales = torch.tensor([0.9, 0.5, 0.1])
    levels = _t([0, 1, 2])
    flat = masks.flatten(1).T  # [P, M], as relabelling passes a view's masks
    assert smallest_masks(flat, scales, levels, 0).tolist() == [0, 0, 0, 0, -1]
    assert smallest_masks(flat, scales, levels, 1).tolist() == [1, 1, 0, 0, -1]
    assert smallest_masks(flat, scales, levels, 2).tolist() == [2, 1, 0, 0, -1]
    # pixels taken two at a time give the same map
    assert smallest_masks(flat, scales, levels, 2, chunk=2).tolist() == [2, 1, 0, 0, -1]
    # a view with no masks: every pixel unlabelled (one label per pixel, so the view's pixel codes still line up)
    assert smallest_masks(masks[:0].flatten(1).T, scales[:0], levels[:0], 1).tolist() == [-1] * 5


def test_match_masks_is_one_to_one_so_a_second_mask_takes_its_own_code():
    # the pedestal case: codes 0 (pedestal's own) and 1 (the foot's). Foot mask (0): 10 px of code 1.
    # Pedestal mask (1): 3 px of code 0 and 2 px of code 1. Majority per mask would label both "1";
    # one-to-one gives the foot code to the foot mask (10 > 2) and the pedestal mask its own code.
    groups = _t([0] * 10 + [1] * 5 + [-1, 1])
    codes = _t([1] * 10 + [0, 0, 0, 1, 1] + [0, -1])
    match = match_masks(groups, codes, num_masks=2, num_codes=2)
    assert match.label.tolist() == [1, 0]
    assert match.home.tolist() == [1, 0]
    assert match.overlap.tolist() == [[0.0, 10.0], [3.0, 2.0]]
    assert match.size.tolist() == [10.0, 5.0]  # the pixel of unknown code (-1) does not count
    # the pedestal's code covers 1 of 5 pixels: under ACCEPT (25 %), the mask stays unlabelled
    weak = match_masks(groups, _t([1] * 10 + [0, 1, 1, 1, 1] + [0, -1]), 2, 2)
    assert weak.label.tolist() == [1, -1] and weak.home.tolist() == [-1, 0]


def test_code_evidence_counts_together_and_apart_by_the_smaller_pixel_count():
    # mask 0: code 0 x6, code 1 x4 (both >= 10 %: together 4); mask 1: code 2 x5 (labelled 2, mask 0 labelled 0):
    # apart(0, 2) = min(6, 5) = 5
    groups = _t([0] * 10 + [1] * 5)
    codes = _t([0] * 6 + [1] * 4 + [2] * 5)
    match = match_masks(groups, codes, 2, 3)
    evidence = CodeEvidence(3)
    evidence.add(match)
    assert evidence.together.tolist() == [[0, 4, 0], [4, 0, 0], [0, 0, 0]]
    assert evidence.apart.tolist() == [[0, 0, 5], [0, 0, 0], [5, 0, 0]]
    # a code under SHARE of the mask is not "together": 1 px of code 1 in 11
    sparse = match_masks(_t([0] * 11), _t([0] * 10 + [1]), 1, 2)
    evidence2 = CodeEvidence(2)
    evidence2.add(sparse)
    assert float(evidence2.together.sum()) == 0.0
    assert bool(evidence.kept_apart()[0, 2]) and not bool(evidence.kept_apart()[0, 1])


def test_pixel_labels_skip_a_mask_that_merges_codes_other_views_keep_apart():
    # one view where SAM merged the pole (code 1) into the shade (code 0): mask 0 holds 0 x8 and 1 x2; code 1 labels
    # no mask here. Other views keep 0 and 1 apart, so the merged mask gives no votes; mask 1 (code 2 only) does.
    groups = _t([0] * 10 + [1] * 3)
    codes = _t([0] * 8 + [1] * 2 + [2] * 3)
    match = match_masks(groups, codes, 2, 3)
    apart = torch.zeros(3, 3, dtype=torch.bool)
    apart[0, 1] = apart[1, 0] = True
    assert pixel_labels(groups, match, apart).tolist() == [-1] * 10 + [2] * 3
    # without that evidence the whole mask votes for its code (the 2 pole pixels included)
    assert pixel_labels(groups, match, torch.zeros(3, 3, dtype=torch.bool)).tolist() == [0] * 10 + [2] * 3
    # the seed-1 pedestal: a large top mask (0) swallows the pedestal, whose code (1) is only 3 of its 43 pixels
    # (7 %, under SHARE) but all of code 1's pixels in this view: still a merge, no votes
    groups = _t([0] * 43 + [1] * 3)
    codes = _t([0] * 40 + [1] * 3 + [2] * 3)
    match = match_masks(groups, codes, 2, 3)
    assert pixel_labels(groups, match, apart).tolist() == [-1] * 43 + [2] * 3
    # the same 3 pixels when code 1 shows 9 more in mask 1 (labelled 2): mask 0 holds a quarter of code 1, not
    # most of it: mask 0 votes
    groups = _t([0] * 43 + [1] * 29)
    codes = _t([0] * 40 + [1] * 3 + [1] * 9 + [2] * 20)
    match = match_masks(groups, codes, 2, 3)
    assert match.label.tolist() == [0, 2] and int(match.home[1]) == -1
    assert pixel_labels(groups, match, apart).tolist() == [0] * 43 + [2] * 29
    # a stray pixel of a code (1 of 60, under CONTAINED_FLOOR) never makes a merge
    groups = _t([0] * 60)
    match = match_masks(groups, _t([0] * 59 + [1]), 1, 3)
    assert pixel_labels(groups, match, apart).tolist() == [0] * 60
    # pixels outside every mask never vote
    assert pixel_labels(_t([-1, 0]), match_masks(_t([-1, 0]), _t([0, 0]), 1, 1), torch.zeros(1, 1, dtype=torch.bool)).tolist() == [-1, 0]


def _code(parent: int, child: int, low: int = 0) -> int:
    """Two levels of 4 bits in the top byte of a 32-bit code, ``low`` in the remaining 24 bits."""
    return (parent << 28) | (child << 24) | low


def test_reassign_moves_a_gaussian_to_the_voted_prefix_of_its_own_parent_only():
    codes = _t([_code(1, 2, 7), _code(1, 3, 5), _code(2, 2, 1), _code(1, 2)])
    prefixes, inverse = torch.unique(codes >> 24, return_inverse=True)  # 8-bit level-2 prefixes: 0x12, 0x13, 0x22
    assert prefixes.tolist() == [0x12, 0x13, 0x22]
    votes = torch.tensor([
        [0.2, 0.9, 0.0],  # Gaussian 0 (0x12): voted 0x13 -> moves, keeps its finer bits (7)
        [0.0, 0.0, 0.0],  # no vote: keeps 0x13
        [0.0, 5.0, 0.1],  # parent 2: 0x13 is another object's prefix, not allowed -> 0x22 (its own)
        [0.0, 0.0, 3.0],  # parent 1: the only vote is for another parent's prefix -> keeps 0x12
    ])
    tally = VoteTally(codes, prefixes, inverse, prefix_bits=8, parent_bits=4)
    tally.add(0, votes)
    new, changed = tally.result()
    assert new.tolist() == [_code(1, 3, 7), _code(1, 3, 5), _code(2, 2, 1), _code(1, 2)]
    assert changed == 1
    # the same votes in two chunks (0x12-0x13, then 0x22) decide the same
    chunked = VoteTally(codes, prefixes, inverse, prefix_bits=8, parent_bits=4)
    chunked.add(0, votes[:, :2])
    chunked.add(2, votes[:, 2:])
    assert torch.equal(chunked.result()[0], new)


def test_merge_siblings_joins_fragments_but_not_parts_by_cluster_sums():
    # parent 1 holds four prefixes: a, b (two fragments of the body), c, d (two fragments of the head);
    # a-b and c-d are together far more than apart; the body-head pairs are together a little (merged masks)
    prefixes = _t([0x11, 0x12, 0x13, 0x14])
    counts = _t([100, 60, 40, 20])
    evidence = CodeEvidence(4)
    together = torch.zeros(4, 4, dtype=torch.float64)
    apart = torch.zeros(4, 4, dtype=torch.float64)
    together[0, 1] = 600.0   # a-b: 600 vs apart 30
    apart[0, 1] = 30.0
    together[2, 3] = 400.0   # c-d: 400 vs 30
    apart[2, 3] = 30.0
    together[1, 3] = 70.0    # b-d alone would pass 3x (70 > 3 * 20) ...
    apart[1, 3] = 20.0
    apart[0, 2] = 150.0      # ... but the clusters {a,b} and {c,d} are apart 150 + 20 in all
    evidence.together = together + together.T
    evidence.apart = apart + apart.T
    out = merge_siblings(prefixes, counts, prefix_bits=8, parent_bits=4, evidence=evidence)
    assert out.tolist() == [0x11, 0x11, 0x13, 0x13]  # the larger fragment gives its prefix
    # another parent's prefix never merges in, however much together evidence
    other = _t([0x11, 0x21])
    ev = CodeEvidence(2)
    ev.together = torch.tensor([[0.0, 100.0], [100.0, 0.0]], dtype=torch.float64)
    assert merge_siblings(other, _t([5, 5]), 8, 4, ev).tolist() == [0x11, 0x21]


def test_render_chunks_cover_every_code_once():
    assert render_chunks(70, 32) == [(0, 32), (32, 64), (64, 70)]
    assert render_chunks(0) == []


def test_taken_masks_finds_a_mask_whose_code_a_larger_mask_took():
    # head and body trained onto one code (0): the body mask (0, 10 px) takes it one-to-one, the head mask (1, 4 px,
    # all code 0) is left without a code: taken by 0. Mask 2 (code 1 only, labelled) and mask 3 (half code 0,
    # half unknown: 2 of 2 known pixels) -- the share counts known pixels only.
    groups = _t([0] * 10 + [1] * 4 + [2] * 3 + [3] * 4)
    codes = _t([0] * 10 + [0] * 4 + [1] * 3 + [0, 0, -1, -1])
    match = match_masks(groups, codes, 4, 2)
    assert match.label.tolist() == [0, -1, 1, -1]
    assert taken_masks(match).tolist() == [-1, 0, -1, 0]
    # a mask whose largest code covers under half of it is not taken
    mixed = match_masks(_t([0] * 10 + [1] * 4), _t([0] * 10 + [0, 1, 2, 2]), 2, 3)
    assert taken_masks(mixed).tolist()[1] == -1


def test_split_codes_moves_the_gaussians_that_render_more_into_taken_masks():
    # level 2 of (4, 4) bits: code 0x10 holds the body (Gaussians 0-2) and the head (3-4); 0x13 is a sibling
    codes = _t([_code(1, 0)] * 5 + [_code(1, 3)])
    prefixes, inverse = torch.unique(codes >> 24, return_inverse=True)
    split = torch.tensor([0.0, 0.1, 0.0, 2.0, 1.5, 0.0])
    stay = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.5, 0.0])
    new, count = split_codes(codes, prefixes, inverse, 8, 4, split, stay, taken_views=_t([2, 0]))
    assert count == 1
    assert new[:3].tolist() == codes[:3].tolist() and new[5] == codes[5]
    head = {int(c) >> 24 for c in new[3:5]}
    assert len(head) == 1
    field_ = head.pop() & 0xF
    assert field_ not in (0x0, 0x3)
    # the new field is as far as the search finds from 0000 and 0011: the best possible is 3 from both (1110 or
    # 1101: 4 from 0000 would be 1111, only 2 from 0011)
    assert min(bin(field_ ^ 0x0).count("1"), bin(field_ ^ 0x3).count("1")) == 3
    # one view with a taken mask is not enough (MIN_SPLIT_VIEWS = 2); a code that would move whole does not split
    assert split_codes(codes, prefixes, inverse, 8, 4, split, stay, _t([1, 0]))[1] == 0
    everyone = torch.full((6,), 5.0)
    assert split_codes(codes, prefixes, inverse, 8, 4, everyone, stay, _t([2, 2]))[1] == 0


def test_far_field_avoids_every_sibling():
    assert _far_field([0b0000], 4) == 0b1111
    field_ = _far_field([0b0000, 0b1111], 4)
    assert field_ not in (0b0000, 0b1111) and bin(field_).count("1") == 2
    assert _far_field(list(range(4)), 2) is None  # every 2-bit field is used
