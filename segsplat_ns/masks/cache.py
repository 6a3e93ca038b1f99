"""On-disk mask cache: compact, keyed, atomic.

One file per (dataset, mask-source configuration): ``<cache_dir>/masks_<source>_<hash12>.bin``, where
``hash12`` is the first 12 hex digits of the sha256 of the key. The key is
``{"format", "source": source.cache_key(), "images": [{"name", "bytes", "sha256", "hw"}, ...]}``: names relative to
the images' common folder, file sizes and content hashes (an image replaced by another of the same size
invalidates the cache), and the H x W the masks are made at.

File layout (little-endian)::

    8 bytes   magic b"SSMASKS1"
    8 bytes   uint64 header length L
    L bytes   header, UTF-8 JSON: {"format": 1, "codec": "packbits-zlib", "key": <full key>,
              "payload_bytes": N, "payload_sha256": hex, "images": [{"shape": [M, H, W], "offset", "nbytes"}]}
    N bytes   payload: per image, zlib(np.packbits(masks.reshape(-1), bitorder="little"))

Size: bit-packing is 1 bit = 0.125 byte per mask pixel (a 1000 x 700 mask: 87.5 kB); zlib then shrinks
typical masks (large connected regions) a further ~10-50x. The raw ``bool`` tensors SAGA stores take 1 byte
per mask pixel.

Writes go to a temp file in the same folder, are fsynced, then ``os.replace``d over the target: a crash
leaves either the old file or the new one, never half a cache. On load the embedded key and the payload's
sha256 are checked; a mismatch or a corrupt file gives a :class:`MaskCacheWarning` saying what is wrong and
the masks are recomputed and the file rewritten. The cache only ever writes or replaces its own file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from segsplat_ns.io import atomic_open
from segsplat_ns.masks.sources import MaskSource, MaskSourceError

MAGIC = b"SSMASKS1"
FORMAT_VERSION = 1
CODEC = "packbits-zlib"
ZLIB_LEVEL = 1  # fast; mask bitplanes compress well even at level 1


class MaskCacheWarning(UserWarning):
    """A cache file was not used (different configuration, corrupt, unwritable); masks are recomputed."""


class CacheCorruptError(Exception):
    """A cache file failed its integrity checks (internal; reported as a warning)."""


# --------------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------------


def encode_masks(masks: Union[np.ndarray, torch.Tensor]) -> bytes:
    """``bool [M, H, W]`` -> compressed bit-packed bytes."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    bits = np.packbits(np.ascontiguousarray(masks, dtype=bool).reshape(-1), bitorder="little")
    return zlib.compress(bits.tobytes(), ZLIB_LEVEL)


