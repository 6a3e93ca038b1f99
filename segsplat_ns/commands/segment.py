"""`segsplat segment`: click -> selected Gaussians -> .ply + PNG (+ IoU when the dataset has ground truth)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from segsplat_ns.errors import SegsplatError
from segsplat_ns.runs import load_run


@dataclass
class Segment:
    """Select an object from a click at a chosen scale; write its Gaussians as a .ply (ns-export's format) and a PNG.

    Example: segsplat segment --load-config outputs/scene/saga/<time>/config.yml --camera 0 --pixel 48 40 --scale 0.6
    """

    load_config: Path
    """config.yml of a trained segsplat run."""
    pixel: Tuple[int, int]
    """Click position (x, y) in pixels of the chosen camera's image."""
    camera: int = 0
    """Index of the camera within --split."""
    split: Literal["eval", "train"] = "eval"
    """Which cameras --camera indexes: the held-out eval views or the training views."""
    scale: float = 0.5
    """Scale in [0, 1]: quantile of 3D mask sizes (0 = finest parts, 1 = whole scene); methods with levels map it."""
    level: Optional[int] = None
    """Methods with discrete levels: the level, 1 (coarsest) .. L (finest); replaces --scale."""
    threshold: float = 0.75
    """Similarity threshold: Gaussians with affinity above it are selected (methods with affinity scores)."""
    output: Optional[Path] = None
    """Where to write the .ply (default: <run>/segments/<split><camera>_x<x>_y<y>_s<scale>.ply); the PNG goes beside."""

    def main(self) -> int:
        return run_segment(self)


def save_png(path: Path, image: np.ndarray) -> None:
    from segsplat_ns.io import atomic_path

    with atomic_path(path) as temp:
        Image.fromarray(image).save(temp, format="PNG")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def run_segment(args: Segment) -> int:
    from segsplat_ns.export import write_splat_ply
    from segsplat_ns.segmenter import Segmenter

    _, pipeline, checkpoint, _ = load_run(args.load_config)
    model = pipeline.model
    datamanager = pipeline.datamanager
    dataset = datamanager.eval_dataset if args.split == "eval" else datamanager.train_dataset
    cameras = dataset.cameras
    if not 0 <= args.camera < len(cameras):
        raise SegsplatError(f"--camera {args.camera} is out of range: the {args.split} split has {len(cameras)} cameras (0..{len(cameras) - 1})")
    camera = cameras[args.camera : args.camera + 1].to(model.device)
    segmenter = Segmenter(model, threshold=args.threshold)
    scale = args.scale
    if args.level is not None:
        scale = segmenter.scale_for_level(args.level - 1)
    where = segmenter.describe(scale, None if args.level is None else args.level - 1)
    selection = segmenter.click(camera, [args.pixel], scale)
    if selection.empty:
        print(f"Nothing selected: {selection.message}. No files written.")
        return 1

    run_dir = Path(args.load_config).resolve().parent
    x, y = args.pixel
    suffix = f"l{args.level}" if args.level is not None else f"s{args.scale:.2f}"
    output = args.output or run_dir / "segments" / f"{args.split}{args.camera}_x{x}_y{y}_{suffix}.ply"
    count = write_splat_ply(output, model.gauss_params, mask=selection.gaussian_mask)
    png = output.with_suffix(".png")
    with torch.no_grad():
        selected = model.render_rgb_subset(camera, selection.gaussian_mask)
    save_png(png, to_uint8(selected))
    if model.wording.uses_threshold:
        where += f", threshold {args.threshold:.2f}"
    print(f"Selected {count} of {model.num_points} Gaussians ({where}).")
    print(f"PLY: {output}")
    print(f"PNG: {png}")

    if args.split == "eval":
        report_iou(segmenter, datamanager, camera, args.camera, args.pixel, selection.gaussian_mask)
    return 0


def report_iou(segmenter, datamanager, camera, view: int, pixel: Tuple[int, int], gaussian_mask) -> Optional[float]:
    """Print the IoU of the rendered selection against the ground-truth object and part under the click."""
    from segsplat_ns.eval.metrics import iou

    ground_truth = datamanager.eval_ground_truth()
    if ground_truth is None:
        print("No segmentation ground truth in this dataset: IoU not computed.")
        return None
    predicted = segmenter.render_mask(camera, gaussian_mask).cpu().numpy()
    best = None
    for level, id_maps in ground_truth.id_maps.items():
        target = int(id_maps[view][pixel[1], pixel[0]])
        if target == 0:
            continue
        value = iou(predicted, id_maps[view] == target)
        name = ground_truth.names.get(level, {}).get(target, str(target))
        print(f"IoU against ground-truth {level} '{name}' in this view: {value:.3f}")
        best = value if best is None else max(best, value)
    return best
