"""lift: the one-pass weights, FlashSplat's vote, the association, Occam's LGS features and the click codes — by hand
(two Gaussians, two views, masks drawn by hand) and against brute force — then the tiny `ns-train lift` run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segsplat_ns.methods.lift import association, codes, features, labels
from segsplat_ns.methods.lift.levels import COARSER, nested_level_maps
from segsplat_ns.methods.lift.weights import composite_weights, index_map_weights

# Two Gaussians g0, g1; two views A, B of 1 x 2 pixels. W[view][pixel] = (w_g0, w_g1), the compositing weights.
WEIGHTS = {"A": [[0.6, 0.3], [0.0, 0.8]], "B": [[0.5, 0.0], [0.2, 0.7]]}
# Each view has two masks, one per pixel: mask 0 = {p0}, mask 1 = {p1}; one level (index maps [1, 1, 2]).
MAPS = torch.tensor([[[0, 1]]])


def linear_render(view: str):
    """A renderer that is exactly the hand-made weights: render(c)[p] = sum_i W[p, i] c_i."""
    w = torch.tensor(WEIGHTS[view])[None]  # [1, 2 pixels, 2 Gaussians]
    return lambda colours: torch.einsum("hwn,nc->hwc", w, colours)


def view_weights(view: str):
    total, (level,) = index_map_weights(linear_render(view), 2, MAPS, num_masks=2)
    return total, level


def dense(level, num_masks=2):
    out = torch.zeros(2, num_masks)
    out[level.rows, level.cols] = level.values
    return out


def test_weights_by_hand():
    total, level = view_weights("A")
    assert torch.allclose(total, torch.tensor([0.6, 1.1]))  # g0: 0.6 + 0; g1: 0.3 + 0.8
    assert torch.allclose(dense(level), torch.tensor([[0.6, 0.0], [0.3, 0.8]]))
    total, level = view_weights("B")
    assert torch.allclose(total, torch.tensor([0.7, 0.7]))
    assert torch.allclose(dense(level), torch.tensor([[0.5, 0.2], [0.0, 0.7]]))


def test_labels_association_and_vote_by_hand():
    per_view = {}
    for view in "AB":
        total, level = view_weights(view)
        per_view[view] = (total, level, labels.view_labels(level.rows, level.cols, level.values, total))
    # A: g0 -> mask 0 (0.6 > 0), g1 -> mask 1 (0.8 > 0.3); B: g0 -> mask 0 (0.5 > 0.2), g1 -> mask 1
    assert per_view["A"][2].tolist() == [0, 1] and per_view["B"][2].tolist() == [0, 1]
    ids = association.associate([per_view["A"][2], per_view["B"][2]], [2, 2], threshold=0.5)
    assert ids.tolist() == [0, 1, 0, 1]  # A0 ~ B0 (both exactly {g0}), A1 ~ B1
    rows = torch.cat([per_view[v][1].rows for v in "AB"])
    cols = torch.cat([per_view[v][1].cols + offset for v, offset in (("A", 0), ("B", 2))])
    values = torch.cat([per_view[v][1].values for v in "AB"])
    total = per_view["A"][0] + per_view["B"][0]
    # g0: instance 0 gets 0.6 + 0.5 = 1.1, instance 1 gets 0.2; g1: instance 0 0.3, instance 1 0.8 + 0.7 = 1.5
    assert labels.instance_labels(rows, ids[cols], values, total, 2).tolist() == [0, 1]


def test_background_bias_and_unseen():
    rows, cols = torch.tensor([0, 1]), torch.tensor([0, 0])
    values, total = torch.tensor([0.55, 0.2]), torch.tensor([1.0, 0.0])
    # Gaussian 0: share 0.55 against a background share 0.45; Gaussian 1 has no weight at all
    assert labels.view_labels(rows, cols, values, total).tolist() == [0, labels.UNSEEN]
    assert labels.instance_labels(rows, cols, values, total, 1, background_bias=0.0).tolist() == [0, -1]
    assert labels.instance_labels(rows, cols, values, total, 1, background_bias=0.05).tolist() == [0, -1]
    assert labels.instance_labels(rows, cols, values, total, 1, background_bias=0.2).tolist() == [-1, -1]


def test_association_never_joins_two_masks_of_one_view():
    # A: g0 -> mask 0, g1 and g2 -> mask 1; B: all three -> mask 0. Jaccard(A1, B0) = 2/3, Jaccard(A0, B0) = 1/3
    view_a, view_b = torch.tensor([0, 1, 1]), torch.tensor([0, 0, 0])
    scores = association.pair_scores(view_a, view_b, 2, 1)
    assert torch.allclose(scores, torch.tensor([[1 / 3], [2 / 3]], dtype=torch.float64))
    # both pass 0.3, but A0 cannot join the instance that already holds A1
    assert association.associate([view_a, view_b], [2, 1], threshold=0.3).tolist() == [0, 1, 1]
    # Gaussians one view does not see do not count: g2 unseen in B -> Jaccard(A1, B0) = 1/2
    view_b = torch.tensor([0, 0, labels.UNSEEN])
    assert math.isclose(float(association.pair_scores(view_a, view_b, 2, 1)[1, 0]), 0.5)


def test_occam_features_by_hand():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])  # A0, A1, B0, B1
    entries = [view_weights(v)[1] for v in "AB"]
    rows = torch.cat([e.rows for e in entries])
    cols = torch.cat([entries[0].cols, entries[1].cols + 2])
    values = torch.cat([e.values for e in entries])
    lifted = features.weighted_mean_features(rows, cols, values, embeddings, 2)
    # g0: 0.6 [1, 0] + 0.5 [1, 0] + 0.2 [0.6, 0.8] = [1.22, 0.16]; g1: 0.3 [1, 0] + 0.8 [0, 1] + 0.7 [0.6, 0.8]
    expected = torch.tensor([[1.22, 0.16], [0.72, 1.36]])
    assert torch.allclose(lifted, expected / expected.norm(dim=-1, keepdim=True), atol=1e-6)
    # a Gaussian in no mask has no feature
    assert features.weighted_mean_features(rows[:0], cols[:0], values[:0], embeddings, 1).abs().sum() == 0


def test_nested_level_maps_by_hand():
    whole = np.ones((4, 4), bool)
    part = np.zeros((4, 4), bool)
    part[:, :2] = True
    sub = np.zeros((4, 4), bool)
    sub[:2, :2] = True
    maps, level = nested_level_maps(np.stack([sub, whole, part]))
    assert level.tolist() == [2, 0, 1]  # subpart, whole, part (0 = coarsest)
    assert (maps[0] == 1).all()  # the whole everywhere
    # the part; where only the whole covers a pixel the view abstains at the finer levels
    assert (maps[1][:, :2] == 2).all() and (maps[1][:, 2:] == COARSER).all()
    assert (maps[2][:2, :2] == 0).all() and (maps[2][2:, :2] == 2).all() and (maps[2][:, 2:] == COARSER).all()
    voting, _ = nested_level_maps(np.stack([sub, whole, part]), abstain=False)  # coarser-pixels vote
    assert (voting[1][:, 2:] == 1).all() and (voting[2][:, 2:] == 1).all() and (voting[2][2:, :2] == 2).all()


def test_a_part_poking_out_of_its_object_does_not_cut_the_whole_level():
    # a jittered part whose edge leaves its object is not contained at 0.9, so it is a whole too: the whole
    # level keeps the larger mask, the finer levels the part
    whole = np.zeros((6, 6), bool)
    whole[1:5, 1:5] = True
    part = np.zeros((6, 6), bool)
    part[0:3, 0:3] = True  # 9 pixels, 5 outside the object
    maps, level = nested_level_maps(np.stack([part, whole]))
    assert level.tolist() == [0, 0]
    assert (maps[0][whole] == 1).all() and (maps[0][0, 0:3] == 0).all()  # only the part's own pixels
    assert (maps[2][part & whole] == 0).all() and (maps[2][whole & ~part] == COARSER).all()
    assert (maps[2][part & ~whole] == COARSER).all()  # there the part is the whole level's own mask


def test_fine_levels_fall_back_to_the_coarser_label_per_gaussian():
    # Gaussian 0: a part's mask in view 0; view 1 has only the whole there and abstains at the fine levels.
    # Gaussian 1: only ever inside the whole (an object without parts) -> its fine label is the whole's.
    from segsplat_ns.methods.lift.model import _without_abstentions
    from segsplat_ns.methods.lift.weights import LevelWeights

    w = LevelWeights(torch.tensor([0, 1, 0]), torch.tensor([0, 1, 1]), torch.tensor([0.5, 0.8, 0.3]))
    kept, seen = _without_abstentions(w, 1, torch.tensor([0.9, 0.8]))
    assert kept.rows.tolist() == [0] and kept.cols.tolist() == [0]
    assert torch.allclose(seen, torch.tensor([0.6, 0.0]))  # 0.9 - 0.3; 0.8 - 0.8


def test_codes_decode_the_vote():
    table = codes.instance_codes(40, 32)
    assert torch.allclose(table[:32] @ table[:32].T, torch.eye(32), atol=1e-5)  # exact for the first 32
    assert torch.allclose(table.norm(dim=-1), torch.ones(40))
    rendered = torch.stack([0.55 * table[2] + 0.45 * table[0], 0.05 * table[1], 0.9 * table[35]])
    assert codes.decode(rendered, table).tolist() == [2, -1, 35]


@pytest.mark.parametrize("rasterizer", ["numba", "reference"])
def test_vector_jacobian_product_equals_brute_force_weights(rasterizer, monkeypatch):
    """A[i, c] = sum_p w_i(p) t[p, c], against w_i(p) read off renders of one-hot colours (render(I)[p, i])."""
    from segsplat_ns.rendering import rasterize

    monkeypatch.setenv("SEGSPLAT_CPU_RASTERIZER", rasterizer)
    g = torch.Generator().manual_seed(0)
    n, size = 12, 16
    means = torch.cat([torch.rand(n, 2, generator=g) * 1.2 - 0.6, torch.rand(n, 1, generator=g) * 2 + 2], -1)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    scales = torch.rand(n, 3, generator=g) * 0.2 + 0.05
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    viewmat, K = torch.eye(4)[None], torch.tensor([[[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]])

    def render(colours):
        return rasterize(means, quats, scales, opacities, colours, viewmat, K, size, size)[0][0]

    per_pixel = render(torch.eye(n))  # [H, W, N]: w_i(p)
    targets = (torch.rand(size, size, 3, generator=g) > 0.5).float()
    brute = torch.einsum("hwn,hwc->nc", per_pixel, targets)
    assert brute.abs().sum() > 1.0  # the Gaussians are in view
    assert torch.allclose(composite_weights(render, n, targets), brute, atol=1e-5)


@pytest.mark.slow
def test_tiny_lift_run_clicks_texts_and_stores_compact_labels(train_run, workdir):
    from conftest import checkpoint_of

    from segsplat_ns.runs import load_run
    from segsplat_ns.segmenter import Segmenter

    config = train_run("lift")
    checkpoint = checkpoint_of(config)
    from conftest import RGB_STEPS

    # the feature stage is one step whatever --max-num-iterations said: the last checkpoint is step RGB_STEPS
    assert checkpoint.name == f"step-{RGB_STEPS:09d}.ckpt"
    _, pipeline, _, _ = load_run(config, test_mode="test")
    model = pipeline.model
    assert model.has_features and model.level_labels.dtype == torch.int16
    assert tuple(model.level_labels.shape) == (model.num_points, 3)
    assert model.language_features.dtype == torch.float16 and model.language_features.shape[:2] == (model.num_points, 3)
    ground_truth = pipeline.datamanager.eval_ground_truth()
    from segsplat_ns.eval.protocol import evaluate_segmentation

    metrics, _ = evaluate_segmentation(Segmenter(model), pipeline.datamanager.eval_dataset.cameras, ground_truth)
    assert metrics["seg_object_miou"] > 0.8, metrics
    # every level is a partition: a click selects exactly the Gaussians of one label
    labels_whole = model.labels_at_scale(1.0)
    assert labels_whole.shape[0] == model.num_points and int(labels_whole.min()) == 0
