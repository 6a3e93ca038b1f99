"""On-disk cache of CLIP language features: keyed, atomic, verified, in LangSplat's file layout.

One folder per (dataset, configuration): ``<cache_dir>/language_clip_<hash12>/``, where ``hash12`` is the first
12 hex digits of the sha256 of the key ``{"format", "settings" (levels and crop rules), "encoder" (weights
identity), "masks" (the mask source's cache key), "images": [{"name", "bytes", "hw"}, ...]}``. Inside:

- ``<stem>_s.npy`` / ``<stem>_f.npy`` per image (int16 [3, H, W] / float16 [M, D], see ``features.py``), each
  file written atomically (temp file + fsync + rename);
- ``manifest.json``, written LAST: the full key and, per image, its stem and the size and sha256 of both files.

A folder without a manifest is never trusted (a crash mid-way leaves complete files but no manifest: they are
recomputed and overwritten on the next run). On load the key must match and every file's size and sha256 must
match the manifest; an image whose files are damaged or missing is recomputed with a
:class:`LanguageCacheWarning` naming it, the others are reused. A different configuration gets its own folder;
if one for another configuration exists, a warning says how the two differ (the old folder is kept).
The folder is a valid ``folder`` language source (``--pipeline.datamanager.language.folder``) as it is.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from segsplat_ns.io import atomic_open
from segsplat_ns.language.features import (
    CONTAINMENT,
    CROP_SIZE,
    LEVELS,
    LanguageRecord,
    LanguageSourceError,
    assign_levels,
    build_record,
    masked_crop,
    read_record,
    record_paths,
    write_record,
)
from segsplat_ns.masks.cache import file_sha256, image_entries, key_hash

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SETTINGS = {"levels": list(LEVELS), "level_rule": "nesting", "containment": CONTAINMENT, "crop_size": CROP_SIZE,
            "crop": "mask-blacked tight box, centred black pad, cv2 INTER_LINEAR", "version": 1}
"""Everything of the feature recipe besides the encoder and the masks; changing it invalidates the cache."""


class LanguageCacheWarning(UserWarning):
    """A cached language feature was not used (different configuration, damaged, unwritable); it is recomputed."""


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def entry_stems(image_paths: Sequence[Path]) -> List[str]:
    """File stem of each image's record: the image's stem (LangSplat's naming), made unique when two images
    share one (``<relative path with / as __>``)."""
    paths = [Path(p) for p in image_paths]
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    names = [e["name"] for e in image_entries(paths, [(0, 0)] * len(paths))]
    return [str(Path(n).with_suffix("")).replace("/", "__") for n in names]


def describe_key_difference(old: Dict[str, Any], new: Dict[str, Any], limit: int = 5) -> str:
    """Words for how two cache keys differ (``masks.points_per_side: 32 -> 16; 3 image(s) added``)."""
    diffs: List[str] = []
    for part in ("format", "settings", "encoder", "masks"):
        o, n = old.get(part), new.get(part)
        if o == n:
            continue
        if isinstance(o, dict) and isinstance(n, dict):
            for k in sorted(set(o) | set(n)):
                if o.get(k) != n.get(k):
                    diffs.append(f"{part}.{k}: {o.get(k, '<unset>')!r} -> {n.get(k, '<unset>')!r}")
        else:
            diffs.append(f"{part}: {o!r} -> {n!r}")
    old_im = {d["name"]: d for d in old.get("images", [])}
    new_im = {d["name"]: d for d in new.get("images", [])}
    added = [n for n in new_im if n not in old_im]
    removed = [n for n in old_im if n not in new_im]
    if added:
        diffs.append(f"{len(added)} image(s) added (e.g. {added[0]})")
    if removed:
        diffs.append(f"{len(removed)} image(s) removed (e.g. {removed[0]})")
    changed = [n for n in new_im if n in old_im and old_im[n] != new_im[n]]
    if changed:
        diffs.append(f"{len(changed)} image(s) changed (e.g. {changed[0]})")
    if not diffs:
        diffs.append("image order" if list(old_im) != list(new_im) else "key differs")
    more = f" (and {len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


# --------------------------------------------------------------------------------------------------
# the features of a dataset, read lazily
# --------------------------------------------------------------------------------------------------


class LanguageFeatureSet(Sequence):
    """Language records of a dataset's images, one pair of ``.npy`` files each, read (and validated) per index."""

    def __init__(self, folder: Path, stems: Sequence[str], image_sizes: Sequence[Tuple[int, int]],
                 dim: Optional[int] = None):
        self.folder = Path(folder)
        self.stems = list(stems)
        self.image_sizes = [tuple(int(x) for x in hw) for hw in image_sizes]
        self.dim = dim

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return read_record(self.folder, self.stems[i], expected_hw=self.image_sizes[i], expected_dim=self.dim)

    def files(self, i: int) -> Tuple[Path, Path]:
        return record_paths(self.folder, self.stems[i])

    def bytes_per_image(self) -> List[int]:
        """On-disk bytes of each image's two files (``_s.npy`` + ``_f.npy``)."""
        return [sum(p.stat().st_size for p in self.files(i)) for i in range(len(self))]


def bytes_per_image(folder: Path) -> Dict[str, Any]:
    """Measure a folder in the ``_s.npy`` / ``_f.npy`` layout: per-image bytes of both files, their mean, and the
    bytes per pixel of the index maps and per mask of the features (the issue asks for this measured)."""
    folder = Path(folder)
    rows = []
    for s_path in sorted(folder.glob("*_s.npy")):
        stem = s_path.name[: -len("_s.npy")]
        f_path = folder / f"{stem}_f.npy"
        if not f_path.is_file():
            continue
        s = np.load(s_path, mmap_mode="r")
        f = np.load(f_path, mmap_mode="r")
        rows.append({"stem": stem, "hw": list(s.shape[1:]), "masks": int(f.shape[0]),
                     "s_bytes": s_path.stat().st_size, "f_bytes": f_path.stat().st_size})
    total = [r["s_bytes"] + r["f_bytes"] for r in rows]
    pixels = sum(r["hw"][0] * r["hw"][1] for r in rows)
    masks = sum(r["masks"] for r in rows)
    return {
        "images": rows,
        "mean_bytes_per_image": float(np.mean(total)) if total else 0.0,
        "s_bytes_per_pixel": sum(r["s_bytes"] for r in rows) / pixels if pixels else 0.0,
        "f_bytes_per_mask": sum(r["f_bytes"] for r in rows) / masks if masks else 0.0,
    }


# --------------------------------------------------------------------------------------------------
# computing one image
# --------------------------------------------------------------------------------------------------


def compute_record(image: np.ndarray, masks: np.ndarray, encoder: Any, batch_size: int = 32) -> LanguageRecord:
    """Levels -> crops -> CLIP (``batch_size`` crops at a time) -> record, for one image and its masks."""
    from segsplat_ns.masks.sources import as_uint8_rgb

    image = as_uint8_rgb(image)
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise LanguageSourceError(f"masks of shape {tuple(masks.shape)} do not fit an image of {image.shape[:2]}")
    # a mask with no pixels has no crop; it is dropped (it could never be referenced by the index maps)
    masks = masks[masks.reshape(masks.shape[0], -1).any(axis=1)]
    levels = assign_levels(masks)
    dim = int(encoder.dim)
    feats = np.zeros((masks.shape[0], dim), dtype=np.float32)
    batch_size = max(1, int(batch_size))
    for start in range(0, masks.shape[0], batch_size):
        stop = min(start + batch_size, masks.shape[0])
        crops = np.stack([masked_crop(image, masks[i]) for i in range(start, stop)])
        feats[start:stop] = encoder.encode_images(crops).float().numpy()
    return build_record(masks, feats, levels)


# --------------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------------


class LanguageCache:
    """CLIP language features of a dataset's images, computed once and kept under ``cache_dir``."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)

    @staticmethod
    def make_key(encoder: Any, masks_key: Any, image_paths: Sequence[Path],
                 image_sizes: Sequence[Tuple[int, int]]) -> Dict[str, Any]:
        return {"format": FORMAT_VERSION, "settings": SETTINGS, "encoder": encoder.identity(), "masks": masks_key,
                "images": image_entries(image_paths, image_sizes)}

    def folder_for(self, key: Dict[str, Any]) -> Path:
        return self.cache_dir / f"language_clip_{key_hash(key)[:12]}"

    def load_or_compute(
        self,
        encoder: Any,
        image_paths: Sequence[Path],
        load_image: Callable[[int], np.ndarray],
        masks_for: Callable[[int], Any],
        masks_key: Any,
        image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        batch_size: int = 32,
        compute_missing: Optional[Callable[[List[int], Path, List[str]], None]] = None,
    ) -> LanguageFeatureSet:
        """Records of every image, from the cache when valid, else computed (and cached).

        ``load_image(i)``: image i, uint8 [H, W, 3]. ``masks_for(i)``: its masks, bool [M, H, W] (from the
        configured mask source, e.g. the mask cache's output). ``masks_key``: that mask source's cache key (the
        language cache is invalidated when the masks change). ``image_sizes``: the (H, W) of each image, if known.
        ``compute_missing(indices, folder, stems)``: writes those images' records elsewhere (e.g. Ray actors,
        ``segsplat extract``); the manifest is then written here, last.
        """
        image_paths = [Path(p) for p in image_paths]
        if image_sizes is None:
            image_sizes = [tuple(np.asarray(load_image(i)).shape[:2]) for i in range(len(image_paths))]
        image_sizes = [(int(h), int(w)) for h, w in image_sizes]
        if len(image_sizes) != len(image_paths):
            raise ValueError(f"{len(image_sizes)} image sizes for {len(image_paths)} images")
        key = self.make_key(encoder, masks_key, image_paths, image_sizes)
        folder = self.folder_for(key)
        stems = entry_stems(image_paths)
        todo = self._check(folder, key, stems)
        if todo:
            self._compute(folder, key, stems, todo, encoder, image_paths, load_image, masks_for, batch_size,
                          compute_missing)  # fmt: skip
        return LanguageFeatureSet(folder, stems, image_sizes, dim=int(encoder.dim))

    # -- validation ------------------------------------------------------------------------------------
    def _check(self, folder: Path, key: Dict[str, Any], stems: List[str]) -> List[int]:
        """Indices of the images to (re)compute; warns about anything found but not usable."""
        everything = list(range(len(stems)))
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            self._report_other_caches(folder, key)
            return everything
        try:
            manifest = json.loads(manifest_path.read_text())
            if not isinstance(manifest, dict) or not {"key", "images"} <= set(manifest):
                raise ValueError("it lacks 'key' or 'images'")
        except (OSError, ValueError, UnicodeDecodeError) as e:
            warnings.warn(f"Language feature cache {manifest_path} is unreadable ({e}); recomputing the features.",
                          LanguageCacheWarning, stacklevel=4)
            return everything
        if key_hash(manifest["key"]) != key_hash(key):
            warnings.warn(f"Language feature cache {folder} was made for a different configuration "
                          f"({describe_key_difference(manifest['key'], key)}); recomputing the features.",
                          LanguageCacheWarning, stacklevel=4)
            return everything
        entries = manifest["images"]
        if not isinstance(entries, list) or len(entries) != len(stems):
            warnings.warn(f"Language feature cache {manifest_path} lists {len(entries) if isinstance(entries, list) else '?'} "
                          f"images, {len(stems)} expected; recomputing the features.", LanguageCacheWarning, stacklevel=4)
            return everything
        damaged: List[Tuple[int, str]] = []
        for i, (stem, entry) in enumerate(zip(stems, entries)):
            why = self._entry_problem(folder, stem, entry)
            if why:
                damaged.append((i, why))
        if damaged:
            examples = "; ".join(f"{stems[i]}: {why}" for i, why in damaged[:3])
            more = f" (and {len(damaged) - 3} more)" if len(damaged) > 3 else ""
            warnings.warn(f"Language feature cache {folder}: {len(damaged)} image(s) damaged ({examples}{more}); "
                          f"recomputing those.", LanguageCacheWarning, stacklevel=4)
        return [i for i, _ in damaged]

    @staticmethod
    def _entry_problem(folder: Path, stem: str, entry: Any) -> str:
        if not isinstance(entry, dict) or entry.get("stem") != stem:
            return "manifest entry does not match the image"
        for path, field in zip(record_paths(folder, stem), ("s", "f")):
            expect = entry.get(field) or {}
            if not path.is_file():
                return f"{path.name} is missing"
            if path.stat().st_size != expect.get("bytes"):
                return f"{path.name} is {path.stat().st_size} bytes, the manifest says {expect.get('bytes')} (truncated?)"
            if file_sha256(path) != expect.get("sha256"):
                return f"{path.name} sha256 differs from the manifest (bytes changed on disk)"
        return ""

    def _report_other_caches(self, folder: Path, key: Dict[str, Any]) -> None:
        if not self.cache_dir.is_dir():
            return
        others = sorted((p for p in self.cache_dir.glob("language_clip_*") if p != folder and (p / MANIFEST).is_file()),
                        key=lambda p: (p / MANIFEST).stat().st_mtime, reverse=True)
        if not others:
            return
        latest = others[0]
        try:
            why = describe_key_difference(json.loads((latest / MANIFEST).read_text())["key"], key)
        except (OSError, ValueError, KeyError, TypeError) as e:
            why = f"its manifest is unreadable: {e}"
        warnings.warn(f"The language feature cache {latest} does not match the current settings ({why}); computing "
                      f"new features into {folder}. The old folder is kept (delete it to free space).",
                      LanguageCacheWarning, stacklevel=5)

    # -- computing -------------------------------------------------------------------------------------
    def _compute(self, folder: Path, key: Dict[str, Any], stems: List[str], todo: List[int], encoder: Any,
                 image_paths: List[Path], load_image: Callable[[int], np.ndarray], masks_for: Callable[[int], Any],
                 batch_size: int, compute_missing=None) -> None:
        from tqdm.auto import tqdm

        manifest_path = folder / MANIFEST
        old_entries: List[Any] = [None] * len(stems)
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
                if isinstance(manifest.get("key"), dict) and key_hash(manifest["key"]) == key_hash(key) and len(manifest.get("images", [])) == len(stems):
                    old_entries = list(manifest["images"])
            except (OSError, ValueError, UnicodeDecodeError, AttributeError):
                pass
            manifest_path.unlink()  # the folder is untrusted until the new manifest is written
        folder.mkdir(parents=True, exist_ok=True)
        todo_set = set(todo)
        entries = list(old_entries)
        if compute_missing is not None:
            compute_missing(list(todo), folder, list(stems))
        else:
            for i in tqdm(todo, desc="Language features (clip)", unit="image"):
                write_record(folder, stems[i], compute_record(load_image(i), masks_for(i), encoder, batch_size=batch_size))
        for i in todo:  # the manifest describes the files as they are on disk, whoever wrote them
            s_path, f_path = record_paths(folder, stems[i])
            if not (s_path.is_file() and f_path.is_file()):
                raise LanguageSourceError(f"the language features of {stems[i]} were not computed ({s_path}); rerun: "
                                          f"the finished images are kept")
            masks = int(np.load(f_path, mmap_mode="r", allow_pickle=False).shape[0])
            entries[i] = {"stem": stems[i], "masks": masks,
                          "s": {"bytes": s_path.stat().st_size, "sha256": file_sha256(s_path)},
                          "f": {"bytes": f_path.stat().st_size, "sha256": file_sha256(f_path)}}
        for i, e in enumerate(entries):
            if i not in todo_set and e is None:  # cannot happen with a consistent manifest; be safe
                raise LanguageSourceError(f"internal: no cache entry for image {stems[i]}")
        manifest = {"format": FORMAT_VERSION, "key": key, "images": entries}
        try:
            with atomic_open(manifest_path) as handle:
                handle.write(json.dumps(manifest, sort_keys=True, indent=1).encode())
        except OSError as e:
            warnings.warn(f"Could not write {manifest_path} ({e}); the features will be recomputed next time.",
                          LanguageCacheWarning, stacklevel=4)
