"""SAGA loss: hand-worked examples of Eq. 6-11 and a small multi-granularity optimisation."""

import math

import pytest
import torch

from segsplat_ns.methods.common.knn import knn_indices, knn_smooth
from segsplat_ns.methods.common.scale_gate import ScaleGate
from segsplat_ns.methods.saga.loss import (
    feature_correspondence,
    feature_norm_loss,
    mask_correspondence,
    pair_weights,
    pixel_identity_vectors,
    saga_contrastive_loss,
    saga_loss,
    sample_training_scales,
    select_pairs,
)

T = torch.tensor

# --------------------------------------------------------------------------------------------
# Eq. 6 / Eq. 7 on a hand-made example.
# Masks (columns): A (scale 0.2) ⊂ B (0.5) ⊂ C (0.9), and D (0.4) disjoint from them.
# Pixels (rows):   p0 ∈ {A, B, C},  p1 ∈ {B, C},  p2 ∈ {C},  p3 ∈ {D}.
# --------------------------------------------------------------------------------------------
MEMBERSHIP = T(
    [
        [1, 1, 1, 0],  # p0
        [0, 1, 1, 0],  # p1
        [0, 0, 1, 0],  # p2
        [0, 0, 0, 1],  # p3
    ],
    dtype=torch.bool,
)
SCALES = T([0.2, 0.5, 0.9, 0.4])

