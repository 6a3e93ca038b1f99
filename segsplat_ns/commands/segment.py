"""`segsplat segment`: click -> selected Gaussians -> .ply + PNG (+ IoU when the dataset has ground truth)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from segsplat_ns.errors import SegsplatError

if TYPE_CHECKING:
    from segsplat_ns.cli import Segment


def load_run(config_path: Path, test_mode: str = "test"):
    """A trained run's pipeline, found from its config.yml wherever the command is run from."""
    from nerfstudio.utils.eval_utils import eval_setup

    from segsplat_ns.compat import allow_nerfstudio_checkpoints

    config_path = Path(config_path)
    if not config_path.is_file():
        raise SegsplatError(f"--load-config {config_path}: no such file (pass the config.yml inside a run's folder)")
    allow_nerfstudio_checkpoints()

    def locate_checkpoints(config):
        # an absolute relative_model_dir wins over output_dir/experiment/method/timestamp, which is cwd-relative
        config.relative_model_dir = config_path.resolve().parent / "nerfstudio_models"
        return config

    config, pipeline, checkpoint, step = eval_setup(config_path, test_mode=test_mode, update_config_callback=locate_checkpoints)
    return config, pipeline, checkpoint, step


def save_png(path: Path, image: np.ndarray) -> None:
    from segsplat_ns.io import atomic_path

    with atomic_path(path) as temp:
        Image.fromarray(image).save(temp, format="PNG")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def run_segment(args: "Segment") -> int:
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
    scale, where = args.scale, f"scale {args.scale:.2f}"
    if args.level is not None:
        scale_for_level = getattr(model, "scale_for_level", None)
        num_levels = int(getattr(model, "num_levels", 0))
        if scale_for_level is None or not num_levels:
            raise SegsplatError(f"--level is for methods with discrete levels (binary-gaussian); this run's model "
                                f"({type(model).__name__}) has a continuous scale: use --scale instead")
        if not 1 <= args.level <= num_levels:
            raise SegsplatError(f"--level {args.level} does not exist: this model has levels 1..{num_levels}")
        scale = scale_for_level(args.level - 1)
        if scale is None:
            raise SegsplatError(f"level {args.level} received too few training masks to have learnt groups: "
                                "choose another --level")
        where = f"level {args.level} of {num_levels}"
    segmenter = Segmenter(model, threshold=args.threshold)
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
    print(f"Selected {count} of {model.num_points} Gaussians ({where}, threshold {args.threshold:.2f}).")
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
