"""Make nerfstudio 1.1.5 run where it was not written to run: CPU-only machines, no network, torch >= 2.6.

- :mod:`.nerfstudio`: checkpoint loading under ``weights_only=True``, LPIPS offline, the default device;
- :mod:`.splatfacto`: splatfacto's model without its CUDA-only assumptions (``CpuSplatfactoModel``). A nerfstudio
  upgrade means re-checking that one file against ``nerfstudio/models/splatfacto.py``.

Everything acts from our own code; nothing in site-packages is edited.
"""

from segsplat_ns.compat.nerfstudio import (
    LpipsUnavailable,
    allow_nerfstudio_checkpoints,
    default_device_type,
    make_lpips,
)

__all__ = ["LpipsUnavailable", "allow_nerfstudio_checkpoints", "default_device_type", "make_lpips"]
