"""`--pipeline.model.preset paper|segsplat`: the published method and ours, and the deviations issue 17 fixed.

Each preset-controlled field defaults to None and is filled when the model is built, so a value given on the
command line wins and the registered config never hides the other preset. Hand-computed checks of what the paper
preset changes: uncovered pixels dropped, SAGA's code normalisation, Binary-Gaussian's split normalisation and
its Eq. 5/6 margin.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from segsplat_ns.masks.sampling import mask_balanced_pixels
from segsplat_ns.methods.binary_gaussian import BinaryGaussianModelConfig
from segsplat_ns.methods.binary_gaussian.loss import progressive_contrastive_loss, progressive_pair_losses
from segsplat_ns.methods.gags import GagsModelConfig
from segsplat_ns.methods.saga import SagaModelConfig
from segsplat_ns.methods.saga.loss import _corr_loss_pairs, feature_correspondence, saga_loss

CONFIGS = [SagaModelConfig, BinaryGaussianModelConfig, GagsModelConfig]


@pytest.mark.parametrize("config_class", CONFIGS)
def test_both_presets_set_the_same_fields_and_each_defaults_to_none(config_class):
    presets = config_class.presets
    assert set(presets) == {"paper", "segsplat"}
    assert set(presets["paper"]) == set(presets["segsplat"])
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    for name in presets["paper"]:
        assert fields[name].default is None, name
    # every field differs between the two presets, or it would not be preset-controlled
    assert all(presets["paper"][k] != presets["segsplat"][k] for k in presets["paper"])


@pytest.mark.parametrize("config_class", CONFIGS)
@pytest.mark.parametrize("preset", ["paper", "segsplat"])
def test_building_the_model_fills_the_preset_and_an_explicit_value_wins(config_class, preset):
    table = config_class.presets[preset]
    name = sorted(table)[0]
    other = config_class.presets["segsplat" if preset == "paper" else "paper"][name]
    config = config_class(rgb_steps=0, random_init=True, num_random=20, preset=preset, **{name: other})
    model = config.setup(scene_box=None, num_train_data=1, seed_points=None)
    for key, value in table.items():
        assert getattr(model.config, key) == (other if key == name else value), key


def test_the_command_line_preset_replaces_the_registered_default():
    """nerfstudio's CLI copies the registered config's field values: the preset fields stay None there, so
    `--pipeline.model.preset paper` gives the paper's values, not the registered segsplat ones."""
    import tyro

    from segsplat_ns.method_configs.saga import saga_method

    default = saga_method.config
    parsed = tyro.cli(type(default), default=default, args=["--pipeline.model.preset", "paper"])
    model_config = parsed.pipeline.model
    assert model_config.preset == "paper" and model_config.clip_positives is None
    model_config.resolve_preset()
    assert model_config.clip_positives is True and model_config.loss_normalisation == "code"


def test_an_unknown_preset_is_refused_with_the_choices():
    config = SagaModelConfig()
    object.__setattr__(config, "preset", "authors")
    with pytest.raises(ValueError, match="paper, segsplat"):
        config.resolve_preset()


# ---- uncovered pixels -------------------------------------------------------------------------------


def test_uncovered_pixels_are_dropped_after_the_draw():
    """The authors' code draws ~N pixels and drops those no mask covers: about N x the covered share remain, all
    covered; the mask-balanced ones are inside their masks anyway."""
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[0, :10] = True  # rows 0-9: half the image
    masks[1, 2:4, 2:4] = True
    generator = torch.Generator().manual_seed(0)
    kept = mask_balanced_pixels(masks, 200, 0, 0, generator=generator, covered_only=True)
    covered = masks.reshape(2, -1).any(0)
    assert covered[kept].all()
    assert 70 <= kept.numel() <= 130  # 200 x 1/2 in expectation
    everything = mask_balanced_pixels(masks, 200, 0, 0, generator=torch.Generator().manual_seed(0))
    assert everything.numel() == 200 and not covered[everything].all()
    torch.testing.assert_close(kept, everything[covered[everything]])  # the same draw, filtered
    none = mask_balanced_pixels(torch.zeros(0, 4, 4, dtype=torch.bool), 8, 0, 0, covered_only=True)
    assert none.numel() == 0


