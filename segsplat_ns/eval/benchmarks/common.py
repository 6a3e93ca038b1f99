"""Types and file helpers shared by the public-benchmark readers.

Every reader returns a :class:`BenchmarkGroundTruth`: the ground-truth masks the eval scores against, each
with the prompt that selects it (clicks for NVOS / SPIn-NeRF, text for LERF-Mask / LERF-OVS), or, for
Replica, one instance-id map per view. Images are named by file stem, to be matched against the stems of
the run's images. Masks and points are in the pixel grid of the annotation files; when the run's images
are downscaled, the eval resizes masks (nearest) and scales points by the same factor (``prompt_size``
says which grid the points are in).

Bad input raises :class:`~segsplat_ns.eval.ground_truth.GroundTruthError` naming the file or folder and
what was expected there; a reader never returns a partial result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from PIL import Image

from segsplat_ns.eval.ground_truth import GroundTruthError
from segsplat_ns.eval.protocol import interior_point

Point = Tuple[int, int]  # (x, y) pixel
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class PromptedTarget:
    """One ground-truth mask and the prompt that should select it."""

    name: str  # target name (object, or prompt text)
    image: str  # stem of the image the ground-truth mask belongs to
    mask: np.ndarray  # bool [H, W] ground truth in that image
    positive_points: List[Point] = field(default_factory=list)  # (x, y) clicks, in the reference image
    negative_points: List[Point] = field(default_factory=list)
    reference_image: Optional[str] = None  # stem of the image the prompt is given in; None = ``image``
    text: Optional[str] = None  # text prompt (LERF-Mask, LERF-OVS)
    prompt_size: Optional[Tuple[int, int]] = None  # (H, W) of the grid the points are in; None = mask's
    boxes: Optional[np.ndarray] = None  # [K, 4] x1, y1, x2, y2 boxes of a text target (LERF-OVS localisation)

    @property
    def prompt_image(self) -> str:
        return self.reference_image if self.reference_image is not None else self.image


@dataclass
class BenchmarkGroundTruth:
    benchmark: str
    scene: str
    targets: List[PromptedTarget]
    instance_maps: Dict[str, np.ndarray] = field(default_factory=dict)  # image stem -> int id map (Replica)


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise GroundTruthError(f"missing folder {path}: expected {what}")
    return path


def image_files(folder: Path) -> List[Path]:
    """Image files of a folder, sorted by name (hidden files skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def read_array(path: Path, what: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except Exception as error:  # PIL raises several types for truncated or non-image files
        raise GroundTruthError(f"cannot read {path}: expected {what} ({error})") from error


def _single_channel(array: np.ndarray) -> np.ndarray:
    if array.ndim != 3:
        return array
    if array.shape[-1] <= 2:  # grey or grey + alpha
        return array[..., 0]
    return array[..., :3].max(axis=-1)  # colour-saved masks: on if any colour channel is; alpha ignored


def read_binary_mask(path: Path) -> np.ndarray:
    """Bool mask from a PNG. 0/1 label images (SPIn-NeRF) are read as they are; anything else is
    binarised with ``> 128`` on 0-255 values, Gaussian Grouping's rule for anti-aliased masks."""
    array = read_array(path, "a binary mask image")
    if array.dtype == np.bool_:
        return array if array.ndim == 2 else array.any(axis=-1)
    array = _single_channel(array)
    if array.ndim != 2:
        raise GroundTruthError(f"mask {path} has shape {array.shape}: expected an [H, W] or [H, W, C] image")
    threshold = 0 if array.max() <= 1 else 128
    return array > threshold


def read_scribble(path: Path) -> np.ndarray:
    """Bool scribble: every non-zero pixel (in any colour channel), as SA3D reads NVOS scribbles."""
    array = read_array(path, "a scribble image")
    array = _single_channel(array) if array.dtype != np.bool_ else array
    if array.ndim != 2:
        raise GroundTruthError(f"scribble {path} has shape {array.shape}: expected an [H, W] or [H, W, C] image")
    return array != 0


def spread_points(mask: np.ndarray, max_points: int) -> List[Point]:
    """Up to ``max_points`` (x, y) pixels of ``mask``, spread along it by farthest-point sampling.

    Deterministic: the first point is the pixel deepest inside the mask, each next one the mask pixel
    farthest from those chosen (ties: first in raster order). A scribble thus becomes clicks along its
    whole length instead of a clump.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) == 0 or max_points <= 0:
        return []
    pixels = np.stack([xs, ys], axis=1).astype(np.int64)
    start = interior_point(mask)
    chosen = [int(np.flatnonzero((pixels[:, 0] == start[0]) & (pixels[:, 1] == start[1]))[0])]
    distance = ((pixels - pixels[chosen[0]]) ** 2).sum(axis=1)
    while len(chosen) < min(max_points, len(pixels)):
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, ((pixels - pixels[nxt]) ** 2).sum(axis=1))
    return [(int(pixels[i, 0]), int(pixels[i, 1])) for i in chosen]


def scene_folder(root: Path, scene: Optional[str], what: str) -> Tuple[Path, str]:
    """``root/scene``, or ``root`` itself when no scene is given (the user pointed at the scene folder)."""
    root = Path(root)
    folder = root / scene if scene else root
    require_dir(folder, what)
    return folder, scene or folder.resolve().name


def one_file(files: Iterable[Path], folder: Path, what: str) -> Path:
    files = list(files)
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise GroundTruthError(f"{folder}: expected exactly one {what}, found {found}")
    return files[0]
