"""Binary-Gaussian: STE, progressive loss (Eq. 6) by hand, virtual negative, codes, and the real CLIs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from segsplat_ns.masks.sampling import mask_balanced_pixels
from segsplat_ns.methods.binary_gaussian.codes import (
    PrefixTable,
    code_prefix,
    pack_codes,
    prefix_scores,
    signed_prefix,
    to_int32,
    unpack_codes,
)
from segsplat_ns.methods.binary_gaussian.levels import mask_levels, pixel_level_groups
from segsplat_ns.methods.binary_gaussian.loss import (
    binarization_loss,
    positive_only_pixels,
    progressive_contrastive_loss,
    progressive_pair_losses,
    ste_binarize,
    virtual_negative_loss,
)
from segsplat_ns.methods.binary_gaussian.vote import (
    absorb_small_segments,
    render_weighted_votes,
    snap_codes,
    voted_bits,
)

WIDTHS = (2, 2)  # two levels of two bits: small enough to write Eq. 6 by hand


def test_ste_forward_is_exactly_binary_and_gradient_is_identity():
    x = torch.tensor([0.0, 0.2, 0.49, 0.5, 0.51, 0.7, 0.999, 1.3, -0.4], requires_grad=True)
    y = ste_binarize(x)
    assert torch.equal(y, torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]))  # bit-exact, I(x > 0.5)
    weights = torch.arange(1.0, 10.0)
    (y * weights).sum().backward()
    assert torch.equal(x.grad, weights)  # d ste(x) / dx = identity


def test_progressive_loss_three_pixels_by_hand():
    # rendered (continuous) features; binarised at 0.5: p0 = [1,0 | 1,1], p1 = [1,0 | 0,1], p2 = [0,1 | 1,1]
    features = torch.tensor(
        [[0.9, 0.2, 0.8, 0.7],
         [0.6, 0.1, 0.3, 0.9],
         [0.4, 0.7, 0.6, 0.55]],
        requires_grad=True,
    )
    # level 1: p0, p1 in object A, p2 in object B; level 2: p0, p1 in different parts of A, p2 in B's only part
    groups = torch.tensor([[0, 0, 1],
                           [10, 11, 20]])
    values, positives, negatives = progressive_pair_losses(features, groups, WIDTHS)
    v1, v2 = values[0].detach(), values[1].detach()
    # level 1 (Eq. 5), D_1 = 2
    # (p0, p1): same level-1 mask -> ||[1,0] - [1,0]|| = 0
    assert bool(positives[0][0, 1]) and v1[0, 1] == pytest.approx(0.0, abs=1e-5)
    # (p0, p2): different masks -> D_1 - ||[1,0] - [0,1]|| = 2 - sqrt(2)
    assert bool(negatives[0][0, 2]) and v1[0, 2] == pytest.approx(2 - math.sqrt(2), abs=1e-5)
    # (p1, p2): 2 - sqrt(2) as well
    assert bool(negatives[0][1, 2]) and v1[1, 2] == pytest.approx(2 - math.sqrt(2), abs=1e-5)
    # level 2 (Eq. 6), D_2 = 2
    # (p0, p1): M^2 differ, M^1 equal -> case 2: D_2 - ||[1,1] - [0,1]|| = 2 - 1 = 1
    assert bool(negatives[1][0, 1]) and v2[0, 1] == pytest.approx(1.0, abs=1e-5)
    # (p0, p2) and (p1, p2): M^1 differ -> case 3: 0, and neither positive nor negative
    for a, b in ((0, 2), (1, 2)):
        assert v2[a, b] == 0.0 and not bool(positives[1][a, b]) and not bool(negatives[1][a, b])
    # symmetric, diagonal excluded
    assert torch.equal(v1, v1.T) and torch.equal(v2, v2.T)
    assert not bool(positives[0].diagonal().any())
    # the loss: per level, the mean over the ordered pairs that level constrains
    expected = (0 + 0 + 4 * (2 - math.sqrt(2))) / 6 + (2 * 1.0) / 2
    loss = progressive_contrastive_loss(features, groups, WIDTHS)
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    loss.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()
    # case 3 pairs give no gradient to level 2 of p2 (its only level-2 pairs are case 3)
    assert torch.equal(features.grad[2, 2:], torch.zeros(2))


def test_negative_pair_with_colliding_bits_still_gets_a_separating_gradient():
    features = torch.tensor([[0.7, 0.6], [0.8, 0.9]], requires_grad=True)  # both binarise to [1, 1]
    groups = torch.tensor([[0, 1]])
    values, _, negatives = progressive_pair_losses(features, groups, (2,))
    assert bool(negatives[0][0, 1]) and float(values[0][0, 1]) == pytest.approx(2.0, abs=1e-5)
    values[0][0, 1].backward()
    assert features.grad.abs().sum() > 0  # pushed apart along the continuous difference


def test_virtual_negative_acts_only_on_positive_only_groups():
    # level 1: objects A (p0, p1, p2) and B (p3, p4). Level 2: A splits into parts (p0 | p1, p2); B does not.
    groups = torch.tensor([[0, 0, 0, 1, 1],
                           [10, 11, 11, 20, 20]])
    binary = torch.tensor(
        [[1, 0, 1, 1],
         [1, 0, 0, 1],
         [1, 0, 0, 1],
         [0, 1, 1, 0],
         [0, 1, 1, 1]], dtype=torch.float32)
    assert not positive_only_pixels(groups, 0).any()  # the image has two level-1 groups: negatives exist
    assert positive_only_pixels(groups, 1).tolist() == [False, False, False, True, True]
    features = (0.25 + 0.5 * binary).requires_grad_(True)  # binarises to `binary`
    loss = virtual_negative_loss(features, groups, WIDTHS)
    # level 2 of B's pixels only: ||[1,0]|| = 1 and ||[1,1]|| = sqrt(2), averaged over all 5 covered pixels
    assert float(loss) == pytest.approx((1 + math.sqrt(2)) / 5, abs=1e-5)
    # averaged over B's 2 pixels instead
    per_group = virtual_negative_loss(features, groups, WIDTHS, per="group")
    assert float(per_group) == pytest.approx((1 + math.sqrt(2)) / 2, abs=1e-5)
    loss.backward()
    assert torch.equal(features.grad[:3], torch.zeros(3, 4))  # A (split at level 2) is untouched
    assert torch.equal(features.grad[3:, :2], torch.zeros(2, 2))  # level 1 of B is untouched
    assert (features.grad[3:, 2:] >= 0).all() and features.grad[3:, 2:].sum() > 0  # bits pushed to 0
    # a single-level-1-group image: every pixel gets VN at level 1
    one = torch.zeros(2, 5, dtype=torch.long)
    assert positive_only_pixels(one, 0).all()


def test_binarization_regulariser():
    features = torch.tensor([[0.9, 0.2], [0.5, 0.6]])
    # (0.1^2 + 0.2^2 + 0.5^2 + 0.4^2) / 2 pixels
    assert float(binarization_loss(features)) == pytest.approx((0.01 + 0.04 + 0.25 + 0.16) / 2)


def test_render_weighted_vote_by_hand():
    # a linear "renderer" F_p = sum_i w_ip c_i with hand-made blending weights w [pixels, Gaussians]
    w = torch.tensor([[0.6, 0.3, 0.0, 0.0],
                      [0.5, 0.0, 0.0, 0.4],
                      [0.0, 0.9, 0.0, 0.4]])
    latent = torch.tensor([[0.9, 0.2], [0.1, 0.8], [0.7, 0.3], [0.8, 0.6]])
    # rendered F: p0 = .6*[.9,.2] + .3*[.1,.8] = [.57, .36] -> [1, 0]
    #             p1 = .5*[.9,.2] + .4*[.8,.6] = [.77, .34] -> [1, 0]
    #             p2 = .9*[.1,.8] + .4*[.8,.6] = [.41, .96] -> [0, 1]
    votes, weight = render_weighted_votes(lambda colors: w @ colors, latent)
    expected_votes = torch.tensor([
        [0.6 + 0.5, -0.6 - 0.5],  # G0 renders into p0, p1: both read [1, 0]
        [0.3 - 0.9, -0.3 + 0.9],  # G1: p0 says [1, 0] with .3, p2 says [0, 1] with .9
        [0.0, 0.0],               # G2 is rendered nowhere
        [0.4 - 0.4, -0.4 + 0.4],  # G3: p1 and p2 disagree with equal weight: ties on both bits
    ])
    assert torch.allclose(votes, expected_votes, atol=1e-6)
    assert torch.allclose(weight, torch.tensor([1.1, 1.2, 0.0, 0.8]), atol=1e-6)
    bits = voted_bits(votes, weight, latent > 0.5)
    assert bits.tolist() == [
        [True, False],   # the majority of what G0 renders
        [False, True],   # G1's own latent says [0, 1]; p2's heavier weight wins over p0
        [True, False],   # never rendered: keeps I(latent > 0.5)
        [True, True],    # exact ties: keeps I(latent > 0.5)
    ]
    # the votes of several views add up: a second view where G1 renders [1, 0] with weight 1 flips bit 0 to 1
    more, more_weight = render_weighted_votes(lambda colors: torch.tensor([[0.0, 1.0, 0.0, 0.0]]) @ colors,
                                              torch.tensor([[0.0, 0.0], [0.9, 0.1], [0.0, 0.0], [0.0, 0.0]]))
    assert voted_bits(votes + more, weight + more_weight, latent > 0.5)[1].tolist() == [True, False]


def test_masks_to_levels_by_nesting_and_hierarchical_groups():
    masks = torch.zeros(4, 6, 6, dtype=torch.bool)
    masks[0, :, :3] = True  # object A (left half)
    masks[1, :3, :3] = True  # part A1 inside A
    masks[2, :, 3:] = True  # object B (right half), no part masks
    masks[3, 0, 0] = True  # tiny sub-part inside A1 (depth 2)
    scales = torch.tensor([0.8, 0.4, 0.9, 0.1])
    levels = mask_levels(masks, scales, num_levels=3)
    assert levels.tolist() == [0, 1, 0, 2]
    assert mask_levels(masks, scales, num_levels=2).tolist() == [0, 1, 0, 1]  # deeper masks merge into the finest
    pixels = torch.tensor([0, 5 * 6 + 0, 4, 1])  # (0,0) in A1+sub, (5,0) in A only, (0,4) in B, (0,1) in A1
    membership = masks.reshape(4, -1)[:, pixels].T
    groups = pixel_level_groups(membership, scales, levels, 3)
    assert groups[0].tolist()[0] == groups[0].tolist()[1] == groups[0].tolist()[3] != groups[0].tolist()[2]
    assert groups[1][0] == groups[1][3] != groups[1][1]  # A1 vs the rest of A
    assert groups[2][0] != groups[2][3]  # the sub-part splits A1 at level 3
    # the level-l id determines the level-(l-1) id
    for level in (1, 2):
        for a in range(4):
            for b in range(4):
                if groups[level][a] == groups[level][b]:
                    assert groups[level - 1][a] == groups[level - 1][b]
    # a pixel in no top-level mask is excluded at every level
    lone = pixel_level_groups(torch.zeros(1, 4, dtype=torch.bool), scales, levels, 3)
    assert lone.tolist() == [[-1], [-1], [-1]]


def test_masks_to_levels_with_an_incomplete_object_mask():
    # a thin part (12 px) that the object mask covers only at 50%, and whose 3D scale exceeds the object's:
    # nesting is decided by pixel count, so it is still a part; a neighbour overlapping 40% is not nested
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[0, :, :5] = True  # object (50 px)
    masks[1, 0, 1:] = True  # part: row 0, columns 1..9 (4 of them inside the object)
    masks[1, 1, 9] = True
    masks[1, 1, 1:3] = True  # 2 more inside: 6 of 12 px inside
    assert int((masks[0] & masks[1]).sum()) / int(masks[1].sum()) == pytest.approx(0.5)
    masks[2, 5:, 3:8] = True  # neighbour (25 px), 10 of them inside the object: 40%
    scales = torch.tensor([0.5, 0.7, 0.3])
    assert mask_levels(masks, scales, num_levels=3).tolist() == [0, 1, 0]


def test_mask_balanced_sampling_counts():
    masks = torch.zeros(3, 20, 20, dtype=torch.bool)
    masks[0] = True
    masks[1, :2, :2] = True  # a 4-pixel mask
    generator = torch.Generator().manual_seed(0)
    ids = mask_balanced_pixels(masks, num_random=50, num_mask_pixels=40, num_masks=16, generator=generator)
    assert ids.numel() == 50 + 40  # two non-empty masks, 20 pixels each
    small = masks[1].reshape(-1)[ids[50:]]
    assert int(small.sum()) >= 20  # the small mask gets its share


def test_int32_prefix_compare_selects_exactly_the_unsigned_prefix_group():
    """The click's int32 compare (arithmetic shift of the stored int32) equals the unsigned prefix compare."""
    generator = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 2**32, (16,), generator=generator, dtype=torch.int64)
    groups[:2] = torch.tensor([0, 2**32 - 1])  # all-zero and all-one codes
    codes = groups[torch.randint(16, (500,), generator=generator)] ^ torch.randint(0, 4, (500,), generator=generator)
    stored = to_int32(codes)
    for bits in (1, 2, 12, 22, 30, 32):
        prefixes = signed_prefix(stored, bits)
        assert prefixes.dtype == torch.int32
        unsigned = code_prefix(codes, bits)
        for query in (unsigned[0], unsigned[1], unsigned[7], torch.tensor(2**bits - 1)):
            expected = unsigned == query
            selected = prefix_scores(prefixes, query.reshape(1), bits)
            assert selected.dtype == torch.bool and torch.equal(selected, expected), (bits, int(query))
        two = unsigned[[0, 3]]
        assert torch.equal(prefix_scores(prefixes, two, bits), torch.isin(unsigned, two))


