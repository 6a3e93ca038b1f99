"""Mask extraction on a Ray cluster: the cache's per-image parts computed by Ray actors.

One actor per worker sets the mask source up once (one SAM load per worker, on its share of a GPU when asked), then
computes the images it is handed, each written as a part beside the cache file, atomically, by the actor itself
(:func:`segsplat_ns.masks.cache.write_part`). The driver hands out images as actors become free (Ray's
``ActorPool``), shows one progress bar over the images, and assembles the cache file from the parts when all are
done (:meth:`segsplat_ns.masks.cache.MaskCache.load_or_compute`): the manifest is written last, by the driver.

A worker process that dies is restarted by Ray and its image retried (``max_restarts`` / ``max_task_retries``);
a driver that dies leaves only complete parts, and the next run computes only the missing images.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from segsplat_ns.errors import SegsplatError

__all__ = ["MaskWorker", "RayExtraction"]

RETRIES = 3
"""Restarts of a dead worker, and retries of the image it was computing."""


class MaskWorker:
    """A Ray actor's state: the mask source, set up once."""

    def __init__(self, masks_config, data_dir: str, device: str):
        self.source = masks_config.setup(Path(data_dir), device=device)

    def compute(self, index: int, image: np.ndarray, image_path: str, hw: Sequence[int], folder: str):
        from segsplat_ns.masks.cache import image_masks, write_part

        return write_part(Path(folder), index, image_masks(self.source, image, Path(image_path), hw))

    def pid(self) -> int:
        return os.getpid()


class RayExtraction:
    """``compute_missing`` for :meth:`MaskCache.load_or_compute` on a Ray cluster (``address``: "local" starts one
    on this machine with ``workers`` CPUs and stops it afterwards; "auto" or "ray://host:port" joins a running one)."""

    def __init__(self, masks_config, data_dir: Path, image_paths: Sequence[Path], load_image: Callable[[int], np.ndarray],
                 image_sizes: Sequence[Sequence[int]], address: str = "local", workers: int = 2,
                 gpus_per_worker: float = 0.0):  # fmt: skip
        self.masks_config, self.data_dir = masks_config, Path(data_dir)
        self.image_paths, self.load_image, self.image_sizes = list(image_paths), load_image, list(image_sizes)
        self.address, self.workers, self.gpus_per_worker = address, int(workers), float(gpus_per_worker)
        self.actors: List[object] = []
        self.rate: Optional[float] = None

    def __call__(self, todo: List[int], folder: Path) -> None:
        try:
            import ray
            from ray.util import ActorPool
        except ImportError as error:
            raise SegsplatError("distributed extraction needs Ray: pip install 'segsplat_ns[distributed]' (or ray==2.60.0), "
                                "or run segsplat extract without --ray-address") from error
        from tqdm.auto import tqdm

        if self.workers < 1:
            raise SegsplatError(f"--workers {self.workers}: at least 1")
        started_here = not ray.is_initialized()
        if started_here:
            if self.address == "local":
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})  # fmt: skip
            else:
                ray.init(address=self.address, log_to_driver=False)
        try:
            device = "cuda" if self.gpus_per_worker > 0 else "cpu"
            actor_class = ray.remote(num_cpus=1, num_gpus=self.gpus_per_worker, max_restarts=RETRIES,
                                     max_task_retries=RETRIES)(MaskWorker)  # fmt: skip
            self.actors = [actor_class.remote(self.masks_config, str(self.data_dir), device) for _ in range(self.workers)]
            setup = time.perf_counter()
            ray.get([actor.pid.remote() for actor in self.actors])  # every worker has set its mask source up
            print(f"{self.workers} Ray workers ready in {time.perf_counter() - setup:.1f} s", flush=True)
            pool = ActorPool(self.actors)
            start = time.perf_counter()
            for index in todo:
                pool.submit(lambda actor, i: actor.compute.remote(i, self.load_image(i), str(self.image_paths[i]),
                                                                  list(self.image_sizes[i]), str(folder)), index)  # fmt: skip
            with tqdm(total=len(todo), desc=f"Masks on Ray ({self.workers} workers)", unit="image") as bar:
                while pool.has_next():
                    pool.get_next_unordered()
                    bar.update(1)
            seconds = time.perf_counter() - start
            self.rate = len(todo) / max(seconds, 1e-9)
            print(f"Masks of {len(todo)} images on {self.workers} Ray workers in {seconds:.1f} s "
                  f"({self.rate:.2f} images/s, after the workers' set-up)", flush=True)
        finally:
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []
            if started_here:
                ray.shutdown()
