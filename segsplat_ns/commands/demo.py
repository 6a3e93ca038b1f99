"""`segsplat demo`: synthetic scene -> `ns-train <method>` -> click an object -> .ply + PNG + IoU, on CPU in minutes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from segsplat_ns.runs import find_config, small_scene_training_args


@dataclass
class Demo:
    """Make the synthetic scene, train a method on it with the real `ns-train`, segment one object from a click,
    export it as .ply and PNG, and print the IoU against ground truth. About 10 minutes on a 2-core CPU."""

    method: str
    """Registered ns-train method to train (scripts/demo.sh: saga); `segsplat demo --help` lists them."""
    workdir: Path = Path("outputs/demo")
    """Folder for the scene and the run (replaced if it exists)."""
    seed: int = 0
    """Seed of the synthetic scene."""
    rgb_steps: int = 2000
    """Stage one (RGB splat) steps."""
    feature_steps: int = 1500
    """Stage two (segmentation features) steps."""

    def main(self) -> int:
        from segsplat_ns.registry import get_method
        from segsplat_ns.synthetic import SceneConfig, make_scene

        method = get_method(self.method)
        started = time.time()
        bin_dir = Path(sys.executable).parent
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        scene = make_scene(SceneConfig(output=self.workdir / "scene", seed=self.seed))
        print(f"[1/3] synthetic scene written to {scene} ({time.time() - started:.0f} s)")

        train_cmd = [
            str(bin_dir / "ns-train"), method.name, "--data", str(scene),
            "--output-dir", str(self.workdir / "runs"), "--experiment-name", "demo", "--timestamp", "run",
            "--vis", "tensorboard", "--viewer.quit-on-train-completion", "True",
            *small_scene_training_args(self.rgb_steps, self.feature_steps),
            *method.cpu_training_args(),
        ]
        print("[2/3] " + " ".join(train_cmd[1:]))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        subprocess.run(train_cmd, check=True, env=env)
        config = find_config(self.workdir / "runs")
        print(f"[2/3] trained: {config} ({time.time() - started:.0f} s)")

        return self.segment_largest_object(config, started)

    def segment_largest_object(self, config: Path, started: float) -> int:
        import numpy as np

        from segsplat_ns.commands.segment import Segment, run_segment
        from segsplat_ns.eval.protocol import interior_point, target_scale
        from segsplat_ns.runs import load_run
        from segsplat_ns.segmenter import Segmenter

        _, pipeline, _, _ = load_run(config)
        ground_truth = pipeline.datamanager.eval_ground_truth()
        objects = ground_truth.id_maps["object"][0]
        ids, counts = np.unique(objects[objects > 0], return_counts=True)
        target = int(ids[np.argmax(counts)])
        pixel = interior_point(objects == target)
        camera = pipeline.datamanager.eval_dataset.cameras[0:1]
        scale = target_scale(Segmenter(pipeline.model), camera, objects == target)
        print(f"[3/3] clicking the largest object ('{ground_truth.names['object'].get(target, target)}') in eval view 0 "
              f"at pixel {pixel}, at its own 3D scale {scale:.2f}:")
        print(f"      segsplat segment --load-config {config} --camera 0 --pixel {pixel[0]} {pixel[1]} --scale {scale:.2f}")
        del pipeline
        code = run_segment(Segment(load_config=config, pixel=pixel, camera=0, split="eval", scale=round(scale, 2)))
        print(f"Demo finished in {time.time() - started:.0f} s.")
        return code
