"""`segsplat segment`: click or text -> selected Gaussians -> .ply + PNG (+ IoU when the dataset has ground truth)."""

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
    """Select an object from a click at a chosen scale, or from a text prompt; write its Gaussians as a .ply
    (ns-export's format) and a PNG (for text, also the relevancy map).

    Examples: segsplat segment --load-config outputs/scene/saga/<time>/config.yml --camera 0 --pixel 48 40 --scale 0.6
              segsplat segment --load-config outputs/scene/saga/<time>/config.yml --text "lamp"
    """

    load_config: Path
    """config.yml of a trained segsplat run."""
    pixel: Optional[Tuple[int, int]] = None
    """Click position (x, y) in pixels of the chosen camera's image."""
    text: Optional[str] = None
    """Text prompt instead of a click (methods with a text mode; needs the run's language features)."""
    language_folder: Optional[Path] = None
    """Text: read LangSplat-layout language features from this folder instead of the run's language source."""
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
    """Where to write the .ply; the PNG goes beside. Default: <run>/segments/<split><camera>_x<x>_y<y>_s<scale
    with 2 decimals>.ply (_l<level> with --level), or <run>/segments/text_<prompt>.ply with --text."""
    overwrite: bool = False
    """Replace an existing output .ply / .png (without it, an existing file is an error)."""

    def main(self) -> int:
        return run_segment(self)


def check_arguments(args: Segment) -> None:
    """Every check that needs no pipeline, so a typo costs no load: prompt kind, scale, level, threshold, output."""
    from segsplat_ns.segmenter import Segmenter

    if (args.pixel is None) == (args.text is None):
        raise SegsplatError("give either --pixel X Y (a click) or --text PROMPT")
    if args.text is not None and not " ".join(str(args.text).split()):
        raise SegsplatError('--text is empty: give what to find, e.g. --text "lamp"')
    Segmenter.check_scale(args.scale)
    if args.level is not None and args.level < 1:
        raise SegsplatError(f"--level {args.level}: levels count from 1 (coarsest)")
    if not 0.0 <= args.threshold <= 1.0:
        raise SegsplatError(f"--threshold {args.threshold} is outside [0, 1]: it is the similarity a Gaussian needs to "
                            "be selected (below 0 everything is; the default is 0.75)")
    if args.camera < 0:
        raise SegsplatError(f"--camera {args.camera}: cameras count from 0")
    if args.pixel is not None and min(args.pixel) < 0:
        raise SegsplatError(f"--pixel {args.pixel[0]} {args.pixel[1]}: pixel coordinates start at 0")
    config = Path(args.load_config)
    if not config.is_file():
        raise SegsplatError(f"--load-config {config}: no such file (pass the config.yml inside a run's folder)")
    if args.output is not None or args.text is None:
        output = click_output(args) if args.text is None else Path(args.output)
        check_output(output, args.overwrite, extra=() if args.text is None else
                     (output.with_name(output.stem + "_relevancy.png"),))


def click_output(args: Segment) -> Path:
    """The .ply a click writes: --output, else <run>/segments/<split><camera>_x<x>_y<y>_<s<scale>|l<level>>.ply."""
    if args.output is not None:
        return Path(args.output)
    x, y = args.pixel
    suffix = f"l{args.level}" if args.level is not None else f"s{args.scale:.2f}"
    return Path(args.load_config).resolve().parent / "segments" / f"{args.split}{args.camera}_x{x}_y{y}_{suffix}.ply"