# V(s, p), worked out from Eq. 6 by hand:
EXPECTED_V = {
    # s=0.1: every mask is >= s, so each pixel is claimed only by its smallest mask.
    #   p0 -> A, p1 -> B, p2 -> C, p3 -> D.
    0.1: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
    # s=0.3: A (0.2) < s keeps plain membership; among B, C, D (>= s) the smallest containing
    #   p claims it: p0 -> A (plain) + B, p1 -> B, p2 -> C, p3 -> D.
    0.3: [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
    # s=0.6: A, B, D < s are plain; C (0.9) >= s with no mask in [0.6, 0.9) -> plain too.
    0.6: [[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
    # s=1.0: every mask < s -> V = membership.
    1.0: [[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
}

# Corr_m(s, pi, pj) = 1 iff V(s,pi).V(s,pj) > 0, by hand from the table above.
EXPECTED_CORR = {
    0.1: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],  # parts only
    0.3: [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],  # p0-p1 share B
    0.6: [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]],  # p0-p1-p2 share C
    1.0: [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]],
}


@pytest.mark.parametrize("s", [0.1, 0.3, 0.6, 1.0])
def test_eq6_identity_vectors(s):
    v = pixel_identity_vectors(MEMBERSHIP, SCALES, s)
    assert v.dtype == torch.bool and v.shape == (4, 4)
    assert v.int().tolist() == EXPECTED_V[s]


@pytest.mark.parametrize("s", [0.1, 0.3, 0.6, 1.0])
def test_eq7_correspondence(s):
    c = mask_correspondence(pixel_identity_vectors(MEMBERSHIP, SCALES, s))
    assert c.tolist() == [[float(x) for x in row] for row in EXPECTED_CORR[s]]


def test_eq6_batched_matches_single_and_mask_order_is_irrelevant():
    ss = T([0.1, 0.3, 0.6, 1.0])
    vb = pixel_identity_vectors(MEMBERSHIP, SCALES, ss)
    assert vb.shape == (4, 4, 4)
    for i, s in enumerate([0.1, 0.3, 0.6, 1.0]):
        assert vb[i].int().tolist() == EXPECTED_V[s]
    perm = T([2, 0, 3, 1])
    vp = pixel_identity_vectors(MEMBERSHIP[:, perm], SCALES[perm], ss)
    assert torch.equal(vp, vb[:, :, perm])
    cb = mask_correspondence(vb)
    assert cb.shape == (4, 4, 4)


def test_eq6_masks_below_s_keep_plain_membership():
    # Non-nested SAM masks: X (0.2) = {p0, p1}, Y (0.5) = {p1, p2}.
    mem = T([[1, 0], [1, 1], [0, 1]], dtype=torch.bool)
    sc = T([0.2, 0.5])
    # s=0.1: p1 is claimed by X (its smallest mask >= s), so p1-p2 are apart.
    assert mask_correspondence(pixel_identity_vectors(mem, sc, 0.1)).tolist() == [
        [1, 1, 0], [1, 1, 0], [0, 0, 1]]
    # s=0.3: X < s keeps p0,p1; Y >= s claims p1,p2 -> p0-p1 and p1-p2 positive, p0-p2 not.
    # (A reading that drops masks below s would make p0 isolated here.)
    assert mask_correspondence(pixel_identity_vectors(mem, sc, 0.3)).tolist() == [
        [1, 1, 0], [1, 1, 1], [0, 1, 1]]


# --------------------------------------------------------------------------------------------
# Eq. 8-9 on two pixels with a known gate.
# --------------------------------------------------------------------------------------------
def _known_gate():
    """S(s) = [0.5, 0.8] for every s (weight 0, bias = logit)."""
    gate = ScaleGate(2)
    with torch.no_grad():
        gate.linear.weight.zero_()
        gate.linear.bias.copy_(T([0.0, math.log(0.8 / 0.2)]))
    return gate


def test_scale_gate_shapes_and_values():
    gate = _known_gate()
    assert torch.allclose(gate(0.3), T([0.5, 0.8]), atol=1e-6)
    assert gate(torch.rand(5)).shape == (5, 2)
    assert gate(torch.rand(3, 4)).shape == (3, 4, 2)
    g = ScaleGate(32)
    out = g(torch.linspace(0, 1, 7))
    assert out.shape == (7, 32) and (out > 0).all() and (out < 1).all()


def _pair(f2, positive, weight=None, **kw):
    gate = _known_gate()
    feats = T([[1.0, 0.0], f2], requires_grad=True)
    c = 1.0 if positive else 0.0
    corr_m = T([[1.0, c], [c, 1.0]])
    w = None if weight is None else torch.full((2, 2), float(weight))
    return saga_contrastive_loss(feats, gate(0.5), corr_m, w, **kw)


# gated p1 = [0.5, 0], gated p2 = [0.5, 0.8]: cos = 0.25 / (0.5 * sqrt(0.89)) = 0.5 / sqrt(0.89)
COS = 0.5 / math.sqrt(0.89)  # 0.5300


def test_eq8_cosine_of_gated_features():
    gate = _known_gate()
    c = feature_correspondence(T([[1.0, 0.0], [1.0, 1.0]]), gate(0.5))
    assert c[0, 1].item() == pytest.approx(COS, abs=1e-6)
    assert c[0, 0].item() == pytest.approx(1.0, abs=1e-6)


def test_eq9_positive_and_negative_pairs():
    # (1 - 2*1) * max(cos, 0) = -cos ; (1 - 2*0) * max(cos, 0) = +cos
    assert _pair([1.0, 1.0], positive=True).item() == pytest.approx(-COS, abs=1e-6)
    assert _pair([1.0, 1.0], positive=False).item() == pytest.approx(COS, abs=1e-6)
    # pair weight multiplies
    assert _pair([1.0, 1.0], positive=False, weight=3.0).item() == pytest.approx(3 * COS, abs=1e-6)


def test_eq9_clip_at_zero():
    # f2 = [-1, 1] -> gated [-0.5, 0.8], cos = -COS
    # negative pair: (1 - 0) * max(-COS, 0) = 0, and no gradient
    loss = _pair([-1.0, 1.0], positive=False)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    # positive pair: Eq. 9 verbatim clips to 0; the code (default) keeps -cos so it still pulls.
    assert _pair([-1.0, 1.0], positive=True, clip_positives=True).item() == pytest.approx(0.0, abs=1e-7)
    assert _pair([-1.0, 1.0], positive=True).item() == pytest.approx(COS, abs=1e-6)


def test_eq9_hard_mining_excludes_easy_pairs():
    # cos 0.53: a positive below 0.75 is hard (kept), a negative above 0.5 is hard (kept)
    assert _pair([1.0, 1.0], True, hard_mining=True).item() == pytest.approx(-COS, abs=1e-6)
    assert _pair([1.0, 1.0], False, hard_mining=True).item() == pytest.approx(COS, abs=1e-6)
    # f2 = [1, 0.1]: gated [0.5, 0.08], cos = 0.25/(0.5*sqrt(0.2564)) = 0.987 -> easy positive
    easy_pos = _pair([1.0, 0.1], True, hard_mining=True)
    assert easy_pos.item() == 0.0
    easy_pos.backward()  # still a graph-connected scalar
    # f2 = [0.2, 1]: gated [0.1, 0.8], cos = 0.05/(0.5*sqrt(0.65)) = 0.124 -> easy negative
    assert _pair([0.2, 1.0], False, hard_mining=True).item() == 0.0
    # thresholds are arguments
    assert _pair([1.0, 0.1], True, hard_mining=True, pos_thresh=0.99).item() == pytest.approx(
        -0.25 / (0.5 * math.sqrt(0.2564)), abs=1e-6)


def test_select_pairs_resampling_and_mining():
    # 4 pixels, 2 scales. Pairs: (0,1) positive at both (consistent +), (2,3) negative at both,
    # (0,2) positive only at scale 0 (inconsistent).
    cm = torch.zeros(2, 4, 4)
    cm[:, 0, 1] = cm[:, 1, 0] = 1
    cm[0, 0, 2] = cm[0, 2, 0] = 1
    cm += torch.eye(4)
    cf = torch.zeros(2, 4, 4)
    pos, neg = select_pairs(cm, cf, hard_mining=False, resample=True, generator=torch.Generator().manual_seed(0))
    assert pos[0, 2] and neg[0, 2]  # inconsistent pairs always kept in both
    assert not pos.diagonal().any() and not torch.tril(pos).any()
    # hard mining: consistent positive with corr_f 0 < 0.75 is hard
    pos, neg = select_pairs(cm, cf, hard_mining=True, resample=False)
    assert pos[0, 1]
    cf2 = torch.ones(2, 4, 4)  # every negative has corr 1 > 0.5 -> hard negative
    pos, neg = select_pairs(cm, cf2, hard_mining=True, resample=False)
    assert neg[2, 3]


# --------------------------------------------------------------------------------------------
# Eq. 11
# --------------------------------------------------------------------------------------------
def test_feature_norm_loss():
    unit = torch.nn.functional.normalize(torch.randn(10, 8), dim=-1)
    assert feature_norm_loss(unit).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_norm_loss(0.5 * unit).item() == pytest.approx(0.5, abs=1e-6)
    # the code's (1 - mean ||F||)^2
    assert feature_norm_loss(0.5 * unit, squared_of_mean=True).item() == pytest.approx(0.25, abs=1e-6)
    mixed = torch.cat([unit[:5], 0.5 * unit[5:]])
    assert feature_norm_loss(mixed).item() == pytest.approx(0.25, abs=1e-6)


# --------------------------------------------------------------------------------------------
# Pair weights and scale sampling
# --------------------------------------------------------------------------------------------
def test_pair_weights_by_hand():
    # masks: A area 10, B area 100. p0 in A (a=10), p1 in B (a=100), p2 in A and B (a=55).
    mem = T([[1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    w = pair_weights(mem, T([10.0, 100.0]))
    a = [10.0, 100.0, 55.0]
    raw = [[1e4 / (x * y) for y in a] for x in a]  # max product is 100*100
    exp = [[1 + 9 * (r - 1) / (100 - 1) for r in row] for row in raw]
    assert torch.allclose(w, T(exp), atol=1e-5)
    assert w.min().item() == pytest.approx(1.0) and w.max().item() == pytest.approx(10.0)
    assert w[0, 0] > w[0, 2] > w[0, 1] > w[1, 1]  # smaller masks -> larger weight
    assert torch.allclose(w, w.T)


def test_pair_weights_range_random_and_degenerate():
    g = torch.Generator().manual_seed(1)
    mem = torch.rand(200, 30, generator=g) < 0.2
    w = pair_weights(mem, torch.randint(50, 5000, (30,), generator=g).float())
    assert w.min() >= 1.0 - 1e-6 and w.max() <= 10.0 + 1e-5
    # one mask only -> all pairs equal -> all 1 (no NaN)
    w1 = pair_weights(torch.ones(5, 1, dtype=torch.bool), T([7.0]))
    assert torch.equal(w1, torch.ones(5, 5))


def test_sample_training_scales():
    g = torch.Generator().manual_seed(0)
    sc = T([0.9, 0.7, 0.5, 0.5, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.02])
    for _ in range(50):
        s = sample_training_scales(sc[torch.randperm(len(sc))], generator=g)
        assert s.shape == (8 + 2,)
        assert 0.9 <= s[0] <= 1.0  # bigger than the view's max
        assert 0.0 < s[-1] <= 0.02  # the smallest mask
        # every random scale lies in (next smaller scale, a mask's scale]:
        for x in s[1:-1]:
            above = sc[sc >= x]
            below = sc[sc < x]
            assert len(above) > 0
            assert x <= above.min() and (len(below) == 0 or x > below.max())
    few = sample_training_scales(T([0.4, 0.6]), generator=g)
    assert few.shape == (4,)


# --------------------------------------------------------------------------------------------
# Gradients and a two-level optimisation
# --------------------------------------------------------------------------------------------
def _two_level_problem(n=8):
    """Two objects, each of two parts, n pixels per part. Masks: 4 parts (0.2), 2 objects (0.6)."""
    part = torch.arange(4).repeat_interleave(n)  # 0,1 -> object 0 ; 2,3 -> object 1
    obj = part // 2
    mem = torch.cat([torch.nn.functional.one_hot(part, 4), torch.nn.functional.one_hot(obj, 2)], 1).bool()
    scales = T([0.2, 0.2, 0.2, 0.2, 0.6, 0.6])
    areas = T([100.0, 100.0, 100.0, 100.0, 200.0, 200.0])
    return part, obj, mem, scales, areas


def test_gradients_reach_features_and_gate():
    _, _, mem, scales, areas = _two_level_problem()
    torch.manual_seed(0)
    feats = torch.randn(mem.shape[0], 16, requires_grad=True)
    gate = ScaleGate(16)
    s = sample_training_scales(scales, generator=torch.Generator().manual_seed(0))
    stats = {}
    out = saga_loss(feats, mem, scales, areas, gate, s, stats=stats)
    assert set(out) == {"saga_contrastive", "saga_feature_norm"}
    sum(out.values()).backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert gate.linear.weight.grad is not None and gate.linear.weight.grad.abs().sum() > 0
    assert gate.linear.bias.grad.abs().sum() > 0
    assert stats["n_pos_pairs"] > 0 and stats["n_neg_pairs"] > 0


def test_optimisation_learns_multi_granularity():
    part, obj, mem, scales, areas = _two_level_problem()
    torch.manual_seed(0)
    D = 16
    feats = torch.nn.Parameter(torch.randn(mem.shape[0], D))
    gate = ScaleGate(D)
    opt = torch.optim.Adam([feats, *gate.parameters()], lr=0.03)
    g = torch.Generator().manual_seed(0)
    eval_s = T([0.1, 0.3, 0.6, 0.9])

    def full_loss():
        with torch.no_grad():
            return saga_loss(feats, mem, scales, areas, gate, eval_s, hard_mining=False,
                             norm_weight=0.0)["saga_contrastive"].item()

    before = full_loss()
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread hand-off costs more than the maths
    try:
        for _ in range(300):
            s = sample_training_scales(scales, generator=g)
            # free features are not rendered from unit vectors, so the norm term is off here
            loss = sum(saga_loss(feats, mem, scales, areas, gate, s, norm_weight=0.0, generator=g).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(n_threads)
    after = full_loss()
    assert after < before

    same_part = part[:, None] == part[None, :]
    same_obj = obj[:, None] == obj[None, :]
    off = ~torch.eye(len(part), dtype=torch.bool)
    with torch.no_grad():
        # object scale (the gate is a smooth function of s, so right above the part masks'
        # scale 0.2 it is still in transition: at s=0.3 same-object cos is ~0.6 after 300 steps)
        for s in (0.4, 0.6, 0.9):
            c = feature_correspondence(feats, gate(s))
            assert c[same_obj & off].min() > 0.75, s
            assert c[~same_obj].max() < 0.5, s
        c = feature_correspondence(feats, gate(0.1))  # part scale
        assert c[same_part & off].min() > 0.75
        assert c[same_obj & ~same_part].max() < 0.5  # parts of one object separate
        assert c[~same_obj].max() < 0.5


# --------------------------------------------------------------------------------------------
# Local feature smoothing
# --------------------------------------------------------------------------------------------
def test_knn_indices_matches_brute_force_and_self_first():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(300, 3, generator=g)
    idx = knn_indices(pts, 8)
    assert idx.shape == (300, 8) and idx.dtype == torch.long
    assert torch.equal(idx[:, 0], torch.arange(300))
    d = torch.cdist(pts, pts)
    ref = d.topk(8, largest=False).indices
    assert torch.equal(idx.sort(1).values, ref.sort(1).values)
    # duplicated positions: self is still in column 0
    dup = torch.cat([pts[:10], pts[:10]])
    idx2 = knn_indices(dup, 4)
    assert torch.equal(idx2[:, 0], torch.arange(20))


def test_knn_smooth():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(200, 3, generator=g)
    const = torch.full((200, 5), 0.7)
    assert torch.allclose(knn_smooth(const, pts, k=16, dropout=0.5, generator=g), const)
    # single outlier -> its neighbours' mean (self included): (1 + 0 * 15) / 16
    f = torch.zeros(200, 1)
    f[17] = 1.0
    idx = knn_indices(pts, 16)
    out = knn_smooth(f, pts, k=16, dropout=0.0, idx=idx)
    assert out[17, 0].item() == pytest.approx(1 / 16)
    # everyone else gets 1/16 iff 17 is among its neighbours
    has17 = (idx == 17).any(1).float() / 16
    assert torch.allclose(out[:, 0], has17)
    # dropout = 0 is deterministic; dropout > 0 keeps half the slots
    assert torch.equal(knn_smooth(f, pts, 16, 0.0, idx=idx), knn_smooth(f, pts, 16, 0.0, idx=idx))
    a = knn_smooth(f, pts, 16, 0.5, generator=torch.Generator().manual_seed(3), idx=idx)
    b = knn_smooth(f, pts, 16, 0.5, generator=torch.Generator().manual_seed(3), idx=idx)
    assert torch.equal(a, b)
    assert set(torch.unique(a * 8).round().tolist()) <= {0.0, 1.0}  # means over 8 kept slots


# --------------------------------------------------------------------------------------------
# Cross-checks
# --------------------------------------------------------------------------------------------
def _code_style_identity_vectors(mem, scales, s):
    """The authors' loop, restated: masks sorted by descending scale; among masks >= s, from the
    smallest upwards, a mask keeps a pixel only if no smaller one (>= s) already has it; masks < s
    keep plain membership. Returns V in the original mask order."""
    order = torch.argsort(scales, descending=True)
    m = mem[:, order].T.clone()  # [M, P], descending scale
    n_big = int((scales[order] >= s).sum())
    gt = torch.zeros_like(m)
    gt[:n_big] = m[:n_big]
    for j in range(n_big - 1, -1, -1):
        gt[j] = gt[j] & ~gt[j + 1 : n_big].any(dim=0)
    gt[n_big:] = m[n_big:]
    out = torch.zeros_like(gt)
    out[order] = gt
    return out.T


def test_eq6_matches_the_authors_loop_on_random_overlapping_masks():
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        P, M = 50, 12
        mem = torch.rand(P, M, generator=g) < 0.3
        scales = torch.randperm(M, generator=g).float() / M + 0.01  # distinct scales
        for s in torch.rand(6, generator=g).tolist() + [0.0, 2.0]:
            assert torch.equal(pixel_identity_vectors(mem, scales, s), _code_style_identity_vectors(mem, scales, s))


def test_saga_loss_matches_matrix_api():
    g = torch.Generator().manual_seed(2)
    P, M, D = 40, 10, 8
    mem = torch.rand(P, M, generator=g) < 0.3
    scales, areas = torch.rand(M, generator=g), torch.randint(10, 1000, (M,), generator=g).float()
    feats = torch.randn(P, D, generator=g)
    gate = ScaleGate(D)
    s = sample_training_scales(scales, generator=g)
    got = saga_loss(feats, mem, scales, areas, gate, s, hard_mining=False)["saga_contrastive"]
    corr_m = mask_correspondence(pixel_identity_vectors(mem, scales, s))
    exp = saga_contrastive_loss(feats, gate(s), corr_m, pair_weights(mem, areas))
    assert got.item() == pytest.approx(exp.item(), rel=1e-5)
    # and the matrix API by brute force over (s, i < j)
    cf = feature_correspondence(feats, gate(s)).detach()
    w = pair_weights(mem, areas)
    pos, neg = [], []
    for k in range(len(s)):
        for i in range(P):
            for j in range(i + 1, P):
                (pos if corr_m[k, i, j] > 0 else neg).append(
                    (-1 if corr_m[k, i, j] > 0 else 1) * w[i, j] * (cf[k, i, j] if corr_m[k, i, j] > 0 else max(cf[k, i, j], 0)))
    brute = sum(pos) / len(pos) + sum(neg) / len(neg)
    assert exp.item() == pytest.approx(float(brute), rel=1e-4)
