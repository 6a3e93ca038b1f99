"""The click protocol's choice of click pixel and scale, on hand-made ground truth with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segsplat_ns.eval import protocol
from segsplat_ns.eval.ground_truth import GroundTruth
from segsplat_ns.eval.protocol import click_protocol, click_scale


def test_click_scale_is_the_middle_of_the_eq6_range():
    assert click_scale(0.0, 0.4) == pytest.approx(0.2)  # a part: (0, part]
    assert click_scale(0.3, 1.0) == pytest.approx(0.65)  # an object: (part under the click, 1]
    assert click_scale(0.8, 0.7) == pytest.approx(0.7)  # a finer target larger than its parent: no range


class RecordingSegmenter:
    """Stands in for the Segmenter: records each click and 'renders' the clicked target's ground truth."""

    def __init__(self, id_maps):
        from segsplat_ns.contract import CONTINUOUS_SCALE

        self.id_maps = id_maps
        self.clicks = []
        self.granularity = CONTINUOUS_SCALE  # a sized prompt: the protocol measures each target's scale

    def click(self, camera, pixels, scale, threshold=None):
        (x, y), view = pixels[0], camera[0]
        target = int(self.id_maps[view][y, x])
        self.clicks.append((view, (x, y), scale, target))
        return type("Sel", (), {"gaussian_mask": target, "count": 1})()

    def render_mask(self, camera, target):
        return torch.from_numpy(self.id_maps[camera[0]] == target)


def test_protocol_clicks_inside_each_target_at_the_middle_of_its_scale_range(monkeypatch):
    parts = np.zeros((2, 12, 12), dtype=np.int32)
    parts[:, 1:7, 1:11] = 1  # part 1: 60 px, a wide top
    parts[:, 7:11, 4:8] = 2  # part 2: 16 px, below it
    parts[1, 1:7, 1:6] = 0  # view 1 sees half of part 1
    objects = (parts > 0).astype(np.int32)
    ground_truth = GroundTruth({"object": list(objects), "part": list(parts)})
    # a stand-in 3D scale: the mask's area / 100 (the real one back-projects pixels with the splat's depth)
    monkeypatch.setattr(protocol, "target_scale", lambda segmenter, camera, mask: float(mask.sum()) / 100.0)
    cameras = [0, 1]  # views are addressed by slicing: cameras[v : v + 1] == [v]

    part_segmenter = RecordingSegmenter(ground_truth.id_maps["part"])
    results = click_protocol(part_segmenter, cameras, ground_truth, "part", min_area=1)
    assert [r.target_id for r in results] == [1, 2]
    for (view, _, scale, clicked), area in zip(part_segmenter.clicks, (60, 16)):
        assert view == 0  # the view where each part is largest
        assert scale == pytest.approx(area / 200.0)  # (0, own scale], middle
    assert [c[3] for c in part_segmenter.clicks] == [1, 2]  # each click lands inside its part
    assert all(r.iou == 1.0 for r in results)

    object_segmenter = RecordingSegmenter(ground_truth.id_maps["object"])
    (result,) = click_protocol(object_segmenter, cameras, ground_truth, "object", min_area=1)
    view, (x, y), scale, _ = object_segmenter.clicks[0]
    part_under_click = int(parts[view][y, x])
    part_area = int((parts[view] == part_under_click).sum())
    assert scale == pytest.approx((part_area / 100.0 + 1.0) / 2.0)  # (part under the click, 1], middle
    assert result.view_ious == [1.0, 1.0]

    # a method whose prompts are not sized (instances): no target's scale is measured, every click at 0.5
    from segsplat_ns.contract import Granularity

    def never(*_):
        raise AssertionError("an unsized method's targets have no scale to measure")

    monkeypatch.setattr(protocol, "target_scale", never)
    instance_segmenter = RecordingSegmenter(ground_truth.id_maps["part"])
    instance_segmenter.granularity = Granularity("instances")
    results = click_protocol(instance_segmenter, cameras, ground_truth, "part", min_area=1)
    assert [c[2] for c in instance_segmenter.clicks] == [0.5, 0.5] and all(r.iou == 1.0 for r in results)


def test_per_target_precision_and_recall_say_whether_a_selection_merged_or_fragmented(monkeypatch):
    """A part click that selects its whole object: recall 1, precision = part / object pixels (merged); an
    object click that selects one part: precision 1, recall = part / object (fragmented); ns-eval keys both."""
    parts = np.zeros((1, 10, 10), dtype=np.int32)
    parts[0, 0:6, :] = 1  # 60 px
    parts[0, 6:10, :] = 2  # 40 px
    objects = (parts > 0).astype(np.int32)
    ground_truth = GroundTruth({"object": list(objects), "part": list(parts)})
    monkeypatch.setattr(protocol, "target_scale", lambda segmenter, camera, mask: float(mask.sum()) / 100.0)

    class Whole(RecordingSegmenter):  # every click selects everything that is not background
        def render_mask(self, camera, target):
            return torch.from_numpy(objects[camera[0]] > 0)

    part_results = click_protocol(Whole(ground_truth.id_maps["part"]), [0], ground_truth, "part", min_area=1)
    assert [r.recall for r in part_results] == [1.0, 1.0]
    assert [r.precision for r in part_results] == [pytest.approx(0.6), pytest.approx(0.4)]
    assert [r.iou for r in part_results] == [pytest.approx(0.6), pytest.approx(0.4)]

    class FirstPart(RecordingSegmenter):  # every click selects part 1 only
        def render_mask(self, camera, target):
            return torch.from_numpy(parts[camera[0]] == 1)

    (result,) = click_protocol(FirstPart(ground_truth.id_maps["object"]), [0], ground_truth, "object", min_area=1)
    assert result.precision == 1.0 and result.recall == pytest.approx(0.6)
    metrics, _ = protocol.segmentation_metrics(Whole(ground_truth.id_maps["part"]), [0], ground_truth)
    assert metrics["seg_part_precision/2"] == pytest.approx(0.4) and metrics["seg_part_recall/2"] == 1.0
