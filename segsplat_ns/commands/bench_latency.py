"""`segsplat bench-latency`: click -> Gaussian mask time of every registered method, against its reference way and
the memory-bandwidth bound.

Two things are timed. First the part of a click that reads every Gaussian, from the clicked pixels' queries to the
boolean selection (``Segmenter.select_scores`` + threshold, or the selection itself). Then, for every method whose
probe has a :class:`~segsplat_ns.contract.ClickProbe`, the **whole click** on a synthetic scene seen by a
1920x1080 camera, from the pixel to the selection: the old way (rasterise the whole view's features, read the
pixel), the pixel query (:mod:`segsplat_ns.rendering.pixel_query`) on new Gaussians (its grid built first), in a new view
and again in the same view (its projection kept), the scoring alone, and the floor no click can beat: reading
every Gaussian's mean once.

Each method supplies its cases through :meth:`~segsplat_ns.contract.MethodContract.latency_probe` (e.g. the
paper authors' way as the reference case, a first click at a scale or level, every later click there), how many
bytes a click must read at least, and any other facts it reports; this command names no method. Per method and
size it reports each case's time, each case's speed-up against the method's reference case (where it has one),
the bandwidth bound (bytes read per click / this machine's read bandwidth, measured in the same run by summing a
buffer larger than the caches) and how far the method's fastest case is from it; and, across methods, each
method's fastest case (and reference case) against every other method's fastest.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from segsplat_ns.contract import LatencyProbe


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator, first-touch pages, oneDNN kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def median_times(cases: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, float]:
    """Median seconds of each case, the cases timed in turn within each repetition (round robin), so that a
    machine whose speed drifts during the run (shared cores, frequency changes) moves every case alike and the
    ratios between cases stay fair."""
    for fn in cases.values():
        fn()  # warm-up
    times: Dict[str, List[float]] = {case: [] for case in cases}
    for _ in range(repeats):
        for case, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[case].append(time.perf_counter() - start)
    return {case: sorted(values)[len(values) // 2] for case, values in times.items()}


def read_bandwidth(num_bytes: int = 512 << 20, repeats: int = 7) -> float:
    """Bytes per second for streaming reads (a sum over a buffer larger than the caches)."""
    buffer = torch.ones(num_bytes // 4, dtype=torch.float32)
    seconds = median_time(buffer.sum, repeats)
    return num_bytes / seconds


Timer = Callable[[Dict[str, Callable[[], object]]], Dict[str, float]]


def measure_probe(probe: LatencyProbe, timed: Timer, bandwidth: float) -> Dict[str, object]:
    """One method's row at one size: times (ms), speed-ups against the reference case, bounds and the rest."""
    ms = {case: seconds * 1e3 for case, seconds in timed(probe.cases).items()}
    fastest = min(ms, key=ms.__getitem__)
    bound_ms = {label: count / bandwidth * 1e3 for label, count in probe.bytes_read.items()}
    speedup = {}
    if probe.reference is not None:
        speedup = {case: ms[probe.reference] / value for case, value in ms.items() if case != probe.reference}
    return {
        "name": probe.name,
        "ms": ms,
        "fastest": fastest,
        "reference": probe.reference,
        "speedup_vs_reference": speedup,
        "bytes_read": dict(probe.bytes_read),
        "bound_ms": bound_ms,
        "times_bound": {case: {label: value / bound for label, bound in bound_ms.items()} for case, value in ms.items()},
        "selected": probe.selected,
        "facts": dict(probe.facts),
    }


def cross_method(methods: Dict[str, Dict[str, object]]) -> List[Dict[str, object]]:
    """Each method's fastest case (and its reference case, if another) against every other method's fastest."""
    rows = []
    for name, row in methods.items():
        cases = [row["fastest"]] + ([row["reference"]] if row["reference"] not in (None, row["fastest"]) else [])
        for case in cases:
            for other, other_row in methods.items():
                if other == name:
                    continue
                rows.append(
                    {
                        "method": name,
                        "case": case,
                        "against": other,
                        "against_case": other_row["fastest"],
                        "ratio": row["ms"][case] / other_row["ms"][other_row["fastest"]],
                    }
                )
    return rows