# ---- SAGA: the code's normalisation ---------------------------------------------------------------------


def test_saga_code_normalisation_by_hand():
    """One pair, two scales: positive at s1 (Corr_f 0.4), negative at s2 (Corr_f 0.6), selected for both signs.
    Ours divides each sum by its entries: -0.4/1 + 0.6/1 = 0.2; the code's ``.mean()`` over [:, Sel] divides by
    S x |Sel| = 2: (-0.4 + 0)/2 + (0 + 0.6)/2 = 0.1."""
    corr = torch.tensor([[0.4], [0.6]])
    pos = torch.tensor([[True], [False]])
    zero = torch.zeros(())
    entries = _corr_loss_pairs(corr, pos, ~pos, None, False, zero)
    code = _corr_loss_pairs(corr, pos, ~pos, None, False, zero, denominators=(2, 2))
    assert float(entries) == pytest.approx(0.2)
    assert float(code) == pytest.approx(0.1)
    # Eq. 9 clips positives at 0: a positive pair pointing apart (-0.3) adds nothing, unclipped it adds +0.3
    corr = torch.tensor([[-0.3], [0.6]])
    assert float(_corr_loss_pairs(corr, pos, ~pos, None, True, zero)) == pytest.approx(0.6)
    assert float(_corr_loss_pairs(corr, pos, ~pos, None, False, zero)) == pytest.approx(0.9)


def test_saga_loss_with_every_pair_selected_matches_brute_force_in_both_normalisations():
    from segsplat_ns.methods.common.scale_gate import ScaleGate
    from segsplat_ns.methods.saga.loss import mask_correspondence, pixel_identity_vectors

    torch.manual_seed(3)
    P, M, D = 9, 4, 6
    features = torch.randn(P, D)
    membership = torch.rand(P, M) < 0.5
    mask_scales = torch.rand(M)
    scales = torch.tensor([0.1, 0.5, 0.9])
    gate = ScaleGate(D)
    with torch.no_grad():
        cf = feature_correspondence(features, gate(scales))  # [S, P, P]
        pos = mask_correspondence(pixel_identity_vectors(membership, mask_scales, scales)) > 0.5
    iu = torch.triu_indices(P, P, offset=1)
    cf, pos = cf[:, iu[0], iu[1]], pos[:, iu[0], iu[1]]
    S, Q = cf.shape
    positive = -(cf * pos).sum()
    negative = (cf.clamp_min(0) * ~pos).sum()
    expected = {"entries": positive / pos.sum() + negative / (~pos).sum(), "code": (positive + negative) / (S * Q)}
    for normalisation, value in expected.items():
        terms = saga_loss(features, membership, mask_scales, torch.ones(M), gate, scales, hard_mining=False,
                          resample=False, use_pair_weights=False, norm_weight=0.0, normalisation=normalisation)
        assert float(terms["saga_contrastive"]) == pytest.approx(float(value), rel=1e-5), normalisation


# ---- Binary-Gaussian: split normalisation and the margin ---------------------------------------------


def _two_level_groups():
    # 4 pixels; level 1: {0, 1, 2} and {3}; level 2 splits {0, 1} from {2}
    return torch.tensor([[0, 0, 0, 1], [0, 0, 2, 3]])


