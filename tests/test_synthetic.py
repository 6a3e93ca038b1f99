"""Tests of the seeded synthetic dataset (segsplat_ns.synthetic)."""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData
from scipy import ndimage

from segsplat_ns import synthetic
from segsplat_ns.synthetic import (
    SceneConfig,
    build_scene,
    cast_rays,
    make_scene,
    sample_seed_points,
)


def _read_png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


_TIMING: dict = {}


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    """The default scene (seed 0), generated once; the generation time is checked in test_timing."""
    out = tmp_path_factory.mktemp("synthetic") / "scene"
    start = time.perf_counter()
    make_scene(SceneConfig(output=out))
    _TIMING["default"] = time.perf_counter() - start
    return out


def _small(out: Path, **kw) -> SceneConfig:
    base = dict(output=out, width=48, height=40, num_train_views=6, num_eval_views=2, points_per_part=50)
    base.update(kw)
    return SceneConfig(**base)


# ----------------------------------------------------------------------------------------------- layout


def test_layout_and_formats(scene_dir: Path):
    tf = json.loads((scene_dir / "transforms.json").read_text())
    meta = json.loads((scene_dir / "gt" / "meta.json").read_text())
    cfg = SceneConfig(output=scene_dir)
    assert tf["camera_model"] == "OPENCV"
    assert (tf["w"], tf["h"]) == (cfg.width, cfg.height)
    assert all(tf[k] == 0 for k in ("k1", "k2", "p1", "p2"))
    assert tf["ply_file_path"] == "sparse_pc.ply"
    assert tf["segsplat"] == {"seed": 0, "version": synthetic.FORMAT_VERSION, "num_objects": cfg.num_objects}
    assert len(tf["frames"]) == cfg.num_train_views + cfg.num_eval_views
    assert len(tf["train_filenames"]) == cfg.num_train_views
    assert tf["val_filenames"] == tf["test_filenames"] == meta["eval_frames"]
    assert tf["train_filenames"] == meta["train_frames"]
    assert not set(tf["train_filenames"]) & set(tf["val_filenames"])
    assert len(meta["objects"]) == cfg.num_objects
    num_parts = len(meta["parts"])
    assert [p["id"] for p in meta["parts"]] == list(range(1, num_parts + 1))
    for obj in meta["objects"]:
        assert 2 <= len(obj["parts"]) <= 3
        assert all(meta["parts"][pid - 1]["object"] == obj["id"] for pid in obj["parts"])

    positions = []
    for frame in tf["frames"]:
        name = Path(frame["file_path"]).stem
        c2w = np.array(frame["transform_matrix"])
        assert c2w.shape == (4, 4)
        np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-8)
        # OpenGL convention: the camera looks down -z, towards the origin
        forward = -c2w[:3, 2]
        np.testing.assert_allclose(forward, -c2w[:3, 3] / np.linalg.norm(c2w[:3, 3]), atol=1e-8)
        positions.append(c2w[:3, 3])
        rgb = _read_png(scene_dir / frame["file_path"])
        assert rgb.dtype == np.uint8 and rgb.shape == (cfg.height, cfg.width, 3)
        parts = _read_png(scene_dir / "gt" / "parts" / f"{name}.png")
        objects = _read_png(scene_dir / "gt" / "objects" / f"{name}.png")
        assert parts.dtype == objects.dtype == np.uint8 and parts.shape == (cfg.height, cfg.width)
        assert parts.max() <= num_parts and objects.max() <= cfg.num_objects
        assert ((parts == 0) == (objects == 0)).all()
        # background pixels (away from the antialiased edges) have the background colour; objects are framed
        far_bg = ndimage.binary_erosion(parts == 0, np.ones((3, 3)), border_value=1)
        assert (rgb[far_bg] == np.array(cfg.background, dtype=np.uint8)).all()
        assert (np.abs(rgb[parts > 0].astype(int) - np.array(cfg.background)).sum(-1) > 30).mean() > 0.95
        border = np.concatenate([parts[0], parts[-1], parts[:, 0], parts[:, -1]])
        assert (border == 0).all()
        has_masks = (scene_dir / "sam_masks" / f"{name}.pt").exists()
        assert has_masks == (frame["file_path"] in tf["train_filenames"])
    # eval views are at other camera positions than the train views
    positions = np.array(positions)
    dist = np.linalg.norm(positions[:, None] - positions[None], axis=-1) + np.eye(len(positions)) * 1e9
    assert dist.min() > 0.05

    ply = PlyData.read(str(scene_dir / "sparse_pc.ply"))
    assert ply.text is False
    v = ply["vertex"]
    assert [p.name for p in v.properties] == ["x", "y", "z", "red", "green", "blue"]
    assert v["x"].dtype == np.float32 and v["red"].dtype == np.uint8
    assert len(v) == num_parts * cfg.points_per_part
    xyz = np.stack([v["x"], v["y"], v["z"]], 1)
    assert np.abs(xyz).max() <= 1.0  # the scene spans about [-1, 1]^3
    assert np.abs(xyz).max(axis=0).min() > 0.3


