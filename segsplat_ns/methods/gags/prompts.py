"""GAGS's granularity-aware prompting (Sec. 3.1, Eq. 1): how many SAM prompt points each image patch gets.

* :func:`visible_depths` / :func:`minimum_visible_depth`: every Gaussian's smallest depth over the views where it
  is visible (the authors' ``depth_SAM.py``: projected into a view, a Gaussian is visible when its depth is
  within 0.25 x the rendered depth at its pixel); :func:`visible_density`: visible Gaussians per pixel;
* :func:`patch_prompt_counts` (Eq. 1): ``n_P = mean_{p in P} D(p)^2 / MD(p)^2 * n`` per patch of a grid, rounded
  and clamped; a view as close as any other to what it sees gets ``n`` points per patch, one twice as far ``4n``;
* :func:`sample_prompt_points`: inside each patch, points drawn by the density of visible Gaussians (the paper's
  "density distribution of visible gaussians"), as SAM point-grid coordinates in [0, 1].

The authors' code differs in the count: ``(mean D / mean MD * 4)^2`` per 8x8 cell, the side clamped to [1, 20];
:func:`patch_prompt_counts` implements the paper's Eq. 1 and takes the clamp as an argument (docs/gags.md).
Pure torch, no nerfstudio: ``tests/test_gags.py`` checks them by hand.
"""

from __future__ import annotations

from typing import Tuple

import torch


def visible_depths(
    points_cam: torch.Tensor, pixels: torch.Tensor, rendered_depth: torch.Tensor, tolerance: float = 0.25
) -> torch.Tensor:
    """Each Gaussian's depth in each view where it is visible, +inf elsewhere: [V, N].

    points_cam [V, N] depths of the Gaussians in each view's camera; pixels long [V, N, 2] (x, y) their projected
    pixels (outside the image: any value < 0); rendered_depth [V, H, W]. Visible: in the image, in front, and
    ``|z - D(pixel)| <= tolerance * D(pixel)`` (the occlusion test of the authors' code).
    """
    V, H, W = rendered_depth.shape
    x, y = pixels[..., 0], pixels[..., 1]
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H) & (points_cam > 0)
    flat = (y.clamp(0, H - 1) * W + x.clamp(0, W - 1)).long()
    surface = rendered_depth.reshape(V, -1).gather(1, flat)
    visible = inside & ((points_cam - surface).abs() <= tolerance * surface)
    return torch.where(visible, points_cam, torch.full_like(points_cam, float("inf")))


def minimum_visible_depth(
    points_cam: torch.Tensor, pixels: torch.Tensor, rendered_depth: torch.Tensor, tolerance: float = 0.25
) -> torch.Tensor:
    """MD per Gaussian: the minimum over views of :func:`visible_depths`; +inf where never visible."""
    return visible_depths(points_cam, pixels, rendered_depth, tolerance).min(0).values


def visible_density(pixels: torch.Tensor, visible: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """How many visible Gaussians project to each pixel of one view: float [H, W] (pixels long [N, 2] (x, y),
    visible bool [N])."""
    x, y = pixels[visible, 0].long(), pixels[visible, 1].long()
    counts = torch.zeros(height * width, dtype=torch.float32, device=pixels.device)
    return counts.index_add_(0, y * width + x, torch.ones_like(x, dtype=torch.float32)).reshape(height, width)


def patch_prompt_counts(
    depth: torch.Tensor, min_depth: torch.Tensor, grid: Tuple[int, int] = (8, 8), points_per_patch: int = 16,
    clamp: Tuple[int, int] = (1, 400),
) -> torch.Tensor:  # fmt: skip
    """Eq. 1: ``n_P = mean_{p in P} D^2(p) / MD^2(p) * n`` for each patch of a ``grid`` (rows, cols) over the image.

    depth, min_depth [H, W] (pixels without a finite positive depth or minimum depth are left out of the mean; a
    patch without any gets ``n``). Returns long [rows, cols], rounded and clamped to ``clamp``.
    """
    rows, cols = grid
    H, W = depth.shape
    ok = torch.isfinite(depth) & torch.isfinite(min_depth) & (depth > 0) & (min_depth > 0)
    ratio = torch.where(ok, (depth / torch.where(ok, min_depth, torch.ones_like(min_depth))).square(), torch.zeros_like(depth))
    row_of = torch.arange(H, device=depth.device) * rows // H
    col_of = torch.arange(W, device=depth.device) * cols // W
    patch = (row_of[:, None] * cols + col_of[None, :]).reshape(-1)
    sums = torch.zeros(rows * cols, dtype=ratio.dtype, device=depth.device).index_add(0, patch, ratio.reshape(-1))
    counts = torch.zeros(rows * cols, dtype=ratio.dtype, device=depth.device).index_add(0, patch, ok.reshape(-1).to(ratio.dtype))
    mean = torch.where(counts > 0, sums / counts.clamp_min(1), torch.ones_like(sums))
    return torch.round(mean * points_per_patch).clamp(*clamp).long().reshape(rows, cols)


def sample_prompt_points(counts: torch.Tensor, density: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Points for SAM's automatic mask generator: ``counts[r, c]`` pixels of patch (r, c) drawn (with replacement)
    with probability proportional to ``density`` [H, W] (uniform where a patch has none), returned as float [K, 2]
    (x, y) in [0, 1] (SAM's ``point_grids`` convention: pixel centres over the image size)."""
    rows, cols = counts.shape
    H, W = density.shape
    out = []
    for r in range(rows):
        y0, y1 = (r * H + rows - 1) // rows, ((r + 1) * H + rows - 1) // rows
        for c in range(cols):
            x0, x1 = (c * W + cols - 1) // cols, ((c + 1) * W + cols - 1) // cols
            n = int(counts[r, c])
            if n <= 0 or y1 <= y0 or x1 <= x0:
                continue
            weights = density[y0:y1, x0:x1].reshape(-1).double().clamp_min(0)
            if float(weights.sum()) <= 0:
                weights = torch.ones_like(weights)
            picks = torch.multinomial(weights, n, replacement=True, generator=generator)
            py = picks // (x1 - x0) + y0
            px = picks % (x1 - x0) + x0
            out.append(torch.stack([(px.double() + 0.5) / W, (py.double() + 0.5) / H], -1))
    return torch.cat(out).float() if out else torch.zeros(0, 2)
