"""The click protocol: one click per ground-truth target, IoU of the rendered selection in every eval view.

For each target (an object, or a part) of a level:
1. reference view: the eval view where the target covers the most pixels;
2. click: the target's most interior pixel there (maximum of the distance transform), as a user clicks the
   middle of an object;
3. scale: the target's own 3D scale in that view (``||2 std||`` of its back-projected pixels with the splat's
   depth, as training masks are measured), quantile-normalised with the model's stored quantiles;
4. the selected Gaussians are rendered into every eval view where the target is visible, and compared with the
   ground truth by IoU. The target's score is the mean over those views; the level's mIoU the mean over targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from scipy import ndimage

from segsplat_ns.eval.ground_truth import GroundTruth
from segsplat_ns.eval.metrics import iou
from segsplat_ns.masks.scales import ScaleQuantiles, mask_scales
from segsplat_ns.segmenter import Segmenter


def interior_point(mask: np.ndarray) -> Tuple[int, int]:
    """(x, y) of the pixel deepest inside a boolean mask."""
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


@torch.no_grad()
def target_scale(segmenter: Segmenter, camera: Cameras, mask: np.ndarray) -> float:
    """Quantile-normalised 3D scale of a 2D mask seen from ``camera``, measured with the splat's depth."""
    model = segmenter.model
    camera = camera.to(model.device)
    outputs = model.get_outputs_for_camera(camera)
    depth = outputs["depth"][..., 0]
    valid = outputs["accumulation"][..., 0] > 0.5
    masks = torch.from_numpy(mask)[None].to(depth.device)
    raw = mask_scales(masks, depth, camera.get_intrinsics_matrices()[0], camera.camera_to_worlds[0], valid=valid)
    quantiles = ScaleQuantiles.from_tensor(model.scale_quantiles)
    return float(quantiles.normalize(raw)[0].clamp(0.0, 1.0))


@dataclass
class TargetResult:
    target_id: int
    name: str
    reference_view: int
    click: Tuple[int, int]
    scale: float
    selected: int
    view_ious: List[float] = field(default_factory=list)

    @property
    def iou(self) -> float:
        return float(np.mean(self.view_ious)) if self.view_ious else 0.0


def click_protocol(
    segmenter: Segmenter,
    cameras: Cameras,
    ground_truth: GroundTruth,
    level: str,
    threshold: Optional[float] = None,
    min_area: int = 20,
) -> List[TargetResult]:
    """Run the click protocol for every target of ``level`` ("object" or "part")."""
    id_maps = ground_truth.id_maps[level]
    names = ground_truth.names.get(level, {})
    results = []
    for target in ground_truth.ids(level):
        areas = [int((id_map == target).sum()) for id_map in id_maps]
        reference = int(np.argmax(areas))
        if areas[reference] < min_area:
            continue
        target_mask = id_maps[reference] == target
        click = interior_point(target_mask)
        camera = cameras[reference : reference + 1]
        scale = target_scale(segmenter, camera, target_mask)
        selection = segmenter.click(camera, [click], scale, threshold=threshold)
        result = TargetResult(target, names.get(target, str(target)), reference, click, scale, selection.count)
        for view, id_map in enumerate(id_maps):
            if areas[view] == 0:
                continue
            predicted = segmenter.render_mask(cameras[view : view + 1], selection.gaussian_mask).cpu().numpy()
            result.view_ious.append(iou(predicted, id_map == target))
        results.append(result)
    return results


def segmentation_metrics(
    segmenter: Segmenter, cameras: Cameras, ground_truth: GroundTruth, threshold: Optional[float] = None
) -> Tuple[Dict[str, float], Dict[str, List[TargetResult]]]:
    """mIoU per level (``seg_object_miou``, ``seg_part_miou``) and the per-target details."""
    metrics: Dict[str, float] = {}
    details: Dict[str, List[TargetResult]] = {}
    for level in ground_truth.id_maps:
        results = click_protocol(segmenter, cameras, ground_truth, level, threshold=threshold)
        details[level] = results
        if results:
            metrics[f"seg_{level}_miou"] = float(np.mean([r.iou for r in results]))
            metrics[f"seg_{level}_min_iou"] = float(min(r.iou for r in results))
            metrics[f"seg_{level}_count"] = float(len(results))
            for r in results:  # one line per target in ns-eval's JSON, so a weak part is not hidden by the mean
                metrics[f"seg_{level}_iou/{r.name}"] = r.iou
    return metrics, details
