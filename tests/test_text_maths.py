"""Pure maths of text prompts: LERF/LangSplat relevancy, LangSplat's 2D mask and localisation, SAGA's CLIP vote."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segsplat_ns.language import relevancy as rel
from segsplat_ns.methods.saga import clip_vote


def test_relevancy_is_the_least_favourable_pairwise_softmax():
    # 2-d toy embeddings: the hand computation of min_c exp(10 e.q) / (exp(10 e.q) + exp(10 e.c))
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([1.0, 0.0])
    c = torch.tensor([[0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    got = rel.relevancy(e, q, c)
    expected_0 = min(math.exp(10) / (math.exp(10) + math.exp(0)), math.exp(10) / (math.exp(10) + math.exp(10 * math.sqrt(0.5))))
    expected_1 = min(math.exp(0) / (math.exp(0) + math.exp(10)), math.exp(0) / (math.exp(0) + math.exp(10 * math.sqrt(0.5))))
    assert got[0].item() == pytest.approx(expected_0, rel=1e-5)
    assert got[1].item() == pytest.approx(expected_1, rel=1e-5)
    # brute force against softmax over random unit vectors
    g = torch.Generator().manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    c = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1)
    brute = torch.stack([torch.softmax(10 * torch.stack([e @ q, e @ c[i]], -1), -1)[:, 0] for i in range(4)], -1).min(-1).values
    assert torch.allclose(rel.relevancy(e, q, c), brute, atol=1e-6)


def test_eval_windows_scale_langsplat_sizes_with_the_image_height():
    assert rel.eval_windows(832) == (30, 3)
    assert rel.eval_windows(96) == (3, 0)
    assert rel.eval_windows(10) == (1, 0)


def test_relevancy_mask_is_normalised_relevancy_above_0_7():
    # no smoothing at 96 rows, a 3x3 box: a flat plateau of 1 on 0 keeps its interior
    values = np.zeros((96, 96), dtype=np.float32)
    values[30:60, 20:50] = 1.0
    mask = rel.relevancy_mask(values)
    assert mask[35:55, 25:45].all() and not mask[:25].any() and not mask[:, :15].any()
    # LangSplat's threshold 0.4 after 2n - 1 is n > 0.7
    ramp = np.tile(np.linspace(0, 1, 96, dtype=np.float32), (96, 1))
    m = rel.relevancy_mask(ramp)
    first = int(np.argmax(m[48]))
    assert 0.68 <= ramp[48, first] <= 0.73


def test_majority_filter_removes_specks_and_keeps_blocks():
    mask = np.zeros((40, 40), dtype=bool)
    mask[5, 5] = True
    mask[10:30, 10:30] = True
    out = rel.majority_filter(mask, 3)
    assert not out[5, 5] and out[15:25, 15:25].all()


def test_localisation_hits_the_box_of_the_smoothed_maximum():
    values = np.zeros((96, 96), dtype=np.float32)
    values[60:70, 10:20] = 0.9
    values[5, 80] = 1.0  # a single hot pixel loses to the block after the box filter
    assert rel.localisation_point(values)[1] in range(59, 71)
    assert rel.localisation_hit(values, [[10, 60, 20, 70]])
    assert not rel.localisation_hit(values, [[75, 0, 90, 10]])


def test_group_masks_joins_masks_whose_3d_selections_agree():
    # four queries on 10 Gaussians: two see the object {0..5}, one its part {0, 1}, one another object {7, 8}
    sel = torch.zeros(4, 10, dtype=torch.bool)
    sel[0, 0:6] = True
    sel[1, 0:5] = True  # IoU 5/6 with query 0
    sel[2, 0:2] = True  # IoU 1/3 and 2/5 with the object queries: its own group
    sel[3, 7:9] = True
    assert clip_vote.group_masks(sel, min_iou=0.5).tolist() == [0, 0, 1, 2]
    # average linkage does not chain: a query overlapping one member well but the group badly stays apart
    chain = torch.zeros(3, 12, dtype=torch.bool)
    chain[0, 0:6] = True
    chain[1, 2:8] = True  # IoU 4/8 = 0.5 with 0
    chain[2, 4:10] = True  # IoU 0.5 with 1, 2/10 with 0: mean 0.35
    assert clip_vote.group_masks(chain, min_iou=0.5).tolist() in ([0, 0, 1], [0, 1, 1])
    assert clip_vote.group_masks(torch.zeros(0, 5, dtype=torch.bool)).tolist() == []


def test_vote_counts_each_views_most_relevant_mask_above_0_5():
    # masks: (view, group, relevancy)
    view = np.array([0, 0, 1, 1, 2, 2, 3])
    group = np.array([0, 1, 0, 1, 1, 2, 2])
    relevancy = np.array([0.9, 0.6, 0.7, 0.8, 0.95, 0.4, 0.3])
    result = clip_vote.vote(relevancy, view, group, 3)
    assert result.votes.tolist() == [1, 2, 0]  # view 3's best mask is below 0.5: no vote
    assert result.winner == 1 and result.best == 4
    assert result.mean_relevancy.tolist() == pytest.approx([0.8, (0.6 + 0.8 + 0.95) / 3, 0.35])
    nothing = clip_vote.vote(np.array([0.4, 0.1]), np.array([0, 1]), np.array([0, 1]), 2)
    assert nothing.winner is None and nothing.best is None
    # a tie goes to the higher mean relevancy
    tie = clip_vote.vote(np.array([0.9, 0.55, 0.8, 0.6]), np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0]), 2)
    assert tie.votes.tolist() == [1, 1] and tie.winner == 0 and tie.best == 0
