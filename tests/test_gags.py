"""GAGS's maths on hand-computed examples (Eq. 1, 3-6), its decoders, and `ns-train gags` end to end on the tiny
synthetic scene (whose language features are the scene's stand-in for CLIP)."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from segsplat_ns.eval.metrics import iou
from segsplat_ns.methods.gags import loss as L
from segsplat_ns.methods.gags.decoder import FeatureDecoder, GranularityDecoder
from segsplat_ns.methods.gags.prompts import minimum_visible_depth, patch_prompt_counts, sample_prompt_points

# ---- Eq. 3-6 -------------------------------------------------------------------------------------------------

F_S, F_P, F_W = [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]


def test_level_targets_read_each_level_and_mark_missing_masks():
    features = torch.tensor([F_S, F_P, F_W])
    index_maps = torch.tensor([[0, -1], [1, 1], [2, 2]])  # pixel 1 has no subpart mask
    targets, valid = L.level_targets(index_maps, features)
    assert valid.tolist() == [[True, False], [True, True], [True, True]]
    assert targets[:, 0].tolist() == [F_S, F_P, F_W]
    assert targets[0, 1].tolist() == [0.0, 0.0]


def test_distill_eq3_by_hand():
    """f_clip = 0, targets (1,0), (0,1), (1,1), alpha (0.5, 0.25, 0.25): 0.5*1 + 0.25*1 + 0.25*2 = 1.25."""
    targets = torch.tensor([[F_S], [F_P], [F_W]])  # [3, 1, 2]
    alpha = torch.tensor([[0.5, 0.25, 0.25]])
    f = torch.zeros(1, 2)
    assert L.distill_map(f, targets, alpha).tolist() == [1.25]
    # the authors' form: L1 to 0.5 (1,0) + 0.25 (0,1) + 0.25 (1,1) = (0.75, 0.5), averaged over channels
    assert L.distill_map_code(f, targets, alpha).tolist() == [pytest.approx(0.625)]


def test_present_alpha_is_a_softmax_over_the_levels_present():
    """eta (ln 2, 5, 0): over levels s and w only, softmax(ln 2, 0) = (2/3, 1/3); a pixel with no level gets zeros;
    even when the absent level dominates eta by far (alpha underflows elsewhere), the present ones share 1."""
    eta = torch.tensor([[math.log(2), 5.0, 0.0], [0.2, 0.3, 0.5], [0.0, 200.0, 1.0]])
    valid = torch.tensor([[True, False, True], [False, False, False], [True, False, True]])
    out = L.present_alpha(eta, valid)
    assert out[0].tolist() == [pytest.approx(2 / 3), 0.0, pytest.approx(1 / 3)]
    assert out[1].tolist() == [0.0, 0.0, 0.0]
    assert float(out[2].sum()) == pytest.approx(1.0) and float(out[2, 1]) == 0.0


def test_level_distill_balances_each_levels_masks_then_averages_levels():
    """decoded-levels every: subpart distances 1, 1, 3 over masks {0, 0, 1} -> (1 + 3) / 2 = 2; no part mask at all
    (skipped); whole distances 2, 2, 2 over one mask -> 2; the mean over the two levels present is 2. The
    distances are the per-level squared errors of each head against its own level's target."""
    distances = torch.tensor([[1.0, 1.0, 3.0], [5.0, 5.0, 5.0], [2.0, 2.0, 2.0]])
    index_maps = torch.tensor([[0, 0, 1], [-1, -1, -1], [2, 2, 2]])
    assert float(L.level_distill(distances, index_maps)) == pytest.approx(2.0)
    f_levels = torch.tensor([[F_S, F_P, F_W]])  # one pixel, each head exactly on one target
    targets = torch.tensor([[F_S], [F_W], [F_W]])  # [3, 1, 2]
    assert L.level_distances(f_levels, targets).tolist() == [[0.0], [1.0], [0.0]]


def test_entropy_eq4_by_hand():
    alpha = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert float(L.entropy(alpha)) == pytest.approx(math.log(2) / 2, abs=1e-5)
    uniform = torch.full((1, 3), 1 / 3)
    assert float(L.entropy(uniform)) == pytest.approx(math.log(3), abs=1e-5)


