"""The click protocol: one click per ground-truth target, IoU of the rendered selection in every eval view.

For each target (an object, or a part) of a level:
1. reference view: the eval view where the target covers the most pixels;
2. click: the target's most interior pixel there (maximum of the distance transform), as a user clicks the
   middle of an object;
3. scale: the middle of the range of scales at which the target is the clicked pixel's group by SAGA's
   Eq. 6. A pixel's group at scale s is the smallest mask whose 3D scale is >= s (above every mask: all of its
   masks), so a part is the answer for s in (0, part], and an object for s in (part under the click, 1].
   Scales are measured in the reference view as training masks are (``||2 std||`` of the back-projected pixels
   with the splat's depth) and quantile-normalised with the model's stored quantiles. Clicking at the target's
   own scale is fragile for a part: the same part measured in another view is a little smaller, and there its
   group at that scale is already the object;
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
from tqdm import tqdm

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


FINER_LEVEL = {"object": "part"}
"""Each level's nested level: the finer target under the click bounds the click's scale range from below."""
COARSER_LEVEL = {"part": "object"}
"""Each level's enclosing level: when there is one, the target's own scale bounds the range from above."""


def click_scale(lower: float, upper: float) -> float:
    """Middle of (lower, upper], the scales at which the target is the click's group (Eq. 6).

    A finer target measured at least as large as the upper bound (a flat table top inside a table) leaves no
    range: the upper bound is used.
    """
    if lower >= upper:
        return upper
    return 0.5 * (lower + upper)


@dataclass
class TargetResult:
    target_id: int
    name: str
    reference_view: int
    click: Tuple[int, int]
    scale: float
    selected: int
    view_ious: List[float] = field(default_factory=list)
    # where a low IoU is lost: precision < 1 the selection spills onto other targets (merged), recall < 1 it
    # misses part of this one (fragmented); |P∩G|/|P| and |P∩G|/|G| per view, 1 where the denominator is empty
    view_precisions: List[float] = field(default_factory=list)
    view_recalls: List[float] = field(default_factory=list)

    @property
    def iou(self) -> float:
        return float(np.mean(self.view_ious)) if self.view_ious else 0.0

    @property
    def precision(self) -> float:
        return float(np.mean(self.view_precisions)) if self.view_precisions else 0.0

    @property
    def recall(self) -> float:
        return float(np.mean(self.view_recalls)) if self.view_recalls else 0.0


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
    for target in tqdm(ground_truth.ids(level), desc=f"segmentation: {level} clicks", unit="target", leave=False):
        areas = [int((id_map == target).sum()) for id_map in id_maps]
        reference = int(np.argmax(areas))
        if areas[reference] < min_area:
            continue
        target_mask = id_maps[reference] == target
        click = interior_point(target_mask)
        camera = cameras[reference : reference + 1]
        lower, upper = 0.0, 1.0
        finer_level = FINER_LEVEL.get(level) if segmenter.granularity.sized else None  # else any scale answers alike
        if finer_level in ground_truth.id_maps:
            finer_map = ground_truth.id_maps[finer_level][reference]
            finer_target = int(finer_map[click[1], click[0]])
            if finer_target != 0:
                lower = target_scale(segmenter, camera, finer_map == finer_target)
        if segmenter.granularity.sized and COARSER_LEVEL.get(level) in ground_truth.id_maps:
            upper = target_scale(segmenter, camera, target_mask)
        scale = click_scale(lower, upper)
        selection = segmenter.click(camera, [click], scale, threshold=threshold)
        result = TargetResult(target, names.get(target, str(target)), reference, click, scale, selection.count)
        for view, id_map in enumerate(id_maps):
            if areas[view] == 0:
                continue
            predicted = segmenter.render_mask(cameras[view : view + 1], selection.gaussian_mask).cpu().numpy()
            truth = id_map == target
            result.view_ious.append(iou(predicted, truth))
            hit = float(np.logical_and(predicted, truth).sum())
            result.view_precisions.append(hit / predicted.sum() if predicted.any() else 1.0)
            result.view_recalls.append(hit / truth.sum() if truth.any() else 1.0)
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
                metrics[f"seg_{level}_precision/{r.name}"] = r.precision
                metrics[f"seg_{level}_recall/{r.name}"] = r.recall
    return metrics, details


@torch.no_grad()
def render_labels(segmenter: Segmenter, camera: Cameras, labels: torch.Tensor, max_segments: int = 64) -> np.ndarray:
    """Per-pixel segment id of a labelling of the Gaussians, seen from ``camera``: [H, W] int, -1 = empty.

    Each segment is rendered as a one-hot channel through the scene's geometry and a pixel takes the segment
    with the largest weight (segments beyond ``max_segments``, the smallest ones, share one "other" id).
    """
    model = segmenter.model
    labels = labels.to(model.device).clamp(max=max_segments)
    channels = torch.nn.functional.one_hot(labels, max_segments + 1).float()
    weights, alpha = model.render_features(channels, camera.to(model.device))
    predicted = weights.argmax(dim=-1)
    predicted[alpha[..., 0] < 0.5] = -1
    return predicted.cpu().numpy()


def decomposition_metrics(
    segmenter: Segmenter, cameras: Cameras, ground_truth: GroundTruth, level: str, scale: float
) -> Dict[str, float]:
    """Hungarian-matched instance mIoU / precision / recall (as Gaga) of the decomposition at ``scale``.

    Every Gaussian is labelled (``Segmenter.decompose``), the labels are rendered into every eval view, and
    matched one-to-one to the ground-truth targets of ``level`` over all views (background pixels are void).
    """
    from segsplat_ns.eval.metrics import hungarian_instance_metrics

    labels = segmenter.decompose(scale)
    predicted = np.stack([render_labels(segmenter, cameras[v : v + 1], labels) for v in range(len(cameras))])
    scores = hungarian_instance_metrics(predicted, np.stack(ground_truth.id_maps[level]), ignore_label=0, pred_ignore_label=-1)
    prefix = f"decomp_{level}"
    return {
        f"{prefix}_miou": scores["miou"],
        f"{prefix}_precision": scores["precision"],
        f"{prefix}_recall": scores["recall"],
        f"{prefix}_segments": float(int(labels.max()) + 1 if labels.numel() else 0),
        f"{prefix}_scale": float(scale),
    }


def evaluate_segmentation(
    segmenter: Segmenter,
    cameras: Cameras,
    ground_truth: GroundTruth,
    threshold: Optional[float] = None,
    decomposition: bool = True,
) -> Tuple[Dict[str, float], Dict[str, List[TargetResult]]]:
    """Everything ns-eval and ``segsplat bench`` report: click mIoU per level, then the decomposition of each
    level at the mean scale its clicks used (the middle of each target's Eq. 6 range)."""
    metrics, details = segmentation_metrics(segmenter, cameras, ground_truth, threshold=threshold)
    if decomposition:
        for level, results in details.items():
            if results:
                scale = float(np.mean([r.scale for r in results]))
                metrics.update(decomposition_metrics(segmenter, cameras, ground_truth, level, scale))
    return metrics, details
