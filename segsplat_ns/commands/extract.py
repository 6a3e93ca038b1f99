"""`segsplat extract`: fill a dataset's mask cache before training, in this process or on a Ray cluster."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from segsplat_ns.datamanager import SegSplatDataManagerConfig


@dataclass
class Extract:
    """Compute the 2D masks of every training image into the cache `ns-train` reads (the same file, byte for byte),
    here or on a Ray cluster (one mask source per worker, images handed out as workers free up). An interrupted
    extraction resumes where it stopped. 3D mask scales need the RGB splat: ns-train measures them at the stage
    switch, in seconds. Give the same --datamanager.* flags as the run's --pipeline.datamanager.* ones."""

    data: Path
    """The dataset (the folder, or its transforms.json), as ns-train --data."""
    datamanager: SegSplatDataManagerConfig = field(default_factory=SegSplatDataManagerConfig)
    """The run's datamanager settings: mask source, cache folder, dataparser (the flags after --pipeline.)."""
    ray_address: Optional[str] = None
    """None: compute here, one image after the other. "local": start Ray on this machine with --workers CPUs;
    "auto" or "ray://host:10001": join a running cluster (segsplat_ns must be installed on its nodes)."""
    workers: int = 2
    """Ray workers (actors), each with its own mask source (one SAM load per worker)."""
    gpus_per_worker: float = 0.0
    """GPU share of each Ray worker (e.g. 0.5: two workers per GPU); 0: CPU workers."""

    def main(self) -> int:
        from segsplat_ns.distributed import RayExtraction
        from segsplat_ns.masks.cache import MaskCache

        config = self.datamanager
        config.data = Path(self.data)
        config.dataparser.data = Path(self.data)
        datamanager = config.setup(device="cpu", test_mode="val")
        paths, sizes = datamanager._train_paths_and_sizes()
        datamanager.config.masks.check_available(datamanager.data_dir, paths)
        compute = None
        if self.ray_address is not None:
            compute = RayExtraction(config.masks, datamanager.data_dir, paths, datamanager.train_image_uint8, sizes,
                                    address=self.ray_address, workers=self.workers,
                                    gpus_per_worker=self.gpus_per_worker)  # fmt: skip
        cache = MaskCache(datamanager.mask_cache_dir)
        start = time.perf_counter()
        masks = cache.load_or_compute(datamanager.mask_source(), paths, datamanager.train_image_uint8,
                                      image_sizes=sizes, lazy=True, compute_missing=compute)  # fmt: skip
        seconds = time.perf_counter() - start
        key = cache.make_key(datamanager.mask_source(), paths, sizes)
        path = cache.path_for(datamanager.mask_source(), key)
        total = sum(int(masks.shapes[i][0]) for i in range(len(masks)))
        print(f"{len(paths)} images, {total} masks in {path} ({seconds:.1f} s); ns-train with the same "
              f"--pipeline.datamanager.* flags reuses it")
        return 0