def decode_masks(data: bytes, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`encode_masks`; raises :class:`CacheCorruptError` when the bytes do not fit ``shape``."""
    m, h, w = (int(s) for s in shape)
    n = m * h * w
    try:
        raw = zlib.decompress(data)
    except zlib.error as e:
        raise CacheCorruptError(f"compressed masks do not decompress ({e})") from e
    if len(raw) != (n + 7) // 8:
        raise CacheCorruptError(f"expected {(n + 7) // 8} packed bytes for masks {m}x{h}x{w}, found {len(raw)}")
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n, bitorder="little")
    return torch.from_numpy(bits.reshape(m, h, w).astype(bool))


def check_blob(data: bytes, shape: Sequence[int], name: str = "") -> None:
    """Raise :class:`CacheCorruptError` unless ``data`` decompresses to exactly the packed size of ``shape``
    (catches a header edited in place, which the payload's sha256 does not cover)."""
    m, h, w = (int(s) for s in shape)
    expected = (m * h * w + 7) // 8
    try:
        found = len(zlib.decompress(data))
    except zlib.error as e:
        raise CacheCorruptError(f"masks of {name or 'an image'} do not decompress ({e})") from e
    if found != expected:
        raise CacheCorruptError(f"masks of {name or 'an image'}: header says {m}x{h}x{w} ({expected} packed bytes), "
                                f"the payload holds {found}")


class PackedMasks(Sequence):
    """Masks of many images kept compressed in memory; indexing decodes one image's ``bool [M, H, W]``."""

    def __init__(self, blobs: List[bytes], shapes: List[Tuple[int, int, int]]):
        self.blobs = blobs
        self.shapes = [tuple(int(x) for x in s) for s in shapes]

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return decode_masks(self.blobs[i], self.shapes[i])

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.blobs)


# --------------------------------------------------------------------------------------------------
# file I/O
# --------------------------------------------------------------------------------------------------


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def key_hash(key: Dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(key).encode()).hexdigest()


def image_entries(image_paths: Sequence[Path], image_sizes: Sequence[Tuple[int, int]]) -> List[Dict[str, Any]]:
    """How a cache keys its image list: ``[{"name", "bytes", "sha256", "hw"}]``, names relative to the images' common
    folder (so a moved dataset stays valid), the file's size and the sha256 of its content (so a replaced image
    never reuses stale masks); size -1 and hash "" when the file cannot be read."""
    paths = [Path(p).absolute() for p in image_paths]
    root = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path(".")
    entries = []
    for p, hw in zip(paths, image_sizes):
        try:
            size = p.stat().st_size
            digest = file_sha256(p)
        except OSError:
            size, digest = -1, ""
        try:
            name = p.relative_to(root).as_posix()
        except ValueError:
            name = p.name
        entries.append({"name": name, "bytes": size, "sha256": digest, "hw": [int(hw[0]), int(hw[1])]})
    return entries


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to ``path`` atomically (see :func:`segsplat_ns.io.atomic_open`)."""
    with atomic_open(path) as handle:
        for chunk in chunks:
            handle.write(chunk)


def write_cache_file(path: Path, key: Dict[str, Any], blobs: List[bytes], shapes: List[Tuple[int, int, int]]) -> None:
    payload_sha = hashlib.sha256()
    images = []
    offset = 0
    for blob, shape in zip(blobs, shapes):
        payload_sha.update(blob)
        images.append({"shape": [int(s) for s in shape], "offset": offset, "nbytes": len(blob)})
        offset += len(blob)
    header = {"format": FORMAT_VERSION, "codec": CODEC, "key": key, "payload_bytes": offset,
              "payload_sha256": payload_sha.hexdigest(), "images": images}
    hbytes = json.dumps(header, sort_keys=True).encode()

    def chunks():
        yield MAGIC + struct.pack("<Q", len(hbytes))
        yield hbytes
        yield from blobs

    atomic_write(path, chunks())


# --------------------------------------------------------------------------------------------------
# per-image parts: what a computation in progress has finished
# --------------------------------------------------------------------------------------------------

PART_HEADER = struct.Struct("<4sIII")
PART_MAGIC = b"SSMP"


def parts_folder(path: Path) -> Path:
    """Where the per-image parts of the cache file ``path`` are kept while it is being computed."""
    return path.with_name(path.name + ".parts")


def part_file(folder: Path, index: int) -> Path:
    return Path(folder) / f"{index:06d}.part"


def write_part(folder: Path, index: int, masks: np.ndarray) -> Tuple[int, int, int]:
    """Image ``index``'s masks as one file, written atomically (by whichever process computed them)."""
    m, h, w = (int(s) for s in masks.shape)
    atomic_write(part_file(folder, index), [PART_HEADER.pack(PART_MAGIC, m, h, w), encode_masks(masks)])
    return m, h, w


def read_part(folder: Path, index: int, hw: Sequence[int]) -> Optional[Tuple[bytes, Tuple[int, int, int]]]:
    """``(blob, shape)`` of a finished part, or None when it is missing or does not check out (then recomputed)."""
    try:
        data = part_file(folder, index).read_bytes()
        magic, m, h, w = PART_HEADER.unpack_from(data)
        blob = data[PART_HEADER.size :]
        if magic != PART_MAGIC or [h, w] != [int(x) for x in hw]:
            return None
        check_blob(blob, (m, h, w))
    except (OSError, struct.error, CacheCorruptError):
        return None
    return blob, (m, h, w)


def image_masks(source: MaskSource, image: np.ndarray, image_path: Path, hw: Sequence[int]) -> np.ndarray:
    """One image's masks from a source, checked: ``bool [M, H, W]`` (the same in every process that computes it)."""
    masks = source.masks_for(image, image_path)
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    hw = tuple(int(s) for s in hw)
    if masks.ndim != 3 or tuple(masks.shape[1:]) != hw:
        raise MaskSourceError(
            f"Mask source {getattr(source, 'name', source)!r} returned masks of shape {tuple(masks.shape)} "
            f"for {image_path}; expected [M, {hw[0]}, {hw[1]}].")
    return masks.astype(bool, copy=False)


ComputeMissing = Callable[[List[int], Path], None]
"""Computes the masks of the given image indices and writes each as a part into the given folder."""


def read_cache_header(path: Path) -> Tuple[Dict[str, Any], int]:
    """Header dict and the payload's start offset; raises :class:`CacheCorruptError`."""
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) < 16 or head[:8] != MAGIC:
            raise CacheCorruptError("not a segsplat mask cache (bad magic or truncated header)")
        (hlen,) = struct.unpack("<Q", head[8:])
        if hlen > 1 << 31:
            raise CacheCorruptError(f"implausible header length {hlen}")
        hbytes = f.read(hlen)
    if len(hbytes) != hlen:
        raise CacheCorruptError("truncated header")
    try:
        header = json.loads(hbytes.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheCorruptError(f"header is not valid JSON ({e})") from e
    for field in ("format", "codec", "key", "payload_bytes", "payload_sha256", "images"):
        if field not in header:
            raise CacheCorruptError(f"header lacks {field!r}")
    if header["format"] != FORMAT_VERSION or header["codec"] != CODEC:
        raise CacheCorruptError(f"unsupported format {header['format']} / codec {header['codec']}")
    return header, 16 + hlen


def read_cache_payload(path: Path, header: Dict[str, Any], start: int) -> Tuple[List[bytes], List[Tuple[int, int, int]]]:
    """Per-image blobs and shapes, after checking the payload's length and sha256 (:class:`CacheCorruptError`)."""
    with open(path, "rb") as f:
        f.seek(start)
        payload = f.read()
    if len(payload) != header["payload_bytes"]:
        raise CacheCorruptError(f"payload is {len(payload)} bytes, header says {header['payload_bytes']} (truncated?)")
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise CacheCorruptError("payload sha256 does not match the header (bytes changed on disk)")
    blobs, shapes = [], []
    for im in header["images"]:
        o, n = int(im["offset"]), int(im["nbytes"])
        if o < 0 or o + n > len(payload) or len(im["shape"]) != 3:
            raise CacheCorruptError("image table out of range")
        blobs.append(payload[o:o + n])
        shapes.append(tuple(int(s) for s in im["shape"]))
    return blobs, shapes


# --------------------------------------------------------------------------------------------------
# key description
# --------------------------------------------------------------------------------------------------


def describe_key_difference(old: Dict[str, Any], new: Dict[str, Any], limit: int = 5) -> str:
    """Words for how two cache keys differ, e.g. ``source.points_per_side: 32 -> 16; 3 images added``."""
    diffs: List[str] = []
    if old.get("format") != new.get("format"):
        diffs.append(f"cache format {old.get('format')} -> {new.get('format')}")
    old_src, new_src = old.get("source", {}), new.get("source", {})
    if isinstance(old_src, dict) and isinstance(new_src, dict):
        for k in sorted(set(old_src) | set(new_src)):
            if old_src.get(k) != new_src.get(k):
                diffs.append(f"source.{k}: {old_src.get(k, '<unset>')!r} -> {new_src.get(k, '<unset>')!r}")
    elif old_src != new_src:
        diffs.append("mask source configuration")
    old_im = {d["name"]: d for d in old.get("images", [])}
    new_im = {d["name"]: d for d in new.get("images", [])}
    added = [n for n in new_im if n not in old_im]
    removed = [n for n in old_im if n not in new_im]
    if added:
        diffs.append(f"{len(added)} image(s) added (e.g. {added[0]})")
    if removed:
        diffs.append(f"{len(removed)} image(s) removed (e.g. {removed[0]})")
    for n, w in new_im.items():
        if n in old_im and old_im[n] != w:
            o = old_im[n]
            what = [f"{f} {o.get(f)} -> {w.get(f)}" for f in ("bytes", "hw") if o.get(f) != w.get(f)]
            if o.get("sha256") != w.get("sha256"):
                what.append("content changed")
            diffs.append(f"image {n}: " + ", ".join(what))
    if not diffs and [d["name"] for d in old.get("images", [])] != [d["name"] for d in new.get("images", [])]:
        diffs.append("image order")
    if not diffs:
        diffs.append("key differs")
    more = f" (and {len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


# --------------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------------


class MaskCache:
    """Masks of a dataset's images for one mask source, computed once and stored in ``cache_dir``."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)

    # -- key ----------------------------------------------------------------------------------------
    @staticmethod
    def make_key(source: MaskSource, image_paths: Sequence[Path], image_sizes: Sequence[Tuple[int, int]]) -> Dict[str, Any]:
        return {"format": FORMAT_VERSION, "source": source.cache_key(), "images": image_entries(image_paths, image_sizes)}

    def path_for(self, source: MaskSource, key: Dict[str, Any]) -> Path:
        name = re.sub(r"[^A-Za-z0-9_-]", "_", getattr(source, "name", "source") or "source")
        return self.cache_dir / f"masks_{name}_{key_hash(key)[:12]}.bin"

    # -- main entry ---------------------------------------------------------------------------------
    def load_or_compute(
        self,
        source: MaskSource,
        image_paths: List[Path],
        load_image: Callable[[int], np.ndarray],
        image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        lazy: bool = False,
        compute_missing: Optional[ComputeMissing] = None,
    ) -> Union[List[torch.Tensor], PackedMasks]:
        """Masks of every image, ``bool [M_i, H_i, W_i]``, from the cache when it is valid, else computed.

        ``load_image(i)`` returns image ``i`` as the mask source should see it (uint8 [H, W, 3]).
        ``image_sizes``: the (H, W) ``load_image`` will return, if known (spares loading every image just
        to build the key). ``lazy=True`` returns a :class:`PackedMasks` that keeps the masks compressed in
        memory and decodes one image per index (for datasets whose unpacked masks do not fit in RAM).

        Computing writes each image's masks as a part beside the cache file (``<file>.parts/``) as soon as it is
        done, and assembles the file from the parts at the end: an interrupted computation resumes where it
        stopped. ``compute_missing(indices, folder)`` computes the parts elsewhere (e.g. on a Ray cluster,
        ``segsplat extract``); by default they are computed here, one image after the other.
        """
        image_paths = [Path(p) for p in image_paths]
        if image_sizes is None:
            image_sizes = [tuple(np.asarray(load_image(i)).shape[:2]) for i in range(len(image_paths))]
        if len(image_sizes) != len(image_paths):
            raise ValueError(f"{len(image_sizes)} image sizes for {len(image_paths)} images")
        key = self.make_key(source, image_paths, image_sizes)
        path = self.path_for(source, key)

        loaded = self._try_load(path, key, source)
        if loaded is None:
            loaded = self._compute_by_parts(path, key, source, image_paths, load_image, image_sizes, compute_missing)
        if loaded is None:  # the cache folder is not writable: everything in memory, recomputed next time
            blobs, shapes = self._compute(source, image_paths, load_image, image_sizes)
        else:
            blobs, shapes = loaded
        packed = PackedMasks(blobs, shapes)
        return packed if lazy else [packed[i] for i in range(len(packed))]

    def _compute_by_parts(self, path: Path, key: Dict[str, Any], source: MaskSource, image_paths: List[Path],
                          load_image: Callable[[int], np.ndarray], image_sizes: Sequence[Tuple[int, int]],
                          compute_missing: Optional[ComputeMissing]):  # fmt: skip
        """Parts of the images not finished yet, then the cache file from all parts (written last, atomically), then
        the parts removed. None when the cache folder cannot be written (the caller computes in memory)."""
        folder = parts_folder(path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            warnings.warn(f"Could not write the mask cache {path} ({e}); continuing with the masks in memory, "
                          f"they will be recomputed next time.", MaskCacheWarning, stacklevel=3)
            return None
        hws = [[int(x) for x in hw] for hw in image_sizes]
        todo = [i for i in range(len(image_paths)) if read_part(folder, i, hws[i]) is None]
        if todo and len(todo) < len(image_paths):
            print(f"Masks: {len(image_paths) - len(todo)} of {len(image_paths)} images already computed in {folder}; "
                  f"computing the other {len(todo)}", flush=True)
        if todo:
            try:
                if compute_missing is None:
                    self._compute_parts_here(source, image_paths, load_image, hws, todo, folder)
                else:
                    compute_missing(todo, folder)
            except OSError as e:  # e.g. the disk is full: what is finished stays; the rest is done in memory
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
                warnings.warn(f"Could not write the mask cache {path} ({e}); continuing with the masks in memory, "
                              f"they will be recomputed next time.", MaskCacheWarning, stacklevel=3)
                return None
        parts = [read_part(folder, i, hws[i]) for i in range(len(image_paths))]
        missing = [str(image_paths[i]) for i, part in enumerate(parts) if part is None]
        if missing:
            raise MaskSourceError(f"masks of {len(missing)} image(s) were not computed (e.g. {missing[0]}); rerun: the "
                                  f"{len(image_paths) - len(missing)} finished ones in {folder} are kept")
        blobs = [part[0] for part in parts]  # type: ignore[index]
        shapes = [part[1] for part in parts]  # type: ignore[index]
        try:
            write_cache_file(path, key, blobs, shapes)
        except OSError as e:
            warnings.warn(f"Could not write the mask cache {path} ({e}); the parts in {folder} are kept.",
                          MaskCacheWarning, stacklevel=3)
            return blobs, shapes
        shutil.rmtree(folder, ignore_errors=True)
        return blobs, shapes

    @staticmethod
    def _compute_parts_here(source: MaskSource, image_paths: List[Path], load_image: Callable[[int], np.ndarray],
                            hws: Sequence[Sequence[int]], todo: List[int], folder: Path) -> None:  # fmt: skip
        from tqdm.auto import tqdm

        for i in tqdm(todo, desc=f"Masks ({getattr(source, 'name', 'source')})", unit="image"):
            write_part(folder, i, image_masks(source, load_image(i), image_paths[i], hws[i]))

    def _try_load(self, path: Path, key: Dict[str, Any], source: MaskSource):
        try:
            exists = path.exists()
        except OSError as e:  # an unreadable cache folder: recompute (and say so) rather than crash
            warnings.warn(f"Cannot look into the mask cache folder {self.cache_dir} ({e}); recomputing the masks. "
                          "Fix its permissions or pass --pipeline.datamanager.cache-dir FOLDER.",
                          MaskCacheWarning, stacklevel=3)
            return None
        if not exists:
            self._report_other_caches(path, key, source)
            return None
        try:
            header, start = read_cache_header(path)
            if _canonical(header["key"]) != _canonical(key):
                warnings.warn(
                    f"Mask cache {path} was made for a different configuration "
                    f"({describe_key_difference(header['key'], key)}); recomputing the masks and overwriting it.",
                    MaskCacheWarning, stacklevel=3)
                return None
            blobs, shapes = read_cache_payload(path, header, start)
            for (m, h, w), im in zip(shapes, key["images"]):
                if [h, w] != im["hw"]:
                    raise CacheCorruptError(f"masks of {im['name']} are {h}x{w}, the image is {im['hw'][0]}x{im['hw'][1]}")
            if len(shapes) != len(key["images"]):
                raise CacheCorruptError(f"{len(shapes)} images stored, {len(key['images'])} expected")
            for blob, shape, im in zip(blobs, shapes, key["images"]):
                check_blob(blob, shape, im["name"])  # the header's shapes are not under the payload's sha256
        except (CacheCorruptError, OSError) as e:
            warnings.warn(f"Mask cache {path} is corrupt or unreadable ({e}); recomputing the masks and "
                          f"overwriting it.", MaskCacheWarning, stacklevel=3)
            return None
        return blobs, shapes

    def _report_other_caches(self, path: Path, key: Dict[str, Any], source: MaskSource) -> None:
        """No cache for this key: if one for another configuration of the same source exists, say how it differs."""
        if not self.cache_dir.is_dir():
            return
        prefix = path.name.rsplit("_", 1)[0] + "_"
        others = sorted((p for p in self.cache_dir.glob(prefix + "*.bin") if p != path),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        if not others:
            return
        latest = others[0]
        try:
            header, _ = read_cache_header(latest)
            why = describe_key_difference(header["key"], key)
        except (CacheCorruptError, OSError) as e:
            why = f"its header is unreadable: {e}"
        warnings.warn(
            f"The mask cache {latest} does not match the current settings ({why}); computing new masks into "
            f"{path}. The old file is kept (delete it to free space).", MaskCacheWarning, stacklevel=4)

    @staticmethod
    def _compute(source: MaskSource, image_paths: List[Path], load_image: Callable[[int], np.ndarray],
                 image_sizes: Sequence[Tuple[int, int]]):
        from tqdm.auto import tqdm

        blobs: List[bytes] = []
        shapes: List[Tuple[int, int, int]] = []
        for i in tqdm(range(len(image_paths)), desc=f"Masks ({getattr(source, 'name', 'source')})", unit="image"):
            masks = image_masks(source, load_image(i), image_paths[i], image_sizes[i])
            blobs.append(encode_masks(masks))
            shapes.append(tuple(int(x) for x in masks.shape))
        return blobs, shapes