def test_region_average_eq5_equals_beta_weighting():
    """Regions of 3 and 1 pixels with losses 1,1,1 and 4: each region counts once -> (1 + 4) / 2 = 2.5, which is
    beta_r = mean size / size (2/3 and 2) times the loss, averaged over pixels; the plain mean is 1.75."""
    values = torch.tensor([1.0, 1.0, 1.0, 4.0])
    regions = torch.tensor([0, 0, 0, 7])
    assert float(L.region_average(values, regions)) == pytest.approx(2.5)
    beta = torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0])
    assert float((beta * values).mean()) == pytest.approx(2.5)
    assert float(L.region_average(values, torch.tensor([0, 0, -1, -1]))) == pytest.approx(1.0)  # -1: no region
    assert float(L.region_average(values, torch.full((4,), -1))) == 0.0


def test_consistency_eq6_by_hand():
    """Region {0, 2} (mean 1, deviations 1 and 1) and region {5}: (1 + 1) / 2 + 0 = 1.0 (paper); the authors' form
    is size x unbiased variance / pixels = 2 x 2 / 3 over regions of 2+ pixels."""
    features = torch.tensor([[0.0], [2.0], [5.0]])
    regions = torch.tensor([3, 3, 4])
    assert float(L.consistency(features, regions)) == pytest.approx(1.0)
    assert float(L.consistency_code(features, regions)) == pytest.approx(4 / 3)
    two_channels = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
    assert float(L.consistency(two_channels, torch.tensor([0, 0]))) == pytest.approx((1 + 4 + 1 + 4) / 2)