def test_codes_pack_prefix_and_int32_round_trip():
    bits = torch.zeros(3, 32, dtype=torch.bool)
    bits[0, 0] = True  # MSB: the code is >= 2^31, negative as int32
    bits[1, 11] = True  # last bit of level 1
    bits[2, 12] = True  # first bit of level 2
    codes = pack_codes(bits)
    assert codes.tolist() == [1 << 31, 1 << 20, 1 << 19]
    stored = to_int32(codes)
    assert stored.dtype == torch.int32 and stored.element_size() == 4 and int(stored[0]) < 0
    assert torch.equal(unpack_codes(stored, 32), bits)
    assert code_prefix(stored, 12).tolist() == [1 << 11, 1, 0]  # level-1 labels: code >> (32 - 12)
    assert code_prefix(stored, 22).tolist() == [1 << 21, 1 << 10, 1 << 9]


class _Optimizers:
    def __init__(self, optimizers):
        self.optimizers = optimizers


def _small_model(num_points: int = 6):
    from segsplat_ns.methods.binary_gaussian import BinaryGaussianModelConfig

    config = BinaryGaussianModelConfig(rgb_steps=0, random_init=True, num_random=num_points)
    model = config.setup(scene_box=None, num_train_data=1, seed_points=None)
    return model


def _code(text: str) -> Tensor:
    bits = [int(ch) for ch in text.replace(" ", "")]
    return pack_codes(torch.tensor([bits]))[0]


