"""Mask sources, 3D mask scales, and the mask cache (CPU only, no network, no weights)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from segsplat_ns.masks import cache as cache_mod
from segsplat_ns.masks import sources as src_mod
from segsplat_ns.masks.cache import (
    MaskCache,
    MaskCacheWarning,
    PackedMasks,
    atomic_write,
    decode_masks,
    encode_masks,
)
from segsplat_ns.masks.scales import (
    ScaleQuantiles,
    backproject,
    erode_masks,
    mask_scales,
)
from segsplat_ns.masks.sources import (
    ClassicalMaskSource,
    FolderMaskSource,
    MaskSource,
    MaskSourceConfig,
    MaskSourceError,
    SamMaskSource,
)

# ------------------------------------------------------------------------------------------------
# folder source
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def folder_dataset(tmp_path):
    data = tmp_path / "scene"
    (data / "sam_masks").mkdir(parents=True)
    rng = np.random.RandomState(0)
    m0 = torch.from_numpy(rng.rand(3, 8, 10) > 0.5)  # bool tensor, SAGA's layout
    torch.save(m0, data / "sam_masks" / "img0.pt")
    m1 = (rng.rand(2, 4, 5) > 0.5).astype(np.uint8)  # half-resolution uint8, to be resized
    np.save(data / "sam_masks" / "img1.npy", m1)
    m2 = rng.rand(4, 8, 10) > 0.5
    np.savez(data / "sam_masks" / "img2.npz", masks=m2)
    return data, m0.numpy(), m1.astype(bool), m2


def test_folder_source_reads_pt_npy_npz_and_resizes(folder_dataset):
    data, m0, m1, m2 = folder_dataset
    (data / "transforms.json").write_text("{}")
    source = MaskSourceConfig(source="folder").setup(data / "transforms.json")  # a data file means its folder
    assert isinstance(source, FolderMaskSource) and source.folder == data / "sam_masks"
    image = np.zeros((8, 10, 3), np.uint8)

    out0 = source.masks_for(image, Path("images/img0.jpg"))
    assert out0.dtype == bool and out0.shape == (3, 8, 10)
    np.testing.assert_array_equal(out0, m0)

    out1 = source.masks_for(image, Path("images/img1.png"))
    assert out1.shape == (2, 8, 10)
    np.testing.assert_array_equal(out1, np.repeat(np.repeat(m1, 2, axis=1), 2, axis=2))  # nearest upsampling

    out2 = source.masks_for(image, Path("img2.JPG"))
    np.testing.assert_array_equal(out2, m2)
    assert source.cache_key()["num_files"] == 3


def test_folder_source_errors_name_the_file(folder_dataset, tmp_path):
    data, *_ = folder_dataset
    source = FolderMaskSource(data / "sam_masks")
    image = np.zeros((8, 10, 3), np.uint8)

    with pytest.raises(MaskSourceError, match=r"nothere\.pt") as e:
        source.masks_for(image, Path("images/nothere.png"))
    assert "[N, H, W]" in str(e.value)

    (data / "sam_masks" / "garbage.pt").write_bytes(b"this is not a torch file")
    with pytest.raises(MaskSourceError, match=r"Malformed mask file .*garbage\.pt"):
        source.masks_for(image, Path("garbage.jpg"))

    np.save(data / "sam_masks" / "flat.npy", np.zeros((8, 10), bool))
    with pytest.raises(MaskSourceError, match=r"flat\.npy.*\[N, H, W\]"):
        source.masks_for(image, Path("flat.jpg"))

    torch.save({"masks": torch.zeros(1, 8, 10)}, data / "sam_masks" / "adict.pt")
    with pytest.raises(MaskSourceError, match=r"adict\.pt"):
        source.masks_for(image, Path("adict.jpg"))

    with pytest.raises(MaskSourceError, match="classical") as e:
        MaskSourceConfig(source="folder").setup(tmp_path / "no_such_scene")
    assert "sam_masks" in str(e.value)


# ------------------------------------------------------------------------------------------------
# sam source
# ------------------------------------------------------------------------------------------------


def tiny_sam(img_size: int = 64, dim: int = 32):
    """A random-weight SAM small enough for a CPU test (same architecture, tiny widths)."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(0)
    grid = img_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=dim, depth=1, num_heads=2,
                                      mlp_ratio=2.0, out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(transformer_dim=dim, iou_head_hidden_dim=16,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2)),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def test_sam_source_runs_automatic_generator_on_tiny_model():
    source = SamMaskSource.from_model(tiny_sam(), points_per_side=4, pred_iou_thresh=0.0,
                                      stability_score_thresh=0.0, min_mask_region_area=0)
    rng = np.random.RandomState(0)
    image = (rng.rand(40, 56, 3) * 255).astype(np.uint8)  # not square, not the encoder's size
    masks = source.masks_for(image, Path("a.png"))
    assert isinstance(masks, np.ndarray) and masks.dtype == bool
    assert masks.ndim == 3 and masks.shape[1:] == (40, 56)
    # float images in [0, 1] (nerfstudio's float32 image cache) go through the same path
    masks_f = source.masks_for(image.astype(np.float32) / 255.0, Path("a.png"))
    assert masks_f.shape[1:] == (40, 56)
    key = source.cache_key()
    assert key["source"] == "sam" and key["points_per_side"] == 4 and key["model"].startswith("weights-sha256:")
    assert "points_per_batch" not in key  # does not change the masks


