"""Proto-SaGa: its maths (Eq. 6-7, 9-19) on hand-made examples, and the tiny `ns-train proto-saga` run."""

from __future__ import annotations

import pytest
import torch

from segsplat_ns.methods.proto_saga.association import (
    associate,
    front_set,
    instance_gaussians,
    overlap_scores,
    proto_saga_set,
    semantic_set,
)


def test_instance_sets_eq9_10_15_16_by_hand():
    """A 4x4 view: instance 0 on the left half, 1 on the right. Gaussians 0-9 project left, 10-19 right, 20 is off
    the image. Of instance 0's ten: the nearest half by depth (Eq. 10, delta_d 0.5) is 0-4, the 20 % most probable
    (Eq. 15, delta_s 0.2) are 9 and 7; Eq. 16 is their union."""
    labels = torch.tensor([[0, 0, 1, 1]] * 4)
    pixels = torch.tensor([[i % 2, i % 4] for i in range(10)] + [[2 + i % 2, i % 4] for i in range(10)] + [[-1, 0]])
    g0 = instance_gaussians(pixels, labels, 0)
    assert g0.tolist() == list(range(10))
    assert instance_gaussians(pixels, labels, 1).tolist() == list(range(10, 20))
    assert instance_gaussians(pixels, labels, 2).numel() == 0
    depths = torch.arange(21, dtype=torch.float32)
    assert front_set(g0, depths, 0.5).tolist() == [0, 1, 2, 3, 4]
    assert front_set(g0, depths, 0.25).tolist() == [0, 1, 2]  # rank < 2.5 -> ranks 0, 1, 2
    probs = torch.zeros(21)
    probs[9], probs[7], probs[8] = 0.9, 0.8, 0.1
    assert semantic_set(g0, probs, 0.2).tolist() == [9, 7]
    assert proto_saga_set(g0, depths, probs, 0.5, 0.2).tolist() == [0, 1, 2, 3, 4, 7, 9]
    # semantic-min-weight: Eq. 15 ranks only the Gaussians the view sees (here 0-8; 9 is occluded): 7 and 6
    probs[6] = 0.5
    assert proto_saga_set(g0, depths, probs, 0.5, 0.2, g0[:9]).tolist() == [0, 1, 2, 3, 4, 6, 7]


def test_memory_bank_eq11_13_two_boxes():
    """View 1 sees boxes A and B (the bank starts from them, Eq. 11). View 2 sees A again from another side (4 of
    its 7 Gaussians are in the bank's A: gamma 4/7 > 0.1, merged, Eq. 13) and something new (gamma 0: new id).
    View 3: an instance sharing exactly 10 % with B is not above delta 0.1: a new id."""
    A1, B1 = torch.arange(0, 7), torch.arange(10, 17)
    A2, C2 = torch.arange(3, 10), torch.arange(20, 25)
    B3 = torch.cat([torch.tensor([15]), torch.arange(30, 39)])
    assert overlap_scores(A2, [A1, B1], 40).tolist() == [4 / 7, 0.0]
    bank = associate([[A1, B1], [A2, C2], [B3]], num_gaussians=40, delta=0.1)
    assert bank.view_ids == [[0, 1], [0, 2], [3]]
    assert bank.entries[0].tolist() == list(range(10))
    assert bank.entries[1].tolist() == list(range(10, 17)) and bank.entries[2].tolist() == list(range(20, 25))
    labels = bank.labels(40)
    assert labels[:10].tolist() == [0] * 10 and labels[20:25].tolist() == [2] * 5 and int(labels[17]) == -1


# ---- Eq. 6-7, 14: labels and the per-view classifiers ------------------------------------------------------------


def test_eq12_overlap_of_every_entry_in_one_bincount_equals_counting_each_entry():
    """Brute force: entries that overlap each other, members with repeats, an empty entry."""
    generator = torch.Generator().manual_seed(0)
    entries = [torch.unique(torch.randint(500, (int(torch.randint(1, 80, (1,), generator=generator)),),
                                          generator=generator)) for _ in range(30)] + [torch.zeros(0, dtype=torch.long)]  # fmt: skip
    for _ in range(20):
        members = torch.randint(500, (60,), generator=generator)
        expected = [len(set(members.tolist()) & set(e.tolist())) / members.numel() for e in entries]
        assert overlap_scores(members, entries, 500).tolist() == pytest.approx(expected, abs=1e-12)


