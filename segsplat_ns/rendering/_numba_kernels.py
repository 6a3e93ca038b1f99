"""numba kernels of the tiled CPU rasterizer: tile binning, forward and backward compositing.

These follow gsplat 1.4.0's ``isect_tiles`` + ``rasterize_to_pixels_fwd`` / ``_bwd`` CUDA kernels, with one CPU
thread per 16x16 tile instead of one CUDA block:

* a (camera, Gaussian) touches the tiles of its radius box; each tile's list is in front-to-back depth order
  (ties by index), built with a counting sort over Gaussians already sorted by depth;
* each pixel walks its tile's list: ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy`` with ``d = mean2d - (x + 0.5,
  y + 0.5)``; skipped when ``sigma < 0`` or ``alpha = min(0.999, o exp(-sigma)) < 1/255``; stops *before* the
  first Gaussian whose next transmittance ``T (1 - alpha) <= 1e-4`` (it is excluded, as gsplat does);
* the backward pass walks each pixel's list back from its stop point, recovering ``T_i = T_{i+1} / (1 - alpha_i)``
  and the colour behind each Gaussian, as gsplat's kernel does.

Gradients are accumulated per (tile, Gaussian) intersection (one writer per tile, so no atomics) and summed per
Gaussian afterwards by the caller. Arithmetic runs in float64 (the reference's transmittance is float64 too); arrays keep the inputs' dtype.
``cache=True``: compiled once per machine (a few seconds), then loaded from numba's cache.
"""

from __future__ import annotations

import os
import threading

import numba
import numpy as np
from numba import njit, prange

if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    # every numba kernel of the project imports this module first. numba tries TBB first and warns on every
    # command when the TBB it finds is too old; OpenMP (what it falls back to) first, then numba's own workqueue,
    # keeps the same layer without the probe
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]

KERNEL_LOCK = threading.Lock()
"""Held around every parallel kernel call: numba's workqueue threading layer (the fallback when OpenMP is missing)
must not be entered from two Python threads at once, and the viewer renders and clicks in its own thread while
training renders in the main one."""

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_STOP = 1e-4


@njit(cache=True, inline="always")
def _sigma_cut(opacity):  # pragma: no cover - compiled
    """A sigma above which alpha = o exp(-sigma) < 1/255 for sure (skips the exp for most pairs; the margin keeps
    the exact test, computed with exp, for every pair near the threshold)."""
    if opacity <= 0:
        return -1.0
    return np.log(opacity * 255.0) + 1e-6


@njit(cache=True, inline="always")
def pixel_alpha(dx, dy, conic_a, conic_b, conic_c, opacity, sigma_cut):  # pragma: no cover - compiled
    """A Gaussian's alpha at a pixel (``d = mean2d - pixel centre``), or 0 where the rasteriser skips the pair:
    ``sigma < 0``, sigma past the opacity's cut, or ``alpha < 1/255``. Shared by the tiled forward pass and the
    pixel query, so both composite with the same arithmetic."""
    sigma = 0.5 * (conic_a * dx * dx + conic_c * dy * dy) + conic_b * dx * dy
    if sigma < 0 or sigma > sigma_cut:
        return 0.0
    alpha = min(ALPHA_MAX, opacity * np.exp(-sigma))
    if alpha < ALPHA_MIN:
        return 0.0
    return alpha


@njit(cache=True, inline="always")
def blend(acc, colors, row, alpha, T):  # pragma: no cover - compiled
    """One front-to-back step: ``acc += alpha T colors[row]``; returns the transmittance behind the Gaussian, or
    -1 where the pixel stops before it (``T (1 - alpha) <= 1e-4``: it is excluded, as gsplat does)."""
    next_t = T * (1.0 - alpha)
    if next_t <= T_STOP:
        return -1.0
    w = alpha * T
    for d in range(acc.shape[0]):
        acc[d] += w * colors[row, d]
    return next_t


@njit(cache=True, inline="always")
def _tile_origin(job, n_tiles, tile_width, tile_size):  # pragma: no cover - compiled
    """(camera, first pixel x, first pixel y) of job = camera * n_tiles + tile."""
    t = job % n_tiles
    return job // n_tiles, (t % tile_width) * tile_size, (t // tile_width) * tile_size