def test_sam_source_resizes_generator_output(monkeypatch):
    source = SamMaskSource.from_model(tiny_sam(), model_id="tiny", points_per_side=2)
    small = np.zeros((20, 28), bool)
    small[:10, :14] = True
    monkeypatch.setattr(source.generator, "generate", lambda image: [{"segmentation": small}])
    out = source.masks_for(np.zeros((40, 56, 3), np.uint8), Path("a.png"))
    assert out.shape == (1, 40, 56) and out[0, :20, :28].all() and not out[0, 20:, :].any()
    monkeypatch.setattr(source.generator, "generate", lambda image: [])
    assert source.masks_for(np.zeros((40, 56, 3), np.uint8), Path("a.png")).shape == (0, 40, 56)


def test_sam_offline_without_checkpoint_names_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGSPLAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SEGSPLAT_NO_DOWNLOAD", raising=False)
    attempts = []

    def offline(url, dest, timeout=30.0):
        attempts.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(src_mod, "download_file", offline)
    with pytest.raises(MaskSourceError) as e:
        MaskSourceConfig(source="sam").setup(tmp_path)
    msg = str(e.value)
    assert attempts == [src_mod.SAM_CHECKPOINT_URLS["vit_h"]]
    assert "source folder" in msg and "source classical" in msg and "sam-checkpoint" in msg
    assert str(tmp_path / "cache" / "sam" / "sam_vit_h_4b8939.pth") in msg
    assert "network is unreachable" in msg

    with pytest.raises(MaskSourceError, match="classical"):
        MaskSourceConfig(source="sam", sam_checkpoint=tmp_path / "nope.pth").setup(tmp_path)

    monkeypatch.setenv("SEGSPLAT_NO_DOWNLOAD", "1")
    with pytest.raises(MaskSourceError, match="SEGSPLAT_NO_DOWNLOAD"):
        src_mod.resolve_sam_checkpoint("vit_b")
    assert len(attempts) == 1

    # a checkpoint already in the cache is used without any download
    cached = tmp_path / "cache" / "sam" / "sam_vit_b_01ec64.pth"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"x")
    assert src_mod.resolve_sam_checkpoint("vit_b") == cached


def test_download_file_is_atomic(tmp_path):
    payload = os.urandom(3 << 20)
    origin = tmp_path / "origin.bin"
    origin.write_bytes(payload)
    dest = tmp_path / "dl" / "ckpt.pth"
    src_mod.download_file(origin.as_uri(), dest)  # file:// URL: exercises the real code path without network
    assert dest.read_bytes() == payload
    with pytest.raises(Exception):
        src_mod.download_file((tmp_path / "missing.bin").as_uri(), tmp_path / "dl" / "other.pth")
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["ckpt.pth"]  # no partial files


# ------------------------------------------------------------------------------------------------
# classical source
# ------------------------------------------------------------------------------------------------


def two_squares_image():
    rng = np.random.RandomState(1)
    img = np.zeros((96, 128, 3), np.float64)
    img[:] = (60, 140, 60)
    sq1 = (slice(10, 50), slice(10, 50))
    sq2 = (slice(45, 85), slice(70, 120))
    img[sq1] = (220, 40, 40)
    img[sq2] = (40, 40, 220)
    img = np.clip(img + rng.randn(*img.shape) * 6, 0, 255).astype(np.uint8)
    gts = []
    for sq in (sq1, sq2):
        g = np.zeros(img.shape[:2], bool)
        g[sq] = True
        gts.append(g)
    return img, gts


