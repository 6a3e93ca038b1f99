"""The tiled CPU rasterizer: gsplat's structure (16x16 tiles, depth-sorted lists, early stop) compiled with numba.

:func:`rasterize_numba` has the arguments and outputs of ``gsplat.rasterization`` (pinhole, ``packed=False``) and
the semantics of :func:`~segsplat_ns.rendering.torch_rasterizer.rasterize_torch_reference` (the exact reference it
is tested against). Projection and colours are the shared code of :mod:`~segsplat_ns.rendering.projection`
(PyTorch, differentiable by autograd, when a gradient can reach the geometry; one numba pass otherwise); compositing, the part whose cost grows with pixels x Gaussians, is one autograd
function over the numba kernels of :mod:`~segsplat_ns.rendering._numba_kernels`: each pixel stops at T <= 1e-4, so
occluded Gaussians cost nothing, and tiles run in parallel on every core.

Why numba: it is a PyPI wheel with no compiler needed on the user's machine, its ``prange`` gives the tile-parallel
loop directly, and ``cache=True`` keeps the compiled kernels between runs (docs/running-on-cpu.md has the numbers).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from segsplat_ns.rendering import _numba_kernels as kernels
from segsplat_ns.rendering._numba_kernels import KERNEL_LOCK
from segsplat_ns.rendering.projection import finish_render, gsplat_info, isect_keys, prepare, tile_boxes

__all__ = ["rasterize_numba", "last_pair_count"]

_LAST_PAIRS = [0]


def last_pair_count() -> int:
    """(pixel, Gaussian) pairs composited by the last forward call (the benchmark's work measure)."""
    return _LAST_PAIRS[0]


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _Composite(torch.autograd.Function):
    """render [C*H*W, D] (no background) and alpha [C*H*W] from the projected Gaussians of one call."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, bins, geometry, absgrad):
        offsets, ids = bins
        color_mod, n_tiles, tile_width, tile_size, W, H = geometry
        m2, co, op, cols = _np(means2d).reshape(-1, 2), _np(conics).reshape(-1, 3), _np(opacities).reshape(-1), _np(colors)
        with KERNEL_LOCK:
            render, t_final, last, pairs = kernels.forward(offsets, ids, m2, co, op, cols, color_mod, n_tiles, tile_width,
                                                           tile_size, W, H)  # fmt: skip
        _LAST_PAIRS[0] = int(pairs.sum())
        ctx.save_for_backward(means2d, conics, opacities, colors)
        ctx.state = (bins, geometry, t_final, last, absgrad)
        dtype = means2d.dtype
        return torch.from_numpy(render).to(dtype), torch.from_numpy(1.0 - t_final).to(dtype)

    @staticmethod
    def backward(ctx, g_render, g_alpha):
        means2d, conics, opacities, colors = ctx.saved_tensors
        (offsets, ids), geometry, t_final, last, absgrad = ctx.state
        color_mod, n_tiles, tile_width, tile_size, W, H = geometry
        dtype = means2d.dtype
        m2, co, op, cols = _np(means2d).reshape(-1, 2), _np(conics).reshape(-1, 3), _np(opacities).reshape(-1), _np(colors)
        gr = g_render.detach().to(dtype).contiguous().numpy()
        ga = g_alpha.detach().to(dtype).contiguous().numpy()
        with KERNEL_LOCK:
            g_xy, g_xy_abs, g_conic, g_opac, g_col = kernels.backward(
                offsets, ids, m2, co, op, cols, color_mod, n_tiles, tile_width, tile_size, W, H, t_final, last, gr, ga
            )
        index = torch.from_numpy(ids)
        n_flat = m2.shape[0]

        def gather(values: np.ndarray, rows: int, by: Tensor) -> Tensor:
            out = torch.zeros((rows, *values.shape[1:]), dtype=dtype)
            return out.index_add_(0, by, torch.from_numpy(values))

        v_means2d = gather(g_xy, n_flat, index).reshape(means2d.shape)
        if absgrad:  # gsplat sets it on the means2d tensor that info["means2d"] holds
            means2d.absgrad = gather(g_xy_abs, n_flat, index).reshape(means2d.shape)
        v_conics = gather(g_conic, n_flat, index).reshape(conics.shape)
        v_opac = gather(g_opac, n_flat, index).reshape(opacities.shape)
        v_colors = gather(g_col, colors.shape[0], index % color_mod)
        return v_means2d, v_conics, v_opac, v_colors, None, None, None


def rasterize_numba(
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
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    channel_chunk: int = 32,
    distributed: bool = False,
    camera_model: str = "pinhole",
    covars: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Dict]:
    """gsplat 1.4.0's ``rasterization`` (``packed=False``, pinhole) on CPU tensors, tiled and compiled.

    Returns ``(render_colors [C, H, W, D'], render_alphas [C, H, W, 1], info)``; ``channel_chunk`` is accepted for
    gsplat's signature and unused (all channels are composited in one pass).
    """
    if means.device.type != "cpu":
        raise ValueError("rasterize_numba runs on CPU tensors (CUDA tensors go to gsplat)")
    p = prepare(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=near_plane,
        far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d, sh_degree=sh_degree, packed=packed,
        backgrounds=backgrounds, render_mode=render_mode, rasterize_mode=rasterize_mode, distributed=distributed,
        camera_model=camera_model, covars=covars,
    )  # fmt: skip
    C, N, H, W = p.C, p.N, p.height, p.width
    tile_width = math.ceil(W / float(tile_size))
    tile_height = math.ceil(H / float(tile_size))
    n_tiles = tile_width * tile_height

    with torch.no_grad():
        tx0, ty0, tx1, ty1 = tile_boxes(p.means2d.detach(), p.radii, tile_size, tile_width, tile_height)
        # front to back within each camera, ties by index (gsplat's stable sort of (tile, depth) keys)
        order = torch.sort(p.depths.detach(), dim=1, stable=True).indices + torch.arange(C)[:, None] * N
        with KERNEL_LOCK:
            offsets, ids, tiles = kernels.bin_tiles(
                _np(tx0).reshape(-1), _np(ty0).reshape(-1), _np(tx1).reshape(-1), _np(ty1).reshape(-1),
                _np(order).reshape(-1), C, max(N, 1), n_tiles, tile_width,
            )  # fmt: skip
    color_mod = N if p.shared_colors else C * N
    geometry = (max(color_mod, 1), n_tiles, tile_width, tile_size, W, H)
    render, alpha = _Composite.apply(p.means2d, p.conics, p.opacities, p.colors, (offsets, ids), geometry, absgrad)
    if absgrad:
        p.means2d.absgrad = torch.zeros_like(p.means2d.detach())  # replaced by the backward pass
    render, render_alphas = finish_render(p, render, alpha, 1.0 - alpha, render_mode, empty=ids.shape[0] == 0)

    tiles_per_gauss = ((tx1 - tx0).clamp_min(0) * (ty1 - ty0).clamp_min(0)).to(torch.int32)
    ids_t = torch.from_numpy(ids)
    isect_ids = isect_keys(p.depths, ids_t, torch.from_numpy(tiles), N, n_tiles)
    isect_offsets = torch.from_numpy(offsets[:-1]).to(torch.int32).reshape(C, tile_height, tile_width)
    info = gsplat_info(p, tile_size, tile_width, tile_height, tiles_per_gauss, isect_ids, ids_t.to(torch.int32),
                       isect_offsets)  # fmt: skip
    return render, render_alphas, info