def test_label_maps_paint_whole_or_finest_masks_with_gagas_visibility_rule():
    """A 4x6 view: object A (columns 0-1, 8 px) with its part a (2 px), background in column 2, object B (columns
    3-5, 12 px) and a jittered part b of B (4 px inside B and 1 px sticking out into the background column).
    "whole" paints the larger masks last: a vanishes, b keeps its 1 px of 5 (20 % > 10 %, a label of its own).
    "finest" paints the smaller masks last. Labels are numbered by decreasing visible area."""
    from segsplat_ns.methods.proto_saga.labels import instance_label_map

    masks = torch.zeros(4, 4, 6, dtype=torch.bool)
    masks[0, :, :2] = True  # A
    masks[1, 0, 0:2] = True  # a
    masks[2, :, 3:] = True  # B
    masks[3, 1:3, 3:5] = True  # b inside B ...
    masks[3, 1, 2] = True  # ... and outside it
    whole = instance_label_map(masks, "whole")
    assert (whole[:, 3:] == 0).all() and (whole[:, :2] == 1).all()  # B (12 px), then A (8 px)
    assert int(whole[1, 2]) == 2 and int((whole == -1).sum()) == 3  # b's pixel; the rest of column 2 is -1
    finest = instance_label_map(masks, "finest")  # visible: B 8, A 6, b 5, a 2
    assert torch.bincount(finest[finest >= 0]).tolist() == [8, 6, 5, 2]
    assert int(finest[0, 0]) == 3 and int(finest[1, 2]) == 2 and int(finest[0, 3]) == 0
    # Gaga's rule: a mask with at most 10 % of it visible loses its label (the image-wide X keeps 2 of 24 px)
    frame = torch.zeros(3, 4, 6, dtype=torch.bool)
    frame[0] = True  # X: 24 px
    frame[1, :, :3] = True  # 12 px
    frame[2, :, 3:] = True
    frame[2, 0:2, 5] = False  # 10 px
    labels = instance_label_map(frame, "finest")
    assert int(labels.max()) == 1 and int(labels[0, 5]) == -1 and int(labels[0, 0]) == 0
    assert (instance_label_map(frame, "finest", max_labels=1) <= 0).all()  # only the largest label is kept
    assert (instance_label_map(torch.zeros(0, 4, 6, dtype=torch.bool)) == -1).all()


def test_view_classifier_eq6_eq7_eq14_by_hand():
    """Two pixels, D = 2, a view with L_k = 2 classes w = [1, 0], [0, 1] (a third row is another view's width, not
    a class). F1 = [2, 0] labelled 0: logits tau * (1, 0); F2 = [1, 1] labelled 1: tau * (0.7071, 0.7071); an
    unlabelled pixel (-1) is not supervised. CE = mean(log(1 + e^-10), log 2)."""
    import math

    from segsplat_ns.methods.proto_saga.labels import gaussian_probabilities, view_cross_entropy, view_logits

    features = torch.tensor([[2.0, 0.0], [1.0, 1.0], [5.0, -3.0]])
    weights = torch.tensor([[3.0, 0.0], [0.0, 0.5], [1.0, 1.0]])
    logits = view_logits(features[:2], weights, 2, 10.0)
    assert torch.allclose(logits, torch.tensor([[10.0, 0.0], [7.0710678, 7.0710678]]))
    ce = view_cross_entropy(features, torch.tensor([0, 1, -1]), weights, 2, 10.0)
    assert math.isclose(float(ce), (math.log1p(math.exp(-10)) + math.log(2)) / 2, rel_tol=1e-5)
    probs = gaussian_probabilities(features[:1], weights, 2, 10.0)
    assert torch.allclose(probs, torch.tensor([[1 / (1 + math.exp(-10)), 1 - 1 / (1 + math.exp(-10))]]))
    # a view without labels: zero loss that still keeps the graph
    zero = view_cross_entropy(features.requires_grad_(), torch.full((3,), -1), weights, 2, 10.0)
    assert float(zero.detach()) == 0.0 and zero.requires_grad