def test_classical_levels_are_nested_and_deterministic():
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:80, 0:100]
    img = np.stack([np.sin(xx / 9.0), np.cos(yy / 7.0), np.sin((xx + yy) / 13.0)], -1) * 100 + 120
    img = np.clip(img + rng.randn(*img.shape) * 10, 0, 255).astype(np.uint8)
    source = ClassicalMaskSource(levels=(4, 12, 48), min_mask_area=10)
    levels = source.segment_levels(img)
    assert len(levels) == 3
    counts = [int(level.max()) + 1 for level in levels]
    assert counts[0] <= 4 and counts[1] <= 12 and counts[0] < counts[1] < counts[2]
    fine = levels[-1]
    for coarse in levels[:-1]:
        for f in np.unique(fine):  # every fine segment lies inside exactly one coarse segment
            assert np.unique(coarse[fine == f]).size == 1
    masks = source.masks_for(img, Path("x.png"))
    assert masks.dtype == bool and masks.shape[1:] == img.shape[:2]
    for m in masks:  # every emitted mask is an exact union of finest segments
        for f in np.unique(fine):
            inside = m[fine == f]
            assert inside.all() or not inside.any()
    assert len({m.tobytes() for m in masks}) == len(masks)  # no duplicates across levels
    np.testing.assert_array_equal(masks, source.masks_for(img, Path("x.png")))


def test_classical_coarse_level_finds_the_squares():
    img, gts = two_squares_image()
    source = MaskSourceConfig(source="classical", classical_levels=(4, 16, 64), classical_min_mask_area=20).setup(
        Path("."))
    coarse = source.segment_levels(img)[0]
    masks = source.masks_for(img, Path("sq.png"))
    for g in gts:
        ious = [np.logical_and(coarse == s, g).sum() / np.logical_or(coarse == s, g).sum() for s in np.unique(coarse)]
        assert max(ious) > 0.8
        mask_ious = (masks & g).sum((1, 2)) / (masks | g).sum((1, 2))
        assert mask_ious.max() > 0.8
    with pytest.raises(MaskSourceError, match="coarse to fine"):
        ClassicalMaskSource(levels=(64, 16))


def test_mask_source_config_is_tyro_friendly():
    import tyro

    cfg = tyro.cli(MaskSourceConfig, args=["--source", "classical", "--classical-levels", "4", "16"])
    assert cfg.source == "classical" and cfg.classical_levels == (4, 16)


# ------------------------------------------------------------------------------------------------
# scales
# ------------------------------------------------------------------------------------------------


def test_erode_masks_matches_hand_computed_5x5():
    square = torch.zeros(1, 5, 5, dtype=torch.bool)
    square[0, 1:4, 1:4] = True  # 3x3 block: corners see 4 set pixels, edges 6, centre 9
    expected = torch.tensor([[0, 0, 0, 0, 0],
                             [0, 0, 1, 0, 0],
                             [0, 1, 1, 1, 0],
                             [0, 0, 1, 0, 0],
                             [0, 0, 0, 0, 0]], dtype=torch.bool)
    ring = torch.zeros(1, 5, 5, dtype=torch.bool)
    ring[0, 1:4, 1:4] = True
    ring[0, 2, 2] = False  # SAGA's rule (box-sum >= 5) fills the one-pixel hole: it has 8 set neighbours
    dot = torch.zeros(1, 5, 5, dtype=torch.bool)
    dot[0, 0, 0] = True  # erosion would empty it: kept as is
    out = erode_masks(torch.cat([square, ring, dot]))
    assert torch.equal(out[0], expected)
    assert torch.equal(out[1], expected)
    assert torch.equal(out[2], dot[0])
    assert erode_masks(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 5, 5)


def _look_at_c2w(angle: float, t=(0.3, -0.2, 1.5)) -> torch.Tensor:
    c, s = np.cos(angle), np.sin(angle)
    R = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64) @ torch.tensor(
        [[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]], dtype=torch.float64)
    return torch.cat([R, torch.tensor(t, dtype=torch.float64)[:, None]], 1)


