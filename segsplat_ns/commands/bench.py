"""`segsplat bench`: every registered method on synthetic scenes from several seeds, one table.

Per seed: ``segsplat make-scene --seed s``; stage one (the RGB splat) once, with the first method's ``ns-train``
stopped at ``rgb-steps`` (every method's RGB stage is the shared base's); then each method's feature stage with ``--pipeline.model.init-from`` that run, so every method
segments the same Gaussians with the same masks. A method that trains its features jointly with the geometry
(``freezes_geometry`` False) is trained from scratch for ``rgb-steps + feature-steps`` instead, so its PSNR shows
what the joint loss costs the reconstruction. Each run is evaluated as ``ns-eval`` does (PSNR, the click
protocol, the decomposition) plus the click latency and the bytes of segmentation data per Gaussian in the
checkpoint. Methods with a text mode are also scored on text prompts (the scene's LERF-OVS-style ground truth),
with the scene's language features — on the synthetic scene a stand-in for CLIP (``segsplat make-scene``), never
CLIP itself. Finished runs are reused when the command is run again (``--fresh`` retrains).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from segsplat_ns.errors import SegsplatError
from segsplat_ns.registry import get_method, method_names
from segsplat_ns.runs import find_config, small_scene_training_args

COLUMNS = [
    ("psnr", "PSNR", "{:.2f}"),
    ("seg_object_miou", "object mIoU", "{:.3f}"),
    ("seg_object_min_iou", "object min", "{:.3f}"),
    ("seg_part_miou", "part mIoU", "{:.3f}"),
    ("seg_part_min_iou", "part min", "{:.3f}"),
    ("decomp_object_miou", "decomp. object mIoU", "{:.3f}"),
    ("decomp_object_precision", "decomp. object P", "{:.2f}"),
    ("decomp_object_recall", "decomp. object R", "{:.2f}"),
    ("decomp_part_miou", "decomp. part mIoU", "{:.3f}"),
    ("decomp_part_precision", "decomp. part P", "{:.2f}"),
    ("decomp_part_recall", "decomp. part R", "{:.2f}"),
    ("text_object_miou", "text object mIoU", "{:.3f}"),
    ("text_object_localisation", "text object loc.", "{:.3f}"),
    ("text_part_miou", "text part mIoU", "{:.3f}"),
    ("text_part_localisation", "text part loc.", "{:.3f}"),
    ("text_object_granularity", "text object granularity", "{:.2f}"),
    ("text_part_granularity", "text part granularity", "{:.2f}"),
    ("rgb_stage_s", "RGB stage s", "{:.0f}"),
    ("feature_stage_s", "feature stage s", "{:.0f}"),
    ("feature_stage_run_s", "feature stage s in run", "{:.1f}"),
    ("peak_rss_mib", "peak RSS MiB", "{:.0f}"),
    ("click_ms", "click ms", "{:.0f}"),
    ("text_first_ms", "first text ms", "{:.0f}"),
    ("text_ms", "text ms", "{:.0f}"),
    ("segmentation_bytes_per_gaussian", "bytes/Gaussian", "{:.0f}"),
]


def segmentation_bytes_per_gaussian(checkpoint: Path) -> float:
    """Bytes per Gaussian of everything per-Gaussian in the checkpoint that is not splatfacto's geometry."""
    import torch

    from segsplat_ns.compat.splatfacto import GEOMETRY_KEYS

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["pipeline"]
    state = {key.replace("module.", "", 1): value for key, value in state.items()}
    count = state["_model.gauss_params.means"].shape[0]
    total = 0
    for key, value in state.items():
        name = key.rsplit(".", 1)[-1]
        if not key.startswith("_model.") or name in GEOMETRY_KEYS or not isinstance(value, torch.Tensor):
            continue
        if value.dim() >= 1 and value.shape[0] == count and value.numel() > 0:
            total += value.numel() * value.element_size()
    return total / max(count, 1)


