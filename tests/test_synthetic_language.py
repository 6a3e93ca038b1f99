"""The synthetic scene's stand-in for CLIP: language features, the stand-in text encoder and text ground truth
(segsplat_ns.synthetic_language, segsplat_ns.language.stand_in)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from PIL import Image

from segsplat_ns import synthetic_language
from segsplat_ns.eval.benchmarks.lerf_ovs import read_view
from segsplat_ns.language import stand_in
from segsplat_ns.language.features import (
    LanguageSourceError,
    assign_levels,
    build_record,
    index_maps_from_levels,
    read_record,
)
from segsplat_ns.language.sources import FolderLanguageSource
from segsplat_ns.language.stand_in import STAND_IN_FILE, StandInTextEncoder
from segsplat_ns.synthetic import OBJECT_TEMPLATES, SceneConfig, build_scene, make_scene

OLD_FILES_SHA256 = "1e87ec3cb73a630eb1aef4081b63008ea487a48455614643e507bee4aca74843"
"""sha256 over the files make_scene wrote before the stand-in language files existed (the small config below)."""
KINDS = {kind: [part for part, _ in template()] for kind, template in OBJECT_TEMPLATES.items()}
_TIMING: Dict[str, float] = {}


def _small_config(out: Path, **kw) -> SceneConfig:
    base = dict(output=out, seed=0, num_objects=3, width=48, height=48, num_train_views=6, num_eval_views=2)
    base.update(kw)
    return SceneConfig(**base)


def _is_language_file(rel: Path) -> bool:
    return rel.parts[:1] == ("language_features",) or rel.parts[:2] == ("gt", "text")


def _old_files_sha256(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not _is_language_file(rel):
            h.update(str(rel).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _language_files(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and _is_language_file(p.relative_to(root))}


def _read_png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


@pytest.fixture(scope="module")
def default_scene(tmp_path_factory) -> Path:
    """The default scene (96 px, 24 + 8 views, seed 0); the time write_language takes is kept for test_timing."""
    out = tmp_path_factory.mktemp("lang") / "scene"
    real = synthetic_language.write_language

    def timed(*args, **kwargs):
        start = time.perf_counter()
        real(*args, **kwargs)
        _TIMING["language"] = time.perf_counter() - start

    synthetic_language.write_language = timed  # make_scene imports it at call time
    try:
        start = time.perf_counter()
        make_scene(SceneConfig(output=out))
        _TIMING["total"] = time.perf_counter() - start
    finally:
        synthetic_language.write_language = real
    return out


def _frames(root: Path, key: str) -> List[str]:
    meta = json.loads((root / "gt" / "meta.json").read_text())
    return [Path(f).stem for f in meta[key]]


def _kind_of(root: Path) -> Dict[int, str]:
    meta = json.loads((root / "gt" / "meta.json").read_text())
    return {o["id"]: synthetic_language.object_kind(o["name"], KINDS) for o in meta["objects"]}


# ------------------------------------------------------------------------------------ old files unchanged


def test_pre_existing_files_are_byte_identical(tmp_path: Path):
    out = make_scene(_small_config(tmp_path / "s"))
    assert _old_files_sha256(out) == OLD_FILES_SHA256
    assert (out / "language_features" / STAND_IN_FILE).is_file()
    off = make_scene(_small_config(tmp_path / "off", language=False))
    assert _old_files_sha256(off) == OLD_FILES_SHA256
    assert not _language_files(off)


def test_same_seed_same_language_files_other_seed_differs(tmp_path: Path):
    root = make_scene(_small_config(tmp_path / "a"))
    a = _language_files(root)
    b = _language_files(make_scene(_small_config(tmp_path / "b")))
    c = _language_files(make_scene(_small_config(tmp_path / "c", seed=1)))
    assert a == b
    train, evals = _frames(root, "train_frames"), _frames(root, "eval_frames")
    assert (len(train), len(evals)) == (6, 2)
    expected = {f"language_features/{n}" for n in ("text_encoder.json", "text_encoder.npy")}
    expected |= {f"language_features/{stem}_{s}.npy" for stem in train for s in "sf"}
    expected |= {f"gt/text/{level}/{stem}.json" for stem in evals for level in ("objects", "parts")}
    assert set(a) == expected
    # the vocabulary covers every kind, so it does not depend on the scene; the features do
    assert a["language_features/text_encoder.npy"] == c["language_features/text_encoder.npy"]
    assert a["language_features/frame_00000_f.npy"] != c["language_features/frame_00000_f.npy"]


def test_overwrite_removes_stale_language_files(tmp_path: Path):
    out = tmp_path / "s"
    make_scene(_small_config(out, num_train_views=8, num_eval_views=4))
    make_scene(_small_config(out, overwrite=True))
    assert len(list((out / "language_features").glob("frame_*_s.npy"))) == 6
    assert len(list((out / "language_features").glob("frame_*_f.npy"))) == 6
    assert len(list((out / "gt" / "text" / "objects").glob("*.json"))) == 2
    assert len(list((out / "gt" / "text" / "parts").glob("*.json"))) == 2
    make_scene(_small_config(out, overwrite=True, language=False))
    assert not _language_files(out)
    assert _old_files_sha256(out) == OLD_FILES_SHA256


def test_cli_help_names_the_stand_in(capsys):
    import tyro

    with pytest.raises(SystemExit):
        tyro.cli(SceneConfig, args=["--help"])
    text = re.sub(r"[\s│]+", " ", capsys.readouterr().out)
    assert "stand-in for CLIP" in text and "--no-language" in text


# ------------------------------------------------------------------------------------ language features


def test_features_read_back_in_the_language_layout(default_scene: Path):
    folder = default_scene / "language_features"
    train = _frames(default_scene, "train_frames")
    h, w = _read_png(default_scene / "images" / f"{train[0]}.png").shape[:2]
    for stem in train:
        masks = torch.load(default_scene / "sam_masks" / f"{stem}.pt").numpy()
        record = read_record(folder, stem, expected_hw=(h, w), expected_dim=512)
        assert record.num_masks == len(masks)
        # exactly the layout build_record gives these masks (levels by assign_levels)
        expected = build_record(masks, np.zeros((len(masks), 512)))
        np.testing.assert_array_equal(record.index_maps, expected.index_maps)
        norms = np.linalg.norm(record.features.astype(np.float32), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    for stem in _frames(default_scene, "eval_frames"):
        assert not (folder / f"{stem}_s.npy").exists()
    paths = [default_scene / "images" / f"{s}.png" for s in train]
    features = FolderLanguageSource(folder).load(paths, [(h, w)] * len(paths))
    assert len(features) == len(train) and features[0].features.shape[1] == 512


def _mask_table(root: Path):
    """Per train mask: (embedding float64 [D], what it shows, object id, parts)."""
    scene_meta = json.loads((root / "gt" / "meta.json").read_text())
    scene = build_scene(json.loads((root / "transforms.json").read_text())["segsplat"]["seed"],
                        len(scene_meta["objects"]))
    labels = synthetic_language._Labels(scene, KINDS)
    rows = []
    for stem in _frames(root, "train_frames"):
        masks = torch.load(root / "sam_masks" / f"{stem}.pt").numpy()
        parts_map = _read_png(root / "gt" / "parts" / f"{stem}.png")
        objects_map = _read_png(root / "gt" / "objects" / f"{stem}.png")
        record = read_record(root / "language_features", stem)
        _, order = index_maps_from_levels(masks, assign_levels(masks))
        feats = np.zeros(record.features.shape)
        feats[order] = record.features.astype(np.float64)  # back to the masks' order
        for i, mask in enumerate(masks):
            what, oid, parts = synthetic_language.classify_mask(mask, parts_map, objects_map, labels)
            rows.append((feats[i], what, oid, parts))
    return rows, labels


def test_exact_masks_are_named_by_what_they_cover(tmp_path: Path):
    out = make_scene(_small_config(tmp_path / "s", mask_flaw_rate=0.0, num_objects=4))
    labels = synthetic_language._Labels(build_scene(0, 4), KINDS)
    counts = {"object": 0, "part": 0}
    for stem in _frames(out, "train_frames"):
        masks = torch.load(out / "sam_masks" / f"{stem}.pt").numpy()
        parts_map = _read_png(out / "gt" / "parts" / f"{stem}.png")
        objects_map = _read_png(out / "gt" / "objects" / f"{stem}.png")
        for mask in masks:
            what, oid, parts = synthetic_language.classify_mask(mask, parts_map, objects_map, labels)
            visible = [p for p in labels.object_parts[oid] if (parts_map == p).any()]
            if np.array_equal(mask, objects_map == oid):
                assert what == "object" and parts == visible
            else:
                (pid,) = [p for p in visible if np.array_equal(mask, parts_map == p)]
                assert (what, parts) == ("part", [pid])
            counts[what] += 1
    assert counts["object"] > 0 and counts["part"] > 0


def test_noise_and_wrong_level_rates(default_scene: Path):
    rows, labels = _mask_table(default_scene)
    obj_cos = [e @ labels.object_image[oid] for e, what, oid, _ in rows if what == "object"]
    part_rows = [(e, oid, parts[0]) for e, what, oid, parts in rows if what == "part"]
    wrong = [e @ labels.object_image[oid] > e @ labels.part_image[pid] for e, oid, pid in part_rows]
    kinds = {w for _, w, _, _ in rows}
    print(f"mean cos to the clean concept {np.mean(obj_cos):.3f} over {len(obj_cos)} object masks; "
          f"wrong level {np.mean(wrong):.3f} of {len(wrong)} part masks; kinds of masks {sorted(kinds)}")
    assert abs(np.mean(obj_cos) - synthetic_language.NOISE_COSINE) < 0.02
    assert 0.08 < np.mean(wrong) < 0.22
    assert "merged" in kinds


def _relevancy(e: np.ndarray, q: np.ndarray, canon: np.ndarray) -> np.ndarray:
    """LERF's relevancy: min over canonical phrases of softmax(10 [cos(e, q), cos(e, c)])[0]."""
    cq, cc = e @ q, e @ canon.T
    return (1.0 / (1.0 + np.exp(10.0 * (cc - cq[:, None])))).min(axis=1)


