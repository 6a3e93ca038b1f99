"""Proto-SaGa (prototype-based 3D segmentation with semantic-aware Gaussian grouping) — docs/proto-saga.md maps
the paper to this folder.

- :mod:`.labels`: per-view instance label maps and the per-view cosine classifiers (Eq. 6-7, 14), pure torch;
- :mod:`.association`: the memory-bank association (Eq. 9-16), pure torch;
- :mod:`.prototypes`: prototypes from the associated masks and the prototype classifier (Eq. 17-19), pure torch;
- :mod:`.model`: :class:`ProtoSagaModelConfig` and :class:`ProtoSagaModel`, the nerfstudio model.

The model is imported on first use, so the pure modules load without nerfstudio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segsplat_ns.methods.proto_saga.model import ProtoSagaModel, ProtoSagaModelConfig

__all__ = ["ProtoSagaModel", "ProtoSagaModelConfig"]


def __getattr__(name: str):  # PEP 562 lazy re-export (the model needs nerfstudio; the maths does not)
    if name in __all__:
        from segsplat_ns.methods.proto_saga import model

        return vars(model)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