def test_binary_gaussian_split_normalisation_by_hand():
    """"split" (the authors' code): per level, the mean over the positive pairs plus the mean over the negative
    pairs. Level 1 has 1 bit, level 2 has 1 bit; pixels' bits are exact 0/1 so each distance is 0 or 1."""
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    groups = _two_level_groups()
    # level 1 (width 1, margin 1): positives (0,1) (0,2) (1,2) at distance 0 -> mean 0; negatives (0,3) (1,3) (2,3)
    # at distance 1 -> 1 - 1 = 0 each. Level 2 (margin 1): positive (0,1) distance 0; negatives (0,2) (1,2)
    # (same level-1 parent) at distance 1 -> 0. So the loss is 0 whatever the scaling...
    assert float(progressive_contrastive_loss(features, groups, (1, 1), "split")) == pytest.approx(0.0, abs=1e-5)
    # ... and with pixel 2's level-2 bit equal to its siblings' (distance 0), each negative is 1 - 0 = 1: split
    # gives 0 (positives) + 1 (negatives' mean) at level 2; "pairs" averages 2 + 2 ordered negatives over
    # 2 + 4 ordered constrained pairs: 4/6
    features[2, 1] = 0.0
    split = float(progressive_contrastive_loss(features, groups, (1, 1), "split"))
    pairs = float(progressive_contrastive_loss(features, groups, (1, 1), "pairs"))
    level1 = 0.0
    assert split == pytest.approx(level1 + 1.0, abs=1e-5)
    assert pairs == pytest.approx(level1 + 4.0 / 6.0, abs=1e-5)


def test_binary_gaussian_margin_is_never_met_and_the_code_form_is_a_hinge_on_the_hamming_count():
    """Eq. 5/6: binary codes of D_l bits are at most sqrt(D_l) apart, so D_l - ||.|| > 0 for every negative pair
    (a constant offset, it keeps pushing). The code's squared form: max(0, D_l - Hamming count), zero only when
    every bit differs."""
    width = 4
    codes = torch.tensor([[int(b) for b in format(i, "04b")] for i in range(16)], dtype=torch.float32)
    groups = torch.arange(16)[None]  # one pixel per group: every pair is a negative at level 1
    values, _, negative = progressive_pair_losses(codes, groups, (width,))
    hamming = torch.cdist(codes, codes, p=0)
    assert negative[0].sum() == 16 * 15
    assert (values[0][negative[0]] >= width - math.sqrt(width) - 1e-6).all()
    torch.testing.assert_close(values[0][negative[0]], (width - hamming.sqrt())[negative[0]])
    values, _, _ = progressive_pair_losses(codes, groups, (width,), distance="squared")
    torch.testing.assert_close(values[0][negative[0]], (width - hamming)[negative[0]].clamp_min(0))
    assert (values[0][negative[0]] == 0).sum() == 16  # only the complementary codes


# ---- Binary-Gaussian: the authors' code's area-rank levels -------------------------------------------