@njit(cache=True, inline="always")
def _gather_tile(ids, start, end, means2d, conics, opacities, colors, color_mod):  # pragma: no cover - compiled
    """One tile's Gaussians gathered into contiguous arrays (the per-pixel loops read them sequentially):
    means x, y, conic a, b, c, opacity, sigma cut, colours."""
    n = end - start
    dtype = means2d.dtype
    D = colors.shape[1]
    mx = np.empty(n, dtype)
    my = np.empty(n, dtype)
    ca = np.empty(n, dtype)
    cb = np.empty(n, dtype)
    cc = np.empty(n, dtype)
    op = np.empty(n, dtype)
    smax = np.empty(n, np.float64)
    col = np.empty((n, D), dtype)
    for i in range(n):
        e = ids[start + i]
        mx[i] = means2d[e, 0]
        my[i] = means2d[e, 1]
        ca[i] = conics[e, 0]
        cb[i] = conics[e, 1]
        cc[i] = conics[e, 2]
        op[i] = opacities[e]
        smax[i] = _sigma_cut(opacities[e])
        ci = e % color_mod
        for d in range(D):
            col[i, d] = colors[ci, d]
    return mx, my, ca, cb, cc, op, smax, col


@njit(cache=True)
def bin_tiles(tx0, ty0, tx1, ty1, order, C, N, n_tiles, tile_width):  # pragma: no cover - compiled
    """Per-tile lists of (camera*N + gaussian) ids in depth order.

    ``tx0..ty1``: [C*N] tile boxes ([min, max)); ``order``: [C*N] flat ids, camera-major, each camera's in depth
    order. Returns ``offsets`` [C*n_tiles + 1], ``ids`` [n_isects] and ``tiles`` [n_isects] (tile id per entry).
    """
    E = order.shape[0]
    counts = np.zeros(C * n_tiles + 1, np.int64)
    for e in range(E):
        c = e // N
        for ty in range(ty0[e], ty1[e]):
            for tx in range(tx0[e], tx1[e]):
                counts[c * n_tiles + ty * tile_width + tx + 1] += 1
    offsets = np.cumsum(counts)
    cursor = offsets[:-1].copy()
    ids = np.empty(offsets[-1], np.int64)
    tiles = np.empty(offsets[-1], np.int64)
    for k in range(E):
        e = order[k]
        c = e // N
        for ty in range(ty0[e], ty1[e]):
            for tx in range(tx0[e], tx1[e]):
                t = ty * tile_width + tx
                slot = cursor[c * n_tiles + t]
                ids[slot] = e
                tiles[slot] = t
                cursor[c * n_tiles + t] = slot + 1
    return offsets, ids, tiles


@njit(parallel=True, cache=True)
def forward(offsets, ids, means2d, conics, opacities, colors, color_mod, n_tiles, tile_width, tile_size, W, H):  # pragma: no cover
    """Composite every pixel front to back. ``means2d`` [C*N, 2], ``conics`` [C*N, 3], ``opacities`` [C*N],
    ``colors`` [M, D] indexed by ``id % color_mod``. Returns render [C*H*W, D] (no background), T_final [C*H*W],
    last [C*H*W] (one past the list position of the pixel's last composited Gaussian, 0 for none) and the number
    of (pixel, Gaussian) pairs composited per tile."""
    D = colors.shape[1]
    n_all = offsets.shape[0] - 1
    C = n_all // n_tiles
    dtype = means2d.dtype
    render = np.zeros((C * H * W, D), dtype)
    t_final = np.ones(C * H * W, np.float64)
    last = np.zeros(C * H * W, np.int64)
    pairs = np.zeros(n_all, np.int64)
    for job in prange(n_all):
        start, end = offsets[job], offsets[job + 1]
        if start == end:
            continue
        c, x0, y0 = _tile_origin(job, n_tiles, tile_width, tile_size)
        n = end - start
        mx, my, ca, cb, cc, op, smax, col = _gather_tile(ids, start, end, means2d, conics, opacities, colors, color_mod)
        acc = np.empty(D, np.float64)
        count = 0
        for y in range(y0, min(y0 + tile_size, H)):
            py = y + 0.5
            for x in range(x0, min(x0 + tile_size, W)):
                px = x + 0.5
                pix = (c * H + y) * W + x
                T = 1.0
                stop = 0
                for d in range(D):
                    acc[d] = 0.0
                for i in range(n):
                    alpha = pixel_alpha(mx[i] - px, my[i] - py, ca[i], cb[i], cc[i], op[i], smax[i])
                    if alpha == 0.0:
                        continue
                    next_t = blend(acc, col, i, alpha, T)
                    if next_t < 0.0:
                        break
                    T = next_t
                    stop = i + 1
                    count += 1
                for d in range(D):
                    render[pix, d] = acc[d]
                t_final[pix] = T
                last[pix] = stop
        pairs[job] = count
    return render, t_final, last, pairs


