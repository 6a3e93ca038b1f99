"""FullImageDatamanager plus 2D masks, their 3D scales and (when the dataset has them) ground-truth masks.

Masks come from a mask source through the on-disk cache; they are extracted when the feature stage begins
(after stage one, as GARField does), since their 3D scales need the RGB splat's depth anyway. Each training batch
then carries ``masks`` [M, H, W] (bool) and ``mask_scales`` [M] (quantile-normalised to [0, 1]) for its image,
looked up by ``camera.metadata["cam_idx"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.full_images_datamanager import (
    FullImageDatamanager,
    FullImageDatamanagerConfig,
)
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

from segsplat_ns.eval.ground_truth import GroundTruth, load_ground_truth
from segsplat_ns.masks.cache import MaskCache
from segsplat_ns.masks.sources import MaskSourceConfig


@dataclass
class SegSplatDataManagerConfig(FullImageDatamanagerConfig):
    """Full images plus cached 2D masks for segmentation training."""

    _target: Type = field(default_factory=lambda: SegSplatDataManager)
    dataparser: NerfstudioDataParserConfig = field(default_factory=lambda: NerfstudioDataParserConfig(load_3D_points=True))
    cache_images_type: Literal["uint8", "float32"] = "uint8"
    masks: MaskSourceConfig = field(default_factory=MaskSourceConfig)
    """Where the 2D multi-granularity masks come from (SAM, a folder of precomputed masks, or superpixels)."""
    cache_dir: Optional[Path] = None
    """Folder for the mask cache (default: <data>/segsplat_cache). Safe to delete: it is recomputed."""


class SegSplatDataManager(FullImageDatamanager):
    config: SegSplatDataManagerConfig

    def __init__(
        self,
        config: SegSplatDataManagerConfig,
        device: Union[torch.device, str] = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ):
        if torch.device(device).type == "cpu":
            # nerfstudio's "cpu" cache pins memory, which needs CUDA; its "gpu" cache means "on self.device"
            config.cache_images = "gpu"
        data = config.data if config.data is not None else config.dataparser.data
        if not Path(data).exists():
            raise FileNotFoundError(
                f"Dataset folder {data} does not exist. Pass --data <folder with transforms.json>, "
                "e.g. one made by `segsplat make-scene --output data/synthetic`."
            )
        super().__init__(config, device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank, **kwargs)
        self.train_masks: Optional[Sequence[torch.Tensor]] = None
        self.train_mask_scales: Optional[List[torch.Tensor]] = None
        self._eval_ground_truth: Optional[GroundTruth] = None
        self._eval_ground_truth_loaded = False

    @property
    def data_dir(self) -> Path:
        return Path(self.config.dataparser.data)

    @property
    def mask_cache_dir(self) -> Path:
        return self.config.cache_dir if self.config.cache_dir is not None else self.data_dir / "segsplat_cache"

    def train_image_uint8(self, index: int) -> np.ndarray:
        image = self.cached_train[index]["image"][..., :3]
        if image.dtype != torch.uint8:
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        return image.cpu().numpy()

    def load_train_masks(self) -> Sequence[torch.Tensor]:
        """2D masks of every training image, from the cache or the mask source (slow for SAM: progress bar)."""
        if self.train_masks is None:
            source = self.config.masks.setup(self.data_dir, device=str(self.device))
            cache = MaskCache(self.mask_cache_dir)
            paths = [Path(p) for p in self.train_dataset.image_filenames]
            sizes = [tuple(self.cached_train[i]["image"].shape[:2]) for i in range(len(paths))]
            # lazy: masks stay bit-packed in memory and one image is decoded per training step
            masks = cache.load_or_compute(source, paths, self.train_image_uint8, image_sizes=sizes, lazy=True)
            self.train_masks = masks
        return self.train_masks

    def set_mask_scales(self, scales: List[torch.Tensor]) -> None:
        """Quantile-normalised 3D scales, one [M_i] tensor per training image."""
        assert self.train_masks is not None and len(scales) == len(self.train_masks)
        self.train_mask_scales = scales

    @property
    def masks_ready(self) -> bool:
        return self.train_mask_scales is not None

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        camera, data = super().next_train(step)
        if self.train_mask_scales is not None:
            index = camera.metadata["cam_idx"]
            data["masks"] = self.train_masks[index]
            data["mask_scales"] = self.train_mask_scales[index]
        return camera, data

    def eval_ground_truth(self) -> Optional[GroundTruth]:
        """Per-view object/part id maps of the eval images, or None when the dataset has none."""
        if not self._eval_ground_truth_loaded:
            paths = [Path(p) for p in self.eval_dataset.image_filenames]
            sizes = [tuple(self.cached_eval[i]["image"].shape[:2]) for i in range(len(paths))]
            self._eval_ground_truth = load_ground_truth(self.data_dir, paths, sizes)
            self._eval_ground_truth_loaded = True
        return self._eval_ground_truth
