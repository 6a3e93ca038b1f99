"""`segsplat bench-latency`: click -> Gaussian mask time against the direct fp32 way and the memory-bandwidth bound.

What is timed is the part of a click that reads every Gaussian: from the clicked pixels' gated query features to
the boolean selection (``Segmenter.select_scores`` + threshold). Rasterising the clicked view comes before it and
is the same for every scoring method (``benchmarks/bench_rasterize.py`` measures it).

- direct: the authors' way, per click: fp32 features times the gate, normalise, cosine against the query
  (:func:`segsplat_ns.methods.saga.direct_scores`);
- segsplat, new scale: the first click at a scale (computes and keeps that scale's bfloat16 gated features);
- segsplat, same scale: every later click at that scale (one bfloat16 product, fp32 re-scoring at the threshold);
- bound: bytes that must be read per click / this machine's read bandwidth, measured in the same run by summing
  a buffer larger than the caches. Given for the fp32 features (what the direct way reads at least) and for the
  features as the fast path stores them (bfloat16 from ``AffinityScorer.BF16_FROM`` Gaussians, fp32 below).
- binary-gaussian, new level: the first click at a level (every Gaussian's level prefix from its int32 code, and the
  table of distinct stored prefixes for the nearest-prefix query);
- binary-gaussian, same level: every later click (nearest stored prefix of the query, then
  :func:`~segsplat_ns.methods.binary_gaussian.prefix_scores`: the boolean selection), on codes with 64 x 8 x 4
  groups (level 1 x 2 x 3), clicked at level 2 (22-bit prefixes).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator, first-touch pages, oneDNN kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def read_bandwidth(num_bytes: int = 512 << 20, repeats: int = 7) -> float:
    """Bytes per second for streaming reads (a sum over a buffer larger than the caches)."""
    buffer = torch.ones(num_bytes // 4, dtype=torch.float32)
    seconds = median_time(lambda: buffer.sum(), repeats)
    return num_bytes / seconds


@dataclass
class BenchLatency:
    """Time click -> mask at 10k, 100k and 1M Gaussians: SAGA's bfloat16 path, the authors' direct fp32 way, this
    machine's memory-bandwidth bound, and Binary-Gaussian's integer prefix compare, measured in one run. Prints
    markdown tables; --output-json keeps them."""

    sizes: Tuple[int, ...] = (10_000, 100_000, 1_000_000)
    """Numbers of Gaussians."""
    feature_dim: int = 32
    """D of the affinity features (SAGA: 32)."""
    clicks: int = 1
    """Clicked pixels per prompt (queries K)."""
    threshold: float = 0.75
    """Similarity threshold (SAGA's default)."""
    repeats: int = 15
    """Timed repetitions per measurement (the median is reported)."""
    threads: Optional[int] = None
    """torch CPU threads (default: torch's choice, all cores)."""
    device: str = "cpu"
    """cpu, or cuda to time the same code on a GPU (bandwidth then measured on the GPU)."""
    seed: int = 0
    output_json: Optional[Path] = None
    """Also write the rows as JSON here (written atomically)."""
    rows: List[Dict[str, float]] = field(default_factory=list, init=False, repr=False)

    def main(self) -> int:
        from tqdm import tqdm

        from segsplat_ns.io import atomic_open
        from segsplat_ns.methods.binary_gaussian import (
            PrefixTable,
            code_prefix,
            prefix_bits,
            prefix_scores,
            signed_prefix,
            to_int32,
        )
        from segsplat_ns.methods.saga import AffinityScorer, direct_scores
        from segsplat_ns.methods.saga_loss import ScaleGate

        if self.threads:
            torch.set_num_threads(self.threads)
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA device is visible; use --device cpu")
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def timed(fn):
            def run():
                out = fn()
                sync()
                return out

            return median_time(run, self.repeats)

        bandwidth = read_bandwidth() if device.type == "cpu" else self._cuda_bandwidth()
        generator = torch.Generator().manual_seed(self.seed)
        gate = ScaleGate(self.feature_dim).to(device)
        scale = 0.5
        for n in tqdm(self.sizes, desc="bench-latency", unit="size"):
            # features in clusters (as trained ones are), so the threshold cuts through real groups
            centres = torch.randn(64, self.feature_dim, generator=generator)
            labels = torch.randint(64, (n,), generator=generator)
            features = F.normalize(centres[labels] + 0.6 * torch.randn(n, self.feature_dim, generator=generator), dim=-1)
            features = features.to(device)
            gate_s = gate(torch.tensor([scale], device=device))[0].detach()
            queries = F.normalize(features[: self.clicks] * gate_s, dim=-1)

            direct = timed(lambda: direct_scores(features, gate_s, queries) > self.threshold)
            scorer = AffinityScorer(features, gate)

            def new_scale():
                scorer._gated.clear()
                return scorer.scores(queries, scale, exact_near=self.threshold) > self.threshold

            first = timed(new_scale)
            same = timed(lambda: scorer.scores(queries, scale, exact_near=self.threshold) > self.threshold)
            with torch.no_grad():
                reference = direct_scores(features, gate_s, queries) > self.threshold
                ours = scorer.scores(queries, scale, exact_near=self.threshold) > self.threshold
                approximate = scorer.scores(queries, scale)
                refined = int(((approximate - self.threshold).abs() <= AffinityScorer.BF16_COSINE_ERROR).sum())
            # Binary-Gaussian on the same number of Gaussians: grouped random codes, a click at level 2
            widths, level = (12, 10, 10), 1
            bits = prefix_bits(widths, level)
            group_codes = torch.randint(0, 2**32, (64 * 8 * 4,), generator=generator, dtype=torch.int64)
            codes = to_int32(group_codes[torch.randint(group_codes.numel(), (n,), generator=generator)]).to(device)
            query = code_prefix(codes[:1], bits)

            def binary_new_level():
                prefixes = signed_prefix(codes, bits)
                table = PrefixTable(codes, widths, level)
                return prefix_scores(prefixes, table.lookup(query), bits), prefixes, table

            binary_first = timed(binary_new_level)
            _, prefixes, table = binary_new_level()
            binary_same = timed(lambda: prefix_scores(prefixes, table.lookup(query), bits))
            binary_selected = int(prefix_scores(prefixes, query, bits).sum())
            fp32_bytes = n * self.feature_dim * 4
            stored_bytes = n * self.feature_dim * (2 if n >= AffinityScorer.BF16_FROM else 4)
            self.rows.append(
                {
                    "gaussians": n,
                    "direct_fp32_ms": direct * 1e3,
                    "segsplat_new_scale_ms": first * 1e3,
                    "segsplat_same_scale_ms": same * 1e3,
                    "bound_fp32_read_ms": fp32_bytes / bandwidth * 1e3,
                    "stored_dtype": "bfloat16" if n >= AffinityScorer.BF16_FROM else "float32",
                    "bound_stored_read_ms": stored_bytes / bandwidth * 1e3,
                    "speedup_vs_direct": direct / same,
                    "times_stored_bound": same / (stored_bytes / bandwidth),
                    "times_fp32_bound": same / (fp32_bytes / bandwidth),
                    "selected": int(reference.sum()),
                    "mask_differences": int((ours != reference).sum()),
                    "rescored_in_fp32": refined,
                    "binary_new_level_ms": binary_first * 1e3,
                    "binary_same_level_ms": binary_same * 1e3,
                    "direct_fp32_over_binary": direct / binary_same,
                    "segsplat_saga_over_binary": same / binary_same,
                    "binary_selected": binary_selected,
                }
            )
        print(self.markdown(bandwidth))
        if self.output_json is not None:
            record = {
                "command": "segsplat bench-latency",
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {self.device}",
                "read_bandwidth_gb_s": bandwidth / 1e9,
                "feature_dim": self.feature_dim,
                "clicks": self.clicks,
                "threshold": self.threshold,
                "rows": self.rows,
            }
            with atomic_open(Path(self.output_json)) as handle:
                handle.write(json.dumps(record, indent=2).encode())
            print(f"wrote {self.output_json}")
        return 0

    def _cuda_bandwidth(self) -> float:
        buffer = torch.ones((1 << 30) // 4, device=self.device)
        seconds = median_time(lambda: (buffer.sum(), torch.cuda.synchronize()), self.repeats)
        return (1 << 30) / seconds

    def markdown(self, bandwidth: float) -> str:
        lines = [
            f"read bandwidth {bandwidth / 1e9:.1f} GB/s; D = {self.feature_dim}; {self.clicks} click(s); "
            f"threshold {self.threshold}; median of {self.repeats}",
            "",
            "| Gaussians | direct fp32 | segsplat, new scale | segsplat, same scale | stored as | bound, stored read "
            "| bound, fp32 read | speed-up vs direct | × stored bound | × fp32 bound | mask differences |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            lines.append(
                f"| {row['gaussians']:,} | {row['direct_fp32_ms']:.2f} ms | {row['segsplat_new_scale_ms']:.2f} ms "
                f"| {row['segsplat_same_scale_ms']:.2f} ms | {row['stored_dtype']} | {row['bound_stored_read_ms']:.2f} ms "
                f"| {row['bound_fp32_read_ms']:.2f} ms | {row['speedup_vs_direct']:.1f}× | {row['times_stored_bound']:.1f} "
                f"| {row['times_fp32_bound']:.1f} | {row['mask_differences']} of {row['selected']:,} selected |"
            )
        lines += [
            "",
            "Binary-Gaussian (int32 codes, click at level 2) against SAGA's float paths above, same run:",
            "",
            "| Gaussians | binary, new level | binary, same level | direct fp32 / binary | segsplat SAGA same scale / binary "
            "| selected |",
            "|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            lines.append(
                f"| {row['gaussians']:,} | {row['binary_new_level_ms']:.2f} ms | {row['binary_same_level_ms']:.2f} ms "
                f"| {row['direct_fp32_over_binary']:.1f}× | {row['segsplat_saga_over_binary']:.1f}× "
                f"| {row['binary_selected']:,} |"
            )
        return "\n".join(lines)