def test_area_rank_levels_by_hand():
    """Three masks on a 1x6 image, sorted by area: A (pixels 0-4, 5 px), B (0-2, 3 px), C (1-2 and 5, 3 px; ties
    by index: B before C). Pixel 0: A then B, no third -> (A, B, B). Pixel 1: A, B, C. Pixel 3: A only ->
    (A, A, A). Pixel 5: C only -> (C, C, C). Level-2 groups are hierarchical: pixels 0 and 1 share B under A."""
    from segsplat_ns.methods.binary_gaussian.levels import area_rank_groups, area_rank_levels

    masks = torch.zeros(3, 1, 6, dtype=torch.bool)
    masks[0, 0, 0:5] = True  # A
    masks[1, 0, 0:3] = True  # B
    masks[2, 0, 1:3] = True  # C
    masks[2, 0, 5] = True
    membership = masks.reshape(3, -1).T  # every pixel sampled once
    areas = masks.reshape(3, -1).sum(-1)
    groups = area_rank_groups(membership, areas, 3)
    level_of = lambda level: groups[level].tolist()  # noqa: E731
    # level 1: A for pixels 0-4, C for pixel 5
    assert level_of(0)[0] == level_of(0)[1] == level_of(0)[3] and level_of(0)[5] != level_of(0)[0]
    # level 2: pixels 0-2 -> B under A; pixels 3, 4 keep A; pixel 5 keeps C
    assert level_of(1)[0] == level_of(1)[1] == level_of(1)[2] != level_of(1)[3] == level_of(1)[4]
    # level 3: pixels 1, 2 -> C under B; pixel 0 keeps B; pixel 3 keeps A
    assert level_of(2)[1] == level_of(2)[2] != level_of(2)[0]
    assert level_of(2)[3] == level_of(2)[4] and level_of(2)[5] >= 0
    none = area_rank_groups(torch.zeros(2, 3, dtype=torch.bool), torch.tensor([1, 1, 1]), 3)
    assert (none == -1).all()
    # a mask's level for the scale statistics: its most common position (A: 0; B: 1; C: pixels 1, 2 at 2, 5 at 0)
    assert area_rank_levels(masks, 3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("preset", ["paper", "segsplat"])
def test_binary_gaussian_training_step_under_each_preset(preset):
    """One feature loss of each preset on a rendered map with nested masks: finite, differentiable; the level
    statistics count each mask at the level its preset's rule gives (area-rank for the paper preset)."""
    from segsplat_ns.methods.binary_gaussian.levels import area_rank_levels, mask_levels

    config = BinaryGaussianModelConfig(rgb_steps=0, random_init=True, num_random=20, preset=preset,
                                       num_random_pixels=60, num_mask_pixels=60)
    model = config.setup(scene_box=None, num_train_data=1, seed_points=None)
    model.train()
    torch.manual_seed(0)
    features = torch.rand(16, 16, 32, requires_grad=True)
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[0, 2:14, 2:14] = True
    masks[1, 2:8, 2:14] = True
    masks[2, 2:8, 2:6] = True
    scales = torch.tensor([0.9, 0.5, 0.2])
    losses = model.feature_loss_dict({"features": features}, {"masks": masks, "mask_scales": scales})
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and features.grad.abs().sum() > 0
    expected = area_rank_levels(masks, 3) if preset == "paper" else mask_levels(masks, scales, 3)
    counts = torch.bincount(expected, minlength=3).float()
    assert torch.equal(model.level_scale_count, counts)


# ---- which parameters each stage trains, and the pixels SAGA's loss sees --------------------------------


def _camera():
    from nerfstudio.cameras.cameras import Cameras

    return Cameras(camera_to_worlds=torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3]]]),
                   fx=40.0, fy=40.0, cx=16.0, cy=16.0, width=32, height=32)


@pytest.mark.parametrize("uncovered", ["drop", "keep"])
def test_saga_feature_stage_trains_only_features_and_gate_on_covered_pixels(uncovered, monkeypatch):
    """The SAGA feature stage's loss reaches the affinity features and the scale gate only (geometry and colours
    frozen); with uncovered-pixels drop every pixel the pair loss sees lies in a mask."""
    import segsplat_ns.methods.saga.model as saga_model

    seen = {}
    original = saga_model.saga_loss

    def spy(features_px, membership, *args, **kwargs):
        seen["membership"] = membership
        return original(features_px, membership, *args, **kwargs)

    monkeypatch.setattr(saga_model, "saga_loss", spy)
    torch.manual_seed(0)
    config = SagaModelConfig(rgb_steps=0, random_init=True, num_random=80, random_scale=1.0, uncovered_pixels=uncovered,
                             num_sampled_pixels=400)
    model = config.setup(scene_box=None, num_train_data=1, seed_points=None)
    model.train()
    model.step = 0
    outputs = model.get_outputs(_camera())
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 4:20, 4:20] = True
    masks[1, 8:14, 8:14] = True
    losses = model.get_loss_dict(outputs, {"masks": masks, "mask_scales": torch.tensor([0.8, 0.3])})
    sum(losses.values()).backward()
    params = model.gauss_params
    assert params["affinity_features"].grad is not None and params["affinity_features"].grad.abs().sum() > 0
    assert model.scale_gate.linear.weight.grad is not None
    for key in ("means", "scales", "quats", "opacities", "features_dc", "features_rest"):
        assert params[key].grad is None, key
    covered = seen["membership"].any(-1)
    if uncovered == "drop":
        assert covered.all() and 0 < covered.numel() < 400
    else:
        assert not covered.all() and covered.numel() == 400
