"""The method contract, for every registered method: a tiny real run clicks, decomposes, exports and evaluates
through the shared layers only (segmenter, export, eval protocol), reading nothing but the contract.

A new method's entry point adds it here with no edit to this file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import METHODS

from segsplat_ns.contract import Granularity, MethodContract
from segsplat_ns.errors import PromptError
from segsplat_ns.registry import get_method

pytestmark = pytest.mark.slow


def test_every_registered_method_declares_the_contract():
    assert {"saga", "binary-gaussian"} <= set(METHODS)
    for name in METHODS:
        method = get_method(name)
        assert issubclass(method.model_class, MethodContract)
        assert method.model_class.score_kind in ("affinity", "selection")
        flags = method.cpu_training_args(tiny=True)
        assert all(isinstance(flag, str) for flag in flags) and len(flags) % 2 == 0, flags
        assert method.description


@pytest.fixture(scope="module", params=METHODS)
def loaded(request, train_run):
    from segsplat_ns.runs import load_run

    config = train_run(request.param)
    _, pipeline, checkpoint, _ = load_run(config, test_mode="test")
    return request.param, config, pipeline


def largest_object_click(pipeline):
    from segsplat_ns.eval.protocol import interior_point

    ground_truth = pipeline.datamanager.eval_ground_truth()
    objects = ground_truth.id_maps["object"][0]
    ids, counts = np.unique(objects[objects > 0], return_counts=True)
    target = int(ids[np.argmax(counts)])
    return objects == target, interior_point(objects == target)


def object_scale(segmenter) -> float:
    """A scale that asks for whole objects: the top of the continuous scale, or the coarsest level's scale."""
    granularity: Granularity = segmenter.granularity
    return segmenter.scale_for_level(0) if granularity.discrete else 0.9


def test_click_selects_the_clicked_object(loaded):
    from segsplat_ns.eval.metrics import iou
    from segsplat_ns.segmenter import Segmenter

    name, _, pipeline = loaded
    segmenter = Segmenter(pipeline.model)
    camera = pipeline.datamanager.eval_dataset.cameras[0:1]
    target, pixel = largest_object_click(pipeline)
    selection = segmenter.click(camera, [pixel], object_scale(segmenter))
    assert not selection.empty, selection.message
    assert selection.gaussian_mask.shape == (segmenter.num_gaussians,)
    if pipeline.model.score_kind == "selection":
        assert selection.scores.dtype == torch.bool
    else:
        assert selection.scores.is_floating_point()
    predicted = segmenter.render_mask(camera, selection.gaussian_mask).cpu().numpy()
    assert iou(predicted, target) > 0.5, name  # the tiny run already separates the two objects
    # background: nothing, with the reason
    empty = segmenter.click(camera, [(0, 0)], object_scale(segmenter))
    assert empty.empty and "background" in empty.message


def test_a_click_renders_exactly_what_the_full_render_shows_at_its_pixels(loaded):
    """The click path renders the method's features at the clicked pixels only; at every pixel of a view (and
    again from the model's kept projection) they equal the full render's, bit for bit on CPU."""
    name, _, pipeline = loaded
    model = pipeline.model
    camera = pipeline.datamanager.eval_dataset.cameras[0:1].to(model.device)
    colors = model.feature_colors()
    with torch.no_grad():
        full, full_alpha = model.render_features(colors, camera)
    height, width = full.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pixels = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)
    for _ in range(2):  # the second time from the kept projection
        rendered, alpha = model.render_pixels(colors, camera, pixels)
        assert torch.equal(rendered, full.reshape(-1, full.shape[-1])), name
        assert torch.equal(alpha, full_alpha.reshape(-1, 1)), name
    assert float(full_alpha.max()) > 0.9  # the view shows the scene


def test_granularity_is_answered_or_refused_clearly(loaded):
    from segsplat_ns.segmenter import Segmenter

    _, _, pipeline = loaded
    segmenter = Segmenter(pipeline.model)
    granularity = segmenter.granularity
    if granularity.discrete:
        assert granularity.num_levels >= 2
        scale = segmenter.scale_for_level(0)
        assert 0.0 <= scale <= 1.0
        with pytest.raises(PromptError, match="does not exist"):
            segmenter.scale_for_level(granularity.num_levels)
    elif granularity.sized:
        with pytest.raises(PromptError, match="continuous scale"):
            segmenter.scale_for_level(0)
    else:  # instances: every scale selects the same thing
        with pytest.raises(PromptError, match="no levels or scale"):
            segmenter.scale_for_level(0)
        camera = pipeline.datamanager.eval_dataset.cameras[0:1]
        _, pixel = largest_object_click(pipeline)
        masks = [segmenter.click(camera, [pixel], scale).gaussian_mask for scale in (0.0, 0.5, 1.0)]
        assert all(torch.equal(masks[0], mask) for mask in masks[1:])


def test_decompose_labels_every_gaussian(loaded):
    from segsplat_ns.segmenter import Segmenter

    _, _, pipeline = loaded
    segmenter = Segmenter(pipeline.model)
    labels = segmenter.decompose(object_scale(segmenter))
    assert labels.shape == (segmenter.num_gaussians,) and labels.dtype == torch.long
    assert int(labels.max()) >= 1  # at least two segments in a two-object scene


def test_export_writes_exactly_the_selection(loaded, tmp_path):
    from segsplat_ns.export import read_splat_ply, write_splat_ply
    from segsplat_ns.segmenter import Segmenter

    _, _, pipeline = loaded
    segmenter = Segmenter(pipeline.model)
    _, pixel = largest_object_click(pipeline)
    selection = segmenter.click(pipeline.datamanager.eval_dataset.cameras[0:1], [pixel], object_scale(segmenter))
    path = tmp_path / "selection.ply"
    count = write_splat_ply(path, pipeline.model.gauss_params, mask=selection.gaussian_mask)
    assert count == selection.count == len(read_splat_ply(path)["x"])


def test_evaluates_as_ns_eval_does(loaded):
    _, _, pipeline = loaded
    metrics = pipeline.get_average_eval_image_metrics()
    assert metrics["psnr"] > 20.0
    assert metrics["seg_object_count"] == 2 and metrics["seg_object_miou"] > 0.5
    for key in ("seg_part_miou", "decomp_object_miou", "decomp_part_precision"):
        assert 0.0 <= metrics[key] <= 1.0, key
