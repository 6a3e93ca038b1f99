"""Time the two CPU rasterizers, old (the exact PyTorch reference) against new (tiled, numba), in one run.

Scenes: N Gaussians in a unit ball seen by a camera on a ring (radius 3, looking at the origin), sized so that
projected Gaussians are 0.5-2.5 px in sigma, opacities 0.1-0.95: a trained-scene-like distribution, small and
mostly occluded (a pixel at the ball's centre sees hundreds of layers and stops at T <= 1e-4 long before the
last). Prints a markdown table: median ms per call over --repeats runs, the ratio old / new, and the (pixel,
Gaussian) pairs the tiled rasterizer actually composited. The numba kernels are compiled (or loaded from numba's
cache) before timing.

    python benchmarks/bench_rasterize.py                       # the issue's grid: 10k/100k/1M x 256^2/800x600
    python benchmarks/bench_rasterize.py --images 256x256 --counts 100000 --channels 3 32
    python benchmarks/bench_rasterize.py --old-max 100000      # skip the reference above 100k Gaussians
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from segsplat_ns.commands.bench_latency import gaussian_ball
from segsplat_ns.rendering.numba_rasterizer import last_pair_count, rasterize_numba
from segsplat_ns.rendering.torch_rasterizer import rasterize_torch_reference

IMPLS = {"old": rasterize_torch_reference, "new": rasterize_numba}


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


def make_scene(n: int, size: int, channels: int, seed: int = 0, height: int | None = None):
    """Gaussians for a ``size`` x ``height`` image (square when height is None); the focal length follows the
    larger side, so Gaussians have the same pixel size at every resolution (``bench_latency.gaussian_ball``)."""
    height = size if height is None else height
    g = torch.Generator().manual_seed(seed)
    focal = 1.1 * max(size, height)
    means, quats, scales, opacities = gaussian_ball(n, focal, g)
    colors = torch.rand(n, channels, generator=g)
    viewmats = ring_camera(0.7)[None]
    Ks = torch.tensor([[[focal, 0, size / 2], [0, focal, height / 2], [0, 0, 1]]])
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


def image_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h or w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=image_size, nargs="+", default=[(256, 256), (800, 600)], help="WxH sizes")
    ap.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="Gaussians")
    ap.add_argument("--channels", type=int, nargs="+", default=[3], help="colour/feature widths D")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median reported)")
    ap.add_argument("--old-max", type=int, default=1_000_000, help="run the old rasterizer up to this many Gaussians")
    ap.add_argument("--no-backward", action="store_true", help="forward only")
    ap.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: every core)")
    args = ap.parse_args()
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    import numba

    warm = make_scene(100, 32, 3)  # compile (or load) the kernels before timing
    for dtype in (torch.float32,):
        out, _, _ = rasterize_numba(*[t.to(dtype).requires_grad_(i < 5) for i, t in enumerate(warm)], 32, 32, absgrad=True)
        out.sum().backward()

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), numba {numba.__version__} "
          f"({numba.get_num_threads()} threads), median of {args.repeats}, float32, absgrad=True\n")
    print("| image | gaussians | D | visible | pairs composited | old fwd ms | new fwd ms | fwd ratio "
          "| old fwd+bwd ms | new fwd+bwd ms | fwd+bwd ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for width, height in args.images:
        for n in args.counts:
            for D in args.channels:
                scene = make_scene(n, width, D, height=height)
                params = [t.clone().requires_grad_(True) for t in scene[:5]]
                vm, K = scene[5], scene[6]
                times = {}
                for name, impl in IMPLS.items():
                    if name == "old" and n > args.old_max:
                        continue

                    def fwd(impl=impl):
                        with torch.no_grad():
                            return impl(*params, vm, K, width, height, absgrad=True)

                    def fwd_bwd(impl=impl):
                        out, alpha, info = impl(*params, vm, K, width, height, absgrad=True)
                        info["means2d"].retain_grad()
                        (out.sum() + alpha.sum()).backward()
                        for p in params:
                            p.grad = None

                    times[name, "fwd"] = timeit(fwd, args.repeats)
                    if not args.no_backward:
                        times[name, "bwd"] = timeit(fwd_bwd, args.repeats)
                    if name == "new":
                        _, _, info = fwd()
                        visible, pairs = int((info["radii"] > 0).sum()), last_pair_count()

                def cell(key):
                    return f"{times[key]:.0f}" if key in times else "—"

                def ratio(kind):
                    ok = ("old", kind) in times and ("new", kind) in times
                    return f"{times['old', kind] / times['new', kind]:.1f}x" if ok else "—"

                print(f"| {width}x{height} | {n:,} | {D} | {visible:,} | {pairs:,} | {cell(('old', 'fwd'))} "
                      f"| {cell(('new', 'fwd'))} | {ratio('fwd')} | {cell(('old', 'bwd'))} | {cell(('new', 'bwd'))} "
                      f"| {ratio('bwd')} |", flush=True)


if __name__ == "__main__":
    main()
