"""`segsplat extract`: fill a dataset's mask cache before training, in this process or on a Ray cluster."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from segsplat_ns.datamanager import SegSplatDataManagerConfig


@dataclass
class Extract:
    """Compute the 2D masks (and, with --datamanager.language.source clip, the CLIP features) of every training
    image into the caches `ns-train` reads (the same files, byte for byte), here or on a Ray cluster (one mask
    source / CLIP per worker, images handed out as workers free up). An interrupted extraction resumes where it
    stopped. 3D mask scales need the RGB splat: ns-train measures them at the stage switch, in seconds. Give the
    same --datamanager.* flags as the run's --pipeline.datamanager.* ones."""

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
        from functools import partial

        from segsplat_ns.distributed import RayPool, ray_language, ray_masks
        from segsplat_ns.language.encoders import LazyClipEncoder, resolve_clip_checkpoint

        config = self.datamanager
        config.data = Path(self.data)
        config.dataparser.data = Path(self.data)
        datamanager = config.setup(device="cpu", test_mode="val")
        paths, sizes = datamanager._train_paths_and_sizes()
        config.masks.check_available(datamanager.data_dir, paths)
        config.language.check_available(datamanager.data_dir)
        pool = RayPool(self.ray_address, self.workers, self.gpus_per_worker) if self.ray_address is not None else None
        start = time.perf_counter()
        masks_compute = None
        if pool is not None:
            masks_compute = ray_masks(pool, config.masks, datamanager.data_dir, paths, datamanager.train_image_uint8, sizes)
        masks = datamanager.load_train_masks(compute_missing=masks_compute)
        total = sum(int(masks.shapes[i][0]) for i in range(len(masks)))
        print(f"masks: {len(paths)} images, {total} masks in {datamanager.mask_cache_dir} "
              f"({time.perf_counter() - start:.1f} s)")
        if config.language.source == "clip":
            start = time.perf_counter()
            language_compute = None
            if pool is not None:
                make_encoder = partial(LazyClipEncoder, resolve_clip_checkpoint(config.language.clip_checkpoint),
                                       pool.device)  # fmt: skip
                language_compute = ray_language(pool, make_encoder, config.language.batch_size,
                                                datamanager.train_image_uint8, masks.__getitem__)  # fmt: skip
            datamanager.load_train_language(compute_missing=language_compute)
            print(f"CLIP features of {len(paths)} images in {datamanager.mask_cache_dir} "
                  f"({time.perf_counter() - start:.1f} s)")
        elif config.language.source != "none":
            print(f"language source {config.language.source}: nothing to extract (its features are read as they are)")
        print("ns-train with the same --pipeline.datamanager.* flags reuses these caches without recomputing")
        return 0
