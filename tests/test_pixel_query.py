"""A click's renderer (:mod:`segsplat_ns.rendering.pixel_query`) against the full rasterisers: the same values at
the queried pixels, a cull that never drops a Gaussian the rasteriser uses, and a cache that is reused exactly
while the camera and the Gaussians stay."""

from __future__ import annotations

import math

import pytest
import torch
from test_rendering import look_at, make_scene

from segsplat_ns.rendering.numba_rasterizer import rasterize_numba
from segsplat_ns.rendering.pixel_query import PixelCache, cull_candidates, render_pixels
from segsplat_ns.rendering.projection import project, tile_boxes
from segsplat_ns.rendering.torch_rasterizer import rasterize_torch_reference


def scene(seed: int, n: int = 2500, width: int = 100, height: int = 70, dtype=torch.float32, channels: int = 6):
    means, quats, scales, opac, colors, viewmats, Ks = make_scene(n, width, height, C=1, D=channels, seed=seed,
                                                                  dtype=dtype, scale=(0.005, 0.25))  # fmt: skip
    # some very anisotropic Gaussians, and some straddling the near plane and the image border
    scales[: n // 10, 0] *= 20.0
    # 50 small Gaussians around the near plane (depth 0.01), in front of the first camera's eye
    generator = torch.Generator().manual_seed(seed)
    eye = torch.tensor([0.3, -0.2, -4.0], dtype=torch.float64)
    forward = -eye / eye.norm()
    depth = 0.008 + 0.006 * torch.rand(50, 1, generator=generator, dtype=torch.float64)
    lateral = 0.004 * (torch.rand(50, 3, generator=generator, dtype=torch.float64) - 0.5)
    means[n // 10 : n // 10 + 50] = (eye + depth * forward + depth * lateral).to(dtype)
    scales[n // 10 : n // 10 + 50] = 2e-5
    return means, quats, scales, opac, colors, viewmats[0], Ks[0]


def every_pixel(width: int, height: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_tiled_rasteriser_at_every_pixel(seed, dtype, mode):
    """Every pixel of a 100x70 view (tiles cut by the border, Gaussians on the near plane, needles), queried in
    one call and again from the cache: bit for bit the numba rasteriser's values and alphas, with a background."""
    means, quats, scales, opac, colors, viewmat, K = scene(seed, dtype=dtype)
    background = torch.linspace(0.2, 0.8, colors.shape[1], dtype=dtype)
    full, alpha, _ = rasterize_numba(means, quats, scales, opac, colors, viewmat[None], K[None], 100, 70,
                                     backgrounds=background[None], rasterize_mode=mode)  # fmt: skip
    pixels = every_pixel(100, 70)
    cache = PixelCache()
    for _ in range(2):
        values, alphas = render_pixels(means, quats, scales, opac, colors, viewmat, K, 100, 70, pixels,
                                       background=background, rasterize_mode=mode, cache=cache)  # fmt: skip
        assert torch.equal(values, full[0].reshape(-1, colors.shape[1]))
        assert torch.equal(alphas, alpha[0].reshape(-1, 1))
        assert cache.culls == 7 * 5  # one cull per 16x16 tile, the second time none (the tiles are kept)
    assert float(alpha.max()) > 0.999 and float(alpha.min()) < 0.99  # pixels that stop early and pixels that do not


@pytest.mark.parametrize("seed", [0, 1])
def test_the_cuda_style_compositing_agrees_with_the_reference(seed):
    """The PyTorch compositing (the CUDA path's, float32 like gsplat) on CPU against the exact reference
    rasteriser, at random pixels of a view larger than one cell."""
    means, quats, scales, opac, colors, viewmat, K = scene(seed, width=300, height=200)
    full, alpha, _ = rasterize_torch_reference(means, quats, scales, opac, colors, viewmat[None], K[None], 300, 200)
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.stack([torch.randint(300, (500,), generator=generator), torch.randint(200, (500,), generator=generator)], -1)
    values, alphas = render_pixels(means, quats, scales, opac, colors, viewmat, K, 300, 200, pixels, composite="torch")
    torch.testing.assert_close(values, full[0][pixels[:, 1], pixels[:, 0]], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(alphas, alpha[0][pixels[:, 1], pixels[:, 0]], atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("seed", range(4))
def test_the_cull_keeps_every_gaussian_whose_tile_box_reaches_the_rectangle(seed, backend):
    """Brute force: the exact tile boxes of every Gaussian (the rasteriser's projection) against the cull's
    radius bound, for cameras from several sides, needles, Gaussians at the near plane and off-screen."""
    generator = torch.Generator().manual_seed(seed)
    means, quats, scales, opac, colors, viewmat, K = scene(seed, n=6000, width=640, height=480)
    eye = (4.0 * torch.randn(3, generator=generator, dtype=torch.float64)).tolist()
    viewmat = look_at(eye).float() if seed % 2 else viewmat
    radii, means2d, _, _, _, _ = project(means, quats, scales, viewmat[None], K[None], 640, 480, 0.3, 0.01, 1e10, 0.0)
    tw, th = math.ceil(640 / 16), math.ceil(480 / 16)
    x0, y0, x1, y1 = (b[0] for b in tile_boxes(means2d, radii, 16, tw, th))
    for rect_tiles in ([0, 0, 8, 8], [8, 8, 16, 16], [32, 24, 40, 30], [17, 3, 18, 4]):
        rect_tiles = torch.tensor(rect_tiles)
        rect = torch.cat([rect_tiles[:2] * 16, torch.minimum(rect_tiles[2:] * 16, torch.tensor([640, 480]))])
        used = (radii[0] > 0) & (x0 < rect_tiles[2]) & (x1 > rect_tiles[0]) & (y0 < rect_tiles[3]) & (y1 > rect_tiles[1])
        kept = torch.zeros(means.shape[0], dtype=torch.bool)
        kept[cull_candidates(means, scales, viewmat, K, 640, 480, rect, backend=backend)] = True
        assert int(used.sum()) > 0
        assert bool(kept[used].all()), f"the cull dropped {int((used & ~kept).sum())} Gaussians the rasteriser uses"
        assert int(kept.sum()) < 4 * int(used.sum()) + 200  # and it is a useful cull, not "everything"


def test_the_cache_follows_the_camera_and_the_gaussians():
    means, quats, scales, opac, colors, viewmat, K = scene(5, width=400, height=300)
    cache = PixelCache()
    render = lambda pixels, vm=viewmat: render_pixels(means, quats, scales, opac, colors, vm, K, 400, 300,  # noqa: E731
                                                      torch.tensor(pixels), cache=cache)  # fmt: skip
    render([[10, 10]])
    grid = cache.grid
    render([[12, 3], [5, 15]])  # the same tile: nothing culled or projected again
    assert cache.culls == 1
    render([[300, 200]])  # another tile of the same view: a cull, the grid kept
    assert cache.culls == 2 and cache.grid is grid
    moved = viewmat.clone()
    moved[0, 3] += 0.05
    render([[10, 10]], moved)  # the camera moved: projected again, the grid kept (it depends on the Gaussians only)
    assert cache.culls == 3 and cache.grid is grid
    before, _ = render([[150, 150]])
    with torch.no_grad():
        colors.mul_(0.5)  # colours are read per query, never kept
        opac.mul_(0.5)  # an in-place change of the geometry drops the projections
        means[:10] += 0.01  # and of the means, the grid
    after, _ = render([[150, 150]])
    assert cache.culls == 5 and cache.grid is not grid
    full, _, _ = rasterize_numba(means, quats, scales, opac, colors, viewmat[None], K[None], 400, 300)
    assert torch.equal(after[0], full[0, 150, 150]) and not torch.equal(after, before)


@pytest.mark.parametrize("seed", range(3))
def test_the_grid_cull_finds_exactly_what_testing_every_gaussian_finds(seed):
    """The CPU cull visits only grid cells whose bound reaches the rectangle; the cells it skips hold no Gaussian
    that the per-Gaussian bound keeps: the same ids as testing every Gaussian (PyTorch, the CUDA path), for
    tiles and larger rectangles, a camera inside the scene (cells reaching the camera plane) and outside it."""
    generator = torch.Generator().manual_seed(seed)
    means, quats, scales, opac, colors, viewmat, K = scene(seed, n=20000, width=640, height=480)
    inside = look_at((0.1, 0.2, 0.3), (1.0, 0.0, 0.0)).float()
    for camera in (viewmat, inside):
        for _ in range(6):
            x0, y0 = int(torch.randint(600, (1,), generator=generator)), int(torch.randint(440, (1,), generator=generator))
            size = int(torch.randint(1, 128, (1,), generator=generator))
            rect = torch.tensor([x0, y0, min(x0 + size, 640), min(y0 + size, 480)])
            grid = cull_candidates(means, scales, camera, K, 640, 480, rect, backend="numba")
            every = cull_candidates(means, scales, camera, K, 640, 480, rect, backend="torch")
            assert torch.equal(grid, every), (len(grid), len(every))


def test_bad_pixels_are_refused():
    means, quats, scales, opac, colors, viewmat, K = scene(0)
    with pytest.raises(ValueError, match="outside the 100x70 image"):
        render_pixels(means, quats, scales, opac, colors, viewmat, K, 100, 70, torch.tensor([[100, 3]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat kernels)")
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_gsplat_on_cuda(seed):
    """On a GPU: gsplat's projection of the survivors and the PyTorch compositing against gsplat's full render."""
    import gsplat

    means, quats, scales, opac, colors, viewmat, K = (t.cuda() for t in scene(seed, width=300, height=200))
    full, alpha, _ = gsplat.rasterization(means, quats, scales, opac, colors, viewmat[None], K[None], 300, 200)
    pixels = every_pixel(300, 200).cuda()
    values, alphas = render_pixels(means, quats, scales, opac, colors, viewmat, K, 300, 200, pixels)
    torch.testing.assert_close(values, full[0].reshape(-1, colors.shape[1]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alphas, alpha[0].reshape(-1, 1), atol=1e-5, rtol=1e-4)