def _text(code: Tensor, num_bits: int, split: int) -> str:
    raw = format(int(code) >> (32 - num_bits), f"0{num_bits}b")
    return raw[:split] + " " + raw[split:]


def test_snap_codes_hierarchical_clean_up_by_hand():
    # two levels of 4 bits; code weights (summed render weights of the Gaussians holding them)
    codes = torch.stack([_code("0000 1111"), _code("0000 1110"), _code("0001 0000"), _code("1111 0000"),
                         _code("1110 0001"), _code("0011 1111")])
    weight = torch.tensor([5.0, 1.0, 1.0, 4.0, 1.0, 0.5])
    # level 1 strings: 0000 (5 + 1 = 6), 1111 (4), 0001 (1), 1110 (1), 0011 (0.5). Heaviest first, radius 1:
    # 0000 claims 0001; 1111 claims 1110; 0011 (2 from 0000) stays its own.
    # level 2 inside 0000: 1111 (5), 1110 (1), 0000 (1, from the snapped 0001 0000): 1111 claims 1110.
    # level 2 inside 1111: 0000 (4) claims 0001 (1, from the snapped 1110 0001).
    out = snap_codes(codes, weight, (4, 4), 1)
    assert [_text(c, 8, 4) for c in out] == ["0000 1111", "0000 1111", "0000 0000", "1111 0000", "1111 0000",
                                             "0011 1111"]
    # radius 2: 0011 is now within reach of 0000 and joins it; its level-2 bits 1111 join that group's 1111
    out2 = snap_codes(codes, weight, (4, 4), 2)
    assert _text(out2[5], 8, 4) == "0000 1111"
    # radius 0: unchanged; the heavier of two strings in reach wins: 0101 is 1 from both 0100 (2) and 0111 (3)
    assert torch.equal(snap_codes(codes, weight, (4, 4), 0), codes)
    tie = snap_codes(torch.stack([_code("0100 0000"), _code("0111 0000"), _code("0101 0000")]),
                     torch.tensor([2.0, 3.0, 0.1]), (4, 4), 1)
    assert [_text(c, 8, 4) for c in tie] == ["0100 0000", "0111 0000", "0111 0000"]
    # level 2 is cleaned only inside a parent: equal level-2 strings under different parents are not merged,
    # and a light level-2 string is not pulled into another parent's heavy one
    split = snap_codes(torch.stack([_code("0000 1111"), _code("1111 1110")]), torch.tensor([9.0, 1.0]), (4, 4), 1)
    assert [_text(c, 8, 4) for c in split] == ["0000 1111", "1111 1110"]


