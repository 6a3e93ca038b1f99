"""FullImageDatamanager plus 2D masks, their 3D scales, CLIP features and (when the dataset has them) ground truth.

Masks come from a mask source through the on-disk cache; they are extracted when the feature stage begins
(after stage one, as GARField does), since their 3D scales need the RGB splat's depth anyway. Each training batch
then carries ``masks`` [M, H, W] (bool) and ``mask_scales`` [M] (quantile-normalised to [0, 1]) for its image,
looked up by ``camera.metadata["cam_idx"]``. With a language source (``--pipeline.datamanager.language.source``)
each batch also carries ``language``: that image's per-level mask-index maps and per-mask CLIP features
(:class:`segsplat_ns.language.features.LanguageRecord`), loaded from their cache when the feature stage begins.
"""

from __future__ import annotations

import json
import os
import sys
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
from nerfstudio.utils.rich_utils import CONSOLE

from segsplat_ns.errors import InputError
from segsplat_ns.eval.ground_truth import GroundTruth, GroundTruthError, load_ground_truth
from segsplat_ns.language.sources import LanguageSourceConfig
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
    language: LanguageSourceConfig = field(default_factory=LanguageSourceConfig)
    """Per-mask CLIP features for text prompts: none, clip (on the masks above, cached) or a LangSplat-layout folder."""
    cache_dir: Optional[Path] = None
    """Folder for the mask and language caches (default: <data>/segsplat_cache). Safe to delete: it is recomputed."""


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
        # test_mode "val" is ns-train's (and segsplat extract's); any other loads a saved run (ns-eval, ns-viewer, ...)
        check_dataset(Path(data), run_command=None if test_mode == "val" else sys.argv)
        super().__init__(config, device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank, **kwargs)
        self.train_masks: Optional[Sequence[torch.Tensor]] = None
        self.train_language = None
        self._mask_source = None
        self.train_mask_scales: Optional[List[torch.Tensor]] = None
        self._eval_ground_truth: Optional[GroundTruth] = None
        self._eval_ground_truth_loaded = False

    @property
    def data_dir(self) -> Path:
        """The dataset's folder, also when --data names its transforms.json (nerfstudio accepts both)."""
        return dataset_root(self.config.dataparser.data)

    @property
    def mask_cache_dir(self) -> Path:
        return self.config.cache_dir if self.config.cache_dir is not None else self.data_dir / "segsplat_cache"

    def train_image_uint8(self, index: int) -> np.ndarray:
        image = self.cached_train[index]["image"][..., :3]
        if image.dtype != torch.uint8:
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        return image.cpu().numpy()

    def check_feature_inputs(self) -> None:
        """At start-up, before stage one: raise a :class:`SegsplatError` for anything the feature stage would
        fail on (mask files or SAM weights, an unwritable cache folder, malformed ground truth), so that a bad
        input never costs the RGB stage."""
        paths = [Path(p) for p in self.train_dataset.image_filenames]
        self.config.masks.check_available(self.data_dir, paths)
        check_writable_folder(self.mask_cache_dir, "--pipeline.datamanager.cache-dir")
        try:
            self.eval_ground_truth()  # GroundTruthError names the file
        except GroundTruthError as error:
            # ns-train's next step (ns-eval and segment skip the metrics with the bare line instead)
            what = " ".join(str(error).split())  # one line
            raise GroundTruthError(f"{what}: fix or regenerate it, or move {self.data_dir / 'gt'} aside to train "
                                   "without segmentation metrics") from None

    def load_train_masks(self, compute_missing=None) -> Sequence[torch.Tensor]:
        """2D masks of every training image, from the cache or the mask source (slow for SAM: progress bar);
        ``compute_missing``: where missing images are computed instead (``segsplat extract`` on Ray)."""
        if self.train_masks is None:
            cache = MaskCache(self.mask_cache_dir)
            paths, sizes = self._train_paths_and_sizes()
            # lazy: masks stay bit-packed in memory and one image is decoded per training step
            masks = cache.load_or_compute(self.mask_source(), paths, self.train_image_uint8, image_sizes=sizes, lazy=True,
                                          compute_missing=compute_missing)  # fmt: skip
            self.train_masks = masks
        return self.train_masks

    def use_mask_prompts(self, prompts: Sequence[np.ndarray]) -> None:
        """Prompt the mask source at these points, one float [K, 2] array per training image (before masks load)."""
        assert self.train_masks is None, "prompts must be set before the masks are extracted"
        paths, _ = self._train_paths_and_sizes()
        if len(prompts) != len(paths):
            raise ValueError(f"{len(prompts)} prompt sets for {len(paths)} training images")
        total = sum(int(np.asarray(p).shape[0]) for p in prompts)
        self._mask_source = self.mask_source().with_prompts({str(path): p for path, p in zip(paths, prompts)})
        CONSOLE.log(f"SAM prompted at {total} points over {len(paths)} images (depth-aware, "
                    f"{total / max(len(paths), 1):.0f} per image on average)")

    def mask_source(self):
        """The configured mask source, set up once."""
        if self._mask_source is None:
            self._mask_source = self.config.masks.setup(self.data_dir, device=str(self.device))
        return self._mask_source

    def _train_paths_and_sizes(self) -> Tuple[List[Path], List[Tuple[int, int]]]:
        paths = [Path(p) for p in self.train_dataset.image_filenames]
        sizes = [tuple(self.cached_train[i]["image"].shape[:2]) for i in range(len(paths))]
        return paths, sizes

    def load_train_language(self, compute_missing=None):
        """Per-image CLIP index maps and features of every training image (None with language source none), from
        their cache or computed (clip source: on this datamanager's masks; progress bar)."""
        language = self.config.language
        if self.train_language is None and language.source != "none":
            paths, sizes = self._train_paths_and_sizes()
            masks_for = masks_key = None
            if language.source == "clip":
                masks = self.load_train_masks()
                masks_key = self.mask_source().cache_key()

                def masks_for(index: int) -> torch.Tensor:
                    return masks[index]

            self.train_language = language.load(
                self.data_dir, paths, self.train_image_uint8, image_sizes=sizes, masks_for=masks_for,
                masks_key=masks_key, cache_dir=self.mask_cache_dir, compute_missing=compute_missing,
            )  # fmt: skip
        return self.train_language

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
            if self.train_language is not None:
                data["language"] = self.train_language[index]
        return camera, data

    def eval_ground_truth(self) -> Optional[GroundTruth]:
        """Per-view object/part id maps (and text prompts, where the dataset has them) of the eval images, or None
        when the dataset has none."""
        if not self._eval_ground_truth_loaded:
            paths = [Path(p) for p in self.eval_dataset.image_filenames]
            sizes = [tuple(self.cached_eval[i]["image"].shape[:2]) for i in range(len(paths))]
            self._eval_ground_truth = load_ground_truth(self.data_dir, paths, sizes)
            if self._eval_ground_truth is not None:
                from segsplat_ns.eval.benchmarks.lerf_ovs import load_text_ground_truth

                self._eval_ground_truth.text = load_text_ground_truth(self.data_dir, paths, sizes)
            self._eval_ground_truth_loaded = True
        return self._eval_ground_truth


