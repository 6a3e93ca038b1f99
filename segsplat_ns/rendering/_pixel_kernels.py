"""numba kernels of :mod:`~segsplat_ns.rendering.pixel_query`: the cull over every Gaussian and the compositing of
a few pixels. The compositing is the numba rasteriser's per-pixel loop (:mod:`._numba_kernels`) over one pixel's
candidates instead of its tile's list: same skips, same float64 accumulation, same stop rule, so the values are
the full render's."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from segsplat_ns.rendering._numba_kernels import _sigma_cut, blend, pixel_alpha


@njit(cache=True)
def build_grid(xs, ys, zs, smax, cells_per_axis):  # pragma: no cover - compiled
    """A uniform grid of ``cells_per_axis``^3 cells over the means' bounding box: the Gaussians in cell order
    (``order``, ``starts`` [C + 1]) and, per cell, the bounding box of its means and its largest scale."""
    N = xs.shape[0]
    r = cells_per_axis
    lo = np.array([xs.min(), ys.min(), zs.min()], np.float64) if N else np.zeros(3)
    hi = np.array([xs.max(), ys.max(), zs.max()], np.float64) if N else np.ones(3)
    size = np.maximum((hi - lo) / r, 1e-12)
    cell = np.empty(N, np.int64)
    C = r * r * r
    counts = np.zeros(C + 1, np.int64)
    for i in range(N):
        cx = min(r - 1, max(0, int((xs[i] - lo[0]) / size[0])))
        cy = min(r - 1, max(0, int((ys[i] - lo[1]) / size[1])))
        cz = min(r - 1, max(0, int((zs[i] - lo[2]) / size[2])))
        c = (cz * r + cy) * r + cx
        cell[i] = c
        counts[c + 1] += 1
    starts = np.cumsum(counts)
    cursor = starts[:-1].copy()
    order = np.empty(N, np.int64)
    for i in range(N):
        c = cell[i]
        order[cursor[c]] = i
        cursor[c] += 1
    box_lo = np.full((C, 3), np.inf)
    box_hi = np.full((C, 3), -np.inf)
    cell_s = np.zeros(C)
    for c in range(C):
        for k in range(starts[c], starts[c + 1]):
            i = order[k]
            box_lo[c, 0] = min(box_lo[c, 0], xs[i])
            box_hi[c, 0] = max(box_hi[c, 0], xs[i])
            box_lo[c, 1] = min(box_lo[c, 1], ys[i])
            box_hi[c, 1] = max(box_hi[c, 1], ys[i])
            box_lo[c, 2] = min(box_lo[c, 2], zs[i])
            box_hi[c, 2] = max(box_hi[c, 2], zs[i])
            cell_s[c] = max(cell_s[c], smax[i])
    return order, starts, box_lo, box_hi, cell_s



@njit(parallel=True, cache=True, fastmath=True, error_model="numpy")
def cull(xs, ys, zs, smax, order, starts, box_lo, box_hi, cell_s, camera, rect):  # pragma: no cover - compiled
    """The ids (ascending) of the Gaussians whose radius bound reaches the pixel rectangle ``rect`` [x0, y0, x1, y1).

    ``xs, ys, zs, smax``: the means by coordinate and the largest scale, in the grid's cell order (entry k is
    Gaussian ``order[k]``). ``camera`` (float64): R row-major (9), t (3), fx, fy, cx, cy, the four x/y limits of
    the projection's Jacobian, sigma_max(R)^2, eps2d + 0.1, and the depth range. First every cell is tested with a
    bound that holds for every Gaussian in it (below), then the Gaussians of the cells that pass, one by one, with
    the per-Gaussian bound of :mod:`~segsplat_ns.rendering.pixel_query` (margins for float32 rounding in the exact
    projection and for fastmath here).

    The cell bound: z is affine, so over the cell's box of means it is smallest at a corner (``zmin``); with every
    corner in front of the camera the means project inside the corners' image box [umin, umax] x [vmin, vmax]; the
    Jacobian's clamps give ``j2 <= (fx^2 (1 + lx^2) + fy^2 (1 + ly^2)) / zmin^2`` and ``sqrt(a + b) <= sqrt(a) +
    sqrt(b)``, so every Gaussian's radius bound is at most ``R = a s_cell / zmin + b + 1e-5 (|u| + |v|)_max``. A
    cell that reaches the camera plane is tested Gaussian by Gaussian."""
    C = starts.shape[0] - 1
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = camera[0], camera[1], camera[2], camera[3], camera[4], camera[5], camera[6], camera[7], camera[8]
    t0, t1, t2, fx, fy, cx, cy = camera[9], camera[10], camera[11], camera[12], camera[13], camera[14], camera[15]
    lxp, lxn, lyp, lyn, rn2, eps, z_low, z_high = camera[16], camera[17], camera[18], camera[19], camera[20], camera[21], camera[22], camera[23]
    x0, y0, x1, y1 = rect[0], rect[1], rect[2], rect[3]
    fx2, fy2 = fx * fx, fy * fy
    lx, ly = max(lxp, lxn), max(lyp, lyn)
    a_bound = 3.0 * 1.001 * np.sqrt((fx2 * (1.0 + lx * lx) + fy2 * (1.0 + ly * ly)) * rn2)
    b_bound = 3.0 * 1.001 * np.sqrt(eps) + 1.01
    keep = np.zeros(C, np.bool_)
    for c in prange(C):
        if starts[c] == starts[c + 1]:
            continue
        zmin, zmax = np.inf, -np.inf
        umin, umax, vmin, vmax = np.inf, -np.inf, np.inf, -np.inf
        for corner in range(8):
            mx = box_hi[c, 0] if corner & 1 else box_lo[c, 0]
            my = box_hi[c, 1] if corner & 2 else box_lo[c, 1]
            mz = box_hi[c, 2] if corner & 4 else box_lo[c, 2]
            z = r20 * mx + r21 * my + r22 * mz + t2
            x = r00 * mx + r01 * my + r02 * mz + t0
            y = r10 * mx + r11 * my + r12 * mz + t1
            zmin, zmax = min(zmin, z), max(zmax, z)
            if z > 0:
                u = fx * x / z + cx
                v = fy * y / z + cy
                umin, umax, vmin, vmax = min(umin, u), max(umax, u), min(vmin, v), max(vmax, v)
        if zmax < z_low or zmin > z_high:
            continue
        if zmin <= max(z_low, 1e-9):
            keep[c] = True  # the cell reaches the camera plane: its Gaussians are tested one by one
            continue
        R = (a_bound * cell_s[c] / zmin + b_bound + 1e-5 * (max(abs(umin), abs(umax)) + max(abs(vmin), abs(vmax)))) * (1.0 + 1e-6) + 1e-6
        keep[c] = (umin - R < x1) & (umax + R > x0) & (vmin - R < y1) & (vmax + R > y0)
    kept = np.nonzero(keep)[0]
    offsets = np.zeros(kept.shape[0] + 1, np.int64)
    for j in range(kept.shape[0]):
        offsets[j + 1] = offsets[j] + starts[kept[j] + 1] - starts[kept[j]]
    ids = np.empty(offsets[-1], np.int64)
    counts = np.zeros(kept.shape[0], np.int64)
    for j in prange(kept.shape[0]):
        c = kept[j]
        n = 0
        for k in range(starts[c], starts[c + 1]):
            mx, my, mz = xs[k], ys[k], zs[k]
            z = r20 * mx + r21 * my + r22 * mz + t2
            x = r00 * mx + r01 * my + r02 * mz + t0
            y = r10 * mx + r11 * my + r12 * mz + t1
            rz = 1.0 / z
            u = fx * x * rz + cx
            v = fy * y * rz + cy
            s = smax[k]
            tx = min(lxp, max(-lxn, x * rz))
            ty = min(lyp, max(-lyn, y * rz))
            j2 = (fx2 + fy2 + fx2 * tx * tx + fy2 * ty * ty) * rz * rz
            r = 3.0 * np.sqrt(j2 * rn2 * s * s + eps) * 1.001 + 1.01 + 1e-5 * (abs(u) + abs(v))
            if (z >= z_low) & (z <= z_high) & (u - r < x1) & (u + r > x0) & (v - r < y1) & (v + r > y0):
                ids[offsets[j] + n] = order[k]
                n += 1
        counts[j] = n
    n = 0
    for j in range(kept.shape[0]):
        for k in range(counts[j]):  # moves left: a forward copy is safe
            ids[n + k] = ids[offsets[j] + k]
        n += counts[j]
    out = ids[:n].copy()
    out.sort()
    return out


@njit(cache=True)
def composite(pixels, means2d, conics, opacities, colors, boxes, tile_size):  # pragma: no cover - compiled
    """Each pixel [P, 2] (x, y) front to back over the depth-ordered candidates whose tile box [M, 4] holds its
    tile: render [P, D] in the inputs' dtype, T_final [P] float64."""
    P = pixels.shape[0]
    M = means2d.shape[0]
    D = colors.shape[1]
    render = np.zeros((P, D), means2d.dtype)
    t_final = np.ones(P, np.float64)
    acc = np.empty(D, np.float64)
    for p in range(P):
        x, y = pixels[p, 0], pixels[p, 1]
        tx, ty = x // tile_size, y // tile_size
        px, py = x + 0.5, y + 0.5
        T = 1.0
        for d in range(D):
            acc[d] = 0.0
        for i in range(M):
            if tx < boxes[i, 0] or tx >= boxes[i, 2] or ty < boxes[i, 1] or ty >= boxes[i, 3]:
                continue
            alpha = pixel_alpha(means2d[i, 0] - px, means2d[i, 1] - py, conics[i, 0], conics[i, 1], conics[i, 2],
                                opacities[i], _sigma_cut(opacities[i]))
            if alpha == 0.0:
                continue
            next_t = blend(acc, colors, i, alpha, T)
            if next_t < 0.0:
                break
            T = next_t
        for d in range(D):
            render[p, d] = acc[d]
        t_final[p] = T
    return render, t_final


