"""The segmenter API on a real tiny trained run: clicks, scales, negatives, decomposition, bad prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segsplat_ns.eval.metrics import iou
from segsplat_ns.eval.protocol import interior_point, target_scale
from segsplat_ns.segmenter import PromptError, Segmenter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(trained_pipeline, scene):
    segmenter = Segmenter(trained_pipeline.model)
    cameras = trained_pipeline.datamanager.eval_dataset.cameras
    objects = np.asarray(Image.open(scene / "gt" / "objects" / "frame_00001.png")).astype(int)
    return segmenter, cameras[0:1], objects


def biggest_object(objects):
    ids, counts = np.unique(objects[objects > 0], return_counts=True)
    return int(ids[np.argmax(counts)])


def test_click_selects_the_clicked_object(setup):
    segmenter, camera, objects = setup
    target = biggest_object(objects)
    pixel = interior_point(objects == target)
    scale = target_scale(segmenter, camera, objects == target)
    selection = segmenter.click(camera, [pixel], scale)
    assert selection.message is None and selection.count > 0
    rendered = segmenter.render_mask(camera, selection.gaussian_mask).cpu().numpy()
    assert iou(rendered, objects == target) > 0.5
    # the same prompt gives the same answer (the viewer and eval rely on it)
    again = segmenter.click(camera, [pixel], scale)
    assert torch.equal(again.gaussian_mask, selection.gaussian_mask)


def test_threshold_and_scale_change_the_selection(setup):
    segmenter, camera, objects = setup
    pixel = interior_point(objects == biggest_object(objects))
    loose = segmenter.click(camera, [pixel], 0.5, threshold=0.3)
    strict = segmenter.click(camera, [pixel], 0.5, threshold=0.95)
    assert strict.count < loose.count
    assert torch.all(loose.gaussian_mask[strict.gaussian_mask])  # a stricter threshold only removes
    fine = segmenter.click(camera, [pixel], 0.0)
    coarse = segmenter.click(camera, [pixel], 1.0)
    assert not torch.equal(fine.gaussian_mask, coarse.gaussian_mask)


def test_negative_click_removes_its_selection(setup):
    segmenter, camera, objects = setup
    pixel = interior_point(objects == biggest_object(objects))
    selection = segmenter.click(camera, [pixel], 0.8, negative_pixels=[pixel])
    assert selection.empty


def test_background_click_selects_nothing_with_a_message(setup):
    segmenter, camera, objects = setup
    assert objects[0, 0] == 0
    selection = segmenter.click(camera, [(0, 0)], 0.5)
    assert selection.empty and "empty background" in selection.message


@pytest.mark.parametrize("scale, pixel, words", [(1.5, (5, 5), "outside [0, 1]"), (-0.1, (5, 5), "outside [0, 1]"),
                                                 (0.5, (48, 5), "outside the 48x48 image")])
def test_bad_prompts_raise_prompt_error(setup, scale, pixel, words):
    segmenter, camera, _ = setup
    with pytest.raises(PromptError, match=words.replace("[", r"\[").replace("]", r"\]")):
        segmenter.click(camera, [pixel], scale)


def test_decompose_labels_every_gaussian(setup):
    segmenter, camera, objects = setup
    labels = segmenter.decompose(0.9, min_cluster_size=20)
    assert labels.shape == (segmenter.num_gaussians,)
    assert labels.min() >= 0 and len(torch.unique(labels)) >= 2
