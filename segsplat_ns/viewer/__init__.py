"""Interactive segmentation in the nerfstudio web viewer, written once against
:class:`~segsplat_ns.segmenter.Segmenter` and the method contract (:mod:`segsplat_ns.contract`).

- :mod:`~segsplat_ns.viewer.session`: the interaction state (clicks, undo history, reset, selection,
  decomposition); pure, no viewer imports.
- :mod:`~segsplat_ns.viewer.panel`: :class:`SegmentationControls`, the panel the pipeline owns (viewer elements,
  callbacks, status messages, locks, the decomposition worker, export).
- :mod:`~segsplat_ns.viewer.overlay`: the render overlay (``selection`` / ``affinity`` / ``clusters`` / ``relevancy`` outputs and
  the highlighted RGB).
"""

from segsplat_ns.viewer.overlay import (
    DIM_FACTOR,
    DISPLAY_HIGHLIGHT,
    DISPLAY_MODES,
    DISPLAY_OFF,
    DISPLAY_ONLY,
    HIGHLIGHT_TINT,
    TINT_WEIGHT,
    segment_palette,
)
from segsplat_ns.viewer.panel import (
    CLICK_MODES,
    MODE_ADD,
    MODE_OFF,
    MODE_SUBTRACT,
    NO_FEATURES_HINT,
    START_HINT,
    SegmentationControls,
)
from segsplat_ns.viewer.session import HISTORY_LIMIT, Decomposition, SegmentationSession, Snapshot

__all__ = [
    "CLICK_MODES",
    "DIM_FACTOR",
    "DISPLAY_HIGHLIGHT",
    "DISPLAY_MODES",
    "DISPLAY_OFF",
    "DISPLAY_ONLY",
    "HIGHLIGHT_TINT",
    "HISTORY_LIMIT",
    "MODE_ADD",
    "MODE_OFF",
    "MODE_SUBTRACT",
    "NO_FEATURES_HINT",
    "START_HINT",
    "TINT_WEIGHT",
    "Decomposition",
    "SegmentationControls",
    "SegmentationSession",
    "Snapshot",
    "segment_palette",
]