def test_absorb_small_segments_by_hand():
    # two levels of 4 bits. Object 0000: level-2 strings 1111 x6, 0000 x3, 1100 x1 (10 Gaussians);
    # object 1111: 0011 x1 alone, and 1 Gaussian of object 0110 (a floater at level 1)
    codes = torch.stack([_code("0000 1111")] * 6 + [_code("0000 0000")] * 3 + [_code("0000 1100")]
                        + [_code("1111 0011"), _code("0110 0001")])
    # min 20 % of the group: 1100 (1 of 10) is small; it is 2 bits from 1111 and 2 from 0000: the tie goes to
    # the string with more Gaussians (1111); 0000 (3 of 10) stays; 1111 0011 and 0110 0001 are alone in their
    # groups (nothing large to join); level 1 is never cleaned, so the floater keeps its object code
    out = absorb_small_segments(codes, (4, 4), 0.2)
    assert [_text(c, 8, 4) for c in out] == ["0000 1111"] * 6 + ["0000 0000"] * 3 + ["0000 1111", "1111 0011",
                                                                                       "0110 0001"]
    # 35 %: 0000 (3 of 10) is small too and joins 1111 (the only large string, 4 bits away)
    assert [_text(c, 8, 4) for c in absorb_small_segments(codes, (4, 4), 0.35)][:10] == ["0000 1111"] * 10
    assert torch.equal(absorb_small_segments(codes, (4, 4), 0.0), codes)
    # three levels: the level-3 bits are cleaned inside the level-2 group the string moved into
    deep = torch.stack([_code("0000 1111 0101")] * 4 + [_code("0000 0111 0110")])
    deep_out = absorb_small_segments(deep, (4, 4, 4), 0.3)
    assert [format(int(c) >> 20, "012b") for c in deep_out] == ["000011110101"] * 5