# ---- Eq. 17-19: prototypes ----------------------------------------------------------------------------------------


def test_prototypes_eq17_18_19_by_hand():
    """Two views of a 2x2 image. View 1 labels instances 0 and 1 (its view ids [1, 0] in the bank), view 2 only
    instance 1 of the bank. Eq. 17: per-view means; Eq. 18: the mean over the views that see the instance;
    Eq. 19: the argmax cosine."""
    from segsplat_ns.methods.proto_saga.prototypes import (
        classify,
        ensemble_prototypes,
        relabel_consistent,
        view_prototype_sums,
    )

    view1 = relabel_consistent(torch.tensor([[0, 0], [1, -1]]), [1, 0])
    assert view1.tolist() == [[1, 1], [0, -1]]
    f1 = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [9.0, 9.0]])
    sums1, counts1 = view_prototype_sums(f1, view1.reshape(-1), 2)
    assert counts1.tolist() == [1, 2] and sums1.tolist() == [[0.0, 2.0], [4.0, 0.0]]
    view2 = relabel_consistent(torch.tensor([[0, 0], [-1, -1]]), [1])
    f2 = torch.tensor([[0.0, 4.0], [0.0, 0.0], [5.0, 5.0], [5.0, 5.0]])
    v = ensemble_prototypes([(sums1, counts1), view_prototype_sums(f2, view2.reshape(-1), 2)])
    # instance 0: seen by view 1 only -> (0, 2); instance 1: mean of (2, 0) and (0, 2) -> (1, 1)
    assert torch.allclose(v, torch.tensor([[0.0, 2.0], [1.0, 1.0]]))
    assert classify(torch.tensor([[0.1, 1.0], [1.0, 0.9], [1.0, -1.0]]), v).tolist() == [0, 1, 1]


def test_bank_view_counts_and_the_entries_min_instance_views_keeps():
    """The two-box bank above: entry 0 (box A) was joined by views 1 and 2, the others by one view each. With
    min-instance-views 2 only A keeps a prototype (id 0); with 1 (the paper) every entry keeps its id."""
    from segsplat_ns.methods.proto_saga.association import MemoryBank, kept_entries

    bank = MemoryBank(entries=[torch.arange(3)] * 4, view_ids=[[0, 1], [0, 2], [3, 3]])
    counts = bank.view_counts()
    assert counts.tolist() == [2, 1, 1, 1]  # a view's two instances merged into one entry count once
    assert kept_entries(counts, 2).tolist() == [0, -1, -1, -1]
    assert kept_entries(counts, 1).tolist() == [0, 1, 2, 3]
    assert kept_entries(torch.tensor([1, 3, 2, 1]), 2).tolist() == [-1, 0, 1, -1]


def test_instance_votes_by_hand():
    """A linear "renderer" of 4 pixels (2x2) and 4 Gaussians with fixed compositing weights W [pixel, Gaussian].
    Two views; Gaussian 3 is seen only by an unlabelled pixel and keeps its fallback id."""
    from segsplat_ns.methods.proto_saga.prototypes import instance_votes

    w1 = torch.tensor([[0.6, 0.3, 0.0, 0.0], [0.0, 0.5, 0.4, 0.0], [0.0, 0.0, 0.9, 0.0], [0.0, 0.0, 0.0, 0.7]])
    w2 = torch.tensor([[0.0, 0.8, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.1, 0.0]])
    renders = [lambda c, w=w: (w @ c).reshape(2, 2, -1) for w in (w1, w2)]
    labels = [torch.tensor([[0, 1], [1, -1]]), torch.tensor([[0, 1], [-1, 1]])]
    # votes [Gaussian, instance]: G0 (0.6, 0.2); G1 (0.3 + 0.8, 0.5) -> 0; G2 (0, 0.4 + 0.9 + 0.1) -> 1; G3 none
    fallback = torch.tensor([5, 5, 5, 7])
    assert instance_votes(renders, labels, 4, 2, fallback).tolist() == [0, 0, 1, 7]
    assert instance_votes(renders, labels, 4, 2, fallback, chunk=1).tolist() == [0, 0, 1, 7]
    # a tie goes to the smaller id, inside one chunk and across chunks
    tie = [lambda c: (torch.eye(4)[:, :1] @ c[:1] + torch.eye(4)[:, 1:2] @ c[:1]).reshape(2, 2, -1)]
    for chunk in (1, 64):
        assert instance_votes(tie, [torch.tensor([[1, 0], [-1, -1]])], 4, 2, fallback, chunk=chunk)[0] == 0