def test_same_seed_is_byte_identical_and_seeds_differ(scene_dir: Path, tmp_path: Path):
    make_scene(SceneConfig(output=tmp_path / "again"))
    a, b = _files(scene_dir), _files(tmp_path / "again")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []

    make_scene(SceneConfig(output=tmp_path / "other", seed=1))
    c = _files(tmp_path / "other")
    assert c["images/frame_00000.png"] != a["images/frame_00000.png"]
    assert c["sparse_pc.ply"] != a["sparse_pc.ply"]
    assert c["gt/meta.json"] != a["gt/meta.json"]


# ----------------------------------------------------------------------------------- geometric consistency


def test_seed_points_project_onto_their_parts(scene_dir: Path):
    """Seed points, projected with the intrinsics/extrinsics written in transforms.json (own projection code),
    land on pixels whose ground-truth part id is their part, whenever they are visible."""
    tf = json.loads((scene_dir / "transforms.json").read_text())
    scene = build_scene(0, SceneConfig(output=scene_dir).num_objects)
    xyz, _, pid = sample_seed_points(scene, 0, SceneConfig(output=scene_dir).points_per_part)
    v = PlyData.read(str(scene_dir / "sparse_pc.ply"))["vertex"]
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), xyz)  # the ply is these points

    fx, fy, cx, cy, w, h = (tf[k] for k in ("fl_x", "fl_y", "cx", "cy", "w", "h"))
    agree = agree_rounded = agree_3x3 = total = 0
    for frame in tf["frames"][::3]:
        c2w = np.array(frame["transform_matrix"])
        eye = c2w[:3, 3]
        pc = (xyz - eye) @ c2w[:3, :3]  # world -> camera (x right, y up, looking down -z)
        u = cx + fx * pc[:, 0] / -pc[:, 2]
        v = cy - fy * pc[:, 1] / -pc[:, 2]
        inside = (pc[:, 2] < 0) & (u >= 1) & (u < w - 1) & (v >= 1) & (v < h - 1)
        # visible: the first hit along the ray from the camera to the point is the point itself
        d = xyz - eye
        dist = np.linalg.norm(d, axis=1)
        t, hit_part, _ = cast_rays(scene, np.broadcast_to(eye, d.shape).copy(), d / dist[:, None])
        vis = inside & (np.abs(t - dist) < 1e-4)
        assert (hit_part[vis] == pid[vis]).all()
        gt = _read_png(scene_dir / "gt" / "parts" / f"{Path(frame['file_path']).stem}.png")
        ui, vi = u[vis].astype(int), v[vis].astype(int)  # pixel (i, j) covers [i, i + 1) x [j, j + 1)
        agree += int((gt[vi, ui] == pid[vis]).sum())
        ur, vr = np.round(u[vis]).astype(int), np.round(v[vis]).astype(int)  # the half-pixel-off convention
        agree_rounded += int((gt[vr, ur] == pid[vis]).sum())
        near = np.zeros(len(ui), dtype=bool)
        for dv in (-1, 0, 1):
            for du in (-1, 0, 1):
                near |= gt[vi + dv, ui + du] == pid[vis]
        agree_3x3 += int(near.sum())
        total += int(vis.sum())
    assert total > 500
    # disagreements are silhouette pixels only (at 96 px many visible points sit near a silhouette)
    assert agree / total > 0.85, agree / total
    assert agree_3x3 / total > 0.995, agree_3x3 / total
    assert agree > agree_rounded  # pixel centres at index + 0.5, as nerfstudio assumes


def _install_open3d_shim_if_needed(monkeypatch):
    """nerfstudio reads the seed points with open3d. Where open3d cannot be imported (e.g. a missing system
    library), stand in a reader with open3d's read_point_cloud semantics (points as float64, colours in [0, 1])."""
    try:
        import open3d  # noqa: F401

        return
    except Exception:
        pass

    def read_point_cloud(path):
        v = PlyData.read(path)["vertex"]
        points = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64)
        colors = np.stack([v["red"], v["green"], v["blue"]], 1).astype(np.float64) / 255.0
        return types.SimpleNamespace(points=points, colors=colors)

    shim = types.ModuleType("open3d")
    shim_io = types.ModuleType("open3d.io")
    shim_io.read_point_cloud = read_point_cloud
    shim.io = shim_io
    monkeypatch.setitem(sys.modules, "open3d", shim)
    monkeypatch.setitem(sys.modules, "open3d.io", shim_io)


