"""Click -> per-Gaussian mask: Binary-Gaussian's integer prefix compare vs SAGA's float path, same run.

Binary-Gaussian (what ``BinaryGaussianModel.gaussian_scores`` decides): every Gaussian stores one int32 code; a
click at level l selects the Gaussians whose top B_l bits equal the clicked pixel's, i.e.
``((codes ^ query) >> (32 - B_l)) == 0`` on the stored int32 codes (no float data touched).

SAGA (``SagaModel.gaussian_scores`` + ``Segmenter.click``): ``(gated @ queries.T).amax(-1) > threshold`` with the
scale-gated, normalised [N, 32] float features already cached (the most favourable case for SAGA: the gating
and normalisation it also needs on a new scale are not timed).

Prints a markdown table (median of --repeats timed calls after --warmup untimed ones).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn, repeats: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="Gaussian counts")
    parser.add_argument("--feature-dim", type=int, default=32, help="SAGA feature width D (paper: 32)")
    parser.add_argument("--prefix-bits", type=int, default=22, help="B_l of the clicked level (12, 22 or 32)")
    parser.add_argument("--threshold", type=float, default=0.75, help="SAGA similarity threshold")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(0)

    print(f"device: {device} ({torch.get_num_threads()} CPU threads), prefix bits B_l = {args.prefix_bits}, "
          f"median of {args.repeats}\n")
    print("| Gaussians | binary prefix compare (ms) | SAGA gated features @ query (ms) | SAGA / binary | same selection size |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        # random 32-bit codes (the compare costs the same whatever the grouping)
        codes = torch.randint(-(2**31), 2**31 - 1, (n,), dtype=torch.int32, generator=generator).to(device)
        query = codes[n // 2].clone()
        shift = 32 - args.prefix_bits

        def binary_click():
            return ((codes ^ query) >> shift) == 0

        gated = torch.nn.functional.normalize(torch.randn(n, args.feature_dim, generator=generator), dim=-1).to(device)
        queries = gated[n // 2 : n // 2 + 1].clone()

        def saga_click():
            return (gated @ queries.T).amax(dim=-1) > args.threshold

        t_binary = timed(binary_click, args.repeats, args.warmup, sync)
        t_saga = timed(saga_click, args.repeats, args.warmup, sync)
        ok = binary_click().shape == saga_click().shape == (n,)
        print(f"| {n:,} | {t_binary * 1e3:.3f} | {t_saga * 1e3:.3f} | {t_saga / t_binary:.1f}x | {'yes' if ok else 'NO'} |")


if __name__ == "__main__":
    main()
