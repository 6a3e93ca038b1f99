"""Language features (segsplat_ns.language): granularity levels, crops, the LangSplat file layout, the cache, the
clip source with a real ViT-B-16 network (random weights: shapes and plumbing, not meaning), and the offline error.

Runs in well under a minute on two CPU cores: the random-weight ViT-B-16 is built once per module and every
image is tiny.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from segsplat_ns.errors import SegsplatError
from segsplat_ns.language.cache import (
    MANIFEST,
    LanguageCache,
    LanguageCacheWarning,
    bytes_per_image,
    compute_record,
)
from segsplat_ns.language.encoders import ClipWeightsError, OpenClipEncoder, resolve_clip_checkpoint
from segsplat_ns.language.features import (
    LanguageRecord,
    LanguageSourceError,
    assign_levels,
    build_record,
    containment_matrix,
    index_maps_from_levels,
    masked_crop,
    pad_to_square,
    read_record,
    write_record,
)
from segsplat_ns.language.sources import FolderLanguageSource, LanguageSourceConfig

# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; one thread keeps the ViT-B-16 runs predictable
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clip_random(one_thread):
    return OpenClipEncoder.random_weights(seed=0)


class CountingEncoder:
    """Wraps an encoder and counts the crops it encodes."""

    def __init__(self, inner):
        self.inner = inner
        self.dim = inner.dim
        self.calls = []

    def identity(self):
        return self.inner.identity()

    def encode_images(self, crops):
        self.calls.append(len(crops))
        return self.inner.encode_images(crops)


class MeanColourEncoder:
    """A cheap deterministic 'encoder' for the cache tests: the crop's mean colour and brightness, normalised."""

    dim = 4

    def __init__(self, tag="mean-colour-v1", fail_after=None):
        self.tag = tag
        self.calls = 0
        self.fail_after = fail_after

    def identity(self):
        return {"model": self.tag}

    def encode_images(self, crops):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("encoder crashed")
        x = torch.from_numpy(np.asarray(crops)).float().mean(dim=(1, 2))
        x = torch.cat([x, torch.ones(len(crops), 1)], dim=1)
        return torch.nn.functional.normalize(x, dim=-1)