MAKE_DATASET_HINT = ("make one with `ns-process-data images --data <your images> --output-dir <folder>` (COLMAP poses) "
                     "or try `segsplat make-scene --output data/synthetic`")


def dataset_root(data: Union[str, Path]) -> Path:
    """The dataset folder of a ``--data`` value: the folder itself, or the folder of a transforms.json given."""
    data = Path(data)
    return data.parent if data.suffix.lower() == ".json" else data


def check_dataset(data: Path, run_command: Optional[Sequence[str]] = None) -> None:
    """One clear line (naming ns-process-data) instead of the dataparser's traceback for a missing folder, a folder
    without transforms.json, a malformed transforms.json or one listing missing images. ``run_command``: the
    command line of a command that loads a saved run (ns-eval, ...), whose missing dataset needs another fix."""
    data = Path(data)
    if not data.exists():
        if run_command is not None:
            from segsplat_ns.run_paths import missing_dataset_message

            raise FileNotFoundError(missing_dataset_message(data, run_command))
        raise FileNotFoundError(f"Dataset folder {data} does not exist: pass --data <folder with transforms.json>, "
                                "e.g. one made by `segsplat make-scene --output data/synthetic`.")
    transforms = data if data.is_file() else data / "transforms.json"
    if data.is_file() and data.suffix.lower() != ".json":
        raise InputError(f"--data {data} is a file, not a dataset: pass the folder holding transforms.json")
    if not transforms.is_file():
        what = "is empty" if data.is_dir() and not any(data.iterdir()) else "has no transforms.json (camera poses)"
        raise InputError(f"--data {data} {what}: nerfstudio needs images plus a transforms.json; {MAKE_DATASET_HINT}.")
    try:
        meta = json.loads(transforms.read_text())
    except UnicodeDecodeError as error:
        raise InputError(f"{transforms} is not a text file ({error}); {MAKE_DATASET_HINT}.") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{transforms} is not valid JSON ({error}): fix or regenerate it ({MAKE_DATASET_HINT}).") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise InputError(f"{transforms} lists no frames (a non-empty \"frames\" list of {{\"file_path\", "
                         f"\"transform_matrix\"}} is needed): fix or regenerate it ({MAKE_DATASET_HINT}).")
    root = transforms.parent
    missing = []
    for index, frame in enumerate(frames):
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise InputError(f"{transforms}: frame {index} lacks \"file_path\" or \"transform_matrix\": fix or "
                             f"regenerate it ({MAKE_DATASET_HINT}).")
        path = Path(str(frame["file_path"]))
        found = (path if path.is_absolute() else root / path).exists() or any(root.glob(f"images_*/{path.name}"))
        if not found:  # (a downscaled copy, images_<n>/<name>, is what nerfstudio reads with --downscale-factor)
            missing.append(str(frame["file_path"]))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise InputError(f"{transforms} lists {missing[0]}{more}, which does not exist under {root}: restore the "
                         "image(s) or remove their frames from transforms.json.")


def check_writable_folder(folder: Path, option: str) -> None:
    """Create ``folder`` if needed and check a file can be written in it; else one line naming ``option``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".segsplat_write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        next(iter(folder.iterdir()), None)  # readable too
    except OSError as error:
        raise InputError(f"cannot write into {folder} ({error.strerror or error}): fix its permissions or pass "
                         f"{option} FOLDER") from None