def test_prefix_table_maps_a_query_to_the_nearest_stored_prefix_level_by_level():
    codes = torch.stack([_code("0000 1111")] * 3 + [_code("0000 0000")] + [_code("1110 0011")] * 2)
    table = PrefixTable(codes, (4, 4), 1)  # level 2: 8-bit prefixes
    def q(text):
        return code_prefix(_code(text), 8).reshape(1)
    # stored prefixes map to themselves
    assert table.lookup(q("0000 0000")).item() == code_prefix(_code("0000 0000"), 8).item()
    # level 1 first: 1000 is 1 from 0000 and 2 from 1110 -> group 0000, then nearest level-2 bits 0111 -> 1111
    assert table.lookup(q("1000 0111")).item() == code_prefix(_code("0000 1111"), 8).item()
    # level 1 decides first, even where the whole-prefix distance would pick another group: 1000 0011 is 2 bits
    # from 1110 0011 overall but 3 from both 0000 prefixes; its level-1 bits 1000 are nearest to 0000, then the
    # level-2 bits 0011 tie (2 from 1111 and from 0000): the prefix held by more Gaussians
    assert table.lookup(q("1000 0011")).item() == code_prefix(_code("0000 1111"), 8).item()
    assert table.lookup(q("1100 0011")).item() == code_prefix(_code("1110 0011"), 8).item()
    # ties at level 2 (0011 is 2 from 1111 and 2 from 0000 under 0000): the prefix held by more Gaussians
    assert table.lookup(q("0000 0011")).item() == code_prefix(_code("0000 1111"), 8).item()
    # level-1 table
    table1 = PrefixTable(codes, (4, 4), 0)
    assert table1.lookup(code_prefix(_code("0110 0000"), 4).reshape(1)).item() == 0b1110


def test_anchor_normalisation_by_hand():
    # one level of 2 bits, 3 pixels: p0, p1 in group A, p2 in group B; binarised p0 = [1,0], p1 = [1,0], p2 = [1,1]
    features = torch.tensor([[0.9, 0.2], [0.8, 0.1], [0.7, 0.9]])
    groups = torch.tensor([[0, 0, 1]])
    # pair values: (0,1) positive 0; (0,2), (1,2) negative 2 - 1 = 1 (both directions)
    # "pairs": (0 + 0 + 1 + 1 + 1 + 1) / 6
    assert progressive_contrastive_loss(features, groups, (2,)).item() == pytest.approx(4 / 6, abs=1e-5)
    # "anchor": positives: p0 -> 0, p1 -> 0 (p2 has none) -> 0; negatives: p0 -> 1, p1 -> 1, p2 -> (1 + 1) / 2 -> 1
    assert progressive_contrastive_loss(features, groups, (2,), "anchor").item() == pytest.approx(1.0, abs=1e-5)


