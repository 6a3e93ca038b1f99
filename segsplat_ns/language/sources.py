"""Language feature sources: per-image CLIP features of multi-granularity masks (LangSplat / GAGS supervision).

- ``none``: no language features (the default; every method that does not answer text prompts).
- ``clip``: the masks of whatever mask source is configured (``--pipeline.datamanager.masks.*``), split into
  three granularity levels, one masked crop per mask encoded by open_clip ViT-B-16 (laion2b_s34b_b88k);
  cached under ``<data>/segsplat_cache/`` (see ``cache.py``).
- ``folder``: precomputed ``<stem>_s.npy`` / ``<stem>_f.npy`` files, e.g. from LangSplat's or GAGS's
  ``preprocess.py`` (``<data>/language_features``).

All user-facing failures raise :class:`LanguageSourceError` (a ``SegsplatError``) naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Tuple

import numpy as np

from segsplat_ns.language.cache import LanguageCache, LanguageFeatureSet, entry_stems
from segsplat_ns.language.encoders import CLI_PREFIX, ImageTextEncoder, LazyClipEncoder, resolve_clip_checkpoint
from segsplat_ns.language.features import LanguageSourceError, record_paths

CACHE_SUBDIR = "segsplat_cache"


@dataclass
class LanguageSourceConfig:
    """Where the per-pixel CLIP features that supervise language (text-prompt) segmentation come from."""

    source: Literal["none", "clip", "folder"] = "none"
    """none: no language features; clip: CLIP on the configured masks (cached); folder: precomputed LangSplat files."""
    folder: Optional[Path] = None
    """Folder source: <stem>_s.npy and <stem>_f.npy per image (default: <data>/language_features)."""
    clip_checkpoint: Optional[Path] = None
    """Clip source: ViT-B-16 laion2b_s34b_b88k checkpoint (default: $SEGSPLAT_CACHE/clip, downloaded once when online)."""
    batch_size: int = 32
    """Clip source: mask crops encoded at once; lower it if the GPU runs out of memory (does not change features)."""
    device: str = "auto"
    """Clip source: device CLIP runs on (auto: cuda when available, else cpu)."""

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def check_available(self, data_dir: Path, image_paths: Optional[Sequence[Path]] = None) -> None:
        """Raise :class:`LanguageSourceError` now (at start-up) if this source cannot deliver features."""
        if self.source == "clip":
            resolve_clip_checkpoint(self.clip_checkpoint)
        elif self.source == "folder":
            folder = self.folder_path(data_dir)
            source = FolderLanguageSource(folder)
            if image_paths is not None:
                source.check(image_paths)
        elif self.source != "none":
            raise LanguageSourceError(f"Unknown language source {self.source!r}; choose one of 'none', 'clip', 'folder'.")

    def folder_path(self, data_dir: Path) -> Path:
        return Path(self.folder) if self.folder is not None else _data_root(data_dir) / "language_features"

    def load(
        self,
        data_dir: Path,
        image_paths: Sequence[Path],
        load_image: Callable[[int], np.ndarray],
        image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        masks_for: Optional[Callable[[int], Any]] = None,
        masks_key: Any = None,
        encoder: Optional[ImageTextEncoder] = None,
        cache_dir: Optional[Path] = None,
        compute_missing: Optional[Callable] = None,
    ) -> Optional[LanguageFeatureSet]:
        """The language features of ``image_paths`` (None for source ``none``).

        ``masks_for(i)`` / ``masks_key``: the configured mask source's masks of image i and its cache key (clip
        source only). ``encoder``: use this encoder instead of building CLIP from ``clip_checkpoint`` (tests).
        ``cache_dir``: where the clip source caches (default ``<data>/segsplat_cache``, as the mask cache).
        ``compute_missing``: computes the clip source's missing records elsewhere (``segsplat extract`` on Ray).
        """
        if self.source == "none":
            return None
        if image_sizes is None:
            image_sizes = [tuple(np.asarray(load_image(i)).shape[:2]) for i in range(len(image_paths))]
        if self.source == "folder":
            return FolderLanguageSource(self.folder_path(data_dir)).load(image_paths, image_sizes)
        if self.source == "clip":
            if masks_for is None or masks_key is None:
                raise LanguageSourceError("The clip language source needs the masks of the configured mask source "
                                          "(masks_for and masks_key).")
            if encoder is None:
                # loaded on first use: a valid cache needs the checkpoint file but never builds the network
                encoder = LazyClipEncoder(resolve_clip_checkpoint(self.clip_checkpoint), device=self.resolved_device())
            cache = LanguageCache(Path(cache_dir) if cache_dir is not None else _data_root(data_dir) / CACHE_SUBDIR)
            return cache.load_or_compute(encoder, image_paths, load_image, masks_for, masks_key,
                                         image_sizes=image_sizes, batch_size=self.batch_size,
                                         compute_missing=compute_missing)  # fmt: skip
        raise LanguageSourceError(f"Unknown language source {self.source!r}; choose one of 'none', 'clip', 'folder'.")


def _data_root(data_dir: Path) -> Path:
    data_dir = Path(data_dir)
    return data_dir.parent if data_dir.is_file() else data_dir


class FolderLanguageSource:
    """Precomputed features: ``<folder>/<image stem>_s.npy`` and ``_f.npy`` (ours, or LangSplat's/GAGS's 4-row
    float32 files; see ``features.read_record``)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise LanguageSourceError(
                f"Language feature folder {self.folder} does not exist. The 'folder' language source expects, per "
                f"training image, {self.folder}/<image stem>_s.npy (index maps [3 or 4, H, W]) and <image stem>_f.npy "
                f"(CLIP features [M, 512]), as LangSplat's preprocess.py writes them. Point to it with "
                f"{CLI_PREFIX}.folder PATH, or use {CLI_PREFIX}.source clip to compute them from the masks.")

    def check(self, image_paths: Sequence[Path], image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> None:
        """Every image has both files, of plausible shapes (read through their headers only)."""
        stems = entry_stems(image_paths)
        for i, stem in enumerate(stems):
            s_path, f_path = record_paths(self.folder, stem)
            for path in (s_path, f_path):
                if not path.is_file():
                    raise LanguageSourceError(
                        f"No language features for image {Path(image_paths[i]).name}: expected {path}. The 'folder' "
                        f"language source needs <image stem>_s.npy and <image stem>_f.npy for every training image.")
            try:
                s = np.load(s_path, mmap_mode="r", allow_pickle=False)
                f = np.load(f_path, mmap_mode="r", allow_pickle=False)
            except Exception as e:  # noqa: BLE001
                raise LanguageSourceError(f"Malformed language features {s_path} / {f_path}: {e}.") from e
            if s.ndim != 3 or s.shape[0] not in (3, 4):
                raise LanguageSourceError(f"Malformed language features {s_path}: shape {tuple(s.shape)}; expected "
                                          f"[3, H, W] or LangSplat's [4, H, W].")
            if f.ndim != 2:
                raise LanguageSourceError(f"Malformed language features {f_path}: shape {tuple(f.shape)}; expected [M, D].")
            if image_sizes is not None and tuple(s.shape[1:]) != tuple(int(x) for x in image_sizes[i]):
                raise LanguageSourceError(
                    f"Language features {s_path} are {s.shape[1]}x{s.shape[2]}, the image is "
                    f"{int(image_sizes[i][0])}x{int(image_sizes[i][1])}. Regenerate them at the training images' "
                    f"resolution (LangSplat's preprocess.py downsizes images above 1080 rows unless given -r 1).")

    def load(self, image_paths: Sequence[Path], image_sizes: Sequence[Tuple[int, int]]) -> LanguageFeatureSet:
        self.check(image_paths, image_sizes)
        return LanguageFeatureSet(self.folder, entry_stems(image_paths), image_sizes)


def text_encoder_for(config: LanguageSourceConfig, data_dir: Path) -> ImageTextEncoder:
    """The text encoder whose space the source's image features live in: the synthetic scene's stand-in when the
    folder ships one (``text_encoder.json``), else CLIP ViT-B-16 (weights as for the clip source)."""
    from segsplat_ns.language.stand_in import StandInTextEncoder

    if config.source == "none":
        raise LanguageSourceError(
            f"Text prompts need language features, and this run has none ({CLI_PREFIX}.source none). Train with "
            f"{CLI_PREFIX}.source clip (CLIP on the masks) or {CLI_PREFIX}.source folder (precomputed LangSplat-layout "
            f"features; the synthetic scene ships a stand-in in <scene>/language_features), or give segsplat segment "
            f"/ eval-benchmark --language-folder <folder>.")
    if config.source == "folder" and StandInTextEncoder.present(config.folder_path(data_dir)):
        return StandInTextEncoder.from_folder(config.folder_path(data_dir))
    return LazyClipEncoder(resolve_clip_checkpoint(config.clip_checkpoint), device=config.resolved_device())
