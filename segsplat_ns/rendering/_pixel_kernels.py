"""numba kernels of :mod:`~segsplat_ns.rendering.pixel_query`: the cull over every Gaussian and the compositing of
a few pixels. The compositing is the numba rasteriser's per-pixel loop (:mod:`._numba_kernels`) over one pixel's
candidates instead of its tile's list: same skips, same float64 accumulation, same stop rule, so the values are
the full render's."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from segsplat_ns.rendering._numba_kernels import ALPHA_MAX, ALPHA_MIN, T_STOP, _sigma_cut


@njit(parallel=True, cache=True, fastmath=True, error_model="numpy")
def cull(xs, ys, zs, smax, camera, rect):  # pragma: no cover - compiled
    """The ids (ascending) of the Gaussians whose radius bound reaches the pixel rectangle ``rect`` [x0, y0, x1, y1).

    ``xs, ys, zs, smax`` [N]: the means by coordinate and the largest scale (structure of arrays: the loop then
    vectorises; 16 bytes a Gaussian). ``camera`` (float64): R row-major (9), t (3), fx, fy, cx, cy, the four
    x/y limits of the projection's Jacobian, sigma_max(R)^2, eps2d + 0.1, and the depth range. The bound and why
    it holds (with margins for float32 rounding in the exact projection and for fastmath here):
    :mod:`~segsplat_ns.rendering.pixel_query`."""
    N = xs.shape[0]
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = camera[0], camera[1], camera[2], camera[3], camera[4], camera[5], camera[6], camera[7], camera[8]
    t0, t1, t2, fx, fy, cx, cy = camera[9], camera[10], camera[11], camera[12], camera[13], camera[14], camera[15]
    lxp, lxn, lyp, lyn, rn2, eps, z_low, z_high = camera[16], camera[17], camera[18], camera[19], camera[20], camera[21], camera[22], camera[23]
    x0, y0, x1, y1 = rect[0], rect[1], rect[2], rect[3]
    fx2, fy2 = fx * fx, fy * fy
    # blocks: a vectorised pass writes each block's hits to a small mask, a scalar pass appends their ids (the
    # survivors are few); no [N] mask is scanned again afterwards
    block = 4096
    blocks = (N + block - 1) // block
    ids = np.empty(N, np.int64)
    counts = np.zeros(blocks, np.int64)
    for b in prange(blocks):
        start = b * block
        end = min(N, start + block)
        hits = np.empty(end - start, np.bool_)
        for i in range(start, end):
            mx, my, mz = xs[i], ys[i], zs[i]
            z = r20 * mx + r21 * my + r22 * mz + t2
            x = r00 * mx + r01 * my + r02 * mz + t0
            y = r10 * mx + r11 * my + r12 * mz + t1
            rz = 1.0 / z
            u = fx * x * rz + cx
            v = fy * y * rz + cy
            s = smax[i]
            tx = min(lxp, max(-lxn, x * rz))
            ty = min(lyp, max(-lyn, y * rz))
            j2 = (fx2 + fy2 + fx2 * tx * tx + fy2 * ty * ty) * rz * rz
            r = 3.0 * np.sqrt(j2 * rn2 * s * s + eps) * 1.001 + 1.01 + 1e-5 * (abs(u) + abs(v))
            hits[i - start] = (z >= z_low) & (z <= z_high) & (u - r < x1) & (u + r > x0) & (v - r < y1) & (v + r > y0)
        count = 0
        for k in range(end - start):
            if hits[k]:
                ids[start + count] = start + k
                count += 1
        counts[b] = count
    total = 0
    for b in range(blocks):
        for k in range(counts[b]):  # moves left (total <= b * block): a forward copy is safe
            ids[total + k] = ids[b * block + k]
        total += counts[b]
    return ids[:total]


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
            dx = means2d[i, 0] - px
            dy = means2d[i, 1] - py
            sigma = 0.5 * (conics[i, 0] * dx * dx + conics[i, 2] * dy * dy) + conics[i, 1] * dx * dy
            if sigma < 0 or sigma > _sigma_cut(opacities[i]):
                continue
            alpha = min(ALPHA_MAX, opacities[i] * np.exp(-sigma))
            if alpha < ALPHA_MIN:
                continue
            next_t = T * (1.0 - alpha)
            if next_t <= T_STOP:
                break
            w = alpha * T
            for d in range(D):
                acc[d] += w * colors[i, d]
            T = next_t
        for d in range(D):
            render[p, d] = acc[d]
        t_final[p] = T
    return render, t_final
