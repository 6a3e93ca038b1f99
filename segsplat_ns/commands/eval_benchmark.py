"""`segsplat eval-benchmark`: score a trained run on a public benchmark's ground truth (docs/public-benchmarks.md).

The readers (:mod:`segsplat_ns.eval.benchmarks`) turn each benchmark's files into prompted targets; here every
target's prompt is given in its reference view, the selection is rendered into the target's view and compared
with the ground truth (IoU and pixel accuracy, boundary IoU too). Views are matched to the run's cameras by
image file name (stem), searching the eval split and then the train split. Replica is scored by decomposition:
Hungarian-matched instance mIoU / precision / recall as Gaga does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from segsplat_ns.errors import SegsplatError


@dataclass
class EvalBenchmark:
    """Score a trained run on a downloaded public benchmark (NVOS, SPIn-NeRF, Replica as Gaga uses it; LERF-Mask and
    LERF-OVS by text prompts, for methods with a text mode). Prints per-target IoU and the means; --output-json keeps
    them."""

    load_config: Path
    """config.yml of a run trained on the benchmark scene's images."""
    benchmark: str
    """One of nvos, spin-nerf, lerf-mask, replica, lerf-ovs."""
    root: Path
    """The downloaded benchmark folder (see docs/public-benchmarks.md for each layout)."""
    scene: Optional[str] = None
    """Scene (sub-folder) within --root; none: --root is the scene folder."""
    scale: float = 0.9
    """Scale in [0, 1] for the clicks (and the decomposition). The benchmarks' targets are whole objects: high."""
    threshold: float = 0.75
    """Similarity threshold of the clicks."""
    output_json: Optional[Path] = None
    """Also write the scores here (atomically)."""
    language_folder: Optional[Path] = None
    """Text benchmarks: LangSplat-layout language features of the training images (default: the run's source)."""

    def main(self) -> int:
        from segsplat_ns.eval.benchmarks import BENCHMARKS, TEXT_BENCHMARKS, read_benchmark
        from segsplat_ns.runs import load_run
        from segsplat_ns.segmenter import Segmenter

        if self.benchmark not in BENCHMARKS:
            raise SegsplatError(f"--benchmark {self.benchmark}: choose one of {', '.join(BENCHMARKS)}")
        Segmenter.check_scale(self.scale)
        ground_truth = read_benchmark(self.benchmark, self.root, self.scene)  # bad files fail before the slow load
        _, pipeline, _, _ = load_run(self.load_config)
        views = camera_index(pipeline)
        segmenter = Segmenter(pipeline.model, threshold=self.threshold)
        if self.benchmark in TEXT_BENCHMARKS:
            from segsplat_ns.language.context import language_context
            from segsplat_ns.language.sources import LanguageSourceConfig

            segmenter.check_text_mode()
            source = None if self.language_folder is None else LanguageSourceConfig("folder", folder=self.language_folder)
            segmenter.language = language_context(pipeline, source)
            scores = self.score_text(segmenter, views, ground_truth)
        elif self.benchmark == "replica":
            scores = self.score_decomposition(segmenter, views, ground_truth)
        else:
            scores = self.score_clicks(segmenter, views, ground_truth)
        scores.update({"benchmark": self.benchmark, "scene": ground_truth.scene, "scale": self.scale,
                       "threshold": self.threshold, "config": str(self.load_config)})
        if self.output_json is not None:
            from segsplat_ns.io import atomic_open

            with atomic_open(Path(self.output_json)) as handle:
                handle.write(json.dumps(scores, indent=2).encode())
            print(f"wrote {self.output_json}")
        return 0

    def score_clicks(self, segmenter, views, ground_truth) -> Dict[str, object]:
        from segsplat_ns.eval.metrics import accuracy, boundary_iou, iou

        per_target: List[Dict[str, object]] = []
        selections: Dict[Tuple, object] = {}
        for target in ground_truth.targets:
            prompt_camera = lookup(views, target.prompt_image)
            target_camera = lookup(views, target.image)
            key = (target.prompt_image, tuple(target.positive_points), tuple(target.negative_points))
            if key not in selections:  # targets sharing a prompt (NVOS, SPIn-NeRF) share one selection
                size = target.prompt_size or target.mask.shape
                positive = scale_points(target.positive_points, size, prompt_camera)
                negative = scale_points(target.negative_points, size, prompt_camera)
                selections[key] = segmenter.click(prompt_camera, positive, self.scale, negative_pixels=negative)
            selection = selections[key]
            predicted = segmenter.render_mask(target_camera, selection.gaussian_mask).cpu().numpy()
            truth = resize_mask(target.mask, predicted.shape)
            per_target.append({"name": target.name, "image": target.image, "iou": iou(predicted, truth),
                               "accuracy": accuracy(predicted, truth), "boundary_iou": boundary_iou(predicted, truth)})
            print(f"{target.name:>24s}  {target.image:>24s}  IoU {per_target[-1]['iou']:.3f}  "
                  f"acc {per_target[-1]['accuracy']:.3f}")
        means = {f"m{key}" if key != "boundary_iou" else "mboundary_iou": float(np.mean([t[key] for t in per_target]))
                 for key in ("iou", "accuracy", "boundary_iou")}
        print(f"{self.benchmark} {ground_truth.scene}: mIoU {means['miou']:.3f}, mAcc {means['maccuracy']:.3f}, "
              f"boundary IoU {means['mboundary_iou']:.3f} over {len(per_target)} target views")
        return {**means, "targets": per_target}

    def score_text(self, segmenter, views, ground_truth) -> Dict[str, object]:
        """Each target's text prompt (answered once per distinct text), its 2D mask in the target's view: IoU,
        accuracy, boundary IoU, and (where the benchmark gives boxes) LangSplat's localisation hit."""
        from segsplat_ns.eval.metrics import accuracy, boundary_iou, iou
        from segsplat_ns.language.relevancy import localisation_hit

        per_target: List[Dict[str, object]] = []
        answers: Dict[str, object] = {}
        for target in ground_truth.targets:
            camera = lookup(views, target.image)
            if target.text not in answers:
                answers[target.text] = segmenter.text(target.text)
            selection = answers[target.text]
            # the map once: the mask may come from it, and localisation reads it
            relevancy = segmenter.relevancy_map(camera, selection) if target.boxes is not None else None
            predicted = segmenter.text_mask(camera, selection, relevancy).cpu().numpy()
            truth = resize_mask(target.mask, predicted.shape)
            row = {"name": target.name, "image": target.image, "iou": iou(predicted, truth),
                   "accuracy": accuracy(predicted, truth), "boundary_iou": boundary_iou(predicted, truth)}
            if target.boxes is not None:
                scale = np.array([predicted.shape[1] / target.mask.shape[1], predicted.shape[0] / target.mask.shape[0]] * 2)
                row["localised"] = bool(localisation_hit(relevancy.cpu().numpy(), np.asarray(target.boxes) * scale))
            per_target.append(row)
            print(f"{target.name:>24s}  {target.image:>24s}  IoU {row['iou']:.3f}"
                  + (f"  localised {row['localised']}" if "localised" in row else ""))
        def mean(key: str) -> float:
            if self.benchmark != "lerf-mask":  # LERF-OVS (LangSplat): over (view, category) pairs
                return float(np.mean([t[key] for t in per_target]))
            # LERF-Mask (Gaussian Grouping's eval_lerf_mask.py): per prompt over its views, then over prompts
            prompts = sorted({str(t["name"]) for t in per_target})
            return float(np.mean([np.mean([t[key] for t in per_target if t["name"] == p]) for p in prompts]))

        scores: Dict[str, object] = {
            "miou": mean("iou"), "maccuracy": mean("accuracy"), "mboundary_iou": mean("boundary_iou"),
            "targets": per_target, "features": segmenter.language.description,
        }
        located = [t["localised"] for t in per_target if "localised" in t]
        if located:
            scores["localisation"] = float(np.mean(located))
        print(f"{self.benchmark} {ground_truth.scene}: text mIoU {scores['miou']:.3f}"
              + (f", localisation {scores['localisation']:.3f}" if located else "")
              + f" over {len(per_target)} target views ({segmenter.language.description} features)")
        return scores

    def score_decomposition(self, segmenter, views, ground_truth) -> Dict[str, object]:
        from segsplat_ns.eval.metrics import hungarian_instance_metrics
        from segsplat_ns.eval.protocol import render_labels

        labels = segmenter.decompose(self.scale)
        predicted, truth = [], []
        for stem, instance_map in sorted(ground_truth.instance_maps.items()):
            camera = lookup(views, stem)
            predicted.append(render_labels(segmenter, camera, labels))
            truth.append(resize_mask(instance_map, predicted[-1].shape))
        scores = hungarian_instance_metrics(np.stack(predicted), np.stack(truth), ignore_label=None, pred_ignore_label=-1)
        print(f"replica {ground_truth.scene}: instance mIoU {scores['miou']:.3f}, precision {scores['precision']:.3f}, "
              f"recall {scores['recall']:.3f} over {len(truth)} views ({scores['num_gt']} instances)")
        return {key: float(value) for key, value in scores.items()}