def test_finalized_model_stores_a_four_byte_code_per_gaussian_and_labels_by_prefix(tmp_path):
    pytest.importorskip("sklearn")
    try:
        model = _small_model(6)
    except Exception as error:  # pragma: no cover - construction needs nerfstudio's scene box
        pytest.skip(f"model construction: {error}")
    latent = model.gauss_params["binary_latent"]
    with torch.no_grad():
        latent.zero_()
        latent[:3, 0] = 1.0  # Gaussians 0-2: level-1 code 100000000000; 3-5: all zero
        latent[0, 12] = 1.0  # Gaussian 0 differs from 1, 2 at level 2
    model.config.snap_radius = 0  # codes 1 bit apart must stay apart here (the clean-up is tested on its own)
    optimizer = torch.optim.Adam([latent], lr=0.005)
    latent.grad = torch.ones_like(latent)
    optimizer.step()
    assert optimizer.state
    model.finalize_codes(_Optimizers({"binary_latent": optimizer}))
    assert not optimizer.state and model.gauss_params["binary_latent"].numel() == 0
    state = model.state_dict()
    per_gaussian = {k: v for k, v in state.items() if v.dim() >= 1 and v.shape[0] == 6 and "gauss_params.means" not in k}
    segmentation = {k: v for k, v in per_gaussian.items() if k.split(".")[-1] not in
                    ("scales", "quats", "features_dc", "features_rest", "opacities")}
    # the int32 code, and the float32 segmentation opacity (opacity-mode separate: the RGB splat keeps its own)
    assert {k: v.numel() * v.element_size() for k, v in segmentation.items() if v.numel()} == {"binary_codes": 4 * 6,
                                                                               "gauss_params.seg_opacities": 4 * 6}
    assert state["binary_codes"].dtype == torch.int32
    # levels: coarse groups {0,1,2} and {3,4,5}; level 2 splits 0 from 1, 2
    model.level_scale_sum.copy_(torch.tensor([0.8, 0.3, 0.0]))
    model.level_scale_count.copy_(torch.tensor([1.0, 1.0, 0.0]))
    assert model.level_for_scale(0.9) == 0 and model.level_for_scale(0.2) == 1  # level 3 has no masks
    assert [model.level_for_scale(s) for s in (0.0, 0.5, 0.6, 1.0)] == [1, 1, 0, 0]  # boundary midway: 0.55
    # histograms: the scale axis is cut into monotone ranges maximising the summed normalised histograms.
    # level 1: 20 masks, 10 at 0.70..0.75 and 10 at 0.80..0.85; level 2: 90 masks at 0..0.3 and 10 at 0.75..0.80.
    model.level_scale_hist[0, 14] = 10.0
    model.level_scale_hist[0, 16] = 10.0
    model.level_scale_hist[1, 0:6] = 15.0
    model.level_scale_hist[1, 15] = 10.0
    model.level_scale_sum.copy_(torch.tensor([15.5, 20.5, 0.0]))
    model.level_scale_count.copy_(torch.tensor([20.0, 100.0, 0.0]))
    # Level 1 above level 2 keeps 1.0 + 0.9; giving level 2 the 0.75..0.80 bin too costs level 1 half its masks
    # (0.1 gained, 0.5 lost): monotone, so 0.77 is level 1 although 10 level-2 masks and no level-1 mask are there
    assert model.level_for_scale(0.77) == 0 and model.level_for_scale(0.99) == 0
    assert model.level_for_scale(0.2) == 1 and model.level_for_scale(0.0) == 1
    levels = [model.level_for_scale(b / 20 + 0.01) for b in range(20)]
    assert levels == sorted(levels, reverse=True)
    # the empty bins 0.30..0.70 go to the nearer mean (level 1: 0.775, level 2: 0.205): cut at 0.49
    assert model.level_for_scale(0.47) == 1 and model.level_for_scale(0.52) == 0
    # a level with under 5% of the masks gets no range (3 of 123 masks), however concentrated
    model.level_scale_hist[2, 0] = 3.0
    model.level_scale_count[2] = 3.0
    assert model.level_for_scale(0.01) == 1
    assert model.scale_for_level(2) is None  # the viewer's level selector says so instead of selecting
    model.level_scale_hist[2, 0] = 30.0  # 30 of 150: level 3 takes the bottom bin
    model.level_scale_count[2] = 30.0
    assert model.level_for_scale(0.01) == 2 and model.level_for_scale(0.2) == 1
    assert model.scale_for_level(2) == pytest.approx(0.025)  # its only bin, 0..0.05
    assert [model.level_for_scale(model.scale_for_level(level)) for level in range(3)] == [0, 1, 2]
    model.level_scale_sum.copy_(torch.tensor([0.8, 0.3, 0.0]))
    model.level_scale_count.copy_(torch.tensor([1.0, 1.0, 0.0]))
    model.level_scale_hist.zero_()
    assert model.labels_at_scale(0.9).tolist() == [0, 0, 0, 1, 1, 1] or model.labels_at_scale(0.9).tolist() == [1, 1, 1, 0, 0, 0]
    fine = model.labels_at_scale(0.2)
    assert fine[1] == fine[2] != fine[0] and fine[3] == fine[4] == fine[5]
    query = code_prefix(torch.tensor([1 << 31]), 12)
    assert model.gaussian_scores(query, 0.9).tolist() == [True, True, True, False, False, False]
    # a fresh model loads the 4-byte codes (as ns-eval does)
    other = _small_model(6)
    other.load_state_dict(state)
    assert bool(other.codes_finalized) and torch.equal(other.binary_codes, state["binary_codes"])
    assert other.gaussian_scores(query, 0.9).tolist() == [True, True, True, False, False, False]


