"""A view's masks as three nested level maps, coarse to fine (pure numpy).

The masks' levels are the language cache's (:func:`segsplat_ns.language.features.assign_levels`: whole, part,
subpart by containment). The map of level c holds, per pixel, the finest mask of level <= c covering it: a region
with no finer mask keeps its coarser one (an object without parts is its own part), as a click at a fine scale on it
should still select it. Painted coarse first and, within a level, larger first, so finer masks overwrite coarser.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from segsplat_ns.language.features import LEVELS, assign_levels

__all__ = ["NUM_LEVELS", "nested_level_maps"]

NUM_LEVELS = len(LEVELS)


def nested_level_maps(masks: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(maps int64 [3, H, W], level int64 [M])`` for masks bool [M, H, W]: map c (0 = whole, coarsest) holds mask
    indices (-1: no mask of level <= c); ``level[m]`` is mask m's own level, 0 coarsest."""
    masks = np.asarray(masks, dtype=bool)
    m, h, w = masks.shape
    level = (NUM_LEVELS - 1 - assign_levels(masks)) if m else np.zeros(0, dtype=np.int64)
    area = masks.reshape(m, -1).sum(axis=1)
    order = sorted(range(m), key=lambda i: (level[i], -area[i], i))
    maps = np.full((NUM_LEVELS, h, w), -1, dtype=np.int64)
    for c in range(NUM_LEVELS):
        for i in order:
            if level[i] <= c:
                maps[c][masks[i]] = i
    return maps, level.astype(np.int64)
