"""Render a few pixels of a view, not the whole view: what a click needs.

A click reads the rendered feature at its pixels only. :func:`render_pixels` gives exactly what
:func:`~segsplat_ns.rendering.rasterize` gives at those pixels (``RGB`` mode, ``packed=False``), at a cost that
grows with the Gaussians near the clicked pixels' rays instead of with the image size times the Gaussians:

1. **cull**: keep a Gaussian if an *upper bound* of its screen radius puts the clicked pixel's tile inside its
   tile box. The bound: the rasteriser's radius is ``ceil(3 sqrt(v1))`` with ``v1 <= lambda_max(J R S S R^T J^T)
   + eps2d + 0.1`` (the 0.1 is the clamp ``sqrt(max(0.01, ...))``), and ``lambda_max <= ||J||_F^2
   sigma_max(R_cam)^2 max(s)^2`` (the quaternion's rotation is orthonormal). Margins: x1.001 on the radius
   (float32 cancellation in ``b^2 - det`` can move the exact radius by ~4e-4 relative), +0.01 px and 1e-5
   relative on the centre. So the cull never drops a Gaussian the rasteriser would use
   (``tests/test_pixel_query.py`` checks it by brute force). On CPU a uniform grid over the means, built once per
   geometry (~64 Gaussians a cell), lets the cull visit only the cells near the tile's frustum (a bound per cell, in
   ``_pixel_kernels.cull``); on CUDA every Gaussian is tested (PyTorch);
2. **project** the survivors with the rasteriser's own projection (:func:`~.projection.project`, at inference one
   numba pass, so the floats are the ones the full render composites; on CUDA gsplat's ``fully_fused_projection``)
   and keep those whose exact tile box (gsplat's ``isect_tiles``, the same float operations as
   :func:`~.projection.tile_boxes`) holds the tile, in depth order (``_pixel_kernels.finish_tile``);
3. **composite** each pixel front to back over the survivors whose tile box holds the pixel's tile, with the
   rasteriser's decisions (depth order with ties by index, ``sigma < 0`` and ``alpha < 1/255`` skipped,
   ``alpha <= 0.999``, stop before ``T <= 1e-4``) and its arithmetic (float64 accumulation on CPU, as the numba
   rasteriser; float32 on CUDA, as gsplat).

Steps 1-2 depend on the camera, not on the pixel, and :class:`PixelCache` keeps them per 16x16 tile of a camera
(and the grid per geometry), so a second click in the same tile of the same view only composites. Everything
kept is dropped when the camera or any geometry tensor changes (identity and in-place version); colours are read
per query, never kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from segsplat_ns.rendering._numba_kernels import ALPHA_MAX, ALPHA_MIN, KERNEL_LOCK, T_STOP
from segsplat_ns.rendering.projection import project, tile_boxes

__all__ = ["PixelCache", "cull_candidates", "render_pixels"]



@dataclass
class _Tile:
    """The projected Gaussians that may touch one tile, in depth order (ties by index)."""

    ids: Tensor  # [M] long, Gaussian ids
    means2d: Tensor  # [M, 2]
    conics: Tensor  # [M, 3]
    opacities: Tensor  # [M] (times the compensation when antialiased)
    boxes: Tensor  # [M, 4] long: tile x0, y0, x1, y1 ([min, max))


@dataclass
class _Grid:
    """What the CPU cull reads, per geometry: a uniform grid over the means (``_pixel_kernels.build_grid``), the
    means and largest scales in its cell order, each cell's box of means and largest scale."""

    xs: np.ndarray
    ys: np.ndarray
    zs: np.ndarray
    smax: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    box_lo: np.ndarray
    box_hi: np.ndarray
    cell_s: np.ndarray

    @classmethod
    def build(cls, means: Tensor, scales: Tensor) -> "_Grid":
        from segsplat_ns.rendering import _pixel_kernels as kernels

        xs, ys, zs = means.detach().T.contiguous().numpy()
        smax = scales.detach().amax(dim=-1).contiguous().numpy()
        # about 64 Gaussians a cell on average: the cull tests every cell, then the members of the kept ones (at 1M
        # Gaussians, a tile's cull measured 2.5 / 0.60 / 0.19 / 0.23 ms with 4 / 16 / 64 / 256 a cell)
        cells = int(min(128, max(1, round((max(xs.shape[0], 1) / 64) ** (1 / 3)))))
        order, starts, box_lo, box_hi, cell_s = kernels.build_grid(xs, ys, zs, smax, cells)
        return cls(xs[order], ys[order], zs[order], smax[order], order, starts, box_lo, box_hi, cell_s)