# ---------------------------------------------------------------------------------------------------------
# The real CLIs on the tiny scene (slow)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ns_train_and_eval_binary_gaussian(workdir, scene, trained_binary):
    from conftest import BIN, FEATURE_STEPS, RGB_STEPS, checkpoint_of, run

    config = trained_binary
    state = torch.load(checkpoint_of(config), map_location="cpu", weights_only=False)
    assert state["step"] == RGB_STEPS + FEATURE_STEPS - 1
    pipeline = state["pipeline"]
    count = pipeline["_model.gauss_params.means"].shape[0]
    codes = pipeline["_model.binary_codes"]
    assert codes.dtype == torch.int32 and codes.shape == (count,)
    assert pipeline["_model.gauss_params.binary_latent"].numel() == 0  # no float latent kept
    assert bool(pipeline["_model.codes_finalized"]) and bool(pipeline["_model.features_trained"])
    assert not state["optimizers"]["binary_latent"]["state"]  # nor its Adam moments
    assert pipeline["_model.level_scale_count"][0] > 0

    output = workdir / "binary-eval.json"
    result = run([str(BIN / "ns-eval"), "--load-config", str(config), "--output-path", str(output)], cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads(output.read_text())["results"]
    assert metrics["psnr"] > 15.0
    assert metrics["seg_object_count"] == 2
    assert 0.0 <= metrics["seg_object_miou"] <= 1.0 and 0.0 <= metrics["seg_part_miou"] <= 1.0
    assert "decomp_object_miou" in metrics  # labels by code prefix, scored as a decomposition

    # the .ply export works as for saga: a click on the largest object of eval view 0
    import numpy as np
    from PIL import Image

    from segsplat_ns.eval.protocol import interior_point
    from segsplat_ns.export import read_splat_ply

    meta = json.loads((scene / "gt" / "meta.json").read_text())
    objects = np.asarray(Image.open(scene / "gt" / "objects" / (Path(meta["eval_frames"][0]).stem + ".png")))
    ids, counts = np.unique(objects[objects > 0], return_counts=True)
    x, y = interior_point(objects == ids[np.argmax(counts)])
    ply = workdir / "binary-selection.ply"
    result = run([str(BIN / "segsplat"), "segment", "--load-config", str(config), "--camera", "0", "--pixel", str(x),
                  str(y), "--scale", "0.9", "--output", str(ply)], cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    selected = int(result.stdout.split("Selected ")[1].split(" of ")[0])
    assert len(read_splat_ply(ply)["x"]) == selected > 0 and ply.with_suffix(".png").exists()

    # --level chooses the code level directly; a level-2 group lies inside its level-1 group
    counts = {}
    for level in (1, 2):
        out = workdir / f"binary-level{level}.ply"
        result = run([str(BIN / "segsplat"), "segment", "--load-config", str(config), "--camera", "0", "--pixel",
                      str(x), str(y), "--level", str(level), "--output", str(out)], cwd=workdir)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert f"level {level} of 3" in result.stdout
        counts[level] = len(read_splat_ply(out)["x"])
    assert 0 < counts[2] <= counts[1]
    result = run([str(BIN / "segsplat"), "segment", "--load-config", str(config), "--pixel", str(x), str(y),
                  "--level", "4"], cwd=workdir)
    assert result.returncode != 0 and "levels 1..3" in result.stdout + result.stderr


def test_level_option_is_refused_for_a_continuous_scale(trained, workdir):
    from conftest import BIN, run

    result = run([str(BIN / "segsplat"), "segment", "--load-config", str(trained), "--pixel", "1", "1",
                  "--level", "1"], cwd=workdir)
    assert result.returncode != 0 and "continuous scale" in result.stdout + result.stderr


def test_opacity_lr_is_two_percent_in_the_feature_stage():
    from segsplat_ns.methods.binary_gaussian import BinaryGaussianModelConfig

    config = BinaryGaussianModelConfig(rgb_steps=10, random_init=True, num_random=6, opacity_mode="shared")
    model = config.setup(scene_box=None, num_train_data=1, seed_points=None)
    opacities = model.gauss_params["opacities"]
    optimizers = _Optimizers({"opacities": torch.optim.Adam([opacities], lr=0.05)})
    model.step = 3  # stage one: splatfacto's lr
    model._set_opacity_lr(optimizers, 3)
    assert optimizers.optimizers["opacities"].param_groups[0]["lr"] == pytest.approx(0.05)
    model.step = 10  # feature stage: 2% of the initial lr (paper: 0.001)
    model._set_opacity_lr(optimizers, 10)
    assert optimizers.optimizers["opacities"].param_groups[0]["lr"] == pytest.approx(0.001)


def _opacity_camera():
    from nerfstudio.cameras.cameras import Cameras

    return Cameras(camera_to_worlds=torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3]]]),
                   fx=40.0, fy=40.0, cx=16.0, cy=16.0, width=32, height=32)


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_opacity_receives_gradients_from_the_feature_render_only_when_fine_tuned(mode):
    """Sec. 3.5: the feature stage's render is differentiable in the opacity it reads (and in nothing else of the
    geometry): the segmentation copy in "separate" mode, the RGB splat's own in "shared" mode."""
    from segsplat_ns.methods.binary_gaussian import BinaryGaussianModelConfig

    camera = _opacity_camera()
    tuned_key = "seg_opacities" if mode == "separate" else "opacities"
    for finetune in (True, False):
        torch.manual_seed(0)
        config = BinaryGaussianModelConfig(rgb_steps=0, random_init=True, num_random=50, random_scale=1.0,
                                           opacity_finetune=finetune, opacity_mode=mode)
        model = config.setup(scene_box=None, num_train_data=1, seed_points=None)
        model.train()
        features, _ = model.render_features(model.feature_colors(), camera)
        features.sum().backward()
        params = model.gauss_params
        assert model.latent.grad is not None and model.latent.grad.abs().sum() > 0
        assert (params[tuned_key].grad is not None and params[tuned_key].grad.abs().sum() > 0) == finetune
        others = {"means", "scales", "quats", "opacities", "seg_opacities"} - {tuned_key}
        assert all(params[key].grad is None for key in others)