def test_backproject_inverts_projection_opengl_and_opencv():
    h, w, f = 30, 40, 50.0
    K = torch.tensor([[f, 0, 21.0], [0, f * 1.1, 14.0], [0, 0, 1]], dtype=torch.float64)
    c2w = _look_at_c2w(0.7)
    depth = torch.rand(h, w, dtype=torch.float64) * 3 + 1
    for conv in ("opengl", "opencv"):
        pts = backproject(depth, K, c2w, convention=conv)
        cam = (pts - c2w[:, 3]) @ c2w[:, :3]  # world -> camera
        if conv == "opengl":
            z = -cam[..., 2]
            u, v = K[0, 0] * cam[..., 0] / z + K[0, 2], -K[1, 1] * cam[..., 1] / z + K[1, 2]
        else:
            z = cam[..., 2]
            u, v = K[0, 0] * cam[..., 0] / z + K[0, 2], K[1, 1] * cam[..., 1] / z + K[1, 2]
        vv, uu = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        assert torch.allclose(z, depth) and torch.allclose(u, uu.double()) and torch.allclose(v, vv.double())


def test_mask_scale_of_a_planar_square_is_analytic():
    h = w = 64
    f, d = 100.0, 2.0
    K = torch.tensor([[f, 0, 32.0], [0, f, 32.0], [0, 0, 1]])
    depth = torch.full((h, w), d)  # fronto-parallel plane
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0, 10:50, 10:50] = True  # 40 px square = 40 * d / f = 0.8 world units
    masks[1, 0, 0] = True  # one point: scale 0
    masks[2, 52:62, 52:62] = True  # 10 px = 0.2 units, but half of it has invalid depth
    valid = torch.ones(h, w, dtype=torch.bool)
    valid[57:62, 40:] = False
    for c2w in (torch.eye(4)[:3], _look_at_c2w(1.1).float()):  # the scale does not depend on the pose
        s = mask_scales(masks, depth, K, c2w, valid=valid)
        side = 40 * d / f
        analytic = 2 * np.sqrt(2) * side / np.sqrt(12)  # ||2 std|| of a uniform square in a plane
        assert s[0].item() == pytest.approx(analytic, rel=0.01)
        assert s[1].item() == 0.0
        # exact reference: torch.std over the eroded, valid pixels
        pts = backproject(depth, K, c2w)
        m2 = erode_masks(masks[2:3])[0] & valid
        assert s[2].item() == pytest.approx((pts[m2].std(0) * 2).norm().item(), rel=1e-4)


def test_mask_scales_matches_per_mask_loop_on_random_depth():
    torch.manual_seed(0)
    h, w = 24, 32
    depth = torch.rand(h, w) * 4 + 1
    depth[0, :5] = float("nan")
    K = torch.tensor([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]])
    c2w = _look_at_c2w(-0.4).float()
    masks = torch.rand(70, h, w) > 0.4
    s = mask_scales(masks, depth, K, c2w, chunk=16)
    pts = backproject(depth, K, c2w)
    ok = torch.isfinite(depth) & (depth > 0)
    eroded = erode_masks(masks)
    ref = torch.stack([(pts[e & ok].std(0) * 2).norm() if (e & ok).sum() >= 2 else torch.tensor(0.0)
                       for e in eroded])
    assert torch.allclose(s, ref, rtol=1e-4, atol=1e-5)


def test_scale_quantiles_roundtrip_monotone_uniform():
    from sklearn.preprocessing import QuantileTransformer

    rng = np.random.RandomState(0)
    raw = np.concatenate([rng.lognormal(-1.0, 0.8, 5000), np.zeros(300)])  # zeros: masks with < 2 points
    q = ScaleQuantiles.fit(torch.from_numpy(raw))
    assert q.as_tensor().shape == (1001,) and q.as_tensor().dtype == torch.float32

    u = q.normalize(torch.from_numpy(raw).float())
    assert u.min() >= 0 and u.max() <= 1
    ranks = np.sort(u.numpy())
    assert np.abs(ranks - np.linspace(0, 1, ranks.size)).max() < 0.07  # 300 tied zeros sit at their mean rank
    pos = np.sort(q.normalize(torch.from_numpy(raw[raw > 0]).float()).numpy())
    assert np.abs(np.diff(pos)).max() < 0.01  # uniform spread on the untied part

    ref = QuantileTransformer(n_quantiles=1001, output_distribution="uniform").fit(raw[:, None])
    probe = np.concatenate([raw[:200], [0.0, -1.0, 100.0]])
    np.testing.assert_allclose(q.normalize(torch.from_numpy(probe)).numpy(), ref.transform(probe[:, None])[:, 0],
                               atol=2e-5)

    grid = torch.linspace(-0.5, float(raw.max()) + 1.0, 4000)
    g = q.normalize(grid)
    assert (g[1:] >= g[:-1]).all() and g[0] == 0 and g[-1] == 1
    uu = torch.linspace(0, 1, 501)
    back = q.denormalize(uu)
    assert (back[1:] >= back[:-1]).all()
    inside = (back > 0)
    assert torch.allclose(q.normalize(back)[inside], uu[inside], atol=1e-4)
    x = torch.from_numpy(raw[raw > 0][:500]).float()
    assert torch.allclose(q.denormalize(q.normalize(x)), x, rtol=1e-3, atol=1e-5)

    q2 = ScaleQuantiles.from_tensor(q.as_tensor())
    assert torch.equal(q2.normalize(x), q.normalize(x))