@dataclass
class PixelCache:
    """What :func:`render_pixels` keeps between calls, each part for as long as what it depends on stays: the
    cull's grid (CPU) or columns (CUDA) per geometry, and the projected Gaussians of each queried tile per camera."""

    geometry_key: Optional[tuple] = None
    grid: Optional[_Grid] = None
    columns: Optional[Tuple[Tensor, Tensor]] = None  # means [3, N] and the largest scale [N]
    camera_key: Optional[tuple] = None
    tiles: Dict[Tuple[int, int], _Tile] = field(default_factory=dict)
    """Per 16x16 tile: the Gaussians that may touch it, projected and in depth order (steps 1-2)."""
    culls: int = 0
    """Culls made so far (what the kept tiles save)."""

    def for_geometry(self, means: Tensor, scales: Tensor) -> None:
        key = (_tensor_token(means), _tensor_token(scales))
        if key != self.geometry_key:
            self.geometry_key, self.grid, self.columns = key, None, None

    def grid_for(self, means: Tensor, scales: Tensor) -> _Grid:
        self.for_geometry(means, scales)
        if self.grid is None:
            self.grid = _Grid.build(means, scales)
        return self.grid

    def columns_for(self, means: Tensor, scales: Tensor) -> Tuple[Tensor, Tensor]:
        self.for_geometry(means, scales)
        if self.columns is None:
            self.columns = (means.detach().T.contiguous(), scales.detach().amax(dim=-1).contiguous())
        return self.columns

    constants: Optional[np.ndarray] = None
    """The cull's camera constants (:func:`_camera_constants`) of ``camera_key``."""

    def for_camera(self, key: tuple) -> Dict[Tuple[int, int], _Tile]:
        if key != self.camera_key:
            self.camera_key, self.tiles, self.constants = key, {}, None
        return self.tiles

    def forget_camera(self) -> None:
        """Drop the projected tiles (the next query is a first click in its view); the grid stays."""
        self.camera_key, self.tiles, self.constants = None, {}, None


def _tensor_token(t: Tensor) -> tuple:
    return (t.data_ptr(), t._version, tuple(t.shape), str(t.dtype), str(t.device))


# --------------------------------------------------------------------------------------------
# step 1: the cull
# --------------------------------------------------------------------------------------------