def test_relevancy_medians(default_scene: Path, tmp_path: Path):
    groups: Dict[str, List[float]] = {"own object": [], "own parts": [], "other objects": [], "absent kind": [],
                                      "part query, its part": [], "part query, its object": []}
    scenes = [default_scene, make_scene(SceneConfig(output=tmp_path / "s1", seed=1))]
    for root in scenes:
        encoder = StandInTextEncoder.from_folder(root / "language_features")
        canon = encoder.encode_text(stand_in.CANONICAL_PHRASES).double().numpy()
        rows, labels = _mask_table(root)
        emb = np.stack([r[0] for r in rows])
        present = set(labels.kind.values())
        for kind in KINDS:
            rel = _relevancy(emb, encoder.encode_text([kind]).double().numpy()[0], canon)
            for r, (_, what, oid, _) in zip(rel, rows):
                if kind not in present:
                    groups["absent kind"].append(r)
                elif labels.kind[oid] != kind:
                    groups["other objects"].append(r)
                else:
                    groups["own object" if what == "object" else "own parts"].append(r)
        for pid in labels.part_object:
            rel = _relevancy(emb, encoder.encode_text([labels.part_category(pid)]).double().numpy()[0], canon)
            for r, (_, what, oid, parts) in zip(rel, rows):
                if what == "part" and parts == [pid]:
                    groups["part query, its part"].append(r)
                elif what == "object" and oid == labels.part_object[pid]:
                    groups["part query, its object"].append(r)
    medians = {k: float(np.median(v)) for k, v in groups.items()}
    for k, v in groups.items():
        print(f"relevancy {k:24s} median {medians[k]:.3f}  (n = {len(v)})")
    assert medians["own object"] >= 0.8
    assert 0.3 < medians["own parts"] < 0.6
    assert medians["other objects"] <= 0.3 and medians["absent kind"] <= 0.3
    assert np.mean(np.array(groups["own object"]) > 0.5) == 1.0
    assert np.mean(np.array(groups["other objects"]) < 0.5) > 0.99
    assert medians["part query, its part"] >= 0.8 and medians["part query, its object"] < 0.5