def tiny_dataset(root: Path):
    """Two 24 x 32 images, each with 2-3 masks (one nested), written as PNGs (the cache keys on their files)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images, masks, paths = [], [], []
    for k in range(2):
        img = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
        img[2:20, 2:14] = (200, 30, 30) if k == 0 else (30, 30, 200)
        m = np.zeros((3 - k, 24, 32), dtype=bool)
        m[0, 2:20, 2:14] = True  # whole
        m[1, 4:10, 4:10] = True  # inside it
        if k == 0:
            m[2, 5:15, 20:30] = True  # separate object
        path = root / "images" / f"frame_{k:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        images.append(img)
        masks.append(m)
        paths.append(path)
    return paths, images, masks


# --------------------------------------------------------------------------------------------------
# levels
# --------------------------------------------------------------------------------------------------


def nested_stack():
    """A hand-made 20 x 20 stack: A (left half) > B (its top half) > C (B's top-left corner); E inside A only;
    D on its own; F inside B except for one pixel (10 of 11 pixels inside: contained at 0.9)."""
    m = np.zeros((6, 20, 20), dtype=bool)
    m[0, :, :10] = True  # A: 200 px
    m[1, :10, :10] = True  # B: 100 px
    m[2, :5, :5] = True  # C: 25 px
    m[3, :6, 12:18] = True  # D: 36 px, isolated
    m[4, 12:16, 2:6] = True  # E: 16 px, inside A only
    m[5, 6, 0:10] = True  # F: 10 px inside B ...
    m[5, 6, 10] = True  # ... and 1 outside it (and outside A)
    return m


def test_containment_and_levels_on_a_nested_stack():
    m = nested_stack()
    c = containment_matrix(m)
    assert c[0, 1] and c[0, 2] and c[1, 2] and c[0, 4] and c[1, 5] and c[0, 5]
    assert not c[1, 0] and not c[2, 1] and not c[:, 3].any() and not c[3].any()
    assert not c[4].any() and not c[2].any()
    # A whole, B part (inside A, contains C and F), C subpart, D whole (nothing contains it), E and F subparts
    np.testing.assert_array_equal(assign_levels(m), [2, 1, 0, 2, 0, 0])
    # two identical masks nest (the first contains the second) instead of both being roots
    dup = np.stack([m[1], m[1]])
    np.testing.assert_array_equal(assign_levels(dup), [2, 0])
    # with a stricter threshold F (10/11 = 0.91 inside) is still contained, at 0.95 it is not
    assert containment_matrix(m, threshold=0.95)[1, 5] == False  # noqa: E712
    assert assign_levels(np.zeros((0, 4, 4), bool)).shape == (0,)


def test_index_maps_offsets_and_painting_order():
    m = nested_stack()
    levels = assign_levels(m)
    maps, order = index_maps_from_levels(m, levels)
    assert maps.dtype == np.int16 and maps.shape == (3, 20, 20)
    # feature rows: level s first (C 25 px, E 16 px, F 11 px: decreasing area), then m (B), then l (A 200, D 36)
    np.testing.assert_array_equal(order, [2, 4, 5, 1, 0, 3])
    s, mid, whole = maps
    assert s[0, 0] == 0 and s[13, 3] == 1 and s[6, 7] == 2 and s[6, 10] == 2 and s[19, 19] == -1
    assert (s[:5, :5] == 0).all() and s[8, 8] == -1  # B's pixels outside C, E, F: no subpart there
    assert (mid[:10, :10] == 3).all() and (mid[10:] == -1).all() and (mid[:, 10:] == -1).all()
    assert (whole[:, :10] == 4).all() and (whole[:6, 12:18] == 5).all() and whole[19, 19] == -1
    # a smaller mask of the same level overwrites a larger one it overlaps (largest painted first)
    two = np.zeros((2, 6, 6), bool)
    two[0] = True
    two[1, 1:3, 1:3] = True
    maps2, order2 = index_maps_from_levels(two, np.array([2, 2]))
    np.testing.assert_array_equal(order2, [0, 1])
    assert maps2[2, 1, 1] == 1 and maps2[2, 0, 0] == 0 and (maps2[:2] == -1).all()


# --------------------------------------------------------------------------------------------------
# crops
# --------------------------------------------------------------------------------------------------


def langsplat_pad_img(img):
    """LangSplat's preprocess.py ``pad_img``, verbatim in behaviour (the reference for our padding)."""
    h, w, _ = img.shape
    side = max(w, h)
    pad = np.zeros((side, side, 3), dtype=np.uint8)
    if h > w:
        pad[:, (h - w) // 2:(h - w) // 2 + w, :] = img
    else:
        pad[(w - h) // 2:(w - h) // 2 + h, :, :] = img
    return pad


def coord_image(h=10, w=20):
    """Pixel (y, x) has colour (y, x, 100 + y + x): every pixel is identifiable."""
    yy, xx = np.mgrid[:h, :w]
    return np.stack([yy, xx, 100 + yy + xx], axis=-1).astype(np.uint8)


def test_padding_matches_langsplat():
    rng = np.random.default_rng(1)
    for h, w in [(4, 8), (8, 4), (5, 2), (2, 5), (3, 3), (1, 6)]:
        img = rng.integers(1, 256, size=(h, w, 3), dtype=np.uint8)
        np.testing.assert_array_equal(pad_to_square(img), langsplat_pad_img(img))


def test_masked_crop_geometry_exact_pixels():
    img = coord_image()
    mask = np.zeros((10, 20), bool)
    mask[2:6, 3:11] = True  # a 4 x 8 box ...
    mask[3, 4] = False  # ... with a hole
    crop = masked_crop(img, mask, size=8)  # box 4 x 8 -> square 8 x 8, no resize: exact pixels
    assert crop.shape == (8, 8, 3) and crop.dtype == np.uint8
    assert (crop[:2] == 0).all() and (crop[6:] == 0).all()  # (8 - 4) // 2 = 2 black rows above, 2 below
    expected = img[2:6, 3:11].copy()
    expected[1, 1] = 0  # the hole is blacked out
    np.testing.assert_array_equal(crop[2:6], expected)

    # a tall 5 x 2 mask: (5 - 2) // 2 = 1 black column left, 2 right
    tall = np.zeros((10, 20), bool)
    tall[4:9, 15:17] = True
    crop = masked_crop(img, tall, size=5)
    assert (crop[:, 0] == 0).all() and (crop[:, 3:] == 0).all()
    np.testing.assert_array_equal(crop[:, 1:3], img[4:9, 15:17])

    # the tight box includes the mask's last row and column (LangSplat's XYWH slice drops them)
    corner = np.zeros((10, 20), bool)
    corner[9, 19] = True
    crop = masked_crop(img, corner, size=224)  # one pixel: a 224 x 224 square of its colour
    assert crop.shape == (224, 224, 3) and (crop == img[9, 19]).all()

    # resizing is cv2 INTER_LINEAR of the padded square, as LangSplat's cv2.resize(pad_img(seg_img), (224, 224))
    import cv2

    crop = masked_crop(img, mask)
    square = np.zeros((8, 8, 3), np.uint8)
    square[2:6] = expected
    np.testing.assert_array_equal(crop, cv2.resize(square, (224, 224)))
    assert (masked_crop(img, np.zeros((10, 20), bool)) == 0).all()


# --------------------------------------------------------------------------------------------------
# the record and its files
# --------------------------------------------------------------------------------------------------


def test_record_round_trip_and_layout(tmp_path):
    m = nested_stack()
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(6, 512)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    record = build_record(m, feats)
    s_path, f_path = write_record(tmp_path, "img_0001", record)
    assert s_path.name == "img_0001_s.npy" and f_path.name == "img_0001_f.npy"
    s, f = np.load(s_path), np.load(f_path)
    assert s.dtype == np.int16 and s.shape == (3, 20, 20) and s.min() == -1 and s.max() == 5
    assert f.dtype == np.float16 and f.shape == (6, 512)
    # row k of the features is the k-th mask of the concatenated level order; pixel -> its mask's feature
    np.testing.assert_allclose(f[s[0, 0, 0]].astype(np.float32), feats[2], atol=1e-3)  # C
    np.testing.assert_allclose(f[s[2, 19, 0]].astype(np.float32), feats[0], atol=1e-3)  # A
    back = read_record(tmp_path, "img_0001", expected_hw=(20, 20), expected_dim=512)
    np.testing.assert_array_equal(back.index_maps, record.index_maps)
    np.testing.assert_array_equal(back.features, record.features)
    dense, valid = back.level_features("m")
    assert valid.sum() == 100 and dense.shape == (20, 20, 512)
    np.testing.assert_array_equal(dense[0, 0], record.features[3])
    assert not list(tmp_path.glob(".*"))  # no temp files left

    with pytest.raises(LanguageSourceError, match="are 20x20, the image is 20x21"):
        read_record(tmp_path, "img_0001", expected_hw=(20, 21))
    with pytest.raises(LanguageSourceError, match="expected 256-d"):
        read_record(tmp_path, "img_0001", expected_dim=256)


def test_reads_langsplat_four_row_float32_files(tmp_path):
    """LangSplat's preprocess.py saves seg_maps float32 [4, H, W] (default, s, m, l) and features float32."""
    rows = np.full((4, 3, 4), -1, np.float32)
    rows[0, 0, 0] = 0  # default level: features 0..1
    rows[0, 1, 1] = 1
    rows[1, 0, :2] = 2  # s: offset by len(default) = 2
    rows[2, 2, 3] = 3  # m
    rows[3] = 4  # l
    feats = np.eye(5, 512, dtype=np.float32)
    np.save(tmp_path / "frame_s.npy", rows)
    np.save(tmp_path / "frame_f.npy", feats)
    rec = read_record(tmp_path, "frame", expected_hw=(3, 4), expected_dim=512)
    assert rec.index_maps.dtype == np.int16 and rec.index_maps.shape == (3, 3, 4)
    np.testing.assert_array_equal(rec.index_maps, rows[1:].astype(np.int16))
    assert rec.features.dtype == np.float16 and rec.features.shape == (5, 512)


@pytest.mark.parametrize("bad, match", [
    ("s_shape", r"frame_s\.npy.*expected \[3, H, W\]"),
    ("index_range", r"frame_s\.npy.*indices .*there are 2 features"),
    ("f_shape", r"frame_f\.npy.*expected float \[M, D\]"),
    ("garbage", r"frame_s\.npy.*not a readable \.npy"),
    ("missing", r"Missing language features .*frame_f\.npy"),
])
def test_malformed_files_name_the_file(tmp_path, bad, match):
    s = np.full((3, 4, 4), -1, np.int16)
    s[0, 0, 0] = 1
    f = np.zeros((2, 512), np.float16)
    if bad == "s_shape":
        s = s[:2]
    elif bad == "index_range":
        s[1, 1, 1] = 7
    elif bad == "f_shape":
        f = f[0]
    np.save(tmp_path / "frame_s.npy", s)
    if bad != "missing":
        np.save(tmp_path / "frame_f.npy", f)
    if bad == "garbage":
        (tmp_path / "frame_s.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(LanguageSourceError, match=match) as e:
        read_record(tmp_path, "frame")
    assert isinstance(e.value, SegsplatError)


# --------------------------------------------------------------------------------------------------
# the cache (cheap deterministic encoder)
# --------------------------------------------------------------------------------------------------


def _load(cache_dir, data, encoder, masks_key="masks-v1"):
    paths, images, masks = data
    return LanguageCache(cache_dir).load_or_compute(
        encoder, paths, lambda i: images[i], lambda i: masks[i], masks_key, image_sizes=[(24, 32)] * len(paths))


def test_cache_round_trip_and_reuse(tmp_path):
    data = tiny_dataset(tmp_path)
    enc = MeanColourEncoder()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LanguageCacheWarning)
        first = _load(tmp_path / "cache", data, enc)
        assert enc.calls == 2  # one batch per image
        second = _load(tmp_path / "cache", data, enc)
    assert enc.calls == 2  # reused, nothing encoded
    assert second.folder == first.folder and first.folder.name.startswith("language_clip_")
    manifest = json.loads((first.folder / MANIFEST).read_text())
    assert [e["stem"] for e in manifest["images"]] == ["frame_000", "frame_001"]
    for i, n in enumerate((3, 2)):
        a, b = first[i], second[i]
        assert a.num_masks == n and a.index_maps.shape == (3, 24, 32)
        np.testing.assert_array_equal(a.features, b.features)
    # the nested pair: the inner mask is a subpart, the outer a whole; the separate object is a whole
    rec = second[0]
    assert rec.index_maps[0, 5, 5] >= 0 and rec.index_maps[2, 5, 5] >= 0 and rec.index_maps[1].max() == -1
    assert rec.index_maps[2, 10, 25] >= 0 and rec.index_maps[0, 10, 25] == -1
    # the cache folder is a valid `folder` source as it is
    again = FolderLanguageSource(first.folder).load(data[0], [(24, 32)] * 2)
    np.testing.assert_array_equal(again[1].index_maps, first[1].index_maps)


def test_stale_configuration_is_recomputed_with_a_warning(tmp_path):
    data = tiny_dataset(tmp_path)
    enc = MeanColourEncoder()
    old = _load(tmp_path / "cache", data, enc, masks_key={"source": "classical", "levels": [8, 32, 128]})
    with pytest.warns(LanguageCacheWarning, match=r"does not match the current settings \(masks\.levels"):
        new = _load(tmp_path / "cache", data, enc, masks_key={"source": "classical", "levels": [8, 32]})
    assert new.folder != old.folder and enc.calls == 4
    # a manifest whose key does not match its folder (copied by hand) is not trusted either
    manifest = json.loads((new.folder / MANIFEST).read_text())
    manifest["key"]["encoder"] = {"model": "something else"}
    (new.folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.warns(LanguageCacheWarning, match=r"different configuration \(encoder\.model"):
        _load(tmp_path / "cache", data, enc, masks_key={"source": "classical", "levels": [8, 32]})
    assert enc.calls == 6


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete", "manifest"])
def test_damaged_entries_are_recomputed_with_a_warning(tmp_path, damage):
    data = tiny_dataset(tmp_path)
    enc = MeanColourEncoder()
    good = _load(tmp_path / "cache", data, enc)
    reference = [good[i] for i in range(2)]
    s_path = good.folder / "frame_001_s.npy"
    if damage == "truncate":
        s_path.write_bytes(s_path.read_bytes()[:100])
        match, calls = r"1 image\(s\) damaged \(frame_001: frame_001_s\.npy is 100 bytes", 3
    elif damage == "garbage":
        raw = bytearray(s_path.read_bytes())
        raw[-5:] = bytes(b ^ 0x5A for b in raw[-5:])  # same length, different bytes
        s_path.write_bytes(bytes(raw))
        match, calls = r"frame_001: frame_001_s\.npy sha256 differs", 3
    elif damage == "delete":
        (good.folder / "frame_000_f.npy").unlink()
        match, calls = r"frame_000: frame_000_f\.npy is missing", 3
    else:
        (good.folder / MANIFEST).write_text("{not json")
        match, calls = r"manifest\.json is unreadable", 4
    with pytest.warns(LanguageCacheWarning, match=match):
        fixed = _load(tmp_path / "cache", data, enc)
    assert enc.calls == calls  # only the damaged image is recomputed (all of them for a broken manifest)
    for i in range(2):
        np.testing.assert_array_equal(fixed[i].index_maps, reference[i].index_maps)
        np.testing.assert_array_equal(fixed[i].features, reference[i].features)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LanguageCacheWarning)
        _load(tmp_path / "cache", data, enc)
    assert enc.calls == calls


def test_nothing_partial_after_an_exception(tmp_path, monkeypatch):
    data = tiny_dataset(tmp_path)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        _load(tmp_path / "cache", data, MeanColourEncoder(fail_after=1))  # image 0 written, image 1 fails
    (folder,) = list((tmp_path / "cache").iterdir())
    assert not (folder / MANIFEST).exists()  # an untrusted folder: no manifest
    assert sorted(p.name for p in folder.iterdir()) == ["frame_000_f.npy", "frame_000_s.npy"]  # complete files only

    # a write that dies half-way leaves no file behind (temp file + rename)
    real_save = np.save

    def dying_save(handle, array, allow_pickle=False):
        handle.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        write_record(tmp_path / "out", "x", LanguageRecord(np.full((3, 2, 2), -1, np.int16), np.zeros((0, 4), np.float16)))
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(np, "save", real_save)

    # the next run recomputes everything and succeeds without complaint
    enc = MeanColourEncoder()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LanguageCacheWarning)
        out = _load(tmp_path / "cache", data, enc)
    assert enc.calls == 2 and (out.folder / MANIFEST).is_file() and out[1].num_masks == 2


# --------------------------------------------------------------------------------------------------
# the clip source with a real ViT-B-16 (random weights)
# --------------------------------------------------------------------------------------------------


def test_clip_source_plumbing_with_random_vit_b16(tmp_path, clip_random):
    paths, images, masks = data = tiny_dataset(tmp_path)
    counting = CountingEncoder(clip_random)
    config = LanguageSourceConfig(source="clip", batch_size=2, device="cpu")
    kwargs = dict(load_image=lambda i: images[i], masks_for=lambda i: masks[i], masks_key={"source": "test"})
    features = config.load(tmp_path, paths, encoder=counting, **kwargs)
    assert counting.calls == [2, 1, 2]  # image 0: 3 crops in batches of 2; image 1: 2 crops
    assert features.folder.parent == tmp_path / "segsplat_cache"
    for i, n in enumerate((3, 2)):
        s_path, f_path = features.files(i)
        f = np.load(f_path)
        assert f.dtype == np.float16 and f.shape == (n, 512)
        np.testing.assert_allclose(np.linalg.norm(f.astype(np.float32), axis=1), 1.0, atol=2e-3)
        s = np.load(s_path)
        assert s.dtype == np.int16 and s.shape == (3, 24, 32) and s.max() == n - 1

    # batching gives the features of encoding one crop at a time (to fp16 tolerance)
    one_by_one = compute_record(images[0], masks[0], clip_random, batch_size=1)
    np.testing.assert_array_equal(one_by_one.index_maps, features[0].index_maps)
    np.testing.assert_allclose(one_by_one.features.astype(np.float32), features[0].features.astype(np.float32),
                               atol=2e-3)

    # a second load reuses the cache: no crop is encoded
    counting.calls.clear()
    again = config.load(tmp_path, paths, encoder=counting, **kwargs)
    assert counting.calls == []
    np.testing.assert_array_equal(again[1].features, features[1].features)

    # text goes through the bundled tokenizer (offline) into the same 512-d unit sphere
    text = clip_random.encode_text(["a red chair", "a blue mug"])
    assert text.shape == (2, 512)
    np.testing.assert_allclose(text.norm(dim=-1).numpy(), 1.0, atol=1e-5)

    # bytes per image: 128-byte .npy header + 3 x H x W int16 + M x 512 float16
    stats = bytes_per_image(features.folder)
    print("bytes per image:", json.dumps({k: v for k, v in stats.items() if k != "images"}))
    assert [r["s_bytes"] + r["f_bytes"] for r in stats["images"]] == features.bytes_per_image()
    assert features.bytes_per_image() == [128 + 3 * 24 * 32 * 2 + 128 + n * 512 * 2 for n in (3, 2)]
    del data


def test_language_source_none_and_folder(tmp_path):
    paths, images, masks = tiny_dataset(tmp_path)
    assert LanguageSourceConfig().load(tmp_path, paths, lambda i: images[i]) is None
    config = LanguageSourceConfig(source="folder")
    with pytest.raises(LanguageSourceError, match=r"language_features does not exist.*language\.folder PATH"):
        config.check_available(tmp_path)
    folder = tmp_path / "language_features"
    record = build_record(masks[0], np.eye(3, 512, dtype=np.float32))
    write_record(folder, "frame_000", record)
    with pytest.raises(LanguageSourceError, match=r"No language features for image frame_001\.png: expected .*frame_001_s\.npy"):
        config.load(tmp_path, paths, lambda i: images[i])
    write_record(folder, "frame_001", build_record(masks[1], np.eye(2, 512, dtype=np.float32)))
    loaded = config.load(tmp_path, paths, lambda i: images[i])
    np.testing.assert_array_equal(loaded[0].index_maps, record.index_maps)
    with pytest.raises(LanguageSourceError, match=r"frame_000_s\.npy are 24x32, the image is 12x16"):
        config.load(tmp_path, paths, lambda i: images[i], image_sizes=[(12, 16)] * 2)


# --------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------


def test_offline_without_weights_names_the_alternatives(tmp_path, monkeypatch):
    import open_clip.pretrained

    monkeypatch.setenv("SEGSPLAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SEGSPLAT_NO_DOWNLOAD", raising=False)
    attempts = []

    def offline(cfg, prefer_hf_hub=True, cache_dir=None):
        attempts.append(cache_dir)
        raise OSError("network is unreachable")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    with pytest.raises(ClipWeightsError) as e:
        LanguageSourceConfig(source="clip").check_available(tmp_path)
    msg = str(e.value)
    assert isinstance(e.value, SegsplatError) and attempts == [str(tmp_path / "cache" / "clip")]
    assert "--pipeline.datamanager.language.clip-checkpoint PATH" in msg and "language.source folder" in msg
    assert "network is unreachable" in msg

    with pytest.raises(ClipWeightsError, match=r"no file at .*nope\.bin.*source folder"):
        resolve_clip_checkpoint(tmp_path / "nope.bin")

    monkeypatch.setenv("SEGSPLAT_NO_DOWNLOAD", "1")
    with pytest.raises(ClipWeightsError, match="SEGSPLAT_NO_DOWNLOAD is set"):
        LanguageSourceConfig(source="clip").load(tmp_path, [], lambda i: None, image_sizes=[],
                                                 masks_for=lambda i: None, masks_key={})
    assert len(attempts) == 1

    # weights downloaded before (huggingface_hub's layout in the cache) are used without any download
    cached = (tmp_path / "cache" / "clip" / "models--laion--CLIP-ViT-B-16-laion2B-s34B-b88K" / "snapshots" / "abc"
              / "open_clip_pytorch_model.bin")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert resolve_clip_checkpoint() == cached

    # a checkpoint that is not one gives the same kind of error, naming the file
    with pytest.raises(ClipWeightsError, match=r"Could not load ViT-B-16 weights from .*open_clip_pytorch_model\.bin"):
        OpenClipEncoder.from_checkpoint(cached)


def test_real_clip_weights_rank_colours(tmp_path, one_thread):
    checkpoint = os.environ.get("SEGSPLAT_CLIP_CHECKPOINT")
    if not checkpoint:
        pytest.skip("set SEGSPLAT_CLIP_CHECKPOINT to a ViT-B-16 laion2b_s34b_b88k checkpoint "
                    "(open_clip_pytorch_model.bin) to run the real-weights check; no weights can be downloaded here")
    enc = OpenClipEncoder.from_checkpoint(Path(checkpoint))
    red = np.zeros((224, 224, 3), np.uint8)
    red[..., 0] = 220
    blue = np.zeros((224, 224, 3), np.uint8)
    blue[..., 2] = 220
    img = enc.encode_images(np.stack([red, blue]))
    txt = enc.encode_text(["a red square", "a blue square"])
    sims = img @ txt.T
    assert sims[0, 0] > sims[0, 1] and sims[1, 1] > sims[1, 0], sims
    # a red object's masked crop, through the whole clip path
    image = np.full((32, 48, 3), 128, np.uint8)
    image[4:28, 6:30] = (220, 20, 20)
    mask = np.zeros((1, 32, 48), bool)
    mask[0, 4:28, 6:30] = True
    rec = compute_record(image, mask, enc)
    feat = torch.from_numpy(rec.features.astype(np.float32))
    assert (feat @ txt.T)[0, 0] > (feat @ txt.T)[0, 1]



def test_product_path_reuses_a_valid_cache_without_building_clip(tmp_path):
    """`clip` with a checkpoint: the cache is keyed on the checkpoint's name and size, and the network is only
    built when something has to be encoded (here the 'checkpoint' is not loadable, and never loaded)."""
    from segsplat_ns.language.encoders import checkpoint_identity

    paths, images, masks = tiny_dataset(tmp_path)
    checkpoint = tmp_path / "open_clip_pytorch_model.bin"
    checkpoint.write_bytes(b"not really weights")
    class Padded(MeanColourEncoder):  # 512-d, like the network the lazy encoder stands for
        dim = 512

        def identity(self):
            return checkpoint_identity(checkpoint)

        def encode_images(self, crops):
            return torch.nn.functional.pad(super().encode_images(crops), (0, 508))

    enc = Padded()
    config = LanguageSourceConfig(source="clip", clip_checkpoint=checkpoint, device="cpu")
    kwargs = dict(load_image=lambda i: images[i], masks_for=lambda i: masks[i], masks_key={"source": "test"})
    made = config.load(tmp_path, paths, encoder=enc, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LanguageCacheWarning)
        reused = config.load(tmp_path, paths, **kwargs)
    assert reused.folder == made.folder and enc.calls == 2
    np.testing.assert_array_equal(reused[0].features, made[0].features)
    # once something must be encoded, the bad checkpoint is reported with its name
    with pytest.raises(ClipWeightsError, match=r"Could not load ViT-B-16 weights from .*open_clip_pytorch_model\.bin"):
        with pytest.warns(LanguageCacheWarning, match=r"masks\.source: 'test' -> 'other'"):
            config.load(tmp_path, paths, **{**kwargs, "masks_key": {"source": "other"}})
