"""SAGA (Segment Any 3D GAussians, Cen et al., AAAI-25) — docs/saga.md maps the paper to this folder.

- :mod:`.loss`: the training objective (Eq. 6-12, appendix A.1), pure torch;
- :mod:`.scoring`: click scoring (the authors' direct fp32 way and our bfloat16 path), pure torch;
- :mod:`.model`: :class:`SagaModelConfig` and :class:`SagaModel`, the nerfstudio model.

The model is imported on first use, so the pure modules load without nerfstudio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segsplat_ns.methods.saga.model import SagaModel, SagaModelConfig

__all__ = ["SagaModel", "SagaModelConfig"]


def __getattr__(name: str):  # PEP 562 lazy re-export (the model needs nerfstudio; loss and scoring do not)
    if name in __all__:
        from segsplat_ns.methods.saga import model

        return vars(model)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