def camera_index(pipeline) -> Dict[str, object]:
    """Image stem -> single-camera Cameras, over the eval split then the train split."""
    index: Dict[str, object] = {}
    datamanager = pipeline.datamanager
    for dataset in (datamanager.train_dataset, datamanager.eval_dataset):  # eval last: it wins on a shared name
        for i, name in enumerate(dataset.image_filenames):
            index[Path(name).stem] = dataset.cameras[i : i + 1]
    return index


def lookup(views: Dict[str, object], stem: str):
    if stem not in views:
        shown = ", ".join(sorted(views)[:5])
        raise SegsplatError(f"the benchmark's view '{stem}' is not an image of this run (its images are named like {shown}, "
                            f"...): train on the benchmark scene's images under their original names "
                            f"(docs/public-benchmarks.md)")
    return views[stem]


def scale_points(points, size, camera) -> List[Tuple[int, int]]:
    """(x, y) points from a (H, W) annotation grid to the camera's pixels."""
    height, width = int(camera.height.item()), int(camera.width.item())
    sy, sx = height / size[0], width / size[1]
    return [(min(int(x * sx), width - 1), min(int(y * sy), height - 1)) for x, y in points]


def resize_mask(mask: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resize, which keeps ids (and booleans) intact."""
    if tuple(mask.shape) == tuple(shape):
        return mask
    from PIL import Image

    resized = Image.fromarray(mask.astype(np.int32)).resize((shape[1], shape[0]), Image.NEAREST)
    return np.asarray(resized).astype(mask.dtype)