def test_region_map_takes_each_pixels_argmax_level():
    index_maps = torch.tensor([[10, 11], [20, 21], [30, -1]])
    alpha = torch.tensor([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    assert L.region_map(index_maps, alpha, 1, 2, smooth=1).tolist() == [30, 11]


# ---- Eq. 1 ----------------------------------------------------------------------------------------------------


def test_prompt_density_eq1_two_views_at_d_and_2d():
    """One object seen from distance d (the closest view: MD = D) and from 2d: 1:4 prompt densities."""
    d = 1.5
    near = patch_prompt_counts(torch.full((8, 8), d), torch.full((8, 8), d), grid=(2, 2), points_per_patch=4)
    far = patch_prompt_counts(torch.full((8, 8), 2 * d), torch.full((8, 8), d), grid=(2, 2), points_per_patch=4)
    assert near.tolist() == [[4, 4], [4, 4]]
    assert far.tolist() == [[16, 16], [16, 16]]
    # a patch half near, half far: mean of the squared ratios (1 + 4) / 2 = 2.5 -> 10 points
    depth = torch.full((8, 8), d)
    depth[:, :2] = 2 * d
    mixed = patch_prompt_counts(depth, torch.full((8, 8), d), grid=(2, 2), points_per_patch=4)
    assert mixed.tolist() == [[10, 4], [10, 4]]
    # pixels without depth are left out; a patch without any gets n; the clamp applies
    depth[:4, :4] = float("inf")
    assert patch_prompt_counts(depth, torch.full((8, 8), d), grid=(2, 2), points_per_patch=4)[0, 0] == 4
    assert patch_prompt_counts(torch.full((8, 8), 9 * d), torch.full((8, 8), d), grid=(1, 1), points_per_patch=4,
                               clamp=(1, 100)).item() == 100  # fmt: skip


def test_minimum_visible_depth_with_occlusion():
    """Two views, three Gaussians. Gaussian 0 is seen at depth 2 and 4: MD 2. Gaussian 1 projects onto a pixel
    whose rendered depth is 1 (something in front) in view 0: occluded there, so its MD is view 1's 3.
    Gaussian 2 is outside both images: never visible (inf)."""
    rendered = torch.tensor([[[2.0, 1.0]], [[4.0, 3.0]]])  # [V=2, H=1, W=2]
    depths = torch.tensor([[2.0, 2.5, 1.0], [4.0, 3.0, 1.0]])
    pixels = torch.tensor([[[0, 0], [1, 0], [5, 0]], [[0, 0], [1, 0], [-1, 0]]])
    md = minimum_visible_depth(depths, pixels, rendered)
    assert md.tolist() == [2.0, 3.0, float("inf")]


def test_prompt_points_follow_counts_and_density():
    counts = torch.tensor([[3, 0], [1, 2]])
    density = torch.zeros(4, 4)
    density[0, 1] = 1.0  # top-left patch: all mass on pixel (x=1, y=0)
    g = torch.Generator().manual_seed(0)
    points = sample_prompt_points(counts, density, g)
    assert points.shape == (6, 2)
    assert points[:3].tolist() == [[0.375, 0.125]] * 3  # pixel centre (1.5 / 4, 0.5 / 4)
    assert ((points[3:] >= 0) & (points[3:] <= 1)).all()
    assert (points[3:, 1] >= 0.5).all()  # bottom patches


# ---- Eq. 2: the decoders --------------------------------------------------------------------------------------


def test_decoders_shapes_and_ranges():
    torch.manual_seed(0)
    features = torch.randn(5, 7, 16)
    f_clip = FeatureDecoder(16, 512)(features)
    alpha = GranularityDecoder(16)(features)
    assert f_clip.shape == (5, 7, 512) and alpha.shape == (5, 7, 3)
    torch.testing.assert_close(f_clip.norm(dim=-1), torch.ones(5, 7))
    torch.testing.assert_close(alpha.sum(-1), torch.ones(5, 7))
    assert (alpha > 0).all()
    levels = FeatureDecoder(16, 512, heads=3)(features)  # decoded-levels every: a unit feature per granularity
    assert levels.shape == (5, 7, 3, 512)
    torch.testing.assert_close(levels.norm(dim=-1), torch.ones(5, 7, 3))


@pytest.mark.parametrize("preset, width", [("paper", 512), ("segsplat", 3 * 512)])
def test_the_paper_preset_decodes_one_feature_and_ours_one_per_level(preset, width):
    from segsplat_ns.methods.gags import GagsModelConfig

    config = GagsModelConfig(rgb_steps=0, random_init=True, num_random=20, preset=preset)
    model = config.setup(scene_box=None, num_train_data=1, seed_points=None)
    assert model.feature_decoder.out.out_features == width
    assert model.every_level == (preset == "segsplat") and not model.trained_levels.any()


def test_levels_with_few_training_masks_are_not_answered():
    """A level is answered when its masks covered >= min_level_share (0.1) of the best-covered level's training
    pixels: alpha's argmax at inference ranges over those levels; before training, over all three."""
    from segsplat_ns.methods.gags import GagsModelConfig

    model = GagsModelConfig(rgb_steps=0, random_init=True, num_random=20).setup(scene_box=None, num_train_data=1,
                                                                               seed_points=None)  # fmt: skip
    f = torch.randn(6, 16)
    with torch.no_grad():
        eta = model.granularity_decoder.logits(f)
        assert torch.equal(model.granularity_logits(f), eta)  # nothing recorded yet
        model.level_pixels.copy_(torch.tensor([50.0, 9.0, 100.0]))  # the middle level: 9 % of the best one's pixels
        assert model.trained_levels.tolist() == [True, False, True]
        got = model.granularity_logits(f)
        assert torch.isinf(got[:, 1]).all() and torch.equal(got[:, [0, 2]], eta[:, [0, 2]])
        assert model.best_level(torch.tensor([0.2, 0.9, 0.6])) == 2
        model.level_pixels.copy_(torch.tensor([50.0, 10.0, 100.0]))  # 10 %: answered
        assert model.trained_levels.tolist() == [True, True, True]
        assert model.best_level(torch.tensor([0.2, 0.9, 0.6])) == 1


# ---- Eq. 1 on a trained run, through the pipeline -------------------------------------------------------------


@contextmanager
def one_feature_step(pipeline):
    """The feature loss on one training view, in training mode: (losses, batch); gradients cleared and eval mode
    restored after."""
    model = pipeline.model
    pipeline.prepare_feature_stage()
    camera, batch = pipeline.datamanager.next_train(0)
    model.train()
    try:
        features_map, _ = model.render_features(model.feature_colors(), camera)
        yield model.feature_loss_dict({"features": features_map}, batch), batch
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.fixture(scope="module")
def gags_pipeline(train_run):
    from segsplat_ns.runs import load_run

    _, pipeline, _, _ = load_run(train_run("gags"), test_mode="test")
    return pipeline


@pytest.mark.slow
def test_depth_aware_prompts_prompt_sam_through_the_pipeline(gags_pipeline, monkeypatch, tmp_path):
    """The tiny gags run places SAM's prompts by Eq. 1 (>= 1 point in each of the 8 x 8 patches, inside the image),
    and the pipeline hands them to a prompt-taking mask source before extracting masks (a random-weight SAM)."""
    from test_masks import tiny_sam

    from segsplat_ns.masks.sources import SamMaskSource

    pipeline = gags_pipeline
    cameras = pipeline.datamanager.train_dataset.cameras
    pipeline.model.eval()
    points = pipeline.model.sam_prompt_points(cameras)
    assert len(points) == len(cameras)
    for p in points:
        assert p.shape[1] == 2 and p.shape[0] >= 64 and (p >= 0).all() and (p <= 1).all()
    assert len({len(p) for p in points}) > 1, "views at different distances get different numbers of points"

    datamanager = pipeline.datamanager
    source = SamMaskSource.from_model(tiny_sam(), model_id="tiny", points_per_side=2, pred_iou_thresh=0.0,
                                      stability_score_thresh=0.0, min_mask_region_area=0)  # fmt: skip
    monkeypatch.setattr(datamanager, "_mask_source", source)
    monkeypatch.setattr(datamanager, "train_masks", None)
    monkeypatch.setattr(datamanager, "train_mask_scales", None)
    monkeypatch.setattr(datamanager.config, "cache_dir", tmp_path / "cache")
    pipeline.prepare_feature_stage()
    used = datamanager.mask_source()
    assert used.prompts is not None and len(used.prompts) == len(cameras)
    first = str(datamanager.train_dataset.image_filenames[0])
    np.testing.assert_allclose(used.prompts[first], points[0])
    assert datamanager.masks_ready


# ---- inference: bfloat16 relevancy with exact decisions ---------------------------------------------------------


def test_bf16_text_relevancy_selects_exactly_as_fp32():
    """Unit features built to sit at the cut (margins within +-0.01 of 0) and far from it: the selection equals the
    float32 one, the near ones were recomputed, relevancy is within the bf16 error elsewhere."""
    from segsplat_ns.methods.gags.scoring import BF16_DOT_ERROR, text_relevancy

    g = torch.Generator().manual_seed(0)
    D = 512
    phrases = torch.nn.functional.normalize(torch.randn(5, D, generator=g), dim=-1)
    features = torch.nn.functional.normalize(torch.randn(4000, D, generator=g) + 0.5 * phrases[0], dim=-1)
    exact_dots = features @ phrases.T
    margin = exact_dots[:, 0] - exact_dots[:, 1:].amax(-1)
    assert ((margin.abs() < 0.01).sum() > 20) and (margin > 0.05).any() and (margin < -0.05).any()
    relevancy, selection, refined = text_relevancy(features.bfloat16(), phrases, 0.5, lambda i: features[i])
    assert torch.equal(selection, margin > 0)
    assert refined >= int((margin.abs() <= BF16_DOT_ERROR).sum()) > 0
    torch.testing.assert_close(relevancy, torch.sigmoid(10 * margin), atol=10 * 2 * BF16_DOT_ERROR / 4, rtol=0)
    # another threshold: relevancy > 0.6 <=> margin > logit(0.6) / 10
    _, selection6, _ = text_relevancy(features.bfloat16(), phrases, 0.6, lambda i: features[i])
    assert torch.equal(selection6, margin > math.log(0.6 / 0.4) / 10)


@pytest.mark.slow
def test_text_map_decodes_the_rendered_view_as_the_authors_evaluate(gags_pipeline, monkeypatch):
    """text-map rendered (default): a prompt's 2D relevancy is the view's rendered f decoded per pixel (times the
    rendered opacity), its 2D mask LangSplat's mask of that map, and the 3D selection is unchanged; text-map
    gaussians renders each Gaussian's relevancy instead. Both answer "mushroom" on the tiny run."""
    from segsplat_ns.language.context import language_context
    from segsplat_ns.language.relevancy import relevancy, relevancy_mask
    from segsplat_ns.segmenter import Segmenter

    pipeline = gags_pipeline
    pipeline.eval()
    model = pipeline.model
    segmenter = Segmenter(model)
    segmenter.language = language_context(pipeline)
    ground_truth = pipeline.datamanager.eval_ground_truth()
    cameras = pipeline.datamanager.eval_dataset.cameras
    views = [(v, targets["mushroom"][0]) for v, targets in enumerate(ground_truth.text["object"]) if "mushroom" in targets]
    assert model.config.text_map == "rendered" and model.every_level  # the default (segsplat) preset
    selection = segmenter.text("mushroom")
    assert selection.view_relevancy is not None and not selection.empty
    query = segmenter.language.encode("mushroom")
    ious = {}
    for view, truth in views:
        camera = cameras[view : view + 1]
        with torch.no_grad():
            features, alpha = model.render_features(model.feature_colors(), camera)
            levels = relevancy(model.feature_decoder(features.reshape(-1, features.shape[-1])), query.embedding,
                               query.canonical).reshape(*alpha.shape[:2], 3) * alpha  # fmt: skip
        # the view's map at the trained level with the highest relevancy (LangSplat's rule)
        best = max((n for n in range(3) if model.trained_levels[n]), key=lambda n: float(levels[..., n].max()))
        expected = levels[..., best]
        got = segmenter.relevancy_map(camera, selection)
        torch.testing.assert_close(got, expected.clamp(0, 1), atol=1e-5, rtol=0)
        mask = segmenter.text_mask(camera, selection).cpu().numpy()
        np.testing.assert_array_equal(mask, relevancy_mask(got.cpu().numpy()))
        ious.setdefault("rendered", []).append(iou(mask, truth))
    monkeypatch.setattr(model.config, "text_map", "gaussians")
    per_gaussian = segmenter.text("mushroom")
    assert per_gaussian.view_relevancy is None and torch.equal(per_gaussian.gaussian_mask, selection.gaussian_mask)
    for view, truth in views:
        camera = cameras[view : view + 1]
        ious.setdefault("gaussians", []).append(iou(segmenter.text_mask(camera, per_gaussian).cpu().numpy(), truth))
    print({k: np.round(v, 3) for k, v in ious.items()})
    assert np.mean(ious["rendered"]) > 0.5 and np.mean(ious["gaussians"]) > 0.5


@pytest.mark.slow
def test_text_protocol_reports_the_granularity_the_decoder_picks(gags_pipeline):
    """pixel_granularity is the argmax of the decoded alpha over the trained levels where the view renders (-1
    elsewhere); the text protocol reports, per ground-truth level, the share of target pixels at each granularity and at the named one
    (object: whole; part: subpart or part); saga has no such hook and reports none."""
    from segsplat_ns.eval.text_protocol import NAMED_GRANULARITY, text_metrics
    from segsplat_ns.language.context import language_context
    from segsplat_ns.segmenter import Segmenter

    pipeline = gags_pipeline
    pipeline.eval()
    model = pipeline.model
    camera = pipeline.datamanager.eval_dataset.cameras[0:1]
    levels = model.pixel_granularity(camera)
    with torch.no_grad():
        features, alpha = model.render_features(model.feature_colors(), camera)
        eta = model.granularity_decoder.logits(features.reshape(-1, features.shape[-1]))
        expected = eta.masked_fill(~model.trained_levels, float("-inf")).argmax(-1)  # levels trained only
    expected = torch.where(alpha.reshape(-1) >= 0.5, expected, -1).reshape(levels.shape)
    assert torch.equal(levels, expected) and (levels >= 0).any() and (levels == -1).any()
    assert model.trained_levels[levels[levels >= 0]].all()
    segmenter = Segmenter(model)
    segmenter.language = language_context(pipeline)
    metrics, details = text_metrics(segmenter, pipeline.datamanager.eval_dataset.cameras,
                                    pipeline.datamanager.eval_ground_truth())  # fmt: skip
    for level in ("object", "part"):
        shares = [metrics[f"text_{level}_granularity/{name}"] for name in ("subpart", "part", "whole")]
        assert abs(sum(shares) - 1.0) < 1e-6, shares
        named = np.mean([s[list(NAMED_GRANULARITY[level])].sum() for r in details[level] for s in r.view_granularity])
        assert metrics[f"text_{level}_granularity"] == pytest.approx(named)
    print({k: round(v, 3) for k, v in metrics.items() if "granularity" in k})


@pytest.mark.slow
def test_every_level_decoding_answers_each_prompt_at_its_best_level(gags_pipeline):
    """decoded-levels every (the segsplat preset the tiny run trains): the run records the levels its training
    views had masks at; a text prompt is answered at the trained level whose best per-Gaussian relevancy is highest
    (LangSplat's rule) with that level's relevancy; a click meets every Gaussian's feature at the trained level alpha
    picks at the clicked pixel; the training loss reaches exactly the heads of the levels a view has."""
    from segsplat_ns.contract import TextQuery
    from segsplat_ns.language.context import language_context
    from segsplat_ns.language.relevancy import relevancy
    from segsplat_ns.methods.gags.loss import LEVEL_NAMES

    pipeline = gags_pipeline
    model = pipeline.model
    pipeline.eval()
    language = language_context(pipeline)
    pixels = [sum(int((np.asarray(r.index_maps)[n] >= 0).sum()) for r in language.views.records) for n in range(3)]
    had_masks = [p > 0 and p >= model.config.min_level_share * max(pixels) for p in pixels]
    assert model.trained_levels.tolist() == had_masks and not all(had_masks)  # the synthetic scene: no middle level
    assert (model.level_pixels > 0).tolist() == [p > 0 for p in pixels]
    query = language.encode("mushroom")
    scores = model.text_scores(TextQuery("mushroom", query.embedding, query.canonical), None)
    features = model.gauss_params[model.feature_key].detach()
    with torch.no_grad():
        expected = relevancy(model.feature_decoder(features), query.embedding, query.canonical)  # [N, 3]
    best = max((n for n in range(3) if had_masks[n]), key=lambda n: float(expected[:, n].max()))
    assert scores.facts["level"] == LEVEL_NAMES[best]
    torch.testing.assert_close(scores.relevancy, expected[:, best], atol=0.02, rtol=0)  # bfloat16 products
    torch.testing.assert_close(scores.selection, expected[:, best] > model.config.text_threshold)
    rendered = features[:2]  # two "clicked pixels"
    with torch.no_grad():
        got = model.gaussian_scores(model.prompt_query(rendered, 0.0), 0.0)
        logits = model.granularity_decoder.logits(rendered)
        level = logits.masked_fill(~torch.tensor(had_masks), float("-inf")).argmax(-1)
        assert all(had_masks[int(n)] for n in level)
        decoded = model.feature_decoder(features)
        want = torch.stack([decoded[:, int(level[k])] @ decoded[k, int(level[k])] for k in range(2)], -1).amax(-1)
    torch.testing.assert_close(got, want, atol=0.02, rtol=0)
    with one_feature_step(pipeline) as (losses, batch):
        assert set(losses) >= {"gags_distill", "gags_levels", "gags_entropy"}
        sum(losses.values()).backward()
        grad = model.feature_decoder.out.weight.grad.reshape(3, 512, -1)
        present = [bool((np.asarray(maps) >= 0).any()) for maps in batch["language"].index_maps]
        assert any(present)
        assert [float(grad[n].abs().sum()) > 0 for n in range(3)] == present  # each head: its own level only


@pytest.mark.slow
def test_paper_layout_decodes_one_feature_distilled_at_alphas_levels(gags_pipeline, monkeypatch):
    """decoded-levels alpha (the paper preset; a one-head decoder swapped into the tiny run): one decoded feature per
    Gaussian, a text prompt's relevancy is that feature's, no level is named, and Eq. 3 (not the per-level loss)
    trains the decoder."""
    from segsplat_ns.contract import TextQuery
    from segsplat_ns.language.context import language_context
    from segsplat_ns.language.relevancy import relevancy

    pipeline = gags_pipeline
    model = pipeline.model
    torch.manual_seed(0)
    monkeypatch.setattr(model.config, "decoded_levels", "alpha")
    monkeypatch.setattr(model, "feature_decoder", FeatureDecoder(16, 512))
    monkeypatch.setattr(model, "_decoded", None)
    pipeline.eval()
    query = language_context(pipeline).encode("mushroom")
    scores = model.text_scores(TextQuery("mushroom", query.embedding, query.canonical), None)
    features = model.gauss_params[model.feature_key].detach()
    with torch.no_grad():
        expected = relevancy(model.feature_decoder(features), query.embedding, query.canonical)  # [N]
    assert "level" not in scores.facts and scores.relevancy.shape == expected.shape
    torch.testing.assert_close(scores.relevancy, expected, atol=0.02, rtol=0)
    with one_feature_step(pipeline) as (losses, _):
        assert set(losses) == {"gags_distill", "gags_entropy"}
        sum(losses.values()).backward()
        assert float(model.feature_decoder.out.weight.grad.abs().sum()) > 0