def _camera_constants(viewmat: Tensor, K: Tensor, width: int, height: int, eps2d: float, near: float,
                      far: float) -> np.ndarray:  # fmt: skip
    """The cull's camera in float64: R (9), t (3), fx, fy, cx, cy, the Jacobian's x/y limits (as
    :func:`~.projection.project`), sigma_max(R)^2, eps2d + 0.1, and the depth range widened by a rounding margin."""
    R = viewmat[:3, :3].double().cpu()
    t = viewmat[:3, 3].double().cpu()
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    limits = [(width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x, (height - cy) / fy + 0.3 * tan_y,
              cy / fy + 0.3 * tan_y]  # fmt: skip
    rotation_norm2 = float(torch.linalg.matrix_norm(R, ord=2)) ** 2 * (1 + 1e-6)
    depth = [near - 1e-6 * (near + 1.0), far * (1 + 1e-6)]
    return np.array(R.reshape(-1).tolist() + t.tolist() + [fx, fy, cx, cy] + limits + [rotation_norm2, eps2d + 0.1]
                    + depth, dtype=np.float64)  # fmt: skip


def _cull_torch(columns: Tuple[Tensor, Tensor], camera: np.ndarray, rect: Tensor) -> Tensor:
    """Step 1 in PyTorch (any device): the per-Gaussian bound over every Gaussian; the survivors' ids, ascending."""
    means_t, smax = columns
    c = torch.from_numpy(camera).to(means_t.device)
    R, t = c[:9].reshape(3, 3), c[9:12]
    fx, fy, cx, cy, lxp, lxn, lyp, lyn, rn2, eps, z_low, z_high = c[12:].tolist()
    x, y, z = (R @ means_t.double() + t[:, None]).unbind(0)
    rz = 1.0 / z
    u, v = fx * x * rz + cx, fy * y * rz + cy
    tx, ty = torch.clamp(x * rz, -lxn, lxp), torch.clamp(y * rz, -lyn, lyp)
    j2 = (fx * fx + fy * fy + fx * fx * tx * tx + fy * fy * ty * ty) * rz * rz
    s = smax.double()
    r = 3.0 * torch.sqrt(j2 * rn2 * s * s + eps) * 1.001 + 1.01 + 1e-5 * (u.abs() + v.abs())
    x0, y0, x1, y1 = rect.double().tolist()
    keep = (z >= z_low) & (z <= z_high) & (u - r < x1) & (u + r > x0) & (v - r < y1) & (v + r > y0)
    return torch.nonzero(keep).reshape(-1)


def cull_candidates(means, scales, viewmat, K, width, height, rect, eps2d=0.3, near_plane=0.01, far_plane=1e10,
                    backend: Optional[str] = None, cache: Optional["PixelCache"] = None,
                    constants: Optional[np.ndarray] = None) -> Tensor:  # fmt: skip
    """Step 1: the ids (long, ascending) of the Gaussians whose tile box may reach the pixel rectangle ``rect``
    [x0, y0, x1, y1) (a superset of the rasteriser's Gaussians there; see the module docstring). ``backend``:
    "numba" (CPU default: the grid, which visits only the cells near the rectangle's frustum) or "torch" (CUDA,
    and the CPU cross-check: every Gaussian)."""
    cache = cache if cache is not None else PixelCache()
    camera = constants if constants is not None else _camera_constants(viewmat, K, int(width), int(height), eps2d,
                                                                        near_plane, far_plane)  # fmt: skip
    rect = torch.as_tensor(rect).reshape(4).cpu()
    if (backend or ("torch" if means.is_cuda else "numba")) == "torch":
        return _cull_torch(cache.columns_for(means, scales), camera, rect)
    from segsplat_ns.rendering import _pixel_kernels as kernels

    grid = cache.grid_for(means, scales)
    with KERNEL_LOCK:
        ids = kernels.cull(grid.xs, grid.ys, grid.zs, grid.smax, grid.order, grid.starts, grid.box_lo, grid.box_hi,
                           grid.cell_s, camera, rect.double().numpy())  # fmt: skip
    return torch.from_numpy(ids).to(means.device)


# --------------------------------------------------------------------------------------------
# step 2: exact projection of the survivors
# --------------------------------------------------------------------------------------------


def _project_tile(ids, means, quats, scales, opacities, viewmat, K, width, height, eps2d, near_plane, far_plane,
                  radius_clip, tile_size, rasterize_mode, tile) -> _Tile:  # fmt: skip
    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    if not means.is_cuda:
        from segsplat_ns.rendering import _pixel_kernels as kernels

        # the rasteriser's own projection (one numba pass at inference), then the tile's boxes and depth order in
        # one compiled pass (a dozen small PyTorch ops cost more than the projection at a click's ~1,000 Gaussians)
        radii, means2d, depths, conics, comps, _ = project(
            means[ids], quats[ids], scales[ids], viewmat[None], K[None], width, height, eps2d, near_plane, far_plane,
            radius_clip,
        )  # fmt: skip
        rows, m2, co, op, boxes = kernels.finish_tile(
            radii[0].numpy(), means2d[0].numpy(), depths[0].numpy(), conics[0].numpy(),
            opacities[ids].contiguous().numpy(), comps[0].numpy(), rasterize_mode == "antialiased", tile_size,
            tile_width, tile_height, tile[0], tile[1],
        )  # fmt: skip
        return _Tile(ids[torch.from_numpy(rows)], torch.from_numpy(m2), torch.from_numpy(co), torch.from_numpy(op),
                     torch.from_numpy(boxes))  # fmt: skip
    import gsplat  # lazy: the CUDA path projects with gsplat's own kernel, as the full render does

    radii, means2d, depths, conics, comps = gsplat.fully_fused_projection(
        means[ids], None, quats[ids], scales[ids], viewmat[None], K[None], width, height, eps2d=eps2d,
        near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, packed=False,
        calc_compensations=rasterize_mode == "antialiased",
    )  # fmt: skip
    opac = opacities[ids]
    if rasterize_mode == "antialiased":
        opac = opac * comps[0]
    boxes = torch.stack(tile_boxes(means2d, radii, tile_size, tile_width, tile_height), dim=-1)[0]  # [M, 4]
    live = radii[0] > 0
    # front to back, ties by index: the order of the full render's stable sort restricted to these Gaussians
    order = torch.sort(depths[0][live], stable=True).indices
    keep = torch.nonzero(live).reshape(-1)[order]
    return _Tile(ids[keep], means2d[0][keep].contiguous(), conics[0][keep].contiguous(), opac[keep].contiguous(),
                 boxes[keep].contiguous())


# --------------------------------------------------------------------------------------------
# step 3: compositing
# --------------------------------------------------------------------------------------------


def _composite_torch(tile: _Tile, colors: Tensor, pixels: Tensor, tile_size: int) -> Tuple[Tensor, Tensor]:
    """Front-to-back compositing of the tile's Gaussians at pixels [P, 2] in PyTorch (CUDA; float32 as gsplat):
    render [P, D] (no background) and transmittance [P]."""
    P, M = pixels.shape[0], tile.ids.shape[0]
    cols = colors[tile.ids].to(tile.means2d.dtype)
    if M == 0:
        return cols.new_zeros(P, colors.shape[-1]), cols.new_ones(P)
    px = pixels[:, :1].to(tile.means2d.dtype) + 0.5
    py = pixels[:, 1:].to(tile.means2d.dtype) + 0.5
    tx, ty = pixels[:, :1] // tile_size, pixels[:, 1:] // tile_size
    inside = (tile.boxes[None, :, 0] <= tx) & (tx < tile.boxes[None, :, 2]) & (tile.boxes[None, :, 1] <= ty) & (
        ty < tile.boxes[None, :, 3])  # fmt: skip
    dx = tile.means2d[None, :, 0] - px
    dy = tile.means2d[None, :, 1] - py
    a, b, c = tile.conics[:, 0], tile.conics[:, 1], tile.conics[:, 2]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(tile.opacities * torch.exp(-sigma), ALPHA_MAX)
    alpha = torch.where(inside & (sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    after = torch.cumprod(1.0 - alpha, dim=1)  # T after each Gaussian [P, M]
    before = torch.cat([torch.ones_like(after[:, :1]), after[:, :-1]], dim=1)
    # the pixel stops before the first Gaussian whose next transmittance is <= 1e-4; it and all behind are out
    stopped = torch.cumsum(((after <= T_STOP) & (alpha > 0)).int(), dim=1) > 0
    weights = torch.where(stopped, torch.zeros_like(alpha), alpha * before)
    kept = torch.where(stopped, torch.ones_like(after), 1.0 - alpha)
    return weights @ cols, torch.prod(kept, dim=1)


def _composite_numba(tile: _Tile, colors: Tensor, pixels: Tensor, tile_size: int) -> Tuple[Tensor, Tensor]:
    from segsplat_ns.rendering import _pixel_kernels as kernels

    dtype = tile.means2d.dtype
    cols = colors[tile.ids].detach().to(dtype).contiguous().numpy()
    render, t_final = kernels.composite(
        pixels.long().contiguous().numpy(), tile.means2d.detach().numpy(), tile.conics.detach().numpy(),
        tile.opacities.detach().numpy(), cols, tile.boxes.numpy(), tile_size,
    )  # fmt: skip
    return torch.from_numpy(render), torch.from_numpy(t_final)


# --------------------------------------------------------------------------------------------
# the whole query
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def render_pixels(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3] (activated)
    opacities: Tensor,  # [N] (activated)
    colors: Tensor,  # [N, D]
    viewmat: Tensor,  # [4, 4] world -> camera
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    pixels: Tensor,  # [P, 2] long (x, y)
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    tile_size: int = 16,
    rasterize_mode: str = "classic",
    background: Optional[Tensor] = None,  # [D]
    cache: Optional[PixelCache] = None,
    composite: Optional[str] = None,
) -> Tuple[Tensor, Tensor]:
    """What ``rasterize(...)[0][0, y, x]`` and ``[1][0, y, x]`` would be at each pixel: ([P, D], [P, 1]).

    ``cache`` keeps the cull's grid and the projected tiles (see :class:`PixelCache`); ``composite``: "numba" (CPU default)
    or "torch" (CUDA default, and the CPU cross-check). No gradients (a click is inference).
    """
    width, height = int(width), int(height)
    pixels = pixels.long().reshape(-1, 2)
    if pixels.shape[0] and not (((pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0)
                                 & (pixels[:, 1] < height)).all()):  # fmt: skip
        raise ValueError(f"pixels outside the {width}x{height} image")
    device = means.device
    cache = cache if cache is not None else PixelCache()
    settings = (near_plane, far_plane, radius_clip, eps2d, tile_size, rasterize_mode)
    camera = tuple(float(v) for v in torch.cat([viewmat.reshape(-1), K.reshape(-1)]).double().cpu())
    geometry = tuple(_tensor_token(t) for t in (means, quats, scales, opacities))
    tiles = cache.for_camera((camera, width, height, settings) + geometry)
    pixel_tiles = [(int(x) // tile_size, int(y) // tile_size) for x, y in pixels.tolist()]
    for tx, ty in sorted(set(pixel_tiles) - set(tiles)):
        rect = torch.tensor([tx * tile_size, ty * tile_size, min((tx + 1) * tile_size, width),
                             min((ty + 1) * tile_size, height)])  # fmt: skip
        if cache.constants is None:
            cache.constants = _camera_constants(viewmat, K, width, height, eps2d, near_plane, far_plane)
        ids = cull_candidates(means, scales, viewmat, K, width, height, rect, eps2d, near_plane, far_plane, cache=cache,
                              constants=cache.constants)  # fmt: skip
        cache.culls += 1
        tiles[(tx, ty)] = _project_tile(ids.to(device), means, quats, scales, opacities, viewmat, K, width, height,
                                        eps2d, near_plane, far_plane, radius_clip, tile_size, rasterize_mode, (tx, ty))  # fmt: skip
    backend = composite or ("torch" if means.is_cuda else "numba")
    run = _composite_numba if backend == "numba" else _composite_torch
    D = colors.shape[-1]
    render = colors.new_zeros(pixels.shape[0], D, dtype=means.dtype)
    alpha = colors.new_zeros(pixels.shape[0], dtype=means.dtype)
    rows_of: Dict[Tuple[int, int], list] = {}
    for row, tile in enumerate(pixel_tiles):
        rows_of.setdefault(tile, []).append(row)
    for tile, tile_rows in rows_of.items():
        rows = torch.tensor(tile_rows, device=device)
        values, t_final = run(tiles[tile], colors, pixels[rows].to(device), tile_size)
        render[rows] = values.to(device=device, dtype=render.dtype)
        # as the rasterisers: alpha = 1 - T_final in the inputs' dtype, the background under 1 - alpha
        alpha[rows] = (1.0 - t_final).to(device=device, dtype=alpha.dtype)
    if background is not None:
        render = render + (1.0 - alpha)[:, None] * background.to(render)
    return render, alpha[:, None]
