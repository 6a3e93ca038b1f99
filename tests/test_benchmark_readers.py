"""Readers of public benchmark layouts: a tiny sample in each on-disk format is written and read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segsplat_ns.eval.benchmarks import BENCHMARKS, read_benchmark
from segsplat_ns.eval.benchmarks.common import spread_points
from segsplat_ns.eval.benchmarks.lerf_ovs import read_view
from segsplat_ns.eval.ground_truth import GroundTruthError

H, W = 30, 40


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def rgb(h: int = H, w: int = W) -> np.ndarray:
    return np.full((h, w, 3), 90, np.uint8)


def box(y0: int, y1: int, x0: int, x1: int, value=255, dtype=np.uint8, h: int = H, w: int = W) -> np.ndarray:
    mask = np.zeros((h, w), dtype)
    mask[y0:y1, x0:x1] = value
    return mask


def test_dispatcher_names_and_errors(tmp_path):
    assert BENCHMARKS == ("nvos", "spin-nerf", "lerf-mask", "replica", "lerf-ovs")
    with pytest.raises(ValueError, match="unknown benchmark"):
        read_benchmark("scannet", tmp_path)
    with pytest.raises(GroundTruthError, match="missing"):
        read_benchmark("nvos", tmp_path / "missing")


# ---------------------------------------------------------------- NVOS


def write_nvos_target(root: Path, target: str, pos_row: int = 10, neg_row: int = 25) -> dict:
    save(root / "reference_image" / target / "IMG_0001.JPG", rgb())
    save(root / "masks" / target / "IMG_0005.JPG", rgb())
    mask = box(5, 20, 8, 30)
    save(root / "masks" / target / "IMG_0005_mask.png", mask)
    positive = np.zeros((H, W, 3), np.uint8)
    positive[pos_row : pos_row + 2, 5:35] = (255, 0, 0)  # a red horizontal stroke, 2 px thick, 30 px long
    negative = np.zeros((H, W, 3), np.uint8)
    negative[neg_row, 2:12] = (0, 0, 255)
    save(root / "scribbles" / target / f"{target}_pos.png", positive)
    save(root / "scribbles" / target / f"{target}_neg.png", negative)
    return {"mask": mask > 0, "positive": positive.any(-1), "negative": negative.any(-1)}


def test_nvos_reads_mask_views_and_scribble_points(tmp_path):
    drawn = write_nvos_target(tmp_path, "fern")
    gt = read_benchmark("nvos", tmp_path, "fern")
    assert gt.benchmark == "nvos" and gt.scene == "fern" and gt.instance_maps == {}
    (target,) = gt.targets
    assert (target.name, target.image, target.reference_image) == ("fern", "IMG_0005", "IMG_0001")
    assert target.mask.dtype == np.bool_ and np.array_equal(target.mask, drawn["mask"])
    assert target.prompt_size == (H, W)
    assert len(target.positive_points) == 8 and len(set(target.positive_points)) == 8
    assert all(drawn["positive"][y, x] for x, y in target.positive_points)
    assert len(target.negative_points) == 8
    assert all(drawn["negative"][y, x] for x, y in target.negative_points)
    xs = [x for x, _ in target.positive_points]
    assert max(xs) - min(xs) >= 25  # spread along the 30 px stroke, not clumped
    assert read_benchmark("nvos", tmp_path, "fern").targets[0].positive_points == target.positive_points


def test_nvos_horns_has_two_targets(tmp_path):
    write_nvos_target(tmp_path, "horns_center", pos_row=3)
    write_nvos_target(tmp_path, "horns_left", pos_row=20)
    write_nvos_target(tmp_path, "fern")
    gt = read_benchmark("nvos", tmp_path, "horns")
    assert [t.name for t in gt.targets] == ["horns_center", "horns_left"]
    assert {y for _, y in gt.targets[0].positive_points} <= {3, 4}
    assert {y for _, y in gt.targets[1].positive_points} <= {20, 21}
    with pytest.raises(GroundTruthError, match="pick one"):
        read_benchmark("nvos", tmp_path)


def test_nvos_malformed_inputs_name_the_file(tmp_path):
    write_nvos_target(tmp_path, "fern")
    (tmp_path / "scribbles" / "fern" / "fern_neg.png").unlink()
    with pytest.raises(GroundTruthError, match=r"scribbles/fern.*negative scribble"):
        read_benchmark("nvos", tmp_path, "fern")
    write_nvos_target(tmp_path, "fern")
    (tmp_path / "masks" / "fern" / "IMG_0005_mask.png").write_bytes(b"not a png")
    with pytest.raises(GroundTruthError, match="IMG_0005_mask.png"):
        read_benchmark("nvos", tmp_path, "fern")


def test_spread_points_stay_inside_and_are_capped():
    mask = box(4, 6, 3, 5)  # 4 pixels
    points = spread_points(mask > 0, 8)
    assert sorted(points) == [(3, 4), (3, 5), (4, 4), (4, 5)]
    assert spread_points(np.zeros((5, 5), bool), 8) == []


# ---------------------------------------------------------------- SPIn-NeRF


def test_spin_nerf_flat_annotation_folder(tmp_path):
    scene = tmp_path / "room"
    first = box(10, 21, 4, 15, value=1)  # 0/1 labels; centre pixel (9, 15)
    second = box(0, 8, 30, 40, value=255)
    save(scene / "IMG_0002.png", first)
    save(scene / "IMG_0003.png", second)
    save(scene / "IMG_0001_cutout.png", rgb())  # SPIn-NeRF extras are skipped
    save(scene / "IMG_0001_pseudo.png", box(0, 5, 0, 5))
    gt = read_benchmark("spin-nerf", tmp_path, "room")
    assert [t.image for t in gt.targets] == ["IMG_0002", "IMG_0003"]
    assert all(t.reference_image == "IMG_0002" and t.name == "room" for t in gt.targets)
    assert np.array_equal(gt.targets[0].mask, first > 0) and np.array_equal(gt.targets[1].mask, second > 0)
    assert all(t.positive_points == [(9, 15)] and t.negative_points == [] for t in gt.targets)


def test_spin_nerf_release_layout_and_root_as_scene(tmp_path):
    save(tmp_path / "statue" / "images_4" / "IMG_2707.png", rgb())  # RGB views next to label/
    save(tmp_path / "statue" / "images_4" / "label" / "IMG_2707.png", box(2, 9, 2, 9, value=1))
    save(tmp_path / "statue" / "images_4" / "label" / "IMG_2708.png", box(3, 10, 3, 10, value=1))
    gt = read_benchmark("spin-nerf", tmp_path / "statue")
    assert gt.scene == "statue" and [t.image for t in gt.targets] == ["IMG_2707", "IMG_2708"]
    assert gt.targets[0].positive_points == [(5, 5)] and gt.targets[1].mask.sum() == 49


def test_spin_nerf_malformed_inputs_name_the_file(tmp_path):
    (tmp_path / "room").mkdir()
    with pytest.raises(GroundTruthError, match=r"no SPIn-NeRF masks in .*room"):
        read_benchmark("spin-nerf", tmp_path, "room")
    save(tmp_path / "room" / "IMG_0001.png", np.zeros((H, W), np.uint8))
    with pytest.raises(GroundTruthError, match=r"IMG_0001.png is empty"):
        read_benchmark("spin-nerf", tmp_path, "room")
    (tmp_path / "room" / "IMG_0001.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(GroundTruthError, match=r"IMG_0001.png"):
        read_benchmark("spin-nerf", tmp_path, "room")


# ---------------------------------------------------------------- LERF-Mask


def write_lerf_mask_scene(scene: Path) -> dict:
    for i in range(1, 7):
        save(scene / "images" / f"frame_{i:05d}.jpg", rgb())
    for i in (1, 2, 4, 5):
        save(scene / "images_train" / f"frame_{i:05d}.jpg", rgb())
    apple = box(2, 12, 2, 12)
    apple[2:12, 12] = 100  # anti-aliased edge below the > 128 threshold
    duck = box(15, 25, 20, 35, value=200)
    save(scene / "test_mask" / "0" / "green apple.png", apple)
    save(scene / "test_mask" / "1" / "rubber duck with red hat.png", np.stack([duck] * 3, -1))
    return {"green apple": apple > 128, "rubber duck with red hat": duck > 128}


def test_lerf_mask_maps_test_view_indices_to_images(tmp_path):
    drawn = write_lerf_mask_scene(tmp_path / "figurines")
    gt = read_benchmark("lerf-mask", tmp_path, "figurines")
    assert gt.scene == "figurines" and len(gt.targets) == 2
    by_name = {t.name: t for t in gt.targets}
    assert by_name["green apple"].image == "frame_00003"  # test views: frames 3 and 6
    assert by_name["rubber duck with red hat"].image == "frame_00006"
    for name, target in by_name.items():
        assert target.text == name and target.positive_points == [] and target.reference_image is None
        assert np.array_equal(target.mask, drawn[name])
    assert by_name["green apple"].mask.sum() == 100


def test_lerf_mask_accepts_image_stem_folders(tmp_path):
    scene = tmp_path / "ramen"
    save(scene / "images" / "frame_00010.jpg", rgb())
    save(scene / "test_mask" / "frame_00010" / "egg.png", box(1, 4, 1, 4))
    (target,) = read_benchmark("lerf-mask", scene).targets
    assert (target.image, target.text, int(target.mask.sum())) == ("frame_00010", "egg", 9)


def test_lerf_mask_malformed_inputs_name_the_file(tmp_path):
    scene = tmp_path / "teatime"
    write_lerf_mask_scene(scene)
    save(scene / "test_mask" / "5" / "sheep.png", box(1, 4, 1, 4))
    with pytest.raises(GroundTruthError, match=r"test_mask/5: test view 5 does not exist"):
        read_benchmark("lerf-mask", tmp_path, "teatime")
    (scene / "test_mask" / "5" / "sheep.png").unlink()
    (scene / "test_mask" / "5").rmdir()
    for path in (scene / "images_train").iterdir():
        path.unlink()
    (scene / "images_train").rmdir()
    with pytest.raises(GroundTruthError, match=r"images_train"):
        read_benchmark("lerf-mask", tmp_path, "teatime")
    with pytest.raises(GroundTruthError, match=r"test_mask"):
        read_benchmark("lerf-mask", tmp_path / "teatime" / "images")


# ---------------------------------------------------------------- Replica (Gaga)


def test_replica_gaga_layout_keys_test_views_by_image_stem(tmp_path):
    folder = tmp_path / "office_0" / "semantic_instance"
    rng = np.random.default_rng(0)
    maps = {frame: rng.integers(0, 400, (H, W)).astype(np.uint16) for frame in ("0002", "0007")}  # ids > 255
    for frame, id_map in maps.items():
        save(folder / f"test_semantic_instance_{frame}.png", id_map)
    save(folder / "train_semantic_instance_0000.png", np.ones((H, W), np.uint8))
    save(tmp_path / "office_0" / "vis_sem_instance" / "test_vis_sem_instance_0002.png", rgb())
    gt = read_benchmark("replica", tmp_path, "office_0")
    assert gt.targets == [] and sorted(gt.instance_maps) == ["test_rgb_0002", "test_rgb_0007"]
    for frame, id_map in maps.items():
        assert np.array_equal(gt.instance_maps[f"test_rgb_{frame}"], id_map.astype(np.int32))


def test_replica_semantic_nerf_layout(tmp_path):
    folder = tmp_path / "room_0" / "Sequence_1" / "semantic_instance"
    id_map = box(0, 10, 0, 10, value=7)
    save(folder / "semantic_instance_5.png", id_map)
    save(folder / "vis_sem_instance_5.png", rgb())
    gt = read_benchmark("replica", tmp_path / "room_0")
    assert list(gt.instance_maps) == ["rgb_5"] and np.array_equal(gt.instance_maps["rgb_5"], id_map)


def test_replica_malformed_inputs_name_the_file(tmp_path):
    folder = tmp_path / "office_1" / "semantic_instance"
    save(folder / "test_semantic_instance_0002.png", rgb())
    with pytest.raises(GroundTruthError, match=r"test_semantic_instance_0002.png.*single-channel"):
        read_benchmark("replica", tmp_path, "office_1")
    (folder / "test_semantic_instance_0002.png").unlink()
    save(folder / "depth_0002.png", np.zeros((H, W), np.uint8))
    with pytest.raises(GroundTruthError, match=r"depth_0002.png"):
        read_benchmark("replica", tmp_path, "office_1")
    with pytest.raises(GroundTruthError, match=r"office_9"):
        read_benchmark("replica", tmp_path, "office_9")


# ---------------------------------------------------------------- LERF-OVS


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def shoelace(points) -> tuple:
    xs, ys = np.array(points, float).T
    area = 0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))
    perimeter = float(np.sum(np.hypot(xs - np.roll(xs, -1), ys - np.roll(ys, -1))))
    return area, perimeter


TRIANGLE = [[4, 4], [34, 6], [10, 26]]
SQUARE_A = [[40, 2], [50, 2], [50, 10], [40, 10]]
SQUARE_B = [[44, 20], [56, 20], [56, 28], [44, 28]]


def test_lerf_ovs_rasterises_polygons_and_unites_categories(tmp_path):
    write_json(
        tmp_path / "label" / "teatime" / "frame_00041.json",
        {
            "info": {"name": "frame_00041.jpg", "height": 32, "width": 60},
            "objects": [
                {"category": "sheep", "segmentation": TRIANGLE, "bbox": [4, 4, 34, 26]},
                {"category": "plate", "segmentation": SQUARE_A, "bbox": [40, 2, 50, 10]},
                {"category": "plate", "segmentation": SQUARE_B, "bbox": [44, 20, 56, 28]},
            ],
        },
    )
    gt = read_benchmark("lerf-ovs", tmp_path, "teatime")
    assert gt.scene == "teatime" and [t.name for t in gt.targets] == ["sheep", "plate"]
    sheep, plate = gt.targets
    assert sheep.image == plate.image == "frame_00041" and sheep.text == "sheep" and plate.text == "plate"
    assert sheep.mask.shape == (32, 60)
    area, perimeter = shoelace(TRIANGLE)
    assert abs(int(sheep.mask.sum()) - area) <= perimeter / 2 + 2
    assert sheep.mask[10, 12] and not sheep.mask[24, 30] and not sheep.mask[4, 40]  # [row, column]
    a, pa = shoelace(SQUARE_A)
    b, pb = shoelace(SQUARE_B)
    assert abs(int(plate.mask.sum()) - (a + b)) <= (pa + pb) / 2 + 4
    assert plate.mask[6, 45] and plate.mask[24, 50] and not plate.mask[15, 48]
    assert not (sheep.mask & plate.mask).any()


def test_lerf_ovs_labelme_variant_and_nested_polygons(tmp_path):
    path = write_json(
        tmp_path / "frame_00007.json",
        {
            "imagePath": "..\\images\\frame_00007.jpg",
            "imageHeight": 20,
            "imageWidth": 20,
            "shapes": [{"label": "cup", "points": [[2.9, 2.9], [8.9, 2.9], [8.9, 8.9], [2.9, 8.9]]}],
        },
    )
    image, masks = read_view(path)
    assert image == "frame_00007" and list(masks) == ["cup"]
    assert np.array_equal(np.argwhere(masks["cup"]).min(0), [2, 2]) and np.array_equal(np.argwhere(masks["cup"]).max(0), [8, 8])
    write_json(
        tmp_path / "frame_00008.json",
        {"info": {"name": "frame_00008.jpg", "height": 20, "width": 20},
         "objects": [{"category": "cup", "segmentation": [[[1, 1], [3, 1], [3, 3]], [[10, 10], [14, 10], [14, 14]]]},
                     {"category": "lid", "segmentation": [15, 1, 19, 1, 19, 5, 15, 5]}]},
    )
    _, masks = read_view(tmp_path / "frame_00008.json")
    assert masks["cup"][1, 2] and masks["cup"][11, 13] and not masks["cup"][6, 6]
    assert int(masks["lid"].sum()) == 25
    gt = read_benchmark("lerf-ovs", tmp_path)
    assert [(t.image, t.name) for t in gt.targets] == [("frame_00007", "cup"), ("frame_00008", "cup"), ("frame_00008", "lid")]


def test_lerf_ovs_malformed_inputs_name_the_file(tmp_path):
    folder = tmp_path / "label" / "ramen"
    write_json(folder / "frame_00001.json", {"info": {"name": "frame_00001.jpg"}, "objects": []})
    with pytest.raises(GroundTruthError, match=r"frame_00001.json: expected the image size"):
        read_benchmark("lerf-ovs", tmp_path, "ramen")
    (folder / "frame_00001.json").write_text("{not json")
    with pytest.raises(GroundTruthError, match=r"frame_00001.json"):
        read_benchmark("lerf-ovs", tmp_path, "ramen")
    write_json(folder / "frame_00001.json", {"info": {"height": 9, "width": 9}, "objects": [{"category": "egg", "segmentation": [[1, 1], [2, 2]]}]})
    with pytest.raises(GroundTruthError, match=r"frame_00001.json, object 0 \(egg\): a polygon needs at least 3"):
        read_benchmark("lerf-ovs", tmp_path, "ramen")
    with pytest.raises(GroundTruthError, match=r"label/waldo_kitchen"):
        read_benchmark("lerf-ovs", tmp_path, "waldo_kitchen")
