"""Click-to-updated-render latency of the viewer's segmentation controls, on CPU.

What one click in the viewer costs, measured on the code paths the viewer runs (no browser, so no network or
JPEG time): the pointer callback (``SegmentationControls.on_click``: read the click on the current view, one
``Segmenter.click``), then the re-render it triggers (``model.get_outputs_for_camera`` with the selection
overlay, as the viewer's render thread calls it) at the viewer's resolution. A slider move is one
re-segmentation from the stored click plus the same re-render. Prints a markdown table (median of --repeats).

    # trains the default synthetic scene first (1500 + 1000 steps, ~15 min on 2 cores), then measures
    python benchmarks/bench_viewer_latency.py
    # or measure an existing run of the default scene
    python benchmarks/bench_viewer_latency.py --load-config outputs/demo/runs/demo/saga/run/config.yml
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def train_default_scene(workdir: Path, rgb_steps: int, feature_steps: int) -> Path:
    from segsplat_ns.runs import small_scene_training_args
    from segsplat_ns.synthetic import SceneConfig, make_scene

    config = workdir / "runs" / "bench" / "saga" / "t" / "config.yml"
    if config.exists():
        return config
    scene = make_scene(SceneConfig(output=workdir / "scene", overwrite=True))
    args = [
        str(Path(sys.executable).parent / "ns-train"), "saga", "--data", str(scene), "--output-dir", "runs",
        "--experiment-name", "bench", "--timestamp", "t", "--vis", "tensorboard",
        "--viewer.quit-on-train-completion", "True", *small_scene_training_args(rgb_steps, feature_steps),
    ]
    print("training:", " ".join(args[1:]), flush=True)
    subprocess.run(args, cwd=workdir, check=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return config


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-config", type=Path, default=None, help="config.yml of a saga run on the default scene")
    parser.add_argument("--workdir", type=Path, default=Path("outputs/bench_viewer"))
    parser.add_argument("--rgb-steps", type=int, default=1500)
    parser.add_argument("--feature-steps", type=int, default=1000)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256, 512],
                        help="long side of the viewer render (the viewer's 'Max res'; 512 is its default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from nerfstudio.viewer.viewer_elements import ViewerClick
    from PIL import Image

    from segsplat_ns.eval.protocol import interior_point
    from segsplat_ns.runs import load_run
    from segsplat_ns.viewer import MODE_ADD, SegmentationControls

    config = args.load_config
    if config is None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        config = train_default_scene(args.workdir.resolve(), args.rgb_steps, args.feature_steps)
    _, pipeline, _, _ = load_run(config, test_mode="test")
    model = pipeline.model
    model.eval()
    controls = SegmentationControls(pipeline)
    controls.overlay_all_renders = True
    controls.b_click_mode.value = MODE_ADD

    dataset = pipeline.datamanager.eval_dataset
    base = dataset.cameras[0:1]
    data_dir = Path(pipeline.datamanager.get_datapath())
    objects_path = data_dir / "gt" / "objects" / Path(dataset.image_filenames[0]).name
    objects = np.asarray(Image.open(objects_path)).astype(int)
    ids, counts = np.unique(objects[objects > 0], return_counts=True)
    x, y = interior_point(objects == ids[np.argmax(counts)])
    width0, height0 = int(base.width.item()), int(base.height.item())
    click = ViewerClick((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), ((x + 0.5) / width0, (y + 0.5) / height0))

    rows = []
    for res in args.resolutions:
        camera = dataset.cameras[0:1]
        camera.rescale_output_resolution(res / max(width0, height0))
        controls.camera_override = camera  # the click is read on the view the viewer renders

        def click_once():
            controls.clicks, controls.selection, controls.history = [], None, []
            controls.on_click(click)

        def render():
            with torch.no_grad():
                model.get_outputs_for_camera(camera)

        click_once()
        assert controls.selection is not None and not controls.selection.empty, controls.last_message
        selected = controls.selection.count
        t_click = timed(click_once, args.repeats)
        t_render = timed(render, args.repeats)
        controls.selection, saved = None, controls.selection
        t_plain = timed(render, args.repeats)
        controls.selection = saved
        t_slider = timed(controls._on_slider, args.repeats)
        rows.append((f"{camera.width.item()}x{camera.height.item()}", model.num_points, selected, t_click, t_plain,
                     t_render, t_click + t_render, t_slider + t_render))

    print(f"\nCPU, {args.threads} thread(s), torch {torch.__version__}, run {config}\n")
    print("| viewer render | Gaussians | selected | click -> selection (ms) | render, no selection (ms) "
          "| render with selection (ms) | **click -> updated render (ms)** | slider -> updated render (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} | {row[3]:.0f} | {row[4]:.0f} | {row[5]:.0f} | **{row[6]:.0f}** "
              f"| {row[7]:.0f} |")


if __name__ == "__main__":
    main()
