"""What more than one method uses, naming no paper: the scale gate, kNN smoothing, the inference memo, the
compositing-weight sums of a linear render and the instance codes a click decodes.

(Mask-balanced pixel sampling, also shared, lives with the masks: :mod:`segsplat_ns.masks.sampling`.)
"""

from segsplat_ns.methods.common.codes import decode, instance_codes
from segsplat_ns.methods.common.composite import composite_weights
from segsplat_ns.methods.common.knn import knn_indices, knn_smooth
from segsplat_ns.methods.common.memo import InferenceMemo
from segsplat_ns.methods.common.scale_gate import ScaleGate

__all__ = ["InferenceMemo", "ScaleGate", "composite_weights", "decode", "instance_codes", "knn_indices", "knn_smooth"]