def test_separate_opacity_leaves_the_rgb_render_and_the_export_unchanged():
    """By default the feature stage tunes a copy of the opacities made when the stage starts: after an optimizer
    step the RGB render is bit-identical and the features are rendered with the tuned copy."""
    from segsplat_ns.methods.binary_gaussian import BinaryGaussianModelConfig

    camera = _opacity_camera()
    torch.manual_seed(0)
    config = BinaryGaussianModelConfig(rgb_steps=0, random_init=True, num_random=50, random_scale=1.0)
    model = config.setup(scene_box=None, num_train_data=1, seed_points=None)
    model.eval()
    with torch.no_grad():
        rgb_before = model.get_outputs_for_camera(camera)["rgb"].clone()
    model.train()
    opacities_before = model.gauss_params["opacities"].detach().clone()
    features, _ = model.render_features(model.feature_colors(), camera)
    assert bool(model.seg_opacity_copied)
    assert torch.equal(model.gauss_params["seg_opacities"].detach(), opacities_before)
    optimizer = torch.optim.Adam([model.gauss_params["seg_opacities"]], lr=0.05)
    features.sum().backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        rgb_after = model.get_outputs_for_camera(camera)["rgb"]
        tuned = model.feature_geometry(None, detach=True)["opacities"]
    assert torch.equal(model.gauss_params["opacities"].detach(), opacities_before)
    assert torch.equal(rgb_after, rgb_before)
    assert not torch.equal(model.gauss_params["seg_opacities"].detach(), opacities_before)
    assert torch.equal(tuned, torch.sigmoid(model.gauss_params["seg_opacities"].detach()).reshape(-1))