# ---- the tiny ns-train proto-saga run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proto_run(train_run):
    from segsplat_ns.runs import load_run

    config = train_run("proto-saga")
    _, pipeline, checkpoint, _ = load_run(config, test_mode="val")
    return config, pipeline, checkpoint


@pytest.mark.slow
def test_run_stores_one_int16_instance_per_gaussian(proto_run):
    """After the last step the run holds prototypes and each Gaussian's instance (2 bytes each) for every one
    of its (densified and pruned) Gaussians; every training view got a classifier with its own L_k."""
    _, pipeline, checkpoint = proto_run
    model = pipeline.model
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["pipeline"]
    ids = state["_model.instance_ids"]
    assert ids.dtype == torch.int16 and ids.shape[0] == state["_model.gauss_params.means"].shape[0]
    assert state["_model.gauss_params.instance_embeddings"].shape == (ids.shape[0], 16)
    assert 2 <= model.prototypes.shape[0] <= 12 and int(ids.min()) >= 0
    assert int(ids.max()) < model.prototypes.shape[0]
    assert (model.view_classes > 0).all() and model.has_features
    assert model.granularity.kind == "instances" and not model.granularity.sized
    # the masks' 3D scales were never measured (uses_mask_scales False): no quantiles were fitted
    assert not model.uses_mask_scales and not bool(model.scale_quantiles.any())


@pytest.mark.slow
@pytest.mark.parametrize("ce_geometry", [True, False])
def test_cross_entropy_reaches_the_geometry_in_joint_training(proto_run, monkeypatch, ce_geometry):
    """Eq. 8 trains everything jointly (the paper preset's ce-geometry): the CE of a training view's rendered
    embeddings has gradients on the means, opacities and scales. With ce-geometry False (the segsplat preset, the
    tiny run's) it reaches the embeddings and the view's classifier only."""
    _, pipeline, _ = proto_run
    model = pipeline.model
    assert model.config.ce_geometry is False  # the segsplat preset
    monkeypatch.setattr(model.config, "ce_geometry", ce_geometry)
    pipeline.prepare_feature_stage()
    camera, batch = pipeline.datamanager.next_train(0)
    model.train()
    try:
        features, _ = model.render_features(model.feature_colors(), camera)
        loss = model.feature_loss_dict({"features": features}, batch)["proto_saga_ce"]
        assert float(loss) > 0
        loss.backward()
        assert float(model.gauss_params["instance_embeddings"].grad.abs().sum()) > 0
        for key in ("means", "opacities", "scales"):
            grad = model.gauss_params[key].grad
            reached = grad is not None and float(grad.abs().sum()) > 0
            assert reached == ce_geometry, key
        view = int(batch["image_idx"])
        assert model.view_classifiers[view].grad is not None
        assert all(p.grad is None for i, p in enumerate(model.view_classifiers) if i != view)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.slow