# ------------------------------------------------------------------------------------ the stand-in encoder


def test_vocabulary_and_encode_text(default_scene: Path):
    folder = default_scene / "language_features"
    assert StandInTextEncoder.present(folder) and not StandInTextEncoder.present(default_scene)
    doc = json.loads((folder / STAND_IN_FILE).read_text())
    assert doc["kind"].startswith("synthetic stand-in for CLIP") and doc["dim"] == 512
    encoder = StandInTextEncoder.from_folder(folder)
    assert encoder.dim == 512 and "stand-in for CLIP" in encoder.kind
    vocab = set(encoder.vocabulary())
    for kind, parts in KINDS.items():
        assert kind in vocab and set(stand_in.KIND_SYNONYMS[kind]) <= vocab
        for part in parts:
            assert {f"{kind} {part}", f"{part} of the {kind}"} <= vocab
    assert set(stand_in.CANONICAL_PHRASES) <= vocab
    v = encoder.encode_text(["lamp shade", "  Lamp   SHADE ", "shade of the lamp", "snowman", "Snow Man", "robot"])
    assert v.dtype == torch.float32 and v.shape == (6, 512)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(6))
    assert torch.equal(v[0], v[1]) and torch.equal(v[0], v[2]) and torch.equal(v[3], v[4])
    cos = lambda a, b: float(v[a] @ v[b])  # noqa: E731
    assert abs(cos(0, 3)) < 0.2  # independent concepts
    lamp = encoder.encode_text(["lamp"])[0]
    assert abs(float(lamp @ v[0]) - stand_in.PART_OF_OBJECT) < 0.1  # a part is moderately like its object
    assert encoder.encode_text([]).shape == (0, 512)
    assert encoder.identity()["encoder"] == "stand-in"


