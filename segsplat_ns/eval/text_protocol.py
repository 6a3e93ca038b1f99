"""The text protocol (LERF-OVS as LangSplat scores it): one text prompt per annotated category.

For each level with text ground truth ("object", "part") and each category annotated in any eval view:

1. the category is the prompt: ``Segmenter.text(category)`` (one 3D answer per category);
2. in every eval view where the category is annotated: IoU of the prompt's 2D mask (``Segmenter.text_mask``)
   with the ground-truth mask, and a localisation hit when the maximum of the box-filtered relevancy map lies
   in one of the category's boxes (:func:`segsplat_ns.language.relevancy.localisation_hit`);
3. ``text_<level>_miou``: the mean IoU over (view, category) pairs, and ``text_<level>_localisation``: the
   fraction of pairs hit, as LangSplat's ``evaluate_iou_loc.py`` averages them;
4. for a method that picks a language granularity per pixel (``pixel_granularity``, GAGS's decoder):
   ``text_<level>_granularity``, the mean over pairs of the share of the ground-truth mask's pixels decoded at
   the granularity the level names (:data:`NAMED_GRANULARITY`), and ``text_<level>_granularity/<name>`` the
   share at each granularity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from segsplat_ns.errors import NotSupported
from segsplat_ns.eval.ground_truth import GroundTruth
from segsplat_ns.eval.metrics import iou
from segsplat_ns.segmenter import Segmenter

GRANULARITY_NAMES: Tuple[str, ...] = ("subpart", "part", "whole")
"""The language cache's levels (:data:`segsplat_ns.language.features.LEVELS`, s / m / l), as reported."""
NAMED_GRANULARITY: Dict[str, Tuple[int, ...]] = {"object": (2,), "part": (0, 1)}
"""The granularities a ground-truth level names: an object is a whole; a part is a subpart or a part (a nesting
cache makes a part with no smaller mask inside it a subpart, as on the synthetic scenes)."""


@dataclass
class TextResult:
    category: str
    selected: int
    message: str = ""
    view_ious: List[float] = field(default_factory=list)
    view_hits: List[bool] = field(default_factory=list)
    view_granularity: List[np.ndarray] = field(default_factory=list)
    """Per view, the share of the mask's pixels decoded at each granularity [3] (methods with ``pixel_granularity``)."""

    @property
    def iou(self) -> float:
        return float(np.mean(self.view_ious)) if self.view_ious else 0.0


def text_protocol(segmenter: Segmenter, cameras, ground_truth: GroundTruth, level: str,
                  granularity: "Optional[Dict[int, Optional[np.ndarray]]]" = None) -> List[TextResult]:
    """Run the text protocol for every category of ``level``. ``granularity``: each eval view's
    ``pixel_granularity`` (None: not supported), filled as views are met; pass one dict for all levels."""
    from segsplat_ns.language.relevancy import localisation_hit

    views = ground_truth.text.get(level, [])
    categories = sorted({category for targets in views for category in targets})
    results = []
    granularity = {} if granularity is None else granularity
    for category in tqdm(categories, desc=f"text: {level} prompts", unit="prompt", leave=False):
        selection = segmenter.text(category)
        result = TextResult(category, selection.count, selection.message or "")
        for view, targets in enumerate(views):
            if category not in targets:
                continue
            truth, boxes = targets[category]
            camera = cameras[view : view + 1]
            relevancy = segmenter.relevancy_map(camera, selection)
            predicted = segmenter.text_mask(camera, selection, relevancy).cpu().numpy()
            result.view_ious.append(iou(predicted, truth))
            result.view_hits.append(localisation_hit(relevancy.cpu().numpy(), boxes))
            if view not in granularity:
                granularity[view] = _pixel_granularity(segmenter, camera)
            if granularity[view] is not None:
                levels = granularity[view][np.asarray(truth, dtype=bool) & (granularity[view] >= 0)]
                counts = np.bincount(levels, minlength=len(GRANULARITY_NAMES))[: len(GRANULARITY_NAMES)]
                result.view_granularity.append(counts / max(int(counts.sum()), 1))
        results.append(result)
    return results


def _pixel_granularity(segmenter: Segmenter, camera) -> "np.ndarray | None":
    try:
        return segmenter.model.pixel_granularity(camera.to(segmenter.model.device)).cpu().numpy()
    except NotSupported:
        return None


def text_metrics(segmenter: Segmenter, cameras, ground_truth: GroundTruth) -> Tuple[Dict[str, float], Dict[str, List[TextResult]]]:
    """``text_<level>_miou`` and ``text_<level>_localisation`` per level with text ground truth, per-category IoUs."""
    metrics: Dict[str, float] = {}
    details: Dict[str, List[TextResult]] = {}
    granularity: Dict[int, Optional[np.ndarray]] = {}  # per eval view, shared by the levels
    for level in ground_truth.text:
        results = text_protocol(segmenter, cameras, ground_truth, level, granularity)
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
        shares = [share for r in results for share in r.view_granularity]
        if shares and level in NAMED_GRANULARITY:
            mean = np.mean(shares, axis=0)
            metrics[f"text_{level}_granularity"] = float(np.mean([s[list(NAMED_GRANULARITY[level])].sum() for s in shares]))
            for index, name in enumerate(GRANULARITY_NAMES):
                metrics[f"text_{level}_granularity/{name}"] = float(mean[index])
    return metrics, details