@dataclass
class Bench:
    """Train every registered method on synthetic scenes from several seeds (same RGB splat and masks for all) and
    write one table: click mIoU, decomposition mIoU/precision/recall, PSNR, stage times, click latency, bytes per
    Gaussian. Markdown and JSON. About 5 minutes per seed and method on a 2-core CPU at the defaults."""

    workdir: Path = Path("outputs/bench")
    """Scenes, runs and the table go here."""
    seeds: Tuple[int, ...] = (0, 1, 2)
    """Scene seeds (seed 0 is the default scene)."""
    methods: Tuple[str, ...] = ()
    """Registered methods to train (ns-train names; default: every registered segsplat method)."""
    image_size: int = 96
    """Width and height of the generated scenes' images."""
    num_objects: int = 3
    """Objects per generated scene."""
    num_train_views: int = 24
    num_eval_views: int = 8
    rgb_steps: int = 2000
    """Stage one steps (the RGB splat, shared by all methods of a seed)."""
    feature_steps: int = 1500
    """Stage two steps of each method."""
    presets: Tuple[str, ...] = ("paper", "segsplat")
    """Presets run for each method that has them (--pipeline.model.preset; rows "method (preset)"); none: defaults."""
    extra_args: Tuple[str, ...] = ()
    """ns-train flags for every feature run: everything after --extra-args, verbatim (must come last)."""
    fresh: bool = False
    """Retrain even where a finished run exists."""

    def main(self) -> int:
        from segsplat_ns.io import atomic_open

        if not self.methods:
            self.methods = tuple(method_names())
        for method in self.methods:
            get_method(method)  # a clear error naming the registered methods
        self.workdir.mkdir(parents=True, exist_ok=True)
        rows: List[Dict[str, float]] = []
        started = time.time()
        for seed in self.seeds:
            scene = self.scene(seed)
            rgb_config, rgb_seconds = None, 0.0
            for method, preset in self.runs():
                preset_args = ["--pipeline.model.preset", preset] if preset else []
                if get_method(method).model_class.freezes_geometry:
                    if rgb_config is None:  # the shared RGB splat, trained once per seed
                        rgb_config, rgb_seconds = self.train(scene, seed, "rgb", [method, *self.rgb_args()])
                    args = [method, "--pipeline.model.init-from", str(rgb_config), *self.language_args(scene),
                            *preset_args, *self.feature_args(method)]
                else:  # trained jointly with its own RGB splat from scratch, for as many steps as both stages
                    args = [method, *self.language_args(scene), *preset_args, *self.joint_args(method)]
                config, seconds = self.train(scene, seed, f"{method}-{preset}" if preset else method, args)
                variants = {"": {}, **get_method(method).model_class.inference_variants}
                for variant, overrides in variants.items():  # the preset's defaults, then each named improvement
                    name = f"{method} ({', '.join(part for part in (preset, variant) if part)})" if preset or variant \
                        else method
                    joint = not get_method(method).model_class.freezes_geometry
                    row = {"seed": seed, "method": name, "rgb_stage_s": 0.0 if joint else rgb_seconds,
                           "feature_stage_s": seconds, **self.run_facts(config)}
                    row.update(self.evaluate(config, overrides))
                    rows.append(row)
                    print(f"[bench] seed {seed} {name}: " + ", ".join(
                        f"{key} {row[key]:.3f}" for key in ("seg_object_miou", "seg_part_miou", "text_object_miou",
                                                            "psnr") if key in row))
        table = self.markdown(rows)
        record = {"command": self.command_line(), "rows": rows, "minutes": (time.time() - started) / 60}
        with atomic_open(self.workdir / "bench.json") as handle:
            handle.write(json.dumps(record, indent=2).encode())
        with atomic_open(self.workdir / "bench.md") as handle:
            handle.write((f"`{self.command_line()}`\n\n" + table + "\n").encode())
        print(table)
        print(f"wrote {self.workdir / 'bench.md'} and {self.workdir / 'bench.json'}")
        return 0

    # ---- steps ------------------------------------------------------------------------------------------
    def runs(self) -> List[Tuple[str, str]]:
        """(method, preset) of each feature run: every requested preset the method defines ("" for a method
        with one definition)."""
        runs = []
        for method in self.methods:
            defined = type(get_method(method).specification.config.pipeline.model).presets
            unknown = [preset for preset in self.presets if preset not in defined] if defined else []
            if unknown:
                raise SegsplatError(f"{method} has no preset {', '.join(unknown)}: it defines {', '.join(defined)}")
            runs += [(method, preset) for preset in self.presets] if defined and self.presets else [(method, "")]
        return runs

    def scene(self, seed: int) -> Path:
        from segsplat_ns.synthetic import SceneConfig, make_scene

        path = self.workdir / f"seed{seed}" / "scene"
        if self.fresh or not (path / "gt" / "meta.json").exists():
            make_scene(SceneConfig(output=path, seed=seed, num_objects=self.num_objects, width=self.image_size,
                                   height=self.image_size, num_train_views=self.num_train_views,
                                   num_eval_views=self.num_eval_views, overwrite=True))
        return path

    def rgb_args(self) -> List[str]:
        args = small_scene_training_args(self.rgb_steps, 0)
        return args

    def feature_args(self, method: str) -> List[str]:
        # the same small-scene settings as stage one (white background, full resolution, SH schedule); the
        # RGB-stage flags are inert with init-from, which starts the features at step 0
        flags = get_method(method).cpu_training_args()
        return [*small_scene_training_args(0, self.feature_steps), *flags, *self.extra_args]

    def joint_args(self, method: str) -> List[str]:
        """A method that trains its features with the geometry: the whole schedule (RGB + feature steps) in one
        run, the method's own flags deciding when its features start (the RGB stage's time is in its row)."""
        flags = get_method(method).cpu_training_args()
        return [*small_scene_training_args(self.rgb_steps, self.feature_steps), *flags, *self.extra_args]

    @staticmethod
    def language_args(scene: Path) -> List[str]:
        """The scene's own language features (the synthetic stand-in) for every feature run, when it has them."""
        if (scene / "language_features").is_dir():
            return ["--pipeline.datamanager.language.source", "folder"]
        return []

    def train(self, scene: Path, seed: int, name: str, args: List[str]) -> Tuple[Path, float]:
        """Run ns-train (or reuse a finished run): the run's config.yml and the wall time it took."""
        run_root = self.workdir / f"seed{seed}" / "runs" / name
        timing = run_root / "wall_seconds.txt"
        if not self.fresh and timing.exists():
            return find_config(run_root), float(timing.read_text())
        if run_root.exists():
            shutil.rmtree(run_root)
        command = [
            str(Path(sys.executable).parent / "ns-train"), *args[:1], "--data", str(scene),
            "--output-dir", str(run_root), "--experiment-name", name, "--timestamp", "run",
            "--vis", "tensorboard", "--viewer.quit-on-train-completion", "True", *args[1:],
        ]
        print("[bench] " + " ".join(command[1:]), flush=True)
        start = time.time()
        process = subprocess.Popen(command, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        _, status, usage = os.wait4(process.pid, 0)  # this run's own resource usage (peak RSS in KiB on Linux)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.time() - start
        if process.returncode != 0:
            raise SegsplatError(f"ns-train {args[0]} ({name}, seed {seed}) failed with exit code {process.returncode}; "
                                f"its output is above")
        (run_root / "peak_rss_mib.txt").write_text(f"{usage.ru_maxrss / 1024!r}\n")
        timing.write_text(f"{seconds!r}\n")  # full precision: a rerun reports the same number
        return find_config(run_root), seconds

    @staticmethod
    def run_facts(config: Path) -> Dict[str, float]:
        """What a run recorded about itself: the feature stage's time inside ns-train (``stage_seconds.json``, no
        start-up) and the process's peak resident memory (written by :meth:`train`); absent ones are left out."""
        facts: Dict[str, float] = {}
        stages = config.parent / "stage_seconds.json"
        if stages.exists():
            facts["feature_stage_run_s"] = float(json.loads(stages.read_text())["feature_stage_s"])
        for folder in config.parents:
            if (folder / "peak_rss_mib.txt").exists():
                facts["peak_rss_mib"] = float((folder / "peak_rss_mib.txt").read_text())
                break
        return facts

    def evaluate(self, config: Path, overrides: Optional[Dict[str, object]] = None) -> Dict[str, float]:
        import torch

        from segsplat_ns.eval.protocol import interior_point
        from segsplat_ns.runs import load_run
        from segsplat_ns.segmenter import Segmenter

        _, pipeline, checkpoint, _ = load_run(config)
        for key, value in (overrides or {}).items():  # an inference variant (MethodContract.inference_variants)
            setattr(pipeline.model.config, key, value)
        metrics = pipeline.get_average_eval_image_metrics()
        metrics = {key: float(value) for key, value in metrics.items() if isinstance(value, (int, float))}
        segmenter = Segmenter(pipeline.model)
        ground_truth = pipeline.datamanager.eval_ground_truth()
        if pipeline.model.text_support and ground_truth is not None and ground_truth.text and "text_object_miou" not in metrics:
            from segsplat_ns.eval.text_protocol import text_metrics

            pipeline.eval()
            segmenter.language = self.language(pipeline)
            metrics.update(text_metrics(segmenter, pipeline.datamanager.eval_dataset.cameras, ground_truth)[0])
        cameras = pipeline.datamanager.eval_dataset.cameras
        times = []
        for target in ground_truth.ids("object"):  # a click on each object in the first view that shows it
            view = next(v for v, m in enumerate(ground_truth.id_maps["object"]) if (m == target).any())
            pixel = interior_point(ground_truth.id_maps["object"][view] == target)
            start = time.perf_counter()
            with torch.no_grad():
                segmenter.click(cameras[view : view + 1], [pixel], 0.9)
            times.append(time.perf_counter() - start)
        metrics["click_ms"] = float(np.median(times) * 1e3)
        metrics.update(self.text_latency(pipeline, segmenter, ground_truth))
        metrics["segmentation_bytes_per_gaussian"] = segmentation_bytes_per_gaussian(Path(checkpoint))
        metrics["num_gaussians"] = float(pipeline.model.num_points)
        return metrics

    @staticmethod
    def language(pipeline):
        """The run's language context; a run trained without a language source (which the feature stage of a
        method without a language loss does not use) reads the scene's own features instead."""
        from segsplat_ns.language.context import language_context
        from segsplat_ns.language.sources import LanguageSourceConfig

        if pipeline.datamanager.config.language.source == "none":
            return language_context(pipeline, LanguageSourceConfig("folder"))
        return language_context(pipeline)

    @staticmethod
    def text_latency(pipeline, segmenter, ground_truth) -> Dict[str, float]:
        """Wall time of the first text prompt (with the method's text-independent preparation) and the median of the
        others, one prompt per object category (methods with a text mode and a scene with text ground truth)."""
        if not pipeline.model.text_support or ground_truth is None or "object" not in ground_truth.text:
            return {}
        segmenter.language = Bench.language(pipeline)
        categories = sorted({c for targets in ground_truth.text["object"] for c in targets})
        times = []
        for category in categories:
            start = time.perf_counter()
            segmenter.text(category)
            times.append(time.perf_counter() - start)
        if not times:
            return {}
        return {"text_first_ms": times[0] * 1e3, "text_ms": float(np.median(times[1:] or times)) * 1e3}

    # ---- output -----------------------------------------------------------------------------------------
    def command_line(self) -> str:
        parts = ["segsplat bench", "--workdir", str(self.workdir), "--seeds", *map(str, self.seeds),
                 "--image-size", str(self.image_size), "--num-objects", str(self.num_objects),
                 "--num-train-views", str(self.num_train_views), "--num-eval-views", str(self.num_eval_views),
                 "--methods", *self.methods, "--rgb-steps", str(self.rgb_steps), "--feature-steps", str(self.feature_steps)]
        if self.presets != Bench.presets:
            parts += ["--presets", *self.presets]
        if self.extra_args:
            parts += ["--extra-args", *self.extra_args]
        return " ".join(parts)

    @staticmethod
    def markdown(rows: List[Dict[str, float]]) -> str:
        columns = [c for c in COLUMNS if any(c[0] in row for row in rows)]
        header = "| method | seed | " + " | ".join(title for _, title, _ in columns) + " |"
        lines = [header, "|" + "---|" * (len(columns) + 2)]

        def cell(values, fmt):
            values = [v for v in values if v is not None and np.isfinite(v)]
            if not values:
                return "–"
            if len(values) == 1:
                return fmt.format(values[0])
            return fmt.format(float(np.mean(values))) + " ± " + fmt.format(float(np.std(values)))

        for row in rows:
            lines.append(f"| {row['method']} | {row['seed']} | "
                         + " | ".join(cell([row.get(key)], fmt) for key, _, fmt in columns) + " |")
        for method in dict.fromkeys(row["method"] for row in rows):
            mine = [row for row in rows if row["method"] == method]
            if len(mine) > 1:
                lines.append(f"| **{method}** | mean ± std | "
                             + " | ".join(cell([row.get(key) for row in mine], fmt) for key, _, fmt in columns) + " |")
        return "\n".join(lines)