# ------------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------------


class CountingSource(MaskSource):
    name = "fake"

    def __init__(self, param: int = 1):
        self.param = param
        self.calls = 0

    def cache_key(self):
        return {"source": "fake", "param": self.param}

    def masks_for(self, image, image_path):
        self.calls += 1
        h, w = image.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        seed = int(image[0, 0, 0])
        return np.stack([(xx + seed) % (k + 2) == 0 for k in range(3)] + [yy < h // (self.param + 1)])


@pytest.fixture
def image_set(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    paths, images = [], []
    for i, (h, w) in enumerate([(20, 30), (21, 17), (8, 8)]):
        p = folder / f"frame_{i:03d}.png"
        p.write_bytes(b"fake image %d" % i)
        paths.append(p)
        images.append(np.full((h, w, 3), i * 10, np.uint8))
    return paths, images


def test_cache_computes_once_then_loads(tmp_path, image_set):
    paths, images = image_set
    source = CountingSource()
    cache = MaskCache(tmp_path / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskCacheWarning)
        first = cache.load_or_compute(source, paths, lambda i: images[i])
        assert source.calls == 3
        again = MaskCache(tmp_path / "cache").load_or_compute(source, paths, lambda i: images[i])
        assert source.calls == 3
        lazy = cache.load_or_compute(source, paths, lambda i: images[i],
                                     image_sizes=[im.shape[:2] for im in images], lazy=True)
    assert source.calls == 3 and isinstance(lazy, PackedMasks) and len(lazy) == 3
    for i, im in enumerate(images):
        direct = torch.from_numpy(source.masks_for(im, paths[i]))
        assert first[i].dtype == torch.bool and first[i].shape == direct.shape
        assert torch.equal(first[i], direct) and torch.equal(again[i], direct) and torch.equal(lazy[i], direct)
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].name.startswith("masks_fake_") and files[0].suffix == ".bin"
    mask_pixels = sum(m.numel() for m in first)
    assert files[0].stat().st_size < 4096 + mask_pixels / 8  # bit-packed (+ zlib), plus a small header


def test_cache_key_change_recomputes_with_warning(tmp_path, image_set):
    paths, images = image_set
    cache = MaskCache(tmp_path / "cache")
    cache.load_or_compute(CountingSource(param=1), paths, lambda i: images[i])
    changed = CountingSource(param=2)
    with pytest.warns(MaskCacheWarning, match=r"source\.param: 1 -> 2"):
        out = cache.load_or_compute(changed, paths, lambda i: images[i])
    assert changed.calls == 3 and torch.equal(out[0], torch.from_numpy(changed.masks_for(images[0], paths[0])))
    # a changed image file (size) is a different key as well, reported by name
    paths[1].write_bytes(b"a longer fake image")
    again = CountingSource(param=2)
    with pytest.warns(MaskCacheWarning, match=r"frame_001\.png: bytes"):
        cache.load_or_compute(again, paths, lambda i: images[i])
    assert again.calls == 3


def _corruptions(data: bytes):
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    header_flipped = bytearray(data)
    header_flipped[20] ^= 0x55
    return {"flipped payload byte": bytes(flipped), "truncated": data[: len(data) - 7],
            "truncated header": data[:12], "header byte": bytes(header_flipped), "empty": b""}


def test_cache_corruption_warns_and_recomputes(tmp_path, image_set):
    paths, images = image_set
    cache = MaskCache(tmp_path / "cache")
    source = CountingSource()
    reference = cache.load_or_compute(source, paths, lambda i: images[i])
    (path,) = list((tmp_path / "cache").iterdir())
    good = path.read_bytes()
    for what, bad in _corruptions(good).items():
        path.write_bytes(bad)
        calls = source.calls
        with pytest.warns(MaskCacheWarning, match="corrupt|different configuration"):
            out = cache.load_or_compute(source, paths, lambda i: images[i])
        assert source.calls == calls + 3, what
        assert all(torch.equal(a, b) for a, b in zip(out, reference)), what
        assert path.read_bytes() == good, what  # rewritten (deterministic content)


def test_cache_write_is_atomic(tmp_path, image_set, monkeypatch):
    paths, images = image_set
    cache_dir = tmp_path / "cache"
    cache = MaskCache(cache_dir)
    source = CountingSource()
    cache.load_or_compute(source, paths, lambda i: images[i])
    (path,) = list(cache_dir.iterdir())
    old = path.read_bytes()

    def chunks():
        yield b"new content, part one"
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, chunks())
    assert path.read_bytes() == old and sorted(cache_dir.iterdir()) == [path]

    # through the cache: a corrupt file to replace, and the disk fails at fsync
    path.write_bytes(old[:-3])
    corrupt = path.read_bytes()

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_mod.os, "fsync", failing_fsync)
    with pytest.warns(MaskCacheWarning) as record:
        out = cache.load_or_compute(source, paths, lambda i: images[i])
    assert any("Could not write" in str(r.message) for r in record)
    assert len(out) == 3 and path.read_bytes() == corrupt and sorted(cache_dir.iterdir()) == [path]


