"""The language source wired into the datamanager and ns-train: batches carry each image's CLIP record, and a
source that cannot deliver fails at start-up with the fix, before any training step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run, train_args

from segsplat_ns.language.features import build_record, write_record
from segsplat_ns.synthetic import SceneConfig, make_scene


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory) -> Path:
    # without the stand-in language files: these tests write their own, and test the folder source's absence
    config = SceneConfig(output=tmp_path_factory.mktemp("lang") / "scene", seed=1, num_objects=1, width=32, height=32,
                         num_train_views=3, num_eval_views=1, language=False)
    return make_scene(config)


def setup_datamanager(scene: Path, **language):
    from segsplat_ns.datamanager import SegSplatDataManagerConfig
    from segsplat_ns.language.sources import LanguageSourceConfig

    config = SegSplatDataManagerConfig(language=LanguageSourceConfig(**language))
    config.dataparser.data = scene
    return config.setup(device="cpu", test_mode="val")


def test_folder_language_features_reach_every_batch(small_scene, tmp_path):
    folder = tmp_path / "language_features"
    datamanager = setup_datamanager(small_scene, source="folder", folder=folder)
    paths = [Path(p) for p in datamanager.train_dataset.image_filenames]
    expected = {}
    for index, path in enumerate(paths):
        height, width = datamanager.cached_train[index]["image"].shape[:2]
        masks = np.zeros((2, height, width), dtype=bool)
        masks[0, : height // 2] = True  # a whole...
        masks[1, : height // 4, : width // 4] = True  # ...and a part inside it
        features = np.eye(2, 512, k=index, dtype=np.float32)
        record = build_record(masks, features)
        write_record(folder, path.stem, record)
        expected[index] = record
    assert datamanager.load_train_language() is not None
    masks = datamanager.load_train_masks()
    datamanager.set_mask_scales([torch.rand(m.shape[0]) for m in masks])
    seen = set()
    for step in range(6):
        camera, batch = datamanager.next_train(step)
        index = int(camera.metadata["cam_idx"])
        record = batch["language"]
        assert record.index_maps.dtype == np.int16 and record.index_maps.shape == (3, 32, 32)
        assert np.array_equal(record.index_maps, expected[index].index_maps)
        assert np.array_equal(record.features, expected[index].features)
        seen.add(index)
    assert seen == set(range(len(paths)))


def test_no_language_source_adds_nothing(small_scene):
    datamanager = setup_datamanager(small_scene)
    assert datamanager.load_train_language() is None
    masks = datamanager.load_train_masks()
    datamanager.set_mask_scales([torch.rand(m.shape[0]) for m in masks])
    _, batch = datamanager.next_train(0)
    assert "language" not in batch and "masks" in batch


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--pipeline.datamanager.language.source", "clip"], ["clip-checkpoint", "source folder"]),
        (["--pipeline.datamanager.language.source", "folder"], ["does not exist", "source clip"]),
    ],
)
def test_ns_train_refuses_an_unavailable_language_source_at_start(small_scene, tmp_path, flags, words):
    result = run(train_args("saga", small_scene, "nolang") + flags, cwd=tmp_path,
                 env_extra={"SEGSPLAT_CACHE": str(tmp_path / "cache")})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert all(word in output for word in words), output[-2000:]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("step-*.ckpt"))  # failed before training
