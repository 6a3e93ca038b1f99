"""2D mask sources: one interface, three implementations.

Every source turns one RGB image into a stack of binary masks ``bool [M, H, W]`` at the image's
resolution. The masks may overlap and come at several granularities (SAM's "segment everything"
output is the model for this); the 3D scale of each mask (``scales.py``) tells the granularities apart.

- ``folder``: precomputed masks shipped with a dataset. Reads SAGA's layout,
  ``<data>/sam_masks/<image stem>.pt`` holding a bool/uint8 tensor ``[N, H, W]``, and the same array
  as ``.npy`` / ``.npz``.
- ``sam``: segment-anything's automatic mask generator with SAGA's settings. The checkpoint comes from
  a path, or from a per-user cache into which it is downloaded once when online.
- ``classical``: nested multi-scale superpixels from scikit-image. No weights, deterministic; every
  coarse segment is an exact union of finest-level segments.

All user-facing failures raise :class:`MaskSourceError` with a message that says what to do.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import numpy as np
import torch

from segsplat_ns.errors import SegsplatError
from segsplat_ns.io import atomic_open

# The option prefix under which ``MaskSourceConfig`` appears in ``ns-train`` (used in messages only).
CLI_PREFIX = "--pipeline.datamanager.masks"

SAM_CHECKPOINT_URLS: Dict[str, str] = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}
"""Official SAM checkpoints; the cache stores each under its URL's file name."""

MASK_FILE_SUFFIXES = (".pt", ".npy", ".npz")


class MaskSourceError(SegsplatError):
    """A mask source cannot produce masks; the message says why and what to do instead."""


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass
class MaskSourceConfig:
    """Where the 2D masks that supervise segmentation come from."""

    source: Literal["folder", "sam", "classical"] = "folder"
    """folder: precomputed sam_masks/<stem>.pt|.npy|.npz; sam: SAM automatic masks; classical: nested superpixels."""
    folder: Optional[Path] = None
    """Folder source: one bool [N, H, W] file per image, <image stem>.pt/.npy/.npz (default: <data>/sam_masks)."""
    sam_checkpoint: Optional[Path] = None
    """SAM source: checkpoint path (default: $SEGSPLAT_CACHE/sam/<official name>, downloaded once when online)."""
    sam_model_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"
    """SAM source: backbone of the checkpoint."""
    sam_points_per_side: int = 32
    """SAM source: prompt grid is points_per_side x points_per_side (SAGA: 32)."""
    sam_pred_iou_thresh: float = 0.88
    """SAM source: drop masks whose predicted IoU is below this (SAGA: 0.88)."""
    sam_box_nms_thresh: float = 0.7
    """SAM source: box IoU above which duplicate masks are suppressed (SAGA: 0.7)."""
    sam_stability_score_thresh: float = 0.95
    """SAM source: drop masks whose stability score is below this (SAGA: 0.95)."""
    sam_min_mask_region_area: int = 100
    """SAM source: remove disconnected regions and holes smaller than this many pixels (SAGA: 100)."""
    sam_points_per_batch: int = 64
    """SAM source: prompts decoded at once; lower it if the GPU runs out of memory (does not change the masks)."""
    classical_levels: Tuple[int, ...] = (8, 32, 128)
    """Classical source: superpixels per level, coarse to fine (SLIC, then merged: coarse = union of fine)."""
    classical_compactness: float = 10.0
    """Classical source: SLIC compactness (higher: squarer superpixels, lower: closer to colour edges)."""
    classical_min_mask_area: int = 100
    """Classical source: segments smaller than this many pixels (at full resolution) are not emitted."""
    classical_max_side: int = 1024
    """Classical source: images are segmented at most this large (long side) and the labels upsampled."""

    def setup(self, data_dir: Path, device: str = "cpu") -> "MaskSource":
        """Build the source. ``data_dir`` is the dataset root (a file such as transforms.json means its folder)."""
        data_dir = Path(data_dir)
        if data_dir.is_file():
            data_dir = data_dir.parent
        if self.source == "folder":
            folder = Path(self.folder) if self.folder is not None else data_dir / "sam_masks"
            return FolderMaskSource(folder)
        if self.source == "sam":
            checkpoint = resolve_sam_checkpoint(self.sam_model_type, self.sam_checkpoint)
            return SamMaskSource.from_checkpoint(
                checkpoint, model_type=self.sam_model_type, device=device, **self._sam_params()
            )
        if self.source == "classical":
            return ClassicalMaskSource(
                levels=self.classical_levels,
                compactness=self.classical_compactness,
                min_mask_area=self.classical_min_mask_area,
                max_side=self.classical_max_side,
            )
        raise MaskSourceError(f"Unknown mask source {self.source!r}; choose one of 'folder', 'sam', 'classical'.")

    def check_available(self, data_dir: Path, image_paths: Optional[List[Path]] = None) -> None:
        """Raise MaskSourceError now (at start-up) if this source cannot produce masks, not after stage one:
        folder: every training image (``image_paths``) has a readable [N, H, W] mask file; sam: the checkpoint
        exists and holds weights torch can load (read lazily, without loading the model)."""
        if self.source == "folder":
            source = self.setup(data_dir)
            for image_path in image_paths or []:
                source.check_mask_file(source.mask_file_for(image_path))
        elif self.source == "sam":
            check_sam_checkpoint(resolve_sam_checkpoint(self.sam_model_type, self.sam_checkpoint), self.sam_model_type)
        elif self.source == "classical":
            self.setup(data_dir)  # checks classical_levels

    def _sam_params(self) -> Dict[str, Any]:
        return dict(
            points_per_side=self.sam_points_per_side,
            pred_iou_thresh=self.sam_pred_iou_thresh,
            box_nms_thresh=self.sam_box_nms_thresh,
            stability_score_thresh=self.sam_stability_score_thresh,
            min_mask_region_area=self.sam_min_mask_region_area,
            points_per_batch=self.sam_points_per_batch,
        )


