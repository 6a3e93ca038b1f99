"""Time the CPU rasterizer, forward and forward + backward.

That is ``segsplat_ns.rendering.torch_rasterizer.rasterize_torch_reference``, the exact, non-tiled
pure-PyTorch reference that ``segsplat_ns.rendering.rasterize`` runs for CPU tensors.

Scenes: N Gaussians in a unit ball seen by a camera on a ring (radius 3, looking at the origin),
scales chosen so that projected Gaussians are a few pixels in radius, as in splatfacto training at
64-128 px. Prints a markdown table (median ms per call over --repeats runs).

    python benchmarks/bench_rasterize.py
    python benchmarks/bench_rasterize.py --sizes 64 128 --counts 2000 20000 --channels 3 32
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from segsplat_ns.rendering.torch_rasterizer import rasterize_torch_reference


def ring_camera(angle: float, radius: float = 3.0, height: float = 0.5) -> torch.Tensor:
    eye = torch.tensor([radius * math.cos(angle), height, radius * math.sin(angle)])
    f = -eye / eye.norm()
    up = torch.tensor([0.0, -1.0, 0.0])
    r = torch.linalg.cross(f, up)
    r = r / r.norm()
    d = torch.linalg.cross(f, r)
    R = torch.stack([r, d, f])
    M = torch.eye(4)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M


def make_scene(n: int, size: int, channels: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    means = d / d.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=g).pow(1 / 3)
    focal = 1.1 * size
    # a Gaussian of world scale s at depth ~3 spans ~focal*s/3 pixels (sigma); aim for 0.5..2.5 px
    sig_px = 0.5 + 2.0 * torch.rand(n, 3, generator=g)
    scales = sig_px * 3.0 / focal
    quats = torch.randn(n, 4, generator=g)
    opacities = 0.1 + 0.85 * torch.rand(n, generator=g)
    colors = torch.rand(n, channels, generator=g)
    viewmats = ring_camera(0.7)[None]
    Ks = torch.tensor([[[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]]])
    return means, quats, scales, opacities, colors, viewmats, Ks


def timeit(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128], help="square image sizes (px)")
    ap.add_argument("--counts", type=int, nargs="+", default=[2000, 10000, 20000], help="numbers of Gaussians")
    ap.add_argument("--channels", type=int, nargs="+", default=[3], help="colour/feature widths D")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median reported)")
    ap.add_argument("--absgrad", action="store_true", help="render with absgrad=True (as splatfacto)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, median of {args.repeats}\n")
    print("| image | gaussians | D | visible | box px | fwd ms | fwd+bwd ms |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for n in args.counts:
            for D in args.channels:
                scene = make_scene(n, size, D)
                params = [t.clone().requires_grad_(True) for t in scene[:5]]
                vm, K = scene[5], scene[6]

                def fwd():
                    with torch.no_grad():
                        return rasterize_torch_reference(*params, vm, K, size, size, absgrad=args.absgrad)

                def fwd_bwd():
                    out, alpha, info = rasterize_torch_reference(*params, vm, K, size, size, absgrad=args.absgrad)
                    info["means2d"].retain_grad()
                    (out.sum() + alpha.sum()).backward()
                    for p in params:
                        p.grad = None

                out, alpha, info = fwd()
                visible = int((info["radii"] > 0).sum())
                pairs = _box_pixels(info, size)
                tf = timeit(fwd, args.repeats)
                tb = timeit(fwd_bwd, args.repeats)
                print(f"| {size}x{size} | {n} | {D} | {visible} | {pairs} | {tf:.1f} | {tb:.1f} |", flush=True)


def _box_pixels(info, size) -> int:
    """Pixels inside the visible Gaussians' radius boxes, clipped to the image (~ pairs examined)."""
    r = info["radii"].float()
    m = info["means2d"].detach()
    x0 = (m[..., 0] - r).clamp(0, size)
    x1 = (m[..., 0] + r).clamp(0, size)
    y0 = (m[..., 1] - r).clamp(0, size)
    y1 = (m[..., 1] + r).clamp(0, size)
    return int((((x1 - x0) * (y1 - y0)) * (r > 0)).sum())


if __name__ == "__main__":
    main()
