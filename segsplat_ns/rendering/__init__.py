"""One rasterizer for every renderer of the project.

:func:`rasterize` has the signature and the outputs of ``gsplat.rasterization`` (gsplat 1.4.0):

* CUDA tensors are handed to ``gsplat.rasterization`` unchanged (gsplat is imported lazily there).
* CPU tensors go to :func:`~segsplat_ns.rendering.numba_rasterizer.rasterize_numba`, the tiled rasterizer
  compiled with numba (gsplat's structure: tiles, depth-sorted lists, early stop, tiles in parallel), or, with
  ``SEGSPLAT_CPU_RASTERIZER=reference``, to
  :func:`~segsplat_ns.rendering.torch_rasterizer.rasterize_torch_reference`, the exact, non-tiled pure-PyTorch
  reference both are tested against (see that module for what is matched and how it is checked).
  ``sparse_grad`` is a CUDA-only optimisation and is ignored on CPU.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

from torch import Tensor

from segsplat_ns.rendering.torch_rasterizer import rasterize_torch_reference

__all__ = ["CPU_RASTERIZERS", "cpu_rasterizer", "rasterize", "rasterize_torch_reference"]

CPU_RASTERIZERS = ("numba", "reference")
"""Values of the ``SEGSPLAT_CPU_RASTERIZER`` environment variable (default: numba)."""


def cpu_rasterizer():
    """The CPU rasterizer ``SEGSPLAT_CPU_RASTERIZER`` names (numba unless it says reference)."""
    name = os.environ.get("SEGSPLAT_CPU_RASTERIZER", "numba").strip().lower() or "numba"
    if name not in CPU_RASTERIZERS:
        raise ValueError(f"SEGSPLAT_CPU_RASTERIZER={name!r}: use one of {', '.join(CPU_RASTERIZERS)}")
    if name == "reference":
        return rasterize_torch_reference
    from segsplat_ns.rendering.numba_rasterizer import rasterize_numba  # lazy: compiling is paid on first use

    return rasterize_numba


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [(C,) N, D] or [(C,) N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: Optional[Tensor] = None,
    render_mode: str = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    **kwargs,
) -> Tuple[Tensor, Tensor, Dict]:
    """Rasterize 3D Gaussians into C images; same arguments and outputs as ``gsplat.rasterization``.

    Returns ``(render_colors [C, H, W, D'], render_alphas [C, H, W, 1], info)``.
    CUDA inputs run gsplat itself; CPU inputs run :func:`cpu_rasterizer` (``packed=False`` only).
    """
    if means.is_cuda:
        import gsplat  # lazy: only the GPU path needs the compiled extension

        return gsplat.rasterization(
            means=means,
            quats=quats,
            scales=scales,
            opacities=opacities,
            colors=colors,
            viewmats=viewmats,
            Ks=Ks,
            width=width,
            height=height,
            near_plane=near_plane,
            far_plane=far_plane,
            radius_clip=radius_clip,
            eps2d=eps2d,
            sh_degree=sh_degree,
            packed=packed,
            tile_size=tile_size,
            backgrounds=backgrounds,
            render_mode=render_mode,
            sparse_grad=sparse_grad,
            absgrad=absgrad,
            rasterize_mode=rasterize_mode,
            **kwargs,
        )
    return cpu_rasterizer()(
        means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height),
        near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
        sh_degree=sh_degree, packed=packed, tile_size=tile_size, backgrounds=backgrounds,
        render_mode=render_mode, absgrad=absgrad, rasterize_mode=rasterize_mode, **kwargs,
    )