@njit(cache=True)
def finish_tile(radii, means2d, depths, conics, opacities, comps, antialiased, tile_size, tile_width, tile_height,
                tx, ty):  # pragma: no cover - compiled  # fmt: skip
    """Step 2's end for tile (tx, ty): of the projected candidates [M] (one camera), the ones whose tile box (gsplat's
    ``isect_tiles`` in the means' dtype, as :func:`~segsplat_ns.rendering.projection.tile_boxes`: the same float
    operations, so the same boxes) holds the tile, in front-to-back order with ties by candidate index (a stable
    sort). Returns their candidate indices, means2d, conics, opacities (times the compensation when
    ``antialiased``) and boxes."""
    M = radii.shape[0]
    one = means2d.dtype.type
    ts = one(tile_size)
    rows = np.empty(M, np.int64)
    n = 0
    for i in range(M):
        if radii[i] <= 0:
            continue
        tr = one(radii[i]) / ts
        gx = means2d[i, 0] / ts
        gy = means2d[i, 1] / ts
        x0 = min(max(np.floor(gx - tr), 0.0), tile_width)
        y0 = min(max(np.floor(gy - tr), 0.0), tile_height)
        x1 = min(max(np.ceil(gx + tr), 0.0), tile_width)
        y1 = min(max(np.ceil(gy + tr), 0.0), tile_height)
        if x0 <= tx < x1 and y0 <= ty < y1:
            rows[n] = i
            n += 1
    rows = rows[:n]
    rows = rows[np.argsort(depths[rows], kind="mergesort")]
    out_means = np.empty((n, 2), means2d.dtype)
    out_conics = np.empty((n, 3), conics.dtype)
    out_opac = np.empty(n, opacities.dtype)
    boxes = np.empty((n, 4), np.int64)
    for k in range(n):
        i = rows[k]
        out_means[k, 0], out_means[k, 1] = means2d[i, 0], means2d[i, 1]
        out_conics[k, 0], out_conics[k, 1], out_conics[k, 2] = conics[i, 0], conics[i, 1], conics[i, 2]
        out_opac[k] = opacities[i] * comps[i] if antialiased else opacities[i]
        tr = one(radii[i]) / ts
        gx = means2d[i, 0] / ts
        gy = means2d[i, 1] / ts
        boxes[k, 0] = int(min(max(np.floor(gx - tr), 0.0), tile_width))
        boxes[k, 1] = int(min(max(np.floor(gy - tr), 0.0), tile_height))
        boxes[k, 2] = int(min(max(np.ceil(gx + tr), 0.0), tile_width))
        boxes[k, 3] = int(min(max(np.ceil(gy + tr), 0.0), tile_height))
    return rows, out_means, out_conics, out_opac, boxes
