"""Mask and CLIP-feature extraction on a Ray cluster: the caches' per-image entries computed by Ray actors.

One actor per worker sets the mask source up once (one SAM load per worker, on its share of a GPU when asked), then
computes the images it is handed, each written as a part beside the cache file, atomically, by the actor itself
(:func:`segsplat_ns.masks.cache.write_part`). The driver hands out images as actors become free (Ray's
``ActorPool``), shows one progress bar over the images, and assembles the cache file from the parts when all are
done (:meth:`segsplat_ns.masks.cache.MaskCache.load_or_compute`): the manifest is written last, by the driver.

CLIP features go the same way (:func:`ray_language`): one encoder per actor, each image's ``_s.npy`` / ``_f.npy``
written atomically by the actor, the manifest written last by the driver (:class:`LanguageCache`).

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

__all__ = ["LanguageWorker", "MaskWorker", "RayPool", "ray_language", "ray_masks"]

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


class LanguageWorker:
    """A Ray actor's state: the image encoder (CLIP), built once."""

    def __init__(self, make_encoder: Callable[[], object], batch_size: int):
        self.encoder, self.batch_size = make_encoder(), int(batch_size)

    def compute(self, image: np.ndarray, masks: np.ndarray, stem: str, folder: str) -> int:
        from segsplat_ns.language.cache import compute_record
        from segsplat_ns.language.features import write_record

        record = compute_record(image, masks, self.encoder, batch_size=self.batch_size)
        write_record(Path(folder), stem, record)
        return record.num_masks

    def pid(self) -> int:
        return os.getpid()


class RayPool:
    """Ray actors that each set a worker class up once and then take items as they become free (``address``:
    "local" starts Ray on this machine with ``workers`` CPUs and stops it afterwards; "auto" or "ray://host:port"
    joins a running cluster, which must have segsplat_ns installed)."""

    def __init__(self, address: str = "local", workers: int = 2, gpus_per_worker: float = 0.0):
        self.address, self.workers, self.gpus_per_worker = address, int(workers), float(gpus_per_worker)
        self.actors: List[object] = []
        self.rate: Optional[float] = None
        """Items per second of the last :meth:`map`, after the workers' set-up."""

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_worker > 0 else "cpu"

    def map(self, worker_class: type, init_args: tuple, items: Sequence[int], call: Callable[[object, int], object],
            desc: str) -> None:  # fmt: skip
        """``call(actor, item)`` (which returns the actor's remote call) for every item, one progress bar."""
        try:
            import ray
            from ray.util import ActorPool
        except ImportError as error:
            raise SegsplatError("distributed extraction needs Ray: pip install 'segsplat_ns[distributed]' (or "
                                "ray==2.60.0), or run segsplat extract without --ray-address") from error
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
            actor_class = ray.remote(num_cpus=1, num_gpus=self.gpus_per_worker, max_restarts=RETRIES,
                                     max_task_retries=RETRIES)(worker_class)  # fmt: skip
            self.actors = [actor_class.remote(*init_args) for _ in range(self.workers)]
            setup = time.perf_counter()
            ray.get([actor.pid.remote() for actor in self.actors])  # every worker is set up
            print(f"{self.workers} Ray workers ready in {time.perf_counter() - setup:.1f} s", flush=True)
            pool = ActorPool(self.actors)
            start = time.perf_counter()
            for item in items:
                pool.submit(call, item)
            with tqdm(total=len(items), desc=f"{desc} on Ray ({self.workers} workers)", unit="image") as bar:
                while pool.has_next():
                    pool.get_next_unordered()
                    bar.update(1)
            seconds = time.perf_counter() - start
            self.rate = len(items) / max(seconds, 1e-9)
            print(f"{desc}: {len(items)} images on {self.workers} Ray workers in {seconds:.1f} s "
                  f"({self.rate:.2f} images/s, after the workers' set-up)", flush=True)
        finally:
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []
            if started_here:
                ray.shutdown()


def ray_masks(pool: RayPool, masks_config, data_dir: Path, image_paths: Sequence[Path],
              load_image: Callable[[int], np.ndarray], image_sizes: Sequence[Sequence[int]]):  # fmt: skip
    """``compute_missing`` for :meth:`segsplat_ns.masks.cache.MaskCache.load_or_compute`: parts by Ray actors."""

    def compute(todo: List[int], folder: Path) -> None:
        pool.map(MaskWorker, (masks_config, str(data_dir), pool.device), todo,
                 lambda actor, i: actor.compute.remote(i, load_image(i), str(image_paths[i]), list(image_sizes[i]),
                                                       str(folder)), desc="Masks")  # fmt: skip

    return compute


def ray_language(pool: RayPool, make_encoder: Callable[[], object], batch_size: int,
                 load_image: Callable[[int], np.ndarray], masks_for: Callable[[int], object]):  # fmt: skip
    """``compute_missing`` for :meth:`segsplat_ns.language.cache.LanguageCache.load_or_compute`: each image's record
    written by a Ray actor (one encoder per worker); the driver writes the manifest afterwards."""

    def compute(todo: List[int], folder: Path, stems: Sequence[str]) -> None:
        def call(actor, i):
            masks = masks_for(i)
            masks = masks.numpy() if hasattr(masks, "numpy") else np.asarray(masks)
            return actor.compute.remote(load_image(i), masks, stems[i], str(folder))

        pool.map(LanguageWorker, (make_encoder, batch_size), todo, call, desc="Language features")

    return compute
