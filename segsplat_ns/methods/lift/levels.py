"""A view's masks as three level maps, coarse to fine (pure numpy).

The masks' levels are the language cache's (:func:`segsplat_ns.language.features.assign_levels`: whole, part,
subpart by containment). Map 0 holds, per pixel, the largest whole mask covering it. Map c >= 1 holds the smallest
mask of level <= c covering it, and ``COARSER`` where that is map 0's whole mask (no finer mask covers the pixel):
that view abstains there at level c instead of voting. A view that lacks a part's mask (SAM
misses parts often) then does not vote the object onto the part's Gaussians, nor "no mask"; a Gaussian no view
gives a level-c instance keeps its level c-1 label (the model's nested fallback: an object without parts is its
own part).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from segsplat_ns.language.features import LEVELS, assign_levels

__all__ = ["COARSER", "NUM_LEVELS", "nested_level_maps"]

NUM_LEVELS = len(LEVELS)
COARSER = -2
"""Map value of a pixel covered by a coarser mask only (no mask of this level): the view abstains there."""


def nested_level_maps(masks: np.ndarray, abstain: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """``(maps int64 [3, H, W], level int64 [M])`` for masks bool [M, H, W]: map c (0 = whole, coarsest) holds mask
    indices, -1 where no mask covers the pixel, ``COARSER`` where only the whole does (with ``abstain``; else the
    whole's index there); ``level[m]`` is mask m's own level, 0 coarsest."""
    masks = np.asarray(masks, dtype=bool)
    m, h, w = masks.shape
    level = (NUM_LEVELS - 1 - assign_levels(masks)) if m else np.zeros(0, dtype=np.int64)
    area = masks.reshape(m, -1).sum(axis=1)
    maps = np.full((NUM_LEVELS, h, w), -1, dtype=np.int64)
    # the whole level: the largest whole mask wins (painted last). A part whose jittered edge pokes out of its
    # object is not "contained" at the 0.9 threshold, so it is a whole too; painted over its object it would
    # cut the object into pieces at the level where the object should be one.
    for i in sorted(range(m), key=lambda i: (area[i], i)):
        if level[i] == 0:
            maps[0][masks[i]] = i
    # a finer level: every mask of that level or coarser, smaller over larger (a part misread as a whole because
    # its edge pokes out of its object still wins over its object and its neighbours' ragged edges); where that is
    # the whole level's own mask, the view has no finer mask here: it abstains
    order = sorted(range(m), key=lambda i: (-area[i], i))
    for c in range(1, NUM_LEVELS):
        finest = np.full((h, w), -1, dtype=np.int64)
        for i in order:
            if level[i] <= c:
                finest[masks[i]] = i
        maps[c] = np.where((finest >= 0) & (finest == maps[0]), COARSER, finest) if abstain else finest
    return maps, level.astype(np.int64)
