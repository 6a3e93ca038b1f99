"""Bad inputs (issue 15): each case fails early with one line that names the fix, or is fixed when it used to give a
silent wrong result. Cheap unit-level checks; none trains. docs/bad-inputs.md lists every case and its test here.

To add a case: add a parametrised row (or a small test) next to the ones of the same command.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from segsplat_ns.errors import InputError, SegsplatError, run_with_clear_errors, user_error_types

# --------------------------------------------------------------------------------------------------------
# shared: a tiny dataset on disk (no rendering: a transforms.json, images, masks and ground truth by hand)


def tiny_dataset(root: Path, views: int = 3, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "sam_masks").mkdir()
    for level in ("objects", "parts"):
        (root / "gt" / level).mkdir(parents=True)
    frames = []
    for i in range(views):
        name = f"frame_{i:05d}"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        torch.save(torch.from_numpy(rng.random((2, size, size)) > 0.5), root / "sam_masks" / f"{name}.pt")
        for level in ("objects", "parts"):
            Image.fromarray(np.ones((size, size), np.uint8)).save(root / "gt" / level / f"{name}.png")
        frames.append({"file_path": f"images/{name}.png", "transform_matrix": np.eye(4).tolist()})
    (root / "transforms.json").write_text(json.dumps({"fl_x": 10, "fl_y": 10, "cx": 8, "cy": 8, "w": size, "h": size,
                                                      "frames": frames}))
    (root / "gt" / "meta.json").write_text(json.dumps({"objects": [{"id": 1, "name": "cube"}], "parts": []}))
    return root


def image_paths(root: Path):
    return sorted((root / "images").glob("*.png"))


# --------------------------------------------------------------------------------------------------------
# (a) silent wrong results


def test_data_given_as_transforms_json_finds_cache_and_ground_truth(tmp_path):
    from segsplat_ns.datamanager import dataset_root
    from segsplat_ns.eval.ground_truth import load_ground_truth

    data = tiny_dataset(tmp_path / "scene")
    assert dataset_root(data / "transforms.json") == data and dataset_root(data) == data
    paths = [data / "images" / "frame_00000.png"]
    assert load_ground_truth(dataset_root(data / "transforms.json"), paths, [(16, 16)]) is not None


def test_mask_cache_key_follows_image_content_not_size(tmp_path):
    from segsplat_ns.masks.cache import describe_key_difference, image_entries

    image = tmp_path / "a.bin"
    image.write_bytes(b"1234")
    before = image_entries([image], [(4, 4)])
    image.write_bytes(b"4321")  # same size, other content
    after = image_entries([image], [(4, 4)])
    assert before[0]["bytes"] == after[0]["bytes"] and before != after
    assert "content changed" in describe_key_difference({"images": before}, {"images": after})


@pytest.mark.parametrize("threshold", [-1.0, 1.5])
def test_segment_threshold_out_of_range_is_refused(tmp_path, threshold):
    from segsplat_ns.commands.segment import Segment, check_arguments

    config = tmp_path / "config.yml"
    config.write_text("x")
    with pytest.raises(SegsplatError, match=r"--threshold .* outside \[0, 1\]"):
        check_arguments(Segment(load_config=config, pixel=(1, 1), threshold=threshold))


def test_resume_without_repeating_rgb_steps_is_refused():
    from segsplat_ns.pipeline import check_resume_stage

    def model(rgb_steps, features_trained):
        return SimpleNamespace(config=SimpleNamespace(init_from=None, rgb_steps=rgb_steps),
                               features_trained=torch.tensor(features_trained))

    with pytest.raises(InputError, match="--pipeline.model.rgb-steps"):
        check_resume_stage(model(15000, True), 2999)
    check_resume_stage(model(2000, True), 2999)  # the flag repeated: fine
    check_resume_stage(model(15000, False), 2999)  # still in the RGB stage: fine


# --------------------------------------------------------------------------------------------------------
# (b) permissions, overwriting, segment's checks before the load


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    from segsplat_ns.io import atomic_open

    old = os.umask(umask)
    try:
        with atomic_open(tmp_path / "out.bin") as handle:
            handle.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == mode


def test_atomic_write_keeps_an_existing_files_mode(tmp_path):
    from segsplat_ns.io import atomic_open

    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)
    with atomic_open(target) as handle:
        handle.write(b"new")
    assert target.stat().st_mode & 0o777 == 0o640


def segment_args(tmp_path, **kwargs):
    from segsplat_ns.commands.segment import Segment

    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "config.yml").write_text("x")
    kwargs.setdefault("pixel", (1, 2))
    return Segment(load_config=run / "config.yml", **kwargs)


def test_segment_refuses_to_overwrite_without_flag(tmp_path):
    from segsplat_ns.commands.segment import check_arguments

    keep = tmp_path / "keep.ply"
    keep.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_arguments(segment_args(tmp_path, output=keep))
    check_arguments(segment_args(tmp_path, output=keep, overwrite=True))
    # the default output name too
    default = tmp_path / "run" / "segments" / "eval0_x1_y2_s0.50.png"
    default.parent.mkdir()
    default.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_arguments(segment_args(tmp_path))


@pytest.mark.parametrize("case", ["under_a_file", "folder", "not_ply", "no_permission"])
def test_segment_output_checked_before_the_load(tmp_path, monkeypatch, case):
    from segsplat_ns.commands import segment

    afile = tmp_path / "afile"
    afile.write_text("x")
    outputs = {"under_a_file": afile / "sel.ply", "folder": tmp_path, "not_ply": tmp_path / "sel.png",
               "no_permission": tmp_path / "locked" / "sel.ply"}
    messages = {"under_a_file": "is a file, not a folder", "folder": "is a folder", "not_ply": "ending in .ply",
                "no_permission": "permission denied"}
    if case == "no_permission":
        (tmp_path / "locked").mkdir()
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path).name == "locked" else real_access(path, mode))

    def no_load(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the arguments were checked")

    monkeypatch.setattr(segment, "load_run", no_load)
    with pytest.raises(SegsplatError, match=messages[case]):
        segment.run_segment(segment_args(tmp_path, output=outputs[case]))


def test_segment_without_eval_views_suggests_split_train(tmp_path):
    import typing

    from segsplat_ns.commands.segment import Segment, chosen_camera

    assert "train" in typing.get_args(typing.get_type_hints(Segment)["split"])  # the --split train it suggests
    manager = SimpleNamespace(eval_dataset=SimpleNamespace(cameras=[]), data_dir=Path("data/scene"),
                              train_dataset=SimpleNamespace(cameras=[0, 1, 2]))
    with pytest.raises(SegsplatError, match=r"data/scene has no eval views: pass --split train .*--camera 0\.\.2"):
        chosen_camera(segment_args(tmp_path), manager)
    assert chosen_camera(segment_args(tmp_path, split="train", camera=2), manager) == [2]
    with pytest.raises(SegsplatError, match=r"--camera 3 is out of range: the train split has 3 cameras \(0\.\.2\)"):
        chosen_camera(segment_args(tmp_path, split="train", camera=3), manager)


def test_segment_help_names_the_real_default_output(tmp_path):
    from segsplat_ns.commands.segment import Segment, click_output

    assert click_output(segment_args(tmp_path, scale=0.5)).name == "eval0_x1_y2_s0.50.ply"
    assert click_output(segment_args(tmp_path, level=2)).name == "eval0_x1_y2_l2.ply"
    source = Path(__import__("segsplat_ns.commands.segment", fromlist=["x"]).__file__).read_text()
    assert "s<scale\n    with 2 decimals>" in source and "_l<level>" in source and Segment.__doc__


# --------------------------------------------------------------------------------------------------------
# (c) tracebacks -> one line


@pytest.mark.parametrize(
    "case, message",
    [
        ("malformed_json", "not valid JSON"),
        ("missing_image", "does not exist under"),
        ("no_frames", "lists no frames"),
        ("empty_folder", "is empty"),
        ("images_only", "ns-process-data"),
        ("missing_folder", "does not exist"),
    ],
)
def test_bad_dataset_gives_one_line(tmp_path, case, message):
    from segsplat_ns.datamanager import check_dataset

    data = tiny_dataset(tmp_path / "scene")
    if case == "malformed_json":
        (data / "transforms.json").write_text('{"frames": [')
    elif case == "missing_image":
        (data / "images" / "frame_00001.png").unlink()
    elif case == "no_frames":
        (data / "transforms.json").write_text("{}")
    elif case == "empty_folder":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "images_only":
        (data / "transforms.json").unlink()
    elif case == "missing_folder":
        data = tmp_path / "nowhere"
    with pytest.raises(user_error_types(), match=message):
        check_dataset(data)
    if case not in ("missing_folder",):
        with pytest.raises(user_error_types(), match="ns-process-data|restore the image"):
            check_dataset(data)


def test_good_dataset_passes_and_json_path_is_accepted(tmp_path):
    from segsplat_ns.datamanager import check_dataset

    data = tiny_dataset(tmp_path / "scene")
    check_dataset(data)
    check_dataset(data / "transforms.json")


def test_segment_on_a_splatfacto_run_is_refused():
    from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

    from segsplat_ns.runs import check_segsplat_run

    config = SimpleNamespace(pipeline=VanillaPipelineConfig(), method_name="splatfacto")
    with pytest.raises(SegsplatError, match="'splatfacto' run, not a segsplat one.*init-from"):
        check_segsplat_run(config, Path("outputs/x/splatfacto/t/config.yml"))


@pytest.mark.parametrize("case", ["truncated_meta", "rgb_id_map", "truncated_png", "missing_png", "garbage_png"])
def test_malformed_ground_truth_names_the_file(tmp_path, case):
    from segsplat_ns.eval.ground_truth import GroundTruthError, load_ground_truth

    data = tiny_dataset(tmp_path / "scene")
    png = data / "gt" / "objects" / "frame_00000.png"
    if case == "truncated_meta":
        (data / "gt" / "meta.json").write_text('{"objects": [')
    elif case == "rgb_id_map":
        Image.fromarray(np.ones((16, 16, 3), np.uint8)).save(png)
    elif case == "truncated_png":
        png.write_bytes(png.read_bytes()[:40])
    elif case == "missing_png":
        png.unlink()
    elif case == "garbage_png":
        png.write_bytes(b"not a png at all")
    with pytest.raises(GroundTruthError) as error:
        load_ground_truth(data, image_paths(data), [(16, 16)] * 3)
    assert isinstance(error.value, user_error_types())
    assert ("meta.json" if case == "truncated_meta" else "frame_00000.png") in str(error.value)


@pytest.mark.parametrize("case", ["truncated_meta", "missing_png"])
def test_malformed_ground_truth_at_ns_train_start_up_names_the_fix(tmp_path, case):
    from segsplat_ns.datamanager import SegSplatDataManager, SegSplatDataManagerConfig
    from segsplat_ns.eval.ground_truth import GroundTruthError
    from segsplat_ns.masks.sources import MaskSourceConfig

    data = tiny_dataset(tmp_path / "scene")
    config = SegSplatDataManagerConfig(masks=MaskSourceConfig(source="folder"), cache_dir=tmp_path / "cache")
    config.dataparser.data = data
    manager = SegSplatDataManager.__new__(SegSplatDataManager)
    torch.nn.Module.__init__(manager)
    manager.__dict__.update(config=config, train_dataset=SimpleNamespace(image_filenames=image_paths(data)),
                            eval_dataset=SimpleNamespace(image_filenames=image_paths(data)),
                            cached_eval=[{"image": torch.zeros(16, 16, 3)}] * 3, _eval_ground_truth=None,
                            _eval_ground_truth_loaded=False)  # fmt: skip
    manager.check_feature_inputs()  # good ground truth: no error
    manager._eval_ground_truth_loaded = False
    if case == "truncated_meta":
        (data / "gt" / "meta.json").write_text('{"objects": [')
    else:
        (data / "gt" / "objects" / "frame_00001.png").unlink()
    with pytest.raises(GroundTruthError) as error:
        manager.check_feature_inputs()
    message = str(error.value)
    assert ("meta.json" if case == "truncated_meta" else "frame_00001.png") in message and "\n" not in message
    assert f"fix or regenerate it, or move {data / 'gt'} aside to train without segmentation metrics" in message


def test_ns_eval_keeps_image_metrics_when_ground_truth_is_malformed(monkeypatch, capsys):
    from nerfstudio.pipelines.base_pipeline import VanillaPipeline

    from segsplat_ns.eval.ground_truth import GroundTruthError
    from segsplat_ns.pipeline import SegSplatPipeline

    monkeypatch.setattr(VanillaPipeline, "get_average_eval_image_metrics", lambda self, **kwargs: {"psnr": 30.0})

    def broken():
        raise GroundTruthError("cannot read ground-truth mask gt/objects/frame_00000.png: truncated")

    pipeline = SegSplatPipeline.__new__(SegSplatPipeline)
    torch.nn.Module.__init__(pipeline)
    pipeline.__dict__["datamanager"] = SimpleNamespace(eval_ground_truth=broken, eval_dataset=[object()])
    pipeline.__dict__["_model"] = SimpleNamespace(has_features=True)
    assert pipeline.get_average_eval_image_metrics() == {"psnr": 30.0}
    assert "segmentation metrics skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_objects", 0, "--num-objects 0"),
        ("num_objects", 13, "--num-objects 13"),
        ("width", 3, "--width 3"),
        ("mask_flaw_rate", 1.5, "--mask-flaw-rate 1.5"),
        ("num_train_views", 0, "--num-train-views 0"),
        ("num_eval_views", 0, "--num-eval-views 0"),
    ],
)
def test_make_scene_argument_ranges(tmp_path, capsys, field, value, message):
    from segsplat_ns.synthetic import SceneConfig, make_scene

    config = SceneConfig(output=tmp_path / "scene", **{field: value})
    assert run_with_clear_errors(lambda: make_scene(config) and 0) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "scene").exists()


@pytest.mark.parametrize("content", [b"garbage" * 100, os.urandom(3000)])
def test_init_from_garbage_checkpoint_is_one_line(tmp_path, content):
    from segsplat_ns.compat.splatfacto import load_splatfacto_gaussians

    ckpt = tmp_path / "garbage.ckpt"
    ckpt.write_bytes(content)
    with pytest.raises(InputError, match="--pipeline.model.init-from .*not a PyTorch checkpoint") as error:
        load_splatfacto_gaussians(ckpt)
    assert "weights_only" not in str(error.value) and "\n" not in str(error.value)


def test_init_from_random_bytes_is_not_a_pytorch_checkpoint(tmp_path):
    """Random bytes (raw, zip-headed) and cut checkpoints: the unpickler raises IndexError, KeyError, EOFError,
    struct.error, UnicodeDecodeError, ... on them, the zip reader RuntimeError or OSError; one wording for all."""
    import random
    import re

    from segsplat_ns.compat.splatfacto import load_splatfacto_gaussians

    ckpt = tmp_path / "garbage.ckpt"
    torch.save({"pipeline": {"gauss_params.means": torch.zeros(1000, 3)}}, ckpt)
    real = ckpt.read_bytes()
    contents = [real[:cut] for cut in (len(real) // 2, len(real) - 10, 60)]  # cut short (-10: OSError EINVAL)
    for seed in range(300):
        rng = random.Random(seed)
        data = rng.randbytes(rng.randint(1, 64))
        contents += [data, b"PK\x03\x04" + data]
    kinds = set()
    for content in contents:
        ckpt.write_bytes(content)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns of the unusual pickle protocols random bytes name
            with pytest.raises(InputError) as error:
                load_splatfacto_gaussians(ckpt)
        message = str(error.value)
        assert "not a PyTorch checkpoint" in message and "\n" not in message, message
        kinds.add(re.search(r"another kind of file: ([\w.]+)", message).group(1))
    assert {"IndexError", "KeyError", "EOFError", "UnicodeDecodeError", "struct.error", "OSError"} <= kinds


@pytest.mark.parametrize(
    "error, damaged",
    [
        (IndexError("pop from empty list"), True),
        (EOFError(), True),
        (UnicodeDecodeError("utf-8", b"\xfe", 0, 1, "invalid start byte"), True),
        (__import__("struct").error("unpack requires a buffer of 4 bytes"), True),
        (ValueError("negative argument"), True),
        (__import__("pickle").UnpicklingError("invalid load key, 'h'."), True),
        (RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory"), True),
        (OSError(22, "Invalid argument"), True),
        (FileNotFoundError(2, "No such file or directory", "x.ckpt"), False),
        (PermissionError(13, "Permission denied", "x.ckpt"), False),
    ],
)
def test_load_error_summary_tells_damaged_bytes_from_file_access(error, damaged):
    from segsplat_ns.compat.nerfstudio import load_error_summary

    assert load_error_summary(error).startswith("not a PyTorch checkpoint") == damaged


def test_permission_errors_print_one_line(capsys):
    def command():
        raise PermissionError(13, "Permission denied", "/outputs/x.ply")

    assert run_with_clear_errors(command) == 2
    assert "Permission denied" in capsys.readouterr().err


def test_run_loaded_from_another_folder_finds_its_relative_dataset(tmp_path, monkeypatch):
    from segsplat_ns.runs import locate_dataset

    trained_in = tmp_path / "project"
    data = tiny_dataset(trained_in / "data" / "scene")
    run_dir = trained_in / "outputs" / "scene" / "saga" / "t"
    run_dir.mkdir(parents=True)
    manager = SimpleNamespace(data=Path("data/scene"), dataparser=SimpleNamespace(data=Path("data/scene")))
    config = SimpleNamespace(pipeline=SimpleNamespace(datamanager=manager),
                             get_base_dir=lambda: Path("outputs/scene/saga/t"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    locate_dataset(config, run_dir / "config.yml")
    assert manager.dataparser.data == data and manager.data == data
    shutil.rmtree(data)
    manager.data = manager.dataparser.data = Path("data/scene")
    with pytest.raises(SegsplatError, match="not found.*edit 'data:'"):
        locate_dataset(config, run_dir / "config.yml")


# --------------------------------------------------------------------------------------------------------
# (d) unclear messages


def test_segment_writes_nothing_wrong_when_ground_truth_is_malformed(capsys):
    from segsplat_ns.commands.segment import ground_truth_or_none
    from segsplat_ns.eval.ground_truth import GroundTruthError

    def broken():
        raise GroundTruthError("malformed ground-truth index gt/meta.json: Expecting value")

    assert ground_truth_or_none(SimpleNamespace(eval_ground_truth=broken)) is None
    assert "IoU not computed: malformed ground-truth index" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------
# (e) lost work: checked at start-up, checkpoint at the stage switch


@pytest.mark.parametrize("case, message", [("missing", "No mask file for image"), ("garbage", "Malformed mask file"),
                                           ("wrong_shape", r"expected \[N, H, W\]")])
def test_mask_files_checked_at_start_up(tmp_path, case, message):
    from segsplat_ns.masks.sources import MaskSourceConfig, MaskSourceError

    data = tiny_dataset(tmp_path / "scene")
    mask = data / "sam_masks" / "frame_00001.pt"
    if case == "missing":
        mask.unlink()
    elif case == "garbage":
        mask.write_bytes(os.urandom(500))
    elif case == "wrong_shape":
        torch.save(torch.zeros(16, 16, dtype=torch.bool), mask)
    MaskSourceConfig(source="folder").check_available(data)  # the folder exists: no per-image check without paths
    with pytest.raises(MaskSourceError, match=message) as error:
        MaskSourceConfig(source="folder").check_available(data, image_paths(data))
    assert "weights_only" not in str(error.value)


def test_good_mask_files_pass_the_start_up_check(tmp_path):
    from segsplat_ns.masks.sources import MaskSourceConfig

    data = tiny_dataset(tmp_path / "scene")
    MaskSourceConfig(source="folder").check_available(data, image_paths(data))


@pytest.mark.parametrize("content", [b"garbage", None])
def test_garbage_sam_checkpoint_checked_at_start_up(tmp_path, content):
    from segsplat_ns.masks.sources import MaskSourceConfig, MaskSourceError

    checkpoint = tmp_path / "sam.pth"
    if content is None:
        torch.save({"not_sam.weight": torch.zeros(2)}, checkpoint)
    else:
        checkpoint.write_bytes(content * 100)
    config = MaskSourceConfig(source="sam", sam_checkpoint=checkpoint, sam_model_type="vit_b")
    with pytest.raises(MaskSourceError, match="Could not load SAM vit_b weights") as error:
        config.check_available(tmp_path)
    assert "weights_only" not in str(error.value) and "source classical" in str(error.value)


class ConstantSource:
    name = "const"
    calls = 0

    def cache_key(self):
        return {"source": "const"}

    def masks_for(self, image, image_path):
        ConstantSource.calls += 1
        return np.ones((6, 4, 4), dtype=bool)


def test_cache_with_header_edited_in_place_is_rebuilt(tmp_path):
    from segsplat_ns.masks.cache import MAGIC, MaskCache, MaskCacheWarning

    image = tmp_path / "img.png"
    image.write_bytes(b"png")
    cache = MaskCache(tmp_path / "cache")
    load = lambda i: np.zeros((4, 4, 3), np.uint8)  # noqa: E731
    cache.load_or_compute(ConstantSource(), [image], load, image_sizes=[(4, 4)])
    (path,) = (tmp_path / "cache").glob("*.bin")
    raw = path.read_bytes()
    raw = raw.replace(b'"shape": [6, 4, 4]', b'"shape": [7, 4, 4]')
    assert raw.startswith(MAGIC) and b'"shape": [7, 4, 4]' in raw
    path.write_bytes(raw)
    ConstantSource.calls = 0
    with pytest.warns(MaskCacheWarning, match="corrupt"):
        masks = cache.load_or_compute(ConstantSource(), [image], load, image_sizes=[(4, 4)], lazy=True)
    assert ConstantSource.calls == 1 and masks[0].shape == (6, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten: the next run loads it quietly
        assert cache.load_or_compute(ConstantSource(), [image], load, image_sizes=[(4, 4)])[0].shape == (6, 4, 4)


def test_unreadable_cache_folder(tmp_path, monkeypatch):
    from segsplat_ns.datamanager import check_writable_folder
    from segsplat_ns.masks.cache import MaskCache, MaskCacheWarning

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(InputError, match="--pipeline.datamanager.cache-dir"):
        check_writable_folder(afile / "cache", "--pipeline.datamanager.cache-dir")
    check_writable_folder(tmp_path / "ok", "--pipeline.datamanager.cache-dir")

    real_exists = Path.exists

    def exists(self, *args, **kwargs):
        if self.parent.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    image = tmp_path / "img.png"
    image.write_bytes(b"png")
    with pytest.warns(MaskCacheWarning, match="Cannot look into the mask cache folder"):
        masks = MaskCache(tmp_path / "locked").load_or_compute(
            ConstantSource(), [image], lambda i: np.zeros((4, 4, 3), np.uint8), image_sizes=[(4, 4)])
    assert masks[0].shape == (6, 4, 4)


def test_rgb_stage_is_saved_before_the_feature_stage():
    from segsplat_ns.pipeline import SegSplatPipeline

    saved = []
    pipeline = SegSplatPipeline.__new__(SegSplatPipeline)
    torch.nn.Module.__init__(pipeline)
    pipeline.__dict__["_model"] = SimpleNamespace(config=SimpleNamespace(init_from=None), feature_start_step=3000)
    pipeline.__dict__["_trainer"] = SimpleNamespace(save_checkpoint=saved.append, checkpoint_dir=Path("ckpts"))
    pipeline.checkpoint_rgb_stage(3000)
    assert saved == [2999]  # --load-dir resumes at step 3000: the stage switch

    def full_disk(step):
        raise OSError("No space left on device")

    pipeline.__dict__["_trainer"] = SimpleNamespace(save_checkpoint=full_disk, checkpoint_dir=Path("ckpts"))
    pipeline.checkpoint_rgb_stage(3000)  # a failed save does not stop training


@pytest.mark.parametrize(
    "start_step, step, saved_steps, message",
    [
        (0, 3000, [2999], "RGB stage saved (step 2999)"),  # the switch, after an RGB stage trained here
        (3000, 3000, [], None),  # --load-dir of the RGB stage's checkpoint: that checkpoint is all there is
        (5001, 5001, [], "Resumed in the feature stage (step 5001)"),  # --load-dir past the switch
    ],
)
def test_rgb_stage_saved_only_when_this_process_trained_it(monkeypatch, capsys, start_step, step, saved_steps,
                                                          message):
    from segsplat_ns.pipeline import SegSplatPipeline

    saved = []
    monkeypatch.setattr(SegSplatPipeline, "prepare_feature_stage", lambda self: None)
    pipeline = SegSplatPipeline.__new__(SegSplatPipeline)
    torch.nn.Module.__init__(pipeline)
    pipeline.__dict__["_model"] = SimpleNamespace(config=SimpleNamespace(init_from=None), feature_start_step=3000)
    pipeline.__dict__["_trainer"] = SimpleNamespace(save_checkpoint=saved.append, checkpoint_dir=Path("ckpts"),
                                                    _start_step=start_step)
    pipeline.begin_feature_stage(step)
    out = " ".join(capsys.readouterr().out.split())
    assert saved == saved_steps
    assert "RGB stage saved" not in out if message is None else message in out
    if step != 3000:
        assert "RGB stage" not in out  # a feature-stage checkpoint is never called the RGB stage
    # stage_seconds.json times a whole feature stage only
    assert ("_feature_stage_started" in pipeline.__dict__) == (step == 3000)


def test_error_lines_have_no_colour_codes_when_redirected(capsys):
    def command():
        raise SegsplatError("bad")

    assert run_with_clear_errors(command) == 2
    assert capsys.readouterr().err == "error: bad\n"


def test_missing_dataset_message_of_ns_train_names_data(tmp_path):
    from segsplat_ns.datamanager import check_dataset

    with pytest.raises(FileNotFoundError, match="does not exist: pass --data") as error:
        check_dataset(tmp_path / "data" / "scene")
    assert "ns-eval" not in str(error.value)


def test_ns_eval_from_another_folder_names_the_folder_to_run_it_from(tmp_path, monkeypatch):
    """ns-eval (nerfstudio's loader) reads a run's relative --data and checkpoints from the current folder."""
    import sys

    import yaml
    from nerfstudio.engine.trainer import TrainerConfig

    from segsplat_ns.datamanager import SegSplatDataManager, SegSplatDataManagerConfig

    trained_in = tmp_path / "project"
    tiny_dataset(trained_in / "data" / "scene")
    run_dir = trained_in / "outputs" / "scene" / "saga" / "t"
    run_dir.mkdir(parents=True)
    run = TrainerConfig(method_name="saga", experiment_name="scene", timestamp="t", output_dir=Path("outputs"))
    (run_dir / "config.yml").write_text(yaml.dump(run))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/ns-eval", "--load-config", str(run_dir / "config.yml")])
    config = SegSplatDataManagerConfig()
    config.dataparser.data = Path("data/scene")
    with pytest.raises(FileNotFoundError) as error:
        SegSplatDataManager(config, test_mode="test")
    message = str(error.value)
    assert f"run ns-eval from there (cd {trained_in})" in message and "\n" not in message
    assert "ns-train:" not in message and "pass --data" not in message
    shutil.rmtree(trained_in / "data")
    with pytest.raises(FileNotFoundError, match=f"neither here nor in {trained_in} .*edit 'data:'.*run ns-eval from"):
        SegSplatDataManager(config, test_mode="test")


def test_ns_eval_without_eval_views_names_the_fix():
    """A dataset from elsewhere whose transforms.json lists no eval images: one line, not nerfstudio's IndexError."""
    from types import SimpleNamespace

    from segsplat_ns.pipeline import SegSplatPipeline

    fake = SimpleNamespace(datamanager=SimpleNamespace(eval_dataset=[], data_dir=Path("/data/scene")))
    with pytest.raises(SystemExit, match=r"/data/scene has no eval views.*'test_filenames'"):
        SegSplatPipeline.get_average_eval_image_metrics(fake)
