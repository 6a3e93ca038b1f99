"""GAGS (granularity-aware feature distillation for language Gaussian splatting, AAAI-26) — docs/gags.md maps the
paper to this folder.

- :mod:`.prompts`: granularity-aware prompt points (Eq. 1), pure torch;
- :mod:`.loss`: the distillation objective (Eq. 3-7), pure torch;
- :mod:`.decoder`: the decoders of Eq. 2 (feature -> CLIP, feature -> granularity), plain torch modules;
- :mod:`.model`: :class:`GagsModelConfig` and :class:`GagsModel`, the nerfstudio model.

The model is imported on first use, so the pure modules load without nerfstudio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segsplat_ns.methods.gags.model import GagsModel, GagsModelConfig

__all__ = ["GagsModel", "GagsModelConfig"]


def __getattr__(name: str):  # PEP 562 lazy re-export (the model needs nerfstudio; the maths does not)
    if name in __all__:
        from segsplat_ns.methods.gags import model

        return vars(model)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
