"""`segsplat extract` and the mask cache's per-image parts: resumable in-process, the same bytes on a real local Ray
cluster (started here, two workers, shut down afterwards), and a worker killed mid-run does not lose the run."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from segsplat_ns.masks.cache import MaskCache, parts_folder, read_part, write_part
from segsplat_ns.masks.sources import ClassicalMaskSource, MaskSourceConfig
from segsplat_ns.synthetic import SceneConfig, make_scene


@pytest.fixture(scope="module")
def extract_scene(tmp_path_factory) -> Path:
    """A scene whose classical masks take long enough per image for a worker to be killed mid-run."""
    out = tmp_path_factory.mktemp("extract") / "scene"
    return make_scene(SceneConfig(output=out, seed=5, num_objects=2, width=160, height=160, num_train_views=12,
                                  num_eval_views=2, language=False))  # fmt: skip


def images_of(scene: Path):
    from segsplat_ns.datamanager import SegSplatDataManagerConfig

    config = SegSplatDataManagerConfig(masks=MaskSourceConfig(source="classical"))
    config.dataparser.data = scene
    datamanager = config.setup(device="cpu", test_mode="val")
    paths, sizes = datamanager._train_paths_and_sizes()
    return datamanager, paths, sizes


def test_interrupted_extraction_resumes_and_matches_a_clean_run(extract_scene, tmp_path):
    datamanager, paths, sizes = images_of(extract_scene)
    source = ClassicalMaskSource()
    clean = MaskCache(tmp_path / "clean")
    clean.load_or_compute(source, paths, datamanager.train_image_uint8, image_sizes=sizes)
    (clean_file,) = (tmp_path / "clean").glob("*.bin")

    cache = MaskCache(tmp_path / "resumed")
    computed = []

    def dies_after_three(todo, folder):
        for i in todo[:3]:
            write_part(folder, i, source.masks_for(datamanager.train_image_uint8(i), paths[i]))
            computed.append(i)
        raise KeyboardInterrupt  # the machine goes away mid-run

    with pytest.raises(KeyboardInterrupt):
        cache.load_or_compute(source, paths, datamanager.train_image_uint8, image_sizes=sizes,
                              compute_missing=dies_after_three)  # fmt: skip
    folder = parts_folder(tmp_path / "resumed" / clean_file.name)
    assert sorted(p.name for p in folder.iterdir()) == ["000000.part", "000001.part", "000002.part"]
    assert not (tmp_path / "resumed" / clean_file.name).exists()  # no cache file until every image is done
    # a half-written part (a crash inside a write, were writes not atomic) is recomputed, not trusted
    (folder / "000002.part").write_bytes((folder / "000002.part").read_bytes()[:-5])
    assert read_part(folder, 2, sizes[2]) is None

    second = []

    def records(todo, folder):
        second.extend(todo)
        for i in todo:
            write_part(folder, i, source.masks_for(datamanager.train_image_uint8(i), paths[i]))

    cache.load_or_compute(source, paths, datamanager.train_image_uint8, image_sizes=sizes, compute_missing=records)
    assert second == list(range(2, len(paths)))  # only what was missing
    assert (tmp_path / "resumed" / clean_file.name).read_bytes() == clean_file.read_bytes()
    assert not folder.exists()  # parts removed once the file is written
    third = []
    cache.load_or_compute(source, paths, datamanager.train_image_uint8, image_sizes=sizes,
                          compute_missing=lambda todo, folder: third.extend(todo))  # fmt: skip
    assert third == []  # a finished cache computes nothing


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["classical", "folder"])
def test_ray_filled_cache_is_byte_for_byte_the_single_process_cache(ray_cluster, extract_scene, tmp_path, source):
    from segsplat_ns.distributed import RayPool, ray_masks

    datamanager, paths, sizes = images_of(extract_scene)
    config = MaskSourceConfig(source=source)
    here = MaskCache(tmp_path / "here")
    mask_source = config.setup(extract_scene)
    here.load_or_compute(mask_source, paths, datamanager.train_image_uint8, image_sizes=sizes)
    pool = RayPool(workers=2)
    extraction = ray_masks(pool, config, extract_scene, paths, datamanager.train_image_uint8, sizes)
    ray_cache = MaskCache(tmp_path / "ray")
    ray_cache.load_or_compute(mask_source, paths, datamanager.train_image_uint8, image_sizes=sizes,
                              compute_missing=extraction)  # fmt: skip
    (a,), (b,) = list((tmp_path / "here").glob("*.bin")), list((tmp_path / "ray").glob("*.bin"))
    assert a.name == b.name and a.read_bytes() == b.read_bytes()
    assert pool.rate is not None and pool.rate > 0


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_restarted_and_the_cache_completes(ray_cluster, extract_scene, tmp_path):
    from segsplat_ns.distributed import RayPool, ray_masks

    datamanager, paths, sizes = images_of(extract_scene)
    config = MaskSourceConfig(source="classical")
    mask_source = config.setup(extract_scene)
    reference = MaskCache(tmp_path / "here")
    reference.load_or_compute(mask_source, paths, datamanager.train_image_uint8, image_sizes=sizes)
    pool = RayPool(workers=2)
    extraction = ray_masks(pool, config, extract_scene, paths, datamanager.train_image_uint8, sizes)
    cache = MaskCache(tmp_path / "ray")
    errors = []

    def run():
        try:
            cache.load_or_compute(mask_source, paths, datamanager.train_image_uint8, image_sizes=sizes,
                                  compute_missing=extraction)  # fmt: skip
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 120
    while not pool.actors and time.time() < deadline:
        time.sleep(0.05)
    assert pool.actors, "the workers never started"
    pid = ray_cluster.get(pool.actors[0].pid.remote())
    os.kill(pid, signal.SIGKILL)  # the worker process dies while images are still queued
    thread.join(timeout=300)
    assert not thread.is_alive() and not errors, errors
    (a,), (b,) = list((tmp_path / "here").glob("*.bin")), list((tmp_path / "ray").glob("*.bin"))
    assert a.read_bytes() == b.read_bytes()
    assert not list((tmp_path / "ray").glob("*.parts"))  # no half-written entry left behind


@pytest.mark.slow
def test_ray_filled_clip_cache_matches_the_single_process_cache(ray_cluster, extract_scene, tmp_path):
    """The clip source with a random-weight ViT-B-16 (shapes and plumbing, not meaning): the same records, manifest
    written by the driver."""
    from functools import partial

    from segsplat_ns.distributed import RayPool, ray_language
    from segsplat_ns.language.cache import LanguageCache
    from segsplat_ns.language.encoders import OpenClipEncoder
    from segsplat_ns.language.features import read_record

    datamanager, paths, sizes = images_of(extract_scene)
    paths, sizes = paths[:2], sizes[:2]  # two images, one worker: each random ViT-B-16 takes a while to build
    source = ClassicalMaskSource()
    masks = MaskCache(tmp_path / "masks").load_or_compute(source, paths, datamanager.train_image_uint8, image_sizes=sizes)
    encoder = OpenClipEncoder.random_weights(seed=0)
    here = LanguageCache(tmp_path / "here").load_or_compute(encoder, paths, datamanager.train_image_uint8,
                                                             masks.__getitem__, source.cache_key(), image_sizes=sizes)
    pool = RayPool(workers=1)
    compute = ray_language(pool, partial(OpenClipEncoder.random_weights, seed=0), 32, datamanager.train_image_uint8,
                           masks.__getitem__)  # fmt: skip
    on_ray = LanguageCache(tmp_path / "ray").load_or_compute(encoder, paths, datamanager.train_image_uint8,
                                                              masks.__getitem__, source.cache_key(), image_sizes=sizes,
                                                              compute_missing=compute)  # fmt: skip
    assert pool.rate is not None
    for i in range(len(paths)):
        a = read_record(here.folder, here.stems[i])
        b = read_record(on_ray.folder, on_ray.stems[i])
        assert np.array_equal(a.index_maps, b.index_maps)
        # float16 CLIP features: equal up to the last bit of a different thread count's summation order
        assert np.abs(a.features.astype(np.float32) - b.features.astype(np.float32)).max() <= 2e-3
    calls = []
    LanguageCache(tmp_path / "ray").load_or_compute(encoder, paths, datamanager.train_image_uint8, masks.__getitem__,
                                                   source.cache_key(), image_sizes=sizes,
                                                   compute_missing=lambda todo, folder, stems: calls.append(todo))  # fmt: skip
    assert calls == []  # the manifest the driver wrote makes a second run compute nothing


def test_extract_without_ray_address_computes_here(extract_scene, tmp_path, capsys):
    from segsplat_ns.commands.extract import Extract
    from segsplat_ns.datamanager import SegSplatDataManagerConfig

    config = SegSplatDataManagerConfig(masks=MaskSourceConfig(source="classical"), cache_dir=tmp_path / "cache")
    assert Extract(data=extract_scene, datamanager=config).main() == 0
    out = capsys.readouterr().out
    assert "12 images" in out and "reuses these caches" in out
    (cache_file,) = (tmp_path / "cache").glob("masks_classical_*.bin")
    # what ns-train's datamanager loads from that folder is this file, unchanged
    datamanager, paths, sizes = images_of(extract_scene)
    before = cache_file.stat().st_mtime_ns
    masks = MaskCache(tmp_path / "cache").load_or_compute(ClassicalMaskSource(), paths, datamanager.train_image_uint8,
                                                          image_sizes=sizes)  # fmt: skip
    assert len(masks) == 12 and cache_file.stat().st_mtime_ns == before
    assert np.asarray(masks[0]).dtype == bool