def test_nerfstudio_dataparser_loads_it(scene_dir: Path, monkeypatch):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import (
        NerfstudioDataParserConfig,
    )

    _install_open3d_shim_if_needed(monkeypatch)
    cfg = SceneConfig(output=scene_dir)
    meta = json.loads((scene_dir / "gt" / "meta.json").read_text())
    parser = NerfstudioDataParserConfig(data=scene_dir, load_3D_points=True).setup()
    train = parser.get_dataparser_outputs("train")
    val = parser.get_dataparser_outputs("val")
    assert len(train.image_filenames) == cfg.num_train_views
    assert len(val.image_filenames) == cfg.num_eval_views
    assert [str(p.relative_to(scene_dir)) for p in train.image_filenames] == meta["train_frames"]
    assert [str(p.relative_to(scene_dir)) for p in val.image_filenames] == meta["eval_frames"]
    assert int(train.cameras.width[0, 0]) == cfg.width and int(train.cameras.height[0, 0]) == cfg.height

    # seed points are loaded and mapped by nerfstudio's orient/centre/scale transform; undoing it gives the ply
    pts = train.metadata["points3D_xyz"]
    v = PlyData.read(str(scene_dir / "sparse_pc.ply"))["vertex"]
    ply_xyz = np.stack([v["x"], v["y"], v["z"]], 1)
    assert pts.shape == (len(ply_xyz), 3)
    assert train.metadata["points3D_rgb"].shape == (len(ply_xyz), 3)
    T = train.dataparser_transform.double().numpy()  # 3x4
    s = float(train.dataparser_scale)
    back = (pts.double().numpy() / s - T[:, 3]) @ T[:, :3]
    np.testing.assert_allclose(back, ply_xyz, atol=1e-4)

    # rays of nerfstudio's own cameras (after its transform) hit, in the original frame, the ground-truth parts
    scene = build_scene(0, cfg.num_objects)
    for outputs, idx in ((train, 0), (train, 7), (val, 1)):
        rays = outputs.cameras.generate_rays(camera_indices=idx)
        o = rays.origins.reshape(-1, 3).double().numpy()
        d = rays.directions.reshape(-1, 3).double().numpy()
        o = (o / s - T[:, 3]) @ T[:, :3]
        d = d @ T[:, :3]
        _, part, _ = cast_rays(scene, o, d / np.linalg.norm(d, axis=1, keepdims=True))
        gt = _read_png(scene_dir / "gt" / "parts" / (outputs.image_filenames[idx].stem + ".png"))
        assert (part.reshape(gt.shape) == gt).mean() > 0.995


# --------------------------------------------------------------------------------------------- sam masks


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def _mask_stats(root: Path):
    """Per train view: (masks, gt part masks, gt object masks, object of each part)."""
    meta = json.loads((root / "gt" / "meta.json").read_text())
    part_obj = {p["id"]: p["object"] for p in meta["parts"]}
    for fp in meta["train_frames"]:
        name = Path(fp).stem
        masks = torch.load(root / "sam_masks" / f"{name}.pt")
        parts = _read_png(root / "gt" / "parts" / f"{name}.png")
        objects = _read_png(root / "gt" / "objects" / f"{name}.png")
        yield masks, parts, objects, part_obj


def test_sam_masks_layout_nesting_and_flaws(scene_dir: Path):
    cfg = SceneConfig(output=scene_dir)
    matched = considered = merged_like = 0
    for masks, parts, objects, part_obj in _mask_stats(scene_dir):
        assert isinstance(masks, torch.Tensor) and masks.dtype == torch.bool
        assert masks.ndim == 3 and tuple(masks.shape[1:]) == (cfg.height, cfg.width)
        m = masks.numpy()
        assert (m.sum(axis=(1, 2)) >= synthetic.MIN_MASK_AREA).all()
        for oid in np.unique(objects[objects > 0]):
            om = objects == oid
            # slivers of occluded objects: a 2-pixel boundary jitter alone can halve their IoU
            if om.sum() >= 100:
                assert max(_iou(x, om) for x in m) > 0.6, f"no mask for visible object {oid}"
        # every mask lies inside one object (up to a 2-pixel boundary jitter): parts nest in their objects
        for x in m:
            oid = np.bincount(objects[x], minlength=256)[1:].argmax() + 1
            grown = ndimage.binary_dilation(objects == oid, iterations=2)
            assert (x & ~grown).sum() == 0
        for pid in np.unique(parts[parts > 0]):
            pm = parts == pid
            if pm.sum() < 60:
                continue
            considered += 1
            best = max(_iou(x, pm) for x in m)
            matched += best > 0.5
            om = objects == part_obj[int(pid)]
            # a merge: a mask covering this part and part of a sibling, but not the whole object
            merged_like += any(
                (x & pm).sum() > 0.8 * pm.sum() and _iou(x, pm) <= 0.5 and _iou(x, om) < 0.9 for x in m
            )
    missing_rate = 1 - matched / considered
    assert considered > 50
    # flaws are present, and moderate at the default rate
    assert 0.1 < missing_rate < 0.5, missing_rate
    assert merged_like > 0