@dataclass
class BenchLatency:
    """Time click -> mask at 10k, 100k and 1M Gaussians for every registered method (its fast path, its reference
    way where it has one, and this machine's memory-bandwidth bound), measured in one run. Prints markdown tables;
    --output-json keeps them."""

    sizes: Tuple[int, ...] = (10_000, 100_000, 1_000_000)
    """Numbers of Gaussians."""
    feature_dim: int = 32
    """D of the per-Gaussian float features, for methods whose probe has them."""
    threshold: float = 0.75
    """Score threshold, for methods that threshold a score ("affinity" scores)."""
    repeats: int = 15
    """Timed repetitions per measurement (the median is reported)."""
    threads: Optional[int] = None
    """torch CPU threads (default: torch's choice, all cores)."""
    device: str = "cpu"
    """cpu, or cuda to time the same code on a GPU (bandwidth then measured on the GPU)."""
    seed: int = 0
    """Seed of each method's synthetic data (each method draws from its own generator)."""
    methods: Tuple[str, ...] = ()
    """Registered methods to time (default: all that have a latency probe)."""
    output_json: Optional[Path] = None
    """Also write the rows as JSON here (written atomically)."""
    click_size: Tuple[int, int] = (1920, 1080)
    """Width and height of the camera the whole click is timed with."""
    full_render: bool = True
    """Also time the old whole click (rasterise the full view, read the pixel); seconds per call at 1M on a CPU."""
    full_repeats: int = 3
    """Timed repetitions of the full-render click (the median is reported)."""
    language_sizes: Tuple[Tuple[int, int, int], ...] = ((96, 96, 10), (728, 986, 150), (1080, 1920, 200))
    """Language cache bytes per image are reported for these (height, width, masks) besides the measured scene."""
    rows: List[Dict[str, object]] = field(default_factory=list, init=False, repr=False)
    clicks: List[Dict[str, object]] = field(default_factory=list, init=False, repr=False)
    language: Dict[str, object] = field(default_factory=dict, init=False, repr=False)

    def main(self) -> int:
        from tqdm import tqdm

        from segsplat_ns.errors import SegsplatError
        from segsplat_ns.io import atomic_open
        from segsplat_ns.registry import registered_methods

        if self.threads:
            torch.set_num_threads(self.threads)
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA device is visible; use --device cpu")
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def synced(fn):
            def run():
                out = fn()
                sync()
                return out

            return run

        def timed(cases):
            return median_times({case: synced(fn) for case, fn in cases.items()}, self.repeats)

        registered = registered_methods()
        unknown = [name for name in self.methods if name not in registered]
        if unknown:
            raise SegsplatError(f"unknown method(s) {unknown}: choose from {sorted(registered)}")
        chosen = {name: registered[name] for name in (self.methods or tuple(registered))}
        bandwidth = read_bandwidth() if device.type == "cpu" else self._cuda_bandwidth()
        # one generator per method, so a method's data do not depend on which other methods are installed
        generators = {name: torch.Generator(device=device).manual_seed(self.seed) for name in chosen}
        for n in tqdm(self.sizes, desc="bench-latency", unit="size"):
            methods: Dict[str, Dict[str, object]] = {}
            clicks: Dict[str, Dict[str, float]] = {}
            scene = click_scene(n, *self.click_size, device, self.seed)
            for name, method in chosen.items():
                probe = method.model_class.latency_probe(n, self.feature_dim, self.threshold, generators[name])
                if probe is not None:
                    methods[name] = measure_probe(probe, timed, bandwidth)
                    if probe.click is not None:
                        full = (lambda fn: median_time(synced(fn), self.full_repeats)) if self.full_render else None
                        clicks[name] = measure_click(probe.click, scene, timed, full)
                    del probe
            floor = median_time(synced(scene["means"].sum), self.repeats) * 1e3  # the floor: every mean read once
            self.rows.append({"gaussians": n, "methods": methods, "cross": cross_method(methods)})
            self.clicks.append({"gaussians": n, "means_read_ms": floor, "methods": clicks})
            del scene
        self.language = language_cache_bytes(self.language_sizes)
        print(self.markdown(bandwidth))
        print(self.click_markdown())
        print(self.language_markdown())
        if self.output_json is not None:
            record = {
                "command": "segsplat bench-latency",
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {self.device}",
                "read_bandwidth_gb_s": bandwidth / 1e9,
                "feature_dim": self.feature_dim,
                "clicks": 1,
                "threshold": self.threshold,
                "rows": self.rows,
                "click_camera": list(self.click_size),
                "whole_click": self.clicks,
                "language_cache": self.language,
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
            f"read bandwidth {bandwidth / 1e9:.1f} GB/s; D = {self.feature_dim}; 1 click; "
            f"threshold {self.threshold}; median of {self.repeats}",
        ]
        names: List[str] = []
        for row in self.rows:
            names += [name for name in row["methods"] if name not in names]
        for name in names:
            per_size = [(row["gaussians"], row["methods"][name]) for row in self.rows if name in row["methods"]]
            first = per_size[0][1]
            cases = list(first["ms"])
            reference = first["reference"]
            speedups = [case for case in cases if reference is not None and case != reference]
            bounds = list(first["bound_ms"])
            facts = list(first["facts"])
            header = (
                ["Gaussians"]
                + [f"{case}" for case in cases]
                + [f"{case} vs {reference}" for case in speedups]
                + [f"bound, {label} read" for label in bounds]
                + [f"fastest × {label} bound" for label in bounds]
                + ["selected"]
                + facts
            )
            lines += ["", f"**{name}** ({first['name']}):", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header)]
            for n, result in per_size:
                fastest = result["fastest"]
                cells = (
                    [f"{n:,}"]
                    + [f"{result['ms'][case]:.2f} ms" for case in cases]
                    + [f"{result['speedup_vs_reference'][case]:.1f}×" for case in speedups]
                    + [f"{result['bound_ms'][label]:.2f} ms" for label in bounds]
                    + [f"{result['times_bound'][fastest][label]:.1f} ({fastest})" for label in bounds]
                    + [f"{result['selected']:,}"]
                    + [_cell(result["facts"][fact]) for fact in facts]
                )
                lines.append("| " + " | ".join(cells) + " |")
        pairs: List[Tuple[str, str, str]] = []
        for row in self.rows:
            for entry in row["cross"]:
                key = (entry["method"], entry["case"] if entry["case"] != row["methods"][entry["method"]]["fastest"]
                       else "fastest", entry["against"])
                if key not in pairs:
                    pairs.append(key)
        if pairs:
            lines += ["", "Across methods, same run (time of one method's case / the other method's fastest case):", "",
                      "| Gaussians | " + " | ".join(f"{method} {case} / {other}" for method, case, other in pairs) + " |",
                      "|---|" + "---|" * len(pairs)]
            for row in self.rows:
                cells = [f"{row['gaussians']:,}"]
                for method, case, other in pairs:
                    value = next((entry["ratio"] for entry in row["cross"] if entry["method"] == method
                                  and entry["against"] == other
                                  and (entry["case"] == case or (case == "fastest"
                                       and entry["case"] == row["methods"][method]["fastest"]))), None)
                    cells.append("—" if value is None else f"{value:.3g}×")
                lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


    def click_markdown(self) -> str:
        if not any(row["methods"] for row in self.clicks):
            return ""
        width, height = self.click_size
        lines = ["", f"Whole click, pixel -> selection ({width}×{height} camera, the clicked pixel at the centre; "
                 f"full render: median of {self.full_repeats}):", "",
                 "| method | Gaussians | full-render click | first pixel click (builds the grid) | pixel click, new view | "
                 "pixel click, same view | scoring alone | means read (floor) | new view / (floor + scoring) | "
                 "full / new view |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        names: List[str] = []
        for row in self.clicks:
            names += [name for name in row["methods"] if name not in names]
        for name in names:
            for row in self.clicks:
                if name not in row["methods"]:
                    continue
                ms, floor = row["methods"][name], row["means_read_ms"]
                new_view, full = ms["pixel click, new view"], ms.get("full-render click")
                full_cell = "not run" if full is None else f"{full:.1f} ms"
                ratio_cell = "—" if full is None else f"{full / new_view:.0f}×"
                lines.append(
                    f"| {name} | {row['gaussians']:,} | {full_cell} | {ms['pixel click, first']:.2f} ms | {new_view:.2f} ms | "
                    f"{ms['pixel click, same view']:.2f} ms | {ms['scoring alone']:.2f} ms | {floor:.2f} ms | "
                    f"{new_view / (floor + ms['scoring alone']):.2f} | {ratio_cell} |"
                )
        return "\n".join(lines)

    def language_markdown(self) -> str:
        measured = self.language["measured"]
        lines = ["", "Language cache (CLIP features per image, LangSplat layout: int16 [3, H, W] + fp16 [M, 512]):", "",
                 "| image | masks | bytes per image | of which index maps |", "|---|---|---|---|"]
        lines.append(f"| synthetic scene {measured['hw'][0]}×{measured['hw'][1]} (measured, mean of "
                     f"{measured['images']} images) | {measured['masks']:.1f} | {measured['bytes']:,.0f} | "
                     f"{measured['s_bytes']:,.0f} |")
        for row in self.language["formula"]:
            lines.append(f"| {row['hw'][0]}×{row['hw'][1]} (formula) | {row['masks']} | {row['bytes']:,} | {row['s_bytes']:,} |")
        return "\n".join(lines)


def gaussian_ball(num: int, focal: float, generator: torch.Generator):
    """``num`` Gaussians in a unit ball, each 0.5-2.5 pixels wide (sigma) on screen at depth ~3 with this focal
    length, opacities 0.1-0.95: means, quats, scales, opacities (drawn in this order from ``generator``; also the
    scenes of ``benchmarks/bench_rasterize.py``)."""
    direction = torch.randn(num, 3, generator=generator)
    means = direction / direction.norm(dim=-1, keepdim=True) * torch.rand(num, 1, generator=generator).pow(1 / 3)
    scales = (0.5 + 2.0 * torch.rand(num, 3, generator=generator)) * 3.0 / focal
    quats = torch.randn(num, 4, generator=generator)
    opacities = 0.1 + 0.85 * torch.rand(num, generator=generator)
    return means, quats, scales, opacities


def click_scene(num: int, width: int, height: int, device: torch.device, seed: int) -> Dict[str, object]:
    """:func:`gaussian_ball` seen from distance 3 by a ``width`` x ``height`` pinhole camera."""
    focal = 1.1 * max(width, height)
    means, quats, scales, opacities = gaussian_ball(num, focal, torch.Generator().manual_seed(seed))
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0
    K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    tensors = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "viewmat": viewmat, "K": K}
    scene: Dict[str, object] = {key: value.to(device) for key, value in tensors.items()}
    scene.update(width=width, height=height, pixel=(width // 2, height // 2))
    return scene


def measure_click(click, scene: Dict[str, object], timed: Timer,
                  full_timed: Optional[Callable[[Callable[[], object]], float]]) -> Dict[str, float]:  # fmt: skip
    """One method's whole click on the scene (ms): full render (if timed), pixel query in a new view and in the
    same view, the scoring alone."""
    from segsplat_ns.rendering import rasterize
    from segsplat_ns.rendering.pixel_query import PixelCache, render_pixels

    x, y = scene["pixel"]
    geometry = {key: scene[key] for key in ("means", "quats", "scales", "opacities")}
    pixels = torch.tensor([[x, y]], device=scene["means"].device)
    cache = PixelCache()

    def render(kept: PixelCache) -> torch.Tensor:
        rendered, _ = render_pixels(**geometry, colors=click.colors, viewmat=scene["viewmat"], K=scene["K"],
                                    width=scene["width"], height=scene["height"], pixels=pixels, cache=kept)  # fmt: skip
        return rendered

    def pixel_click(new_view: bool, new_geometry: bool = False):
        if new_view:
            cache.forget_camera()
        return click.answer(render(PixelCache() if new_geometry else cache))

    rendered = render(cache)

    def full_click():
        image, _, _ = rasterize(**geometry, colors=click.colors, viewmats=scene["viewmat"][None], Ks=scene["K"][None],
                                width=scene["width"], height=scene["height"])  # fmt: skip
        return click.answer(image[0, y, x][None])

    cases = {
        "pixel click, new view": lambda: pixel_click(True),
        "pixel click, same view": lambda: pixel_click(False),
        "scoring alone": lambda: click.answer(rendered),
    }
    ms = {case: seconds * 1e3 for case, seconds in timed(cases).items()}
    # timed on its own: building the grid streams tens of MB, which would evict the other cases' data if it ran
    # between them in the round robin
    ms["pixel click, first"] = timed({"first": lambda: pixel_click(True, new_geometry=True)})["first"] * 1e3
    if full_timed is not None:
        ms["full-render click"] = full_timed(full_click) * 1e3
    return ms


def language_cache_bytes(sizes) -> Dict[str, object]:
    """Bytes per image of the language cache: measured on the default synthetic scene's feature files (written to a
    temporary folder), and by the file format's formula, (128 + 6 H W) + (128 + 1024 M), for other sizes."""
    import tempfile

    import numpy as np

    from segsplat_ns.language.cache import bytes_per_image
    from segsplat_ns.synthetic import SceneConfig, make_scene

    with tempfile.TemporaryDirectory() as folder:
        scene = make_scene(SceneConfig(output=Path(folder) / "scene"))
        measured = bytes_per_image(scene / "language_features")
    images = measured["images"]
    formula = [{"hw": [h, w], "masks": m, "bytes": 128 + 6 * h * w + 128 + 1024 * m, "s_bytes": 128 + 6 * h * w}
               for h, w, m in sizes]
    return {
        "measured": {"hw": images[0]["hw"], "images": len(images), "masks": float(np.mean([r["masks"] for r in images])),
                     "bytes": measured["mean_bytes_per_image"],
                     "s_bytes": float(np.mean([r["s_bytes"] for r in images]))},
        "formula": formula,
    }


def _cell(value: object) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