@njit(parallel=True, cache=True)
def backward(offsets, ids, means2d, conics, opacities, colors, color_mod, n_tiles, tile_width, tile_size, W, H,
             t_final, last, g_render, g_alpha):  # pragma: no cover - compiled  # fmt: skip
    """Gradients per intersection (list entry): means2d [n_isects, 2] and their absolute values (gsplat's
    ``absgrad``), conics [n_isects, 3], opacities [n_isects], colors [n_isects, D]. ``g_render`` [C*H*W, D] and
    ``g_alpha`` [C*H*W] are the gradients of the outputs without background."""
    D = colors.shape[1]
    n_all = offsets.shape[0] - 1
    n_isects = ids.shape[0]
    dtype = means2d.dtype
    g_xy = np.zeros((n_isects, 2), dtype)
    g_xy_abs = np.zeros((n_isects, 2), dtype)
    g_conic = np.zeros((n_isects, 3), dtype)
    g_opac = np.zeros(n_isects, dtype)
    g_col = np.zeros((n_isects, D), dtype)
    one = 1.0
    half = 0.5
    for job in prange(n_all):
        start, end = offsets[job], offsets[job + 1]
        if start == end:
            continue
        c, x0, y0 = _tile_origin(job, n_tiles, tile_width, tile_size)
        mx, my, ca, cb, cc, op, smax, col = _gather_tile(ids, start, end, means2d, conics, opacities, colors, color_mod)
        behind = np.empty(D, np.float64)
        for y in range(y0, min(y0 + tile_size, H)):
            py = y + half
            for x in range(x0, min(x0 + tile_size, W)):
                pix = (c * H + y) * W + x
                stop = last[pix]
                if stop == 0:
                    continue
                px = x + half
                T = t_final[pix]
                ga = g_alpha[pix] * t_final[pix]  # d(1 - T_final)/d alpha_i = T_final / (1 - alpha_i)
                for d in range(D):
                    behind[d] = 0
                for i in range(stop - 1, -1, -1):
                    k = start + i
                    dx = mx[i] - px
                    dy = my[i] - py
                    a, b, cq = ca[i], cb[i], cc[i]
                    sigma = half * (a * dx * dx + cq * dy * dy) + b * dx * dy
                    if sigma < 0 or sigma > smax[i]:
                        continue
                    vis = np.exp(-sigma)
                    raw = op[i] * vis
                    alpha = min(ALPHA_MAX, raw)
                    if alpha < ALPHA_MIN:
                        continue
                    ra = one / (one - alpha)
                    T = T * ra  # transmittance in front of this Gaussian
                    fac = alpha * T
                    v_alpha = 0.0
                    for d in range(D):
                        gr = g_render[pix, d]
                        g_col[k, d] += fac * gr
                        v_alpha += (col[i, d] * T - behind[d] * ra) * gr
                        behind[d] += col[i, d] * fac
                    v_alpha += ga * ra
                    if raw <= ALPHA_MAX:  # alpha is clamped above 0.999: no gradient there
                        v_sigma = -raw * v_alpha
                        g_conic[k, 0] += half * dx * dx * v_sigma
                        g_conic[k, 1] += dx * dy * v_sigma
                        g_conic[k, 2] += half * dy * dy * v_sigma
                        gx = v_sigma * (a * dx + b * dy)
                        gy = v_sigma * (b * dx + cq * dy)
                        g_xy[k, 0] += gx
                        g_xy[k, 1] += gy
                        g_xy_abs[k, 0] += abs(gx)
                        g_xy_abs[k, 1] += abs(gy)
                        g_opac[k] += vis * v_alpha
    return g_xy, g_xy_abs, g_conic, g_opac, g_col
