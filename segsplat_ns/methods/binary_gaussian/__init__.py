"""Binary-Gaussian (Yang et al., AAAI-26, arXiv 2512.00944) — docs/binary-gaussian.md maps the paper to this folder.

- :mod:`.codes`: bit and code arithmetic, level prefixes, the prefix table, click selection (pure torch);
- :mod:`.levels`: training masks -> levels and the segmenter's scale -> a level (pure torch);
- :mod:`.loss`: STE, progressive contrastive, virtual negative and binarisation losses (pure torch);
- :mod:`.vote`: from the trained latent to stored bits, and the code clean-up (pure torch);
- :mod:`.relabel`: the stored codes checked against the training masks, one-to-one per view (pure torch + scipy);
- :mod:`.model`: :class:`BinaryGaussianModelConfig` and :class:`BinaryGaussianModel`, the nerfstudio model.

The model is imported on first use, so the pure modules load without nerfstudio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segsplat_ns.methods.binary_gaussian.model import BinaryGaussianModel, BinaryGaussianModelConfig

__all__ = ["BinaryGaussianModel", "BinaryGaussianModelConfig"]


def __getattr__(name: str):  # PEP 562 lazy re-export (the model needs nerfstudio; the maths does not)
    if name in __all__:
        from segsplat_ns.methods.binary_gaussian import model

        return vars(model)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