def check_output(output: Path, overwrite: bool, extra: Tuple[Path, ...] = ()) -> None:
    """Raise a one-line error unless ``output`` (a .ply; its .png beside it, and ``extra``) can be written."""
    import os

    output = Path(output)
    if output.is_dir():
        raise SegsplatError(f"--output {output} is a folder: give a file name inside it, e.g. {output / 'selection.ply'}")
    if output.suffix.lower() != ".ply":
        raise SegsplatError(f"--output {output}: give a file name ending in .ply (the PNG is written beside it)")
    existing = [p for p in (output, output.with_suffix(".png"), *extra) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists: pass --overwrite to replace it, or choose another --output")
    folder = output.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise SegsplatError(f"--output {output}: {folder} is a file, not a folder: choose another --output")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SegsplatError(f"--output {output}: cannot write into {folder} (permission denied): choose another "
                            "--output in a folder you can write to")


def chosen_camera(args: Segment, datamanager):
    """The camera --split and --camera name, as a one-camera batch; one line where there is none."""
    cameras = (datamanager.eval_dataset if args.split == "eval" else datamanager.train_dataset).cameras
    if len(cameras) == 0 and args.split == "eval":
        raise SegsplatError(f"this run's dataset {datamanager.data_dir} has no eval views: pass --split train to use "
                            f"a training view (--camera 0..{len(datamanager.train_dataset.cameras) - 1})")
    if not 0 <= args.camera < len(cameras):
        raise SegsplatError(f"--camera {args.camera} is out of range: the {args.split} split has {len(cameras)} "
                            f"cameras (0..{len(cameras) - 1})")
    return cameras[args.camera : args.camera + 1]


def ground_truth_or_none(datamanager):
    """The eval ground truth, or None with a line saying why IoU is not computed (missing or malformed: the
    selection written stays valid, so the command still succeeds)."""
    from segsplat_ns.errors import user_error_types

    try:
        ground_truth = datamanager.eval_ground_truth()
    except user_error_types() as error:
        print(f"IoU not computed: {error}")
        return None
    if ground_truth is None:
        print("No segmentation ground truth in this dataset: IoU not computed.")
    return ground_truth


def save_png(path: Path, image: np.ndarray) -> None:
    from segsplat_ns.io import atomic_path

    with atomic_path(path) as temp:
        Image.fromarray(image).save(temp, format="PNG")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def run_segment(args: Segment) -> int:
    from segsplat_ns.export import write_splat_ply
    from segsplat_ns.segmenter import Segmenter

    check_arguments(args)  # before the slow pipeline load
    if args.text is not None:
        return run_text_segment(args)
    _, pipeline, checkpoint, _ = load_run(args.load_config)
    model = pipeline.model
    datamanager = pipeline.datamanager
    camera = chosen_camera(args, datamanager).to(model.device)
    segmenter = Segmenter(model, threshold=args.threshold)
    scale = args.scale
    if args.level is not None:
        scale = segmenter.scale_for_level(args.level - 1)
    where = segmenter.describe(scale, None if args.level is None else args.level - 1)
    selection = segmenter.click(camera, [args.pixel], scale)
    if selection.empty:
        print(f"Nothing selected: {selection.message}. No files written.")
        return 1

    output = click_output(args)
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


def run_text_segment(args: Segment) -> int:
    """``--text``: the method's text answer, written as for a click, plus the relevancy map as a PNG."""
    from segsplat_ns.export import write_splat_ply
    from segsplat_ns.language.context import language_context
    from segsplat_ns.language.sources import LanguageSourceConfig
    from segsplat_ns.segmenter import Segmenter

    _, pipeline, _, _ = load_run(args.load_config)
    model = pipeline.model
    segmenter = Segmenter(model, threshold=args.threshold)
    segmenter.check_text_mode()  # before loading language features: a clear refusal first
    source = None if args.language_folder is None else LanguageSourceConfig(source="folder", folder=args.language_folder)
    segmenter.language = language_context(pipeline, source)
    selection = segmenter.text(args.text)
    print(f'Text "{selection.phrase}" with {segmenter.language.description} features: '
          + ", ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                      for key, value in selection.facts.items()))
    if selection.empty:
        print(f"Nothing selected: {selection.message}. No files written.")
        return 1
    camera = chosen_camera(args, pipeline.datamanager).to(model.device)
    run_dir = Path(args.load_config).resolve().parent
    slug = "".join(c if c.isalnum() else "_" for c in selection.phrase)[:40]
    output = args.output or run_dir / "segments" / f"text_{slug}.ply"
    check_output(output, args.overwrite, extra=(output.with_name(output.stem + "_relevancy.png"),))
    count = write_splat_ply(output, model.gauss_params, mask=selection.gaussian_mask)
    png = output.with_suffix(".png")
    with torch.no_grad():
        save_png(png, to_uint8(model.render_rgb_subset(camera, selection.gaussian_mask)))
        relevancy = segmenter.relevancy_map(camera, selection)
    relevancy_png = output.with_name(output.stem + "_relevancy.png")
    save_png(relevancy_png, turbo(relevancy.cpu().numpy()))
    print(f"Selected {count} of {model.num_points} Gaussians.")
    print(f"PLY: {output}")
    print(f"PNG: {png} (the selection from {args.split} camera {args.camera}); relevancy: {relevancy_png}")
    ground_truth = ground_truth_or_none(pipeline.datamanager) if args.split == "eval" else None
    if ground_truth is not None and ground_truth.text:
        from segsplat_ns.eval.metrics import iou

        predicted = segmenter.text_mask(camera, selection, relevancy).cpu().numpy()
        for level, views in ground_truth.text.items():
            if selection.phrase in views[args.camera]:
                truth = views[args.camera][selection.phrase][0]
                print(f"IoU against the ground-truth {level} '{selection.phrase}' in this view: {iou(predicted, truth):.3f}")
    return 0


def turbo(values: np.ndarray) -> np.ndarray:
    """uint8 RGB of values in [0, 1] through matplotlib's turbo colormap."""
    from matplotlib import colormaps

    return (colormaps["turbo"](np.clip(values, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)


def report_iou(segmenter, datamanager, camera, view: int, pixel: Tuple[int, int], gaussian_mask) -> Optional[float]:
    """Print the IoU of the rendered selection against the ground-truth object and part under the click."""
    from segsplat_ns.eval.metrics import iou

    ground_truth = ground_truth_or_none(datamanager)
    if ground_truth is None:
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