# --------------------------------------------------------------------------------------------------
# Base
# --------------------------------------------------------------------------------------------------


class MaskSource:
    """Turns one image into a stack of binary masks ``bool [M, H, W]`` (M may be 0)."""

    name: str = "base"
    """Short identifier, used in cache file names."""
    accepts_prompts: bool = False
    """Whether :meth:`with_prompts` can place the prompt points per image (SAM's automatic generator)."""

    def cache_key(self) -> Dict[str, Any]:
        """JSON-able description of everything that changes the output (the mask cache is keyed on it)."""
        raise NotImplementedError

    def with_prompts(self, prompts: Dict[str, np.ndarray]) -> "MaskSource":
        """This source prompted at given points per image (``str(image path)`` -> float ``[K, 2]`` (x, y) in
        [0, 1]) instead of its own grid. Only sources with ``accepts_prompts``."""
        raise MaskSourceError(f"the {self.name} mask source takes no prompt points (only sam does)")

    def masks_for(self, image: np.ndarray, image_path: Path) -> np.ndarray:
        """Masks of one image. ``image``: uint8 ``[H, W, 3]`` (float in [0, 1], torch tensors, RGBA and
        grayscale are accepted too). Returns ``bool [M, H, W]`` at the image's resolution."""
        raise NotImplementedError


def as_uint8_rgb(image: Any) -> np.ndarray:
    """Normalise an image to a contiguous uint8 ``[H, W, 3]`` array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise MaskSourceError(f"Expected an image [H, W, 3], got an array of shape {tuple(image.shape)}.")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    elif image.shape[2] != 3:
        raise MaskSourceError(f"Expected an image [H, W, 3], got an array of shape {tuple(image.shape)}.")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating):
            image = np.clip(np.round(image * 255.0), 0, 255)
        image = np.clip(image, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def _resize_masks_nearest(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of ``bool [M, h, w]`` to ``[M, height, width]`` (torch's 'nearest' rule)."""
    m, h, w = masks.shape
    if (h, w) == (height, width):
        return masks
    if m == 0:
        return np.zeros((0, height, width), dtype=bool)
    t = torch.from_numpy(np.ascontiguousarray(masks)).to(torch.uint8)[None]
    out = torch.nn.functional.interpolate(t, size=(height, width), mode="nearest")[0]
    return out.numpy().astype(bool)


