"""Make nerfstudio 1.1.5 run where it was not written to run: CPU-only machines, no network, torch >= 2.6.

Everything here acts from our own code at import time or around our own calls; nothing in site-packages is
edited.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

_checkpoint_globals_registered = False


def allow_nerfstudio_checkpoints() -> None:
    """Let torch's default ``weights_only=True`` load nerfstudio checkpoints.

    nerfstudio's schedulers return numpy scalars from their lambdas, so ``_last_lr`` in every checkpoint
    holds ``numpy.float64`` objects. torch >= 2.6 refuses those under ``weights_only=True`` (its default),
    which breaks ``ns-eval``, ``ns-viewer`` and ``--load-dir``. Registering the numpy scalar reconstructors
    as safe globals keeps the safe loader on while admitting exactly what nerfstudio writes.
    """
    global _checkpoint_globals_registered
    if _checkpoint_globals_registered:
        return
    safe = [np.core.multiarray.scalar, np.dtype]
    # numpy >= 1.25 pickles dtypes through their concrete classes (np.dtypes.Float64DType, ...)
    dtypes_module = getattr(np, "dtypes", None)
    if dtypes_module is not None:
        safe += [getattr(dtypes_module, name) for name in dir(dtypes_module) if name.endswith("DType")]
    torch.serialization.add_safe_globals(safe)
    _checkpoint_globals_registered = True


class LpipsUnavailable:
    """Stands in for LPIPS when its AlexNet weights cannot be had (offline, nothing cached).

    Calling it returns NaN, and the model reports ``lpips`` as not available instead of crashing.
    """

    reason: str

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return torch.tensor(float("nan"))

    def to(self, *args, **kwargs) -> "LpipsUnavailable":
        return self


def make_lpips() -> "torch.nn.Module | LpipsUnavailable":
    """torchmetrics' LPIPS if its weights load (cached or downloadable), else a NaN-returning stand-in."""
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(normalize=True)
    except Exception as error:  # no network and no cached AlexNet weights: torchvision raises URLError
        message = f"LPIPS not available ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
        warnings.warn(message + "; lpips will be reported as NaN.", stacklevel=2)
        return LpipsUnavailable(message)


def default_device_type() -> str:
    """nerfstudio defaults to "cuda"; on a machine without CUDA, training on "cpu" is what a user wants."""
    return "cuda" if torch.cuda.is_available() else "cpu"
