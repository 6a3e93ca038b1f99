"""lift — segmentation without per-scene training: one pass of the training views' masks and CLIP features onto
the Gaussians (docs/lift.md names the paper each step follows).

- :mod:`.weights`: the Gaussian x mask compositing-weight matrix, as the rasteriser's vector-Jacobian product;
- :mod:`.levels`: each view's masks as three nested level maps (whole, part, subpart);
- :mod:`.labels`: FlashSplat's weighted vote with its background bias, per view and over all views;
- :mod:`.association`: the views' masks associated into 3D instances through the Gaussians they label;
- :mod:`.features`: Occam's LGS per-Gaussian CLIP features (weighted mean of the masks' embeddings);
- :mod:`.codes`: instance codes rendered for clicks and decoded at the clicked pixel;
- :mod:`.model`: :class:`LiftModelConfig` and :class:`LiftModel`, the nerfstudio model.

The model is imported on first use, so the pure modules load without nerfstudio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segsplat_ns.methods.lift.model import LiftModel, LiftModelConfig

__all__ = ["LiftModel", "LiftModelConfig"]


def __getattr__(name: str):  # PEP 562 lazy re-export (the model needs nerfstudio; the maths does not)
    if name in __all__:
        from segsplat_ns.methods.lift import model

        return vars(model)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