def test_instances_output_and_clicks_follow_eq19(proto_run):
    """The viewer's ``instances`` output colours each pixel by its Eq. 19 instance; a click selects the Gaussians of
    the clicked pixel's instance."""
    from segsplat_ns.methods.proto_saga.prototypes import classify
    from segsplat_ns.segmenter import Segmenter

    _, pipeline, _ = proto_run
    model = pipeline.model
    model.eval()
    camera = pipeline.datamanager.eval_dataset.cameras[0:1]
    outputs = model.get_outputs_for_camera(camera)
    assert outputs["instances"].shape == (48, 48, 3)
    features = outputs["features"]
    objects = pipeline.datamanager.eval_ground_truth().id_maps["object"][0]
    y, x = [int(v[len(v) // 2]) for v in (objects > 0).nonzero()]
    instance = int(classify(features[y, x][None], model.prototypes)[0])
    assert features.shape[-1] == 16  # the instance codes rendered beside the embedding are not a "feature"
    model.config.gaussian_ids = "embedding"  # the paper: a click is Eq. 19 at its pixel
    try:
        selection = Segmenter(model).click(camera, [(x, y)], 0.5)
    finally:
        model.config.gaussian_ids = "votes"
    assert torch.equal(selection.gaussian_mask, model.instance_ids.long() == instance)


@pytest.mark.slow
def test_votes_make_a_click_select_the_instance_its_pixel_shows(proto_run):
    """The segsplat preset (the tiny run's): every instance was joined by three views or more, each Gaussian's id is
    the instance its training pixels take (recomputing the votes gives the stored ids), and a click selects the
    instance the decomposition shows at the clicked pixel (the ids rendered one-hot, the largest weight)."""
    from segsplat_ns.eval.protocol import render_labels
    from segsplat_ns.methods.proto_saga.prototypes import classify
    from segsplat_ns.segmenter import Segmenter

    _, pipeline, _ = proto_run
    model = pipeline.model
    model.eval()
    assert model.config.min_instance_views == 3 and model.config.gaussian_ids == "votes"
    assert model.config.semantic_min_weight == 0.05
    assert int(model.instance_views.min()) >= 3 and model.instance_views.shape[0] == model.prototypes.shape[0]
    embeddings = model.gauss_params[model.feature_key].detach()
    cameras = pipeline.datamanager.train_dataset.cameras
    for k, masks in enumerate(pipeline.datamanager.load_train_masks()):
        model.label_map(k, masks)
    voted = model.vote_instances(cameras, embeddings, fallback=classify(embeddings, model.prototypes))
    assert torch.equal(voted, model.instance_ids.long())
    segmenter = Segmenter(model)
    camera = pipeline.datamanager.eval_dataset.cameras[0:1]
    shown = render_labels(segmenter, camera, model.instance_ids.long())
    objects = pipeline.datamanager.eval_ground_truth().id_maps["object"][0]
    for target in [t for t in set(objects.flatten().tolist()) if t]:
        ys, xs = (objects == target).nonzero()
        y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
        selection = segmenter.click(camera, [(x, y)], 0.5)
        assert shown[y, x] >= 0 and torch.equal(selection.gaussian_mask, model.instance_ids.long() == int(shown[y, x]))


@pytest.mark.slow
def test_a_loaded_joint_run_renders_every_sh_degree(proto_run):
    """A loaded run's step is its feature start, 0 for a joint method: its RGB must still be the trained splat's,
    every SH degree, not the SH warm-up's degree 0 (which cost proto-saga's PSNR 0.9-1.1 dB on the bench)."""
    _, pipeline, _ = proto_run
    model = pipeline.model
    model.eval()
    assert model.step == 0 and model.config.sh_degree > 0
    assert float(model.features_rest.abs().sum()) > 0  # the higher degrees were trained: degree 0 renders otherwise
    camera = pipeline.datamanager.eval_dataset.cameras[0:1]
    with torch.no_grad():
        rendered = model.get_outputs_for_camera(camera)["rgb"]
        full = model.render_rgb(camera.to(model.device), None, final=True)["rgb"]
        rest = model.gauss_params["features_rest"]
        trained = rest.data.clone()
        rest.data.zero_()  # what degree 0 renders: the DC colour alone
        try:
            dc_only = model.render_rgb(camera.to(model.device), None, final=True)["rgb"]
        finally:
            rest.data.copy_(trained)
    assert torch.equal(rendered, full)
    assert float((rendered - dc_only).abs().max()) > 1e-3
