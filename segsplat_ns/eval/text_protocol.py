"""The text protocol (LERF-OVS as LangSplat scores it): one text prompt per annotated category.

For each level with text ground truth ("object", "part") and each category annotated in any eval view:

1. the category is the prompt: ``Segmenter.text(category)`` (one 3D answer per category);
2. in every eval view where the category is annotated: IoU of the prompt's 2D mask (``Segmenter.text_mask``)
   with the ground-truth mask, and a localisation hit when the maximum of the box-filtered relevancy map lies
   in one of the category's boxes (:func:`segsplat_ns.language.relevancy.localisation_hit`);
3. ``text_<level>_miou``: the mean IoU over (view, category) pairs, and ``text_<level>_localisation``: the
   fraction of pairs hit, as LangSplat's ``evaluate_iou_loc.py`` averages them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np
from tqdm import tqdm

from segsplat_ns.eval.ground_truth import GroundTruth
from segsplat_ns.eval.metrics import iou
from segsplat_ns.segmenter import Segmenter


@dataclass
class TextResult:
    category: str
    selected: int
    message: str = ""
    view_ious: List[float] = field(default_factory=list)
    view_hits: List[bool] = field(default_factory=list)

    @property
    def iou(self) -> float:
        return float(np.mean(self.view_ious)) if self.view_ious else 0.0


def text_protocol(segmenter: Segmenter, cameras, ground_truth: GroundTruth, level: str) -> List[TextResult]:
    """Run the text protocol for every category of ``level``."""
    from segsplat_ns.language.relevancy import localisation_hit

    views = ground_truth.text.get(level, [])
    categories = sorted({category for targets in views for category in targets})
    results = []
    for category in tqdm(categories, desc=f"text: {level} prompts", unit="prompt", leave=False):
        selection = segmenter.text(category)
        result = TextResult(category, selection.count, selection.message or "")
        for view, targets in enumerate(views):
            if category not in targets:
                continue
            truth, boxes = targets[category]
            camera = cameras[view : view + 1]
            predicted = segmenter.text_mask(camera, selection).cpu().numpy()
            result.view_ious.append(iou(predicted, truth))
            relevancy = segmenter.relevancy_map(camera, selection).cpu().numpy()
            result.view_hits.append(localisation_hit(relevancy, boxes))
        results.append(result)
    return results


def text_metrics(segmenter: Segmenter, cameras, ground_truth: GroundTruth) -> Tuple[Dict[str, float], Dict[str, List[TextResult]]]:
    """``text_<level>_miou`` and ``text_<level>_localisation`` per level with text ground truth, per-category IoUs."""
    metrics: Dict[str, float] = {}
    details: Dict[str, List[TextResult]] = {}
    for level in ground_truth.text:
        results = text_protocol(segmenter, cameras, ground_truth, level)
        details[level] = results
        ious = [value for r in results for value in r.view_ious]
        hits = [value for r in results for value in r.view_hits]
        if not ious:
            continue
        metrics[f"text_{level}_miou"] = float(np.mean(ious))
        metrics[f"text_{level}_localisation"] = float(np.mean(hits))
        metrics[f"text_{level}_count"] = float(len(ious))
        for r in results:
            metrics[f"text_{level}_iou/{r.category}"] = r.iou
    return metrics, details