def test_encode_decode_roundtrip_and_size():
    rng = np.random.RandomState(0)
    masks = rng.rand(5, 33, 47) > 0.5
    blob = encode_masks(masks)
    assert torch.equal(decode_masks(blob, masks.shape), torch.from_numpy(masks))
    assert len(blob) <= masks.size // 8 + 64  # random bits do not compress: ~1 bit per mask pixel
    blob_blobs = np.zeros((5, 330, 470), bool)
    blob_blobs[:, 50:200, 100:300] = True
    assert len(encode_masks(blob_blobs)) < blob_blobs.size / 8 / 50  # region masks: far below 1 bit/pixel
    with pytest.raises(cache_mod.CacheCorruptError):
        decode_masks(blob, (5, 33, 48))
    assert decode_masks(encode_masks(np.zeros((0, 4, 4), bool)), (0, 4, 4)).shape == (0, 4, 4)


def test_sam_source_with_prompt_points_per_image(monkeypatch):
    """with_prompts: the listed image is prompted at its points, others at the regular grid; the generator's grid
    is restored; the cache key names the points; a source without prompts refuses clearly."""
    source = SamMaskSource.from_model(tiny_sam(), model_id="tiny", points_per_side=2, pred_iou_thresh=0.0,
                                      stability_score_thresh=0.0, min_mask_region_area=0)
    points = np.array([[0.25, 0.75], [0.5, 0.5], [0.9, 0.1]], dtype=np.float32)
    prompted = source.with_prompts({"a.png": points})
    image = (np.random.RandomState(1).rand(40, 56, 3) * 255).astype(np.uint8)
    real = prompted.masks_for(image, Path("a.png"))  # the real generator accepts the custom grid
    assert real.dtype == bool and real.shape[1:] == (40, 56)
    grids = []
    monkeypatch.setattr(source.generator, "generate", lambda im: grids.append([g.copy() for g in source.generator.point_grids]) or [])
    prompted.masks_for(image, Path("a.png"))
    prompted.masks_for(image, Path("b.png"))
    np.testing.assert_allclose(grids[0][0], points)
    assert grids[1][0].shape == (4, 2)  # points_per_side 2: SAM's own grid
    assert source.generator.point_grids[0].shape == (4, 2)
    key, plain = prompted.cache_key(), source.cache_key()
    assert key != plain and "prompt_points_sha256" in key and key == source.with_prompts({"a.png": points}).cache_key()
    assert key != source.with_prompts({"a.png": points[:2]}).cache_key()
    with pytest.raises(MaskSourceError, match="takes no prompt points"):
        ClassicalMaskSource().with_prompts({"a.png": points})
