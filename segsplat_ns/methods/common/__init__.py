"""What more than one method uses, naming no paper: the scale gate, kNN smoothing and the inference memo.

(Mask-balanced pixel sampling, also shared, lives with the masks: :mod:`segsplat_ns.masks.sampling`.)
"""

from segsplat_ns.methods.common.knn import knn_indices, knn_smooth
from segsplat_ns.methods.common.memo import InferenceMemo
from segsplat_ns.methods.common.scale_gate import ScaleGate

__all__ = ["InferenceMemo", "ScaleGate", "knn_indices", "knn_smooth"]