def test_sam_masks_flaw_rate_controls_flaws(tmp_path: Path):
    rates = {}
    for rate in (0.0, 0.4):
        out = make_scene(_small(tmp_path / f"r{rate}", width=64, height=64, mask_flaw_rate=rate))
        exact = total = 0
        for masks, parts, objects, _ in _mask_stats(out):
            m = masks.numpy()
            gts = [parts == p for p in np.unique(parts[parts > 0])]
            gts += [objects == o for o in np.unique(objects[objects > 0])]
            gts = [g for g in gts if g.sum() >= synthetic.MIN_MASK_AREA]
            total += len(gts)
            exact += sum(any((x == g).all() for x in m) for g in gts)
            if rate == 0.0:
                # exact masks: each mask is a ground-truth part or object mask
                assert all(any((x == g).all() for g in gts) for x in m)
        rates[rate] = exact / total
    assert rates[0.0] == 1.0
    assert rates[0.4] < 0.6


# ------------------------------------------------------------------------------------- writing behaviour


def test_refuses_non_empty_folder_without_overwrite(scene_dir: Path, tmp_path: Path):
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_scene(SceneConfig(output=scene_dir))
    other = tmp_path / "notempty"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_scene(_small(other))
    make_scene(_small(other, overwrite=True))
    assert (other / "keep.txt").read_text() == "user data"  # overwrite replaces only generated files
    assert (other / "transforms.json").exists()
    # an empty existing folder is fine
    (tmp_path / "empty").mkdir()
    make_scene(_small(tmp_path / "empty"))


def test_overwrite_removes_stale_frames(tmp_path: Path):
    out = tmp_path / "s"
    make_scene(_small(out, num_train_views=8, num_eval_views=4))
    make_scene(_small(out, overwrite=True))
    assert len(list((out / "images").glob("*.png"))) == 8
    assert len(list((out / "sam_masks").glob("*.pt"))) == 6
    assert len(list((out / "gt" / "parts").glob("*.png"))) == 8


def test_interrupted_write_never_leaves_a_missing_or_partial_png(tmp_path: Path, monkeypatch):
    out = tmp_path / "s"
    make_scene(_small(out))
    before = sorted(p.relative_to(out) for p in out.rglob("*.png"))

    real = synthetic._png_bytes
    calls = {"n": 0}

    def flaky(array):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated crash")
        return real(array)

    monkeypatch.setattr(synthetic, "_png_bytes", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_scene(_small(out, seed=5, overwrite=True))
    after = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert after == before
    for p in after:
        Image.open(out / p).load()  # every png is complete (old or new version)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left
    assert not (out / "transforms.json").exists()  # the half-overwritten folder is not a loadable dataset


def test_config_validation(tmp_path: Path):
    with pytest.raises(ValueError):
        make_scene(_small(tmp_path / "a", num_objects=0))
    with pytest.raises(ValueError):
        make_scene(_small(tmp_path / "b", mask_flaw_rate=1.5))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_many_objects_fit_in_view(tmp_path: Path):
    out = make_scene(_small(tmp_path / "m", num_objects=8, width=64, height=64))
    meta = json.loads((out / "gt" / "meta.json").read_text())
    assert len(meta["objects"]) == 8 and len({o["name"] for o in meta["objects"]}) == 8
    seen = set()
    for p in sorted((out / "gt" / "objects").glob("*.png")):
        ids = _read_png(p)
        border = np.concatenate([ids[0], ids[-1], ids[:, 0], ids[:, -1]])
        assert (border == 0).all()
        seen |= set(np.unique(ids).tolist())
    assert seen == set(range(9))


def test_timing(scene_dir: Path):
    print(f"default scene generated in {_TIMING['default']:.2f} s")
    assert _TIMING["default"] < 20