def test_unknown_phrase_and_images_are_refused(default_scene: Path):
    encoder = StandInTextEncoder.from_folder(default_scene / "language_features")
    with pytest.raises(LanguageSourceError, match=r"stand-in text encoder knows only its own vocabulary: .* \(\d+ "
                                                  r"phrases, see .*text_encoder.json\); a real scene uses CLIP"):
        encoder.encode_text(["lamp", "a red sports car"])
    with pytest.raises(LanguageSourceError, match="no image encoder"):
        encoder.encode_images(np.zeros((1, 224, 224, 3), dtype=np.uint8))


def test_malformed_encoder_files_are_reported(default_scene: Path, tmp_path: Path):
    src = default_scene / "language_features"
    with pytest.raises(LanguageSourceError, match="No stand-in text encoder"):
        StandInTextEncoder.from_folder(tmp_path)

    def copy(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for f in ("text_encoder.json", "text_encoder.npy"):
            (folder / f).write_bytes((src / f).read_bytes())
        return folder

    broken = copy("json")
    (broken / STAND_IN_FILE).write_text("{not json")
    with pytest.raises(LanguageSourceError, match="not readable JSON"):
        StandInTextEncoder.from_folder(broken)
    row = copy("row")
    doc = json.loads((row / STAND_IN_FILE).read_text())
    doc["phrases"]["lamp"] = 10_000
    (row / STAND_IN_FILE).write_text(json.dumps(doc))
    with pytest.raises(LanguageSourceError, match="maps to row 10000"):
        StandInTextEncoder.from_folder(row)
    vectors = copy("npy")
    np.save(vectors / "text_encoder.npy", np.zeros((3, 512), dtype=np.float32))
    with pytest.raises(LanguageSourceError, match="sha256"):
        StandInTextEncoder.from_folder(vectors)
    missing = copy("missing")
    (missing / "text_encoder.npy").unlink()
    with pytest.raises(LanguageSourceError, match="cannot read its vectors"):
        StandInTextEncoder.from_folder(missing)
    same = StandInTextEncoder.from_folder(copy("same"))
    assert same.identity() == StandInTextEncoder.from_folder(src).identity()


# ------------------------------------------------------------------------------------ text ground truth


def _round_trip_ious(root: Path) -> Dict[str, List[float]]:
    kind = _kind_of(root)
    meta = json.loads((root / "gt" / "meta.json").read_text())
    part_category = {p["id"]: f"{kind[p['object']]} {p['name'].split('/', 1)[1]}" for p in meta["parts"]}
    ious: Dict[str, List[float]] = {"objects": [], "parts": []}
    for stem in _frames(root, "eval_frames"):
        for level, categories in (("objects", kind), ("parts", part_category)):
            ids = _read_png(root / "gt" / level / f"{stem}.png")
            path = root / "gt" / "text" / level / f"{stem}.json"
            doc = json.loads(path.read_text())
            assert doc["info"] == {"name": f"{stem}.png", "width": ids.shape[1], "height": ids.shape[0]}
            for entry in doc["objects"]:
                xy = np.array(entry["segmentation"])
                assert entry["bbox"] == [*xy.min(axis=0).tolist(), *xy.max(axis=0).tolist()]
            image, masks = read_view(path)
            assert image == stem
            big = [i for i in categories if (ids == i).sum() >= synthetic_language.MIN_GT_AREA]
            assert set(masks) == {categories[i] for i in big}
            for category, mask in masks.items():
                truth = np.isin(ids, [i for i in big if categories[i] == category])
                ious[level].append(float((mask & truth).sum() / (mask | truth).sum()))
    return ious


def test_text_ground_truth_round_trip(default_scene: Path, tmp_path: Path):
    crowded = make_scene(SceneConfig(output=tmp_path / "c", seed=0, num_objects=8, width=64, height=64))
    kinds = list(_kind_of(crowded).values())
    assert len(set(kinds)) < len(kinds)  # two objects share a kind, hence a category
    for name, root in (("default", default_scene), ("8 objects", crowded)):
        ious = _round_trip_ious(root)
        print(f"{name}: IoU objects min {min(ious['objects']):.3f} mean {np.mean(ious['objects']):.4f} "
              f"(n = {len(ious['objects'])}); parts min {min(ious['parts']):.3f} mean {np.mean(ious['parts']):.4f} "
              f"(n = {len(ious['parts'])})")
        assert min(ious["objects"]) >= 0.9 and min(ious["parts"]) >= 0.8


def test_timing(default_scene: Path):
    print(f"default scene: {_TIMING['total']:.2f} s, of which the stand-in language files {_TIMING['language']:.2f} s")
    assert _TIMING["language"] < 2.0