# --------------------------------------------------------------------------------------------------
# folder
# --------------------------------------------------------------------------------------------------


class FolderMaskSource(MaskSource):
    """Precomputed masks: ``<folder>/<image stem>.pt`` (SAGA's sam_masks layout), ``.npy`` or ``.npz``.

    Each file holds one array ``[N, H, W]`` (bool, or integers where nonzero means inside; float arrays
    are thresholded at 0.5). A ``.npz`` holds it under the key ``masks`` or as its only array. Masks of a
    different size than the image are resized with nearest-neighbour sampling.
    """

    name = "folder"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MaskSourceError(
                f"Mask folder {self.folder} does not exist. The 'folder' mask source expects one file per "
                f"training image, {self.folder}/<image stem>.pt (a bool tensor [N, H, W], as SAGA's "
                f"extract_segment_everything_masks.py writes) or .npy/.npz of the same array. Point to it with "
                f"{CLI_PREFIX}.folder PATH, or use {CLI_PREFIX}.source sam (SAM automatic masks) or "
                f"{CLI_PREFIX}.source classical (weight-free superpixels)."
            )

    def cache_key(self) -> Dict[str, Any]:
        # Name, size and mtime of every mask file: editing or replacing masks invalidates the cache.
        listing = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns)
            for p in self.folder.iterdir()
            if p.suffix.lower() in MASK_FILE_SUFFIXES and p.is_file()
        )
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        return {"source": "folder", "folder": str(self.folder.resolve()), "files_sha256": digest,
                "num_files": len(listing)}

    def mask_file_for(self, image_path: Path) -> Path:
        """The mask file of an image; raises :class:`MaskSourceError` naming the expected file if none exists."""
        image_path = Path(image_path)
        candidates = [self.folder / (image_path.stem + s) for s in MASK_FILE_SUFFIXES]
        candidates += [self.folder / (image_path.name + s) for s in MASK_FILE_SUFFIXES]
        for c in candidates:
            if c.is_file():
                return c
        raise MaskSourceError(
            f"No mask file for image {image_path.name}: expected {candidates[0]} (or {image_path.stem}.npy / "
            f".npz) in {self.folder}. The 'folder' mask source needs one file per training image, "
            f"<image stem>.pt holding a bool tensor [N, H, W] (SAGA's sam_masks layout)."
        )

    @classmethod
    def check_mask_file(cls, path: Path) -> None:
        """What :meth:`read_mask_file` checks, cheaply (.pt and .npy are memory-mapped, not read)."""
        cls.read_mask_file(path, lazy=True)

    @staticmethod
    def read_mask_file(path: Path, lazy: bool = False) -> np.ndarray:
        """Read one mask file as ``bool [N, H, W]``; raises :class:`MaskSourceError` naming the file if malformed.
        ``lazy``: map the file instead of reading it (checks only; the array returned is not converted)."""
        from segsplat_ns.compat.nerfstudio import load_error_summary, safe_torch_load

        path = Path(path)
        try:
            suffix = path.suffix.lower()
            if suffix == ".pt":
                try:
                    obj = safe_torch_load(path, mmap=lazy)
                except Exception as e:  # noqa: BLE001
                    raise ValueError(load_error_summary(e)) from e
                if not isinstance(obj, torch.Tensor):
                    raise ValueError(f"holds a {type(obj).__name__}, not a tensor")
                arr = obj.numpy()
            elif suffix == ".npy":
                arr = np.load(path, allow_pickle=False, mmap_mode="r" if lazy else None)
            elif suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    keys = list(z.keys())
                    if "masks" in keys:
                        arr = z["masks"]
                    elif len(keys) == 1:
                        arr = z[keys[0]]
                    else:
                        raise ValueError(f"has arrays {keys}; expected one array or one named 'masks'")
            else:
                raise ValueError(f"unsupported suffix {suffix!r}")
        except MaskSourceError:
            raise
        except Exception as e:  # noqa: BLE001 - any read failure is reported with the file name
            raise MaskSourceError(
                f"Malformed mask file {path}: {e}. Expected a bool or 0/1 array [N, H, W] saved with torch.save "
                f"(.pt) or numpy (.npy/.npz)."
            ) from e
        if arr.ndim != 3:
            raise MaskSourceError(
                f"Malformed mask file {path}: array of shape {tuple(arr.shape)}; expected [N, H, W] (N masks)."
            )
        if lazy and (arr.dtype == bool or np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            return arr
        if arr.dtype == bool:
            return arr
        if np.issubdtype(arr.dtype, np.integer):
            return arr != 0
        if np.issubdtype(arr.dtype, np.floating):
            return arr > 0.5
        raise MaskSourceError(f"Malformed mask file {path}: dtype {arr.dtype}; expected bool or 0/1 numbers.")

    def masks_for(self, image: np.ndarray, image_path: Path) -> np.ndarray:
        h, w = np.asarray(image).shape[:2] if not isinstance(image, torch.Tensor) else image.shape[:2]
        masks = self.read_mask_file(self.mask_file_for(image_path))
        return _resize_masks_nearest(masks, int(h), int(w))


# --------------------------------------------------------------------------------------------------
# sam
# --------------------------------------------------------------------------------------------------


def segsplat_cache_root() -> Path:
    """Per-user cache root: ``$SEGSPLAT_CACHE``, else ``$XDG_CACHE_HOME/segsplat_ns``, else ``~/.cache/segsplat_ns``."""
    env = os.environ.get("SEGSPLAT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "segsplat_ns"


def sam_cache_dir() -> Path:
    """Where SAM checkpoints are looked for and downloaded to: ``<cache root>/sam``."""
    return segsplat_cache_root() / "sam"


def download_file(url: str, dest: Path, timeout: float = 30.0) -> None:
    """Download ``url`` to ``dest`` with a progress bar; the file appears only when complete (atomic rename)."""
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(dest, suffix=".part") as f, urllib.request.urlopen(url, timeout=timeout) as r:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"Downloading {dest.name}") as bar:
            done = 0
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
        if total is not None and done != total:
            raise OSError(f"download truncated: got {done} of {total} bytes")


def _missing_checkpoint_error(model_type: str, expected: Path, reason: str) -> MaskSourceError:
    url = SAM_CHECKPOINT_URLS[model_type]
    return MaskSourceError(
        f"The SAM checkpoint for {model_type} is missing ({reason}). Either download {url} and put it at "
        f"{expected} (or anywhere, and pass {CLI_PREFIX}.sam-checkpoint PATH), or use a source that needs no "
        f"SAM weights: {CLI_PREFIX}.source folder for precomputed masks (<data>/sam_masks/<image stem>.pt), or "
        f"{CLI_PREFIX}.source classical for weight-free nested superpixels."
    )


def resolve_sam_checkpoint(model_type: str, checkpoint: Optional[Path] = None) -> Path:
    """Find the SAM checkpoint: the given path, else the cache, else download it once into the cache.

    Set ``SEGSPLAT_NO_DOWNLOAD=1`` to never try the network. Raises :class:`MaskSourceError` when no
    checkpoint can be had.
    """
    if model_type not in SAM_CHECKPOINT_URLS:
        raise MaskSourceError(f"Unknown SAM model type {model_type!r}; choose one of {sorted(SAM_CHECKPOINT_URLS)}.")
    if checkpoint is not None:
        checkpoint = Path(checkpoint).expanduser()
        if not checkpoint.is_file():
            raise _missing_checkpoint_error(model_type, checkpoint, f"no file at {checkpoint}")
        return checkpoint
    url = SAM_CHECKPOINT_URLS[model_type]
    cached = sam_cache_dir() / url.rsplit("/", 1)[-1]
    if cached.is_file():
        return cached
    if os.environ.get("SEGSPLAT_NO_DOWNLOAD", "") not in ("", "0"):
        raise _missing_checkpoint_error(model_type, cached, "not in the cache and SEGSPLAT_NO_DOWNLOAD is set")
    try:
        download_file(url, cached)
    except Exception as e:  # noqa: BLE001 - offline, proxy, disk full...: all end in the same advice
        raise _missing_checkpoint_error(model_type, cached, f"not in the cache and the download failed: {e}") from e
    return cached


def check_sam_checkpoint(checkpoint: Path, model_type: str) -> None:
    """Raise :class:`MaskSourceError` unless ``checkpoint`` holds loadable SAM weights (tensors memory-mapped,
    so this costs a fraction of a second, not the model's load)."""
    from segsplat_ns.compat.nerfstudio import load_error_summary, safe_torch_load

    try:
        state = safe_torch_load(checkpoint, mmap=True)
    except Exception as e:  # noqa: BLE001
        raise _bad_checkpoint_error(model_type, checkpoint, load_error_summary(e)) from None
    if not isinstance(state, dict) or not any(str(k).startswith("image_encoder.") for k in state):
        raise _bad_checkpoint_error(model_type, checkpoint, "it holds no SAM image_encoder weights")


def _bad_checkpoint_error(model_type: str, checkpoint: Path, why: str) -> MaskSourceError:
    return MaskSourceError(
        f"Could not load SAM {model_type} weights from {checkpoint}: {why}. Is it the {model_type} checkpoint "
        f"({SAM_CHECKPOINT_URLS[model_type]})? A partial download can be deleted and fetched again; or use "
        f"{CLI_PREFIX}.source classical (no weights)."
    )


class SamMaskSource(MaskSource):
    """segment-anything's ``SamAutomaticMaskGenerator`` (defaults: SAGA's settings, as in its authors' extraction script)."""

    name = "sam"
    accepts_prompts = True
    prompts: Optional[Dict[str, np.ndarray]] = None

    def __init__(self, model: Any, model_id: Dict[str, Any], **params: Any):
        """Prefer :meth:`from_checkpoint` / :meth:`from_model`. ``params`` go to the generator."""
        from segment_anything import SamAutomaticMaskGenerator  # lazy: heavy import

        defaults = dict(points_per_side=32, pred_iou_thresh=0.88, box_nms_thresh=0.7, stability_score_thresh=0.95,
                        min_mask_region_area=100, points_per_batch=64)
        defaults.update(params)
        self.params = defaults
        self.model = model
        self.model_id = model_id
        self.generator = SamAutomaticMaskGenerator(model=model, crop_n_layers=0, output_mode="binary_mask",
                                                   **defaults)

    @classmethod
    def from_checkpoint(cls, checkpoint: Path, model_type: str = "vit_h", device: str = "cpu",
                        **params: Any) -> "SamMaskSource":
        """Build ``sam_model_registry[model_type]`` and load the weights from ``checkpoint``."""
        from segment_anything import sam_model_registry

        checkpoint = Path(checkpoint)
        model = sam_model_registry[model_type](checkpoint=None)
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as e:  # noqa: BLE001
            from segsplat_ns.compat.nerfstudio import load_error_summary

            raise _bad_checkpoint_error(model_type, checkpoint, load_error_summary(e)) from None
        model.to(device).eval()
        model_id = {"model_type": model_type, "checkpoint": checkpoint.name, "checkpoint_bytes": checkpoint.stat().st_size}
        return cls(model, model_id, **params)

    @classmethod
    def from_model(cls, model: Any, model_id: Optional[str] = None, **params: Any) -> "SamMaskSource":
        """Wrap an in-memory ``segment_anything.modeling.Sam`` (tests, custom weights). ``model_id`` names it
        in the cache key; by default it is a hash of the weights."""
        if model_id is None:
            h = hashlib.sha256()
            for k, v in sorted(model.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            model_id = "weights-sha256:" + h.hexdigest()
        model.eval()
        return cls(model, {"model": model_id}, **params)

    def cache_key(self) -> Dict[str, Any]:
        import segment_anything

        params = {k: v for k, v in self.params.items() if k != "points_per_batch"}  # does not change the output
        key = {"source": "sam", **self.model_id, **params, "crop_n_layers": 0,
               "segment_anything": getattr(segment_anything, "__version__", "1.0")}
        if self.prompts is not None:
            digest = hashlib.sha256()
            for name in sorted(self.prompts):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(self.prompts[name], dtype=np.float32).tobytes())
            key.update(points_per_side=None, prompt_points_sha256=digest.hexdigest())
        return key

    def with_prompts(self, prompts: Dict[str, np.ndarray]) -> "SamMaskSource":
        """The same model and settings, prompted per image at ``prompts[str(path)]`` (images not listed keep the
        regular grid); the cache key names the points."""
        import copy

        prompted = copy.copy(self)
        prompted.prompts = {str(k): np.asarray(v, dtype=np.float32).reshape(-1, 2) for k, v in prompts.items()}
        return prompted

    def masks_for(self, image: np.ndarray, image_path: Path) -> np.ndarray:
        image = as_uint8_rgb(image)
        h, w = image.shape[:2]
        grid = None if self.prompts is None else self.prompts.get(str(image_path))
        regular = self.generator.point_grids
        if grid is not None:  # the generator scales [0, 1] points by the image size (one crop layer)
            self.generator.point_grids = [grid.astype(np.float64)]
        try:
            records = self.generator.generate(image)
        finally:
            self.generator.point_grids = regular
        if not records:
            return np.zeros((0, h, w), dtype=bool)
        masks = np.stack([np.asarray(r["segmentation"], dtype=bool) for r in records])
        return _resize_masks_nearest(masks, h, w)


# --------------------------------------------------------------------------------------------------
# classical
# --------------------------------------------------------------------------------------------------


class ClassicalMaskSource(MaskSource):
    """Nested multi-scale superpixels (no weights, deterministic).

    The finest level is SLIC with ``levels[-1]`` segments on the image (downscaled to ``max_side``).
    Coarser levels come from greedy agglomeration on the region adjacency graph: the adjacent pair with
    the smallest Ward cost ``n_a n_b / (n_a + n_b) * ||mean_Lab_a - mean_Lab_b||^2`` is merged until the
    level has at most its target count. So each coarse segment is an exact union of finest segments.
    Every segment of every level at least ``min_mask_area`` pixels is emitted once (coarse to fine).
    """

    name = "classical"
    VERSION = 1  # bump when the algorithm changes: it is part of the cache key

    def __init__(self, levels: Tuple[int, ...] = (8, 32, 128), compactness: float = 10.0,
                 min_mask_area: int = 100, max_side: int = 1024):
        levels = tuple(int(n) for n in levels)
        if not levels or any(n < 1 for n in levels):
            raise MaskSourceError(f"classical_levels must be positive superpixel counts, got {levels}.")
        if list(levels) != sorted(levels):
            raise MaskSourceError(f"classical_levels go coarse to fine (increasing counts), got {levels}.")
        self.levels = levels
        self.compactness = float(compactness)
        self.min_mask_area = int(min_mask_area)
        self.max_side = int(max_side)

    def cache_key(self) -> Dict[str, Any]:
        import skimage

        return {"source": "classical", "version": self.VERSION, "levels": list(self.levels),
                "compactness": self.compactness, "min_mask_area": self.min_mask_area, "max_side": self.max_side,
                "skimage": skimage.__version__}

    def segment_levels(self, image: np.ndarray) -> List[np.ndarray]:
        """Label maps ``int32 [H, W]``, one per level, coarse to fine (labels are 0..n-1 within a level)."""
        from skimage.color import rgb2lab
        from skimage.segmentation import slic
        from skimage.transform import resize

        image = as_uint8_rgb(image)
        h, w = image.shape[:2]
        work = image
        factor = max(h, w) / self.max_side
        if factor > 1:
            size = (max(1, round(h / factor)), max(1, round(w / factor)))
            work = (resize(image, size, order=1, anti_aliasing=True, preserve_range=True)).astype(np.uint8)
        fine = slic(work, n_segments=self.levels[-1], compactness=self.compactness, start_label=0,
                    channel_axis=-1, enforce_connectivity=True)
        _, fine = np.unique(fine, return_inverse=True)
        fine = fine.reshape(work.shape[:2]).astype(np.int32)
        if fine.shape != (h, w):
            rows = np.minimum((np.arange(h) + 0.5) * fine.shape[0] / h, fine.shape[0] - 1).astype(np.int64)
            cols = np.minimum((np.arange(w) + 0.5) * fine.shape[1] / w, fine.shape[1] - 1).astype(np.int64)
            fine = fine[rows][:, cols]
            _, fine = np.unique(fine, return_inverse=True)  # a tiny segment may vanish in the upsampling
            fine = fine.reshape(h, w).astype(np.int32)
        lab = rgb2lab(image).reshape(-1, 3)
        maps = _agglomerate(fine, lab, self.levels[:-1])
        return [m[fine] for m in maps] + [fine]

    def masks_for(self, image: np.ndarray, image_path: Path) -> np.ndarray:
        levels = self.segment_levels(image)
        fine = levels[-1]
        h, w = fine.shape
        n_fine = int(fine.max()) + 1
        out: List[np.ndarray] = []
        seen = set()
        for labels in levels:
            # members of each segment, as the set of fine segments it unites (for de-duplication across levels)
            seg_of_fine = np.zeros(n_fine, dtype=np.int64)
            seg_of_fine[fine.reshape(-1)] = labels.reshape(-1)
            areas = np.bincount(labels.reshape(-1), minlength=int(labels.max()) + 1)
            for seg in range(areas.shape[0]):
                if areas[seg] < self.min_mask_area:
                    continue
                members = tuple(np.flatnonzero(seg_of_fine == seg).tolist())
                if members in seen:
                    continue
                seen.add(members)
                out.append(labels == seg)
        if not out:
            return np.zeros((0, h, w), dtype=bool)
        return np.stack(out)


def _agglomerate(fine: np.ndarray, lab: np.ndarray, targets: Tuple[int, ...]) -> List[np.ndarray]:
    """Greedy Ward merging of adjacent fine segments. Returns, for each target count (in the given
    coarse->fine order), an array mapping fine label -> consecutive coarse label."""
    n = int(fine.max()) + 1
    flat = fine.reshape(-1)
    count = np.bincount(flat, minlength=n).astype(np.float64)
    sums = np.stack([np.bincount(flat, weights=lab[:, c], minlength=n) for c in range(3)], axis=1)
    pairs = np.concatenate([
        np.stack([fine[:, :-1].reshape(-1), fine[:, 1:].reshape(-1)], 1),
        np.stack([fine[:-1, :].reshape(-1), fine[1:, :].reshape(-1)], 1),
    ])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    neighbours: List[set] = [set() for _ in range(n)]
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    parent = list(range(n))
    alive = [True] * n
    version = [0] * n

    def cost(a: int, b: int) -> float:
        d = sums[a] / count[a] - sums[b] / count[b]
        return float(count[a] * count[b] / (count[a] + count[b]) * (d @ d))

    heap = [(cost(a, b), a, b, 0, 0) for a, b in pairs.tolist()]
    heapq.heapify(heap)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def snapshot() -> np.ndarray:
        roots = np.array([find(i) for i in range(n)])
        _, labels = np.unique(roots, return_inverse=True)
        return labels.astype(np.int32)

    results: Dict[int, np.ndarray] = {}
    active = n
    for target in sorted(set(targets), reverse=True):
        while active > target and heap:
            _, a, b, va, vb = heapq.heappop(heap)
            if not (alive[a] and alive[b]) or version[a] != va or version[b] != vb:
                continue
            keep, gone = min(a, b), max(a, b)
            parent[gone] = keep
            alive[gone] = False
            count[keep] += count[gone]
            sums[keep] += sums[gone]
            version[keep] += 1
            neighbours[keep] |= neighbours[gone]
            neighbours[keep] -= {keep, gone}
            for c in neighbours[gone]:
                if c != keep:
                    neighbours[c].discard(gone)
                    neighbours[c].add(keep)
            neighbours[gone] = set()
            for c in sorted(neighbours[keep]):
                lo, hi = min(keep, c), max(keep, c)
                heapq.heappush(heap, (cost(lo, hi), lo, hi, version[lo], version[hi]))
            active -= 1
        results[target] = snapshot()
    return [results[t] for t in targets]
