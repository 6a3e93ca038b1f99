"""A seeded synthetic dataset with ground-truth objects and parts, in nerfstudio's format.

``make_scene(SceneConfig(output=...))`` builds a small scene of several objects floating in front of a plain
background. Every object is made of 2-3 analytic primitive *parts* (spheres, axis-aligned boxes, z-aligned
capped cylinders), each part with its own flat colour and a mild procedural texture, e.g. a snowman is three
stacked spheres, a table is a box top plus legs, a mushroom is a cylinder stem plus a spherical cap. Images
are rendered by exact analytic ray casting (vectorised numpy) with Lambertian + ambient shading, so the
ground-truth id maps are exact per pixel (id = the part hit by the ray through the pixel centre; RGB is
2x2 supersampled). The same seed gives byte-identical files.

World frame: z up, the scene spans about [-1, 1]^3 around the origin. Cameras sit on a ring looking at the
origin with a slightly varying elevation; eval views lie at azimuths between the train views'.

Output layout::

    <output>/transforms.json     nerfstudio format: "camera_model": "OPENCV", fl_x, fl_y, cx, cy, w, h,
                                 k1, k2, p1, p2 (= 0); "frames": [{"file_path": "images/frame_00000.png",
                                 "transform_matrix": 4x4 camera-to-world, nerfstudio/OpenGL convention (x right,
                                 y up, the camera looks down -z)}]; "ply_file_path": "sparse_pc.ply";
                                 "train_filenames" / "val_filenames" / "test_filenames" (file_path values;
                                 val == test == the eval views), which nerfstudio's dataparser honours;
                                 "segsplat": {"seed", "version", "num_objects"}.
                                 Written last: a folder is a complete dataset iff it has transforms.json.
    <output>/images/frame_XXXXX.png        RGB uint8, all views (train and eval)
    <output>/sparse_pc.ply                 binary ply, float x, y, z + uchar red, green, blue: points sampled
                                           on each part's visible surface, coloured by the part (nerfstudio
                                           loads it as splatfacto's seed points with load_3D_points=True).
    <output>/gt/objects/frame_XXXXX.png    uint8 id map, 0 = background, 1..num_objects (all views)
    <output>/gt/parts/frame_XXXXX.png      uint8 id map, 0 = background, parts numbered globally 1..num_parts
    <output>/gt/meta.json                  {"objects": [{"id", "name", "parts": [part ids]}],
                                            "parts": [{"id", "name", "object", "color"}],
                                            "train_frames": [...], "eval_frames": [...]}  (frame file_paths)
    <output>/sam_masks/frame_XXXXX.pt      TRAIN views only: torch.save of a bool tensor [N_masks, H, W]
                                           (SAGA's layout), masks in arbitrary order.

With ``language`` (default), also a stand-in for CLIP (not a language model; ``synthetic_language.py``):

    <output>/language_features/frame_XXXXX_s.npy, _f.npy   TRAIN views only: one noisy 512-d embedding per
                                           sam_masks mask, named by what it covers, in LangSplat's layout
                                           (``segsplat_ns/language/features.py``)
    <output>/language_features/text_encoder.json, .npy     the stand-in text encoder's vocabulary (every
                                           kind's phrases) and vectors (``segsplat_ns/language/stand_in.py``)
    <output>/gt/text/objects/frame_XXXXX.json              EVAL views only: LERF-OVS annotation, category =
                                           object kind, polygons traced from gt/objects
    <output>/gt/text/parts/frame_XXXXX.json                EVAL views only: the same for parts ("lamp shade")

The ``sam_masks`` imitate SAM's automatic mask generator: per view, a mask for every visible object and
every visible part (nested granularity, parts inside their object), with seeded flaws whose frequency is set
by ``mask_flaw_rate`` (r):

- a visible part is merged with a neighbouring part of the same object into one mask with probability 2r/3;
- a (non-merged) part mask is missing with probability r (object masks are never dropped);
- each mask's boundary is jittered (eroded by 1 px, or dilated by 1 px, sometimes 2) with probability
  min(1, 3r);
- masks smaller than ``MIN_MASK_AREA`` pixels are dropped (after jitter).

``mask_flaw_rate = 0`` gives exact masks. Every file is written atomically (temporary name in the same
folder, then ``os.replace``).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from segsplat_ns.errors import InputError
from segsplat_ns.io import atomic_open

FORMAT_VERSION = 1
MIN_MASK_AREA = 20
"""SAM-like masks with fewer pixels than this are dropped."""
SUPERSAMPLE = 2
"""RGB is averaged over SUPERSAMPLE x SUPERSAMPLE rays per pixel; id maps use the pixel-centre ray."""
LIGHT_DIR = np.array([0.45, 0.3, 0.84]) / np.linalg.norm([0.45, 0.3, 0.84])
AMBIENT = 0.45
TEXTURE_AMPLITUDE = 0.08
HORIZONTAL_FOV_DEG = 45.0
FRAME_MARGIN_PX = 3
"""Cameras stand back so every primitive's bounding box projects this far inside every view's border."""


@dataclass
class SceneConfig:
    """Generate the synthetic segmentation scene (objects made of parts, with ground truth and SAM-like masks)."""

    output: Path
    """Dataset folder to write."""
    seed: int = 0
    """Random seed: the same seed gives byte-identical files."""
    num_objects: int = 3
    """Number of objects (1-12), each made of 2-3 parts."""
    width: int = 96
    """Image width in pixels."""
    height: int = 96
    """Image height in pixels."""
    num_train_views: int = 24
    """Number of training views (ring around the scene)."""
    num_eval_views: int = 8
    """Number of eval views, at azimuths between the training views'."""
    points_per_part: int = 400
    """Seed points sampled on each part's surface (sparse_pc.ply)."""
    mask_flaw_rate: float = 0.15
    """SAM-like flaw rate r in [0, 1): parts missing (r), merged (2r/3), jittered (min(1, 3r)); 0: exact masks."""
    background: Tuple[int, int, int] = (255, 255, 255)
    """Background RGB colour (white matches splatfacto's --pipeline.model.background-color white)."""
    overwrite: bool = False
    """Write into a non-empty existing folder (replacing this generator's files)."""
    language: bool = True
    """Write the stand-in language features and text ground truth: a stand-in for CLIP on this scene (not a
    language model) for text-prompt benchmarks (language_features/, gt/text/)."""


# --------------------------------------------------------------------------------------------------------
# Primitives and ray casting


@dataclass
class Primitive:
    """One analytic primitive. kind: "sphere" (center, radius), "box" (lo, hi) or "cylinder" (center xy,
    radius, z0, z1; axis along z, capped)."""

    kind: str
    center: np.ndarray  # sphere: xyz; cylinder: xy (+0); box: unused (mid point)
    radius: float = 0.0
    lo: Optional[np.ndarray] = None
    hi: Optional[np.ndarray] = None
    z0: float = 0.0
    z1: float = 0.0

    def transformed(self, scale: float, offset: np.ndarray) -> "Primitive":
        offset = np.asarray(offset, dtype=np.float64)
        if self.kind == "sphere":
            return Primitive("sphere", self.center * scale + offset, self.radius * scale)
        if self.kind == "box":
            lo, hi = self.lo * scale + offset, self.hi * scale + offset
            return Primitive("box", (lo + hi) / 2, lo=lo, hi=hi)
        c = self.center * scale + offset
        return Primitive(
            "cylinder", np.array([c[0], c[1], 0.0]), self.radius * scale,
            z0=self.z0 * scale + offset[2], z1=self.z1 * scale + offset[2],
        )

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        if self.kind == "sphere":
            return self.center - self.radius, self.center + self.radius
        if self.kind == "box":
            return self.lo, self.hi
        r = self.radius
        return (np.array([self.center[0] - r, self.center[1] - r, self.z0]),
                np.array([self.center[0] + r, self.center[1] + r, self.z1]))

    def max_norm(self) -> float:
        """Largest distance from the world origin of a point of this primitive."""
        if self.kind == "sphere":
            return float(np.linalg.norm(self.center) + self.radius)
        if self.kind == "box":
            corners = np.array([[x, y, z] for x in (self.lo[0], self.hi[0]) for y in (self.lo[1], self.hi[1])
                                for z in (self.lo[2], self.hi[2])])
            return float(np.linalg.norm(corners, axis=1).max())
        rxy = float(np.linalg.norm(self.center[:2])) + self.radius
        return float(math.hypot(rxy, max(abs(self.z0), abs(self.z1))))

    def area(self) -> float:
        if self.kind == "sphere":
            return 4 * math.pi * self.radius**2
        if self.kind == "box":
            e = self.hi - self.lo
            return 2 * (e[0] * e[1] + e[1] * e[2] + e[0] * e[2])
        return 2 * math.pi * self.radius * (self.z1 - self.z0) + 2 * math.pi * self.radius**2

    def contains(self, p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
        """Strictly inside (by more than eps)."""
        if self.kind == "sphere":
            return np.linalg.norm(p - self.center, axis=-1) < self.radius - eps
        if self.kind == "box":
            return np.all((p > self.lo + eps) & (p < self.hi - eps), axis=-1)
        rad = np.linalg.norm(p[:, :2] - self.center[:2], axis=-1)
        return (rad < self.radius - eps) & (p[:, 2] > self.z0 + eps) & (p[:, 2] < self.z1 - eps)

    def intersect(self, o: np.ndarray, d: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Nearest hit t > 0 along rays o + t d (inf when missed) and the outward unit normal there."""
        n = o.shape[0]
        normal = np.zeros((n, 3))
        if self.kind == "sphere":
            oc = o - self.center
            b = np.einsum("ij,ij->i", oc, d)
            a = np.einsum("ij,ij->i", d, d)
            c = np.einsum("ij,ij->i", oc, oc) - self.radius**2
            disc = b * b - a * c
            ok = disc >= 0
            sq = np.sqrt(np.where(ok, disc, 0.0))
            t0 = (-b - sq) / a
            t1 = (-b + sq) / a
            t = np.where(t0 > 1e-9, t0, t1)
            t = np.where(ok & (t > 1e-9), t, np.inf)
            hit = np.isfinite(t)
            p = o[hit] + t[hit, None] * d[hit]
            normal[hit] = (p - self.center) / self.radius
            return t, normal
        if self.kind == "box":
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = 1.0 / d
                ta = (self.lo - o) * inv
                tb = (self.hi - o) * inv
            tmin_ax = np.minimum(ta, tb)
            tmax_ax = np.maximum(ta, tb)
            # rays parallel to a slab: inside the slab -> (-inf, inf), outside -> miss
            par = d == 0
            inside = (o >= self.lo) & (o <= self.hi)
            tmin_ax = np.where(par, np.where(inside, -np.inf, np.inf), tmin_ax)
            tmax_ax = np.where(par, np.where(inside, np.inf, -np.inf), tmax_ax)
            tmin = tmin_ax.max(axis=1)
            tmax = tmax_ax.min(axis=1)
            axis = tmin_ax.argmax(axis=1)
            ok = (tmax >= tmin) & (tmin > 1e-9)
            t = np.where(ok, tmin, np.inf)
            idx = np.nonzero(ok)[0]
            normal[idx, axis[idx]] = -np.sign(d[idx, axis[idx]])
            return t, normal
        # capped cylinder along z
        cx, cy, r = self.center[0], self.center[1], self.radius
        ox, oy = o[:, 0] - cx, o[:, 1] - cy
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = ox * d[:, 0] + oy * d[:, 1]
        c = ox**2 + oy**2 - r * r
        disc = b * b - a * c
        ok = (disc >= 0) & (a > 1e-12)
        with np.errstate(divide="ignore", invalid="ignore"):
            ts = (-b - np.sqrt(np.where(ok, disc, 0.0))) / np.where(a > 1e-12, a, 1.0)
        zs = o[:, 2] + ts * d[:, 2]
        side = ok & (ts > 1e-9) & (zs >= self.z0) & (zs <= self.z1)
        t_side = np.where(side, ts, np.inf)
        t_best = t_side.copy()
        kind = np.zeros(n, dtype=np.int8)  # 0 side, 1 bottom, 2 top
        for k, zc in ((1, self.z0), (2, self.z1)):
            with np.errstate(divide="ignore", invalid="ignore"):
                tc = (zc - o[:, 2]) / d[:, 2]
            px, py = ox + tc * d[:, 0], oy + tc * d[:, 1]
            cap = np.isfinite(tc) & (tc > 1e-9) & (px * px + py * py <= r * r)
            better = cap & (tc < t_best)
            t_best = np.where(better, tc, t_best)
            kind = np.where(better, k, kind)
        hit = np.isfinite(t_best)
        p = o + np.where(hit, t_best, 0.0)[:, None] * d
        side_hit = hit & (kind == 0)
        normal[side_hit, 0] = (p[side_hit, 0] - cx) / r
        normal[side_hit, 1] = (p[side_hit, 1] - cy) / r
        normal[hit & (kind == 1), 2] = -1.0
        normal[hit & (kind == 2), 2] = 1.0
        return t_best, normal

    def sample_surface(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "sphere":
            v = rng.normal(size=(n, 3))
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            return self.center + self.radius * v
        if self.kind == "box":
            lo, hi = self.lo, self.hi
            e = hi - lo
            face_area = np.array([e[1] * e[2], e[1] * e[2], e[0] * e[2], e[0] * e[2], e[0] * e[1], e[0] * e[1]])
            face = rng.choice(6, size=n, p=face_area / face_area.sum())
            p = lo + rng.random((n, 3)) * e
            ax = face // 2
            p[np.arange(n), ax] = np.where(face % 2 == 0, lo[ax], hi[ax])
            return p
        r, h = self.radius, self.z1 - self.z0
        areas = np.array([2 * math.pi * r * h, math.pi * r * r, math.pi * r * r])
        which = rng.choice(3, size=n, p=areas / areas.sum())
        ang = rng.random(n) * 2 * math.pi
        rad = np.where(which == 0, r, r * np.sqrt(rng.random(n)))
        z = np.where(which == 0, self.z0 + rng.random(n) * h, np.where(which == 1, self.z0, self.z1))
        return np.stack([self.center[0] + rad * np.cos(ang), self.center[1] + rad * np.sin(ang), z], axis=1)


def _sphere(c, r) -> Primitive:
    return Primitive("sphere", np.asarray(c, dtype=np.float64), float(r))


def _box(lo, hi) -> Primitive:
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    return Primitive("box", (lo + hi) / 2, lo=lo, hi=hi)


def _cyl(x, y, r, z0, z1) -> Primitive:
    return Primitive("cylinder", np.array([x, y, 0.0]), float(r), z0=float(z0), z1=float(z1))


# Object templates in unit coordinates: base at z = 0, centred on the z axis. Each returns [(part, [prims])].
def _snowman():
    return [("base", [_sphere((0, 0, 0.30), 0.30)]),
            ("body", [_sphere((0, 0, 0.74), 0.21)]),
            ("head", [_sphere((0, 0, 1.05), 0.14)])]


def _table():
    # A pedestal table: every part is compact. (Four legs as one "part" span the whole table, so their 3D
    # scale equals the object's and no scale prompt can tell them from the table: see docs/saga.md.)
    return [("top", [_box((-0.46, -0.34, 0.5), (0.46, 0.34, 0.62))]),
            ("pedestal", [_box((-0.1, -0.1, 0.06), (0.1, 0.1, 0.5))]),
            ("foot", [_box((-0.3, -0.24, 0.0), (0.3, 0.24, 0.06))])]


def _mushroom():
    return [("stem", [_cyl(0, 0, 0.12, 0.0, 0.5)]), ("cap", [_sphere((0, 0, 0.62), 0.32)])]


def _lamp():
    return [("foot", [_cyl(0, 0, 0.26, 0.0, 0.09)]),
            ("pole", [_cyl(0, 0, 0.1, 0.09, 0.78)]),  # thick enough to be several pixels wide at 96 px
            ("shade", [_cyl(0, 0, 0.24, 0.72, 1.05)])]


def _tree():
    return [("trunk", [_box((-0.09, -0.09, 0.0), (0.09, 0.09, 0.45))]),
            ("crown", [_sphere((0, 0, 0.66), 0.30), _sphere((0, 0, 0.98), 0.2)])]


def _robot():
    return [("legs", [_box((-0.2, -0.12, 0.0), (-0.04, 0.12, 0.32)), _box((0.04, -0.12, 0.0), (0.2, 0.12, 0.32))]),
            ("torso", [_box((-0.26, -0.16, 0.32), (0.26, 0.16, 0.78))]),
            ("head", [_sphere((0, 0, 0.93), 0.15)])]


OBJECT_TEMPLATES = {
    "snowman": _snowman, "table": _table, "mushroom": _mushroom,
    "lamp": _lamp, "tree": _tree, "robot": _robot,
}

# Well separated, saturated part colours (none close to white). Parts of one object get colours that differ
# by at least MIN_PART_COLOR_DISTANCE.
PALETTE = np.array([
    (220, 50, 47), (38, 139, 210), (133, 153, 0), (211, 54, 130), (230, 120, 20), (42, 161, 152),
    (108, 113, 196), (250, 200, 40), (110, 70, 35), (0, 90, 60), (150, 0, 40), (0, 60, 150),
    (120, 200, 90), (240, 140, 160), (160, 100, 220), (90, 200, 230),
], dtype=np.float64) / 255.0
MIN_PART_COLOR_DISTANCE = 0.35


@dataclass
class Part:
    id: int
    name: str
    object_id: int
    color: np.ndarray  # float rgb in [0, 1]
    prims: List[Primitive]
    tex_freq: float
    tex_dir: np.ndarray  # (2, 3) unit directions of the texture waves


@dataclass
class Obj:
    id: int
    name: str
    part_ids: List[int]


@dataclass
class Scene:
    objects: List[Obj]
    parts: List[Part]
    background: np.ndarray  # float rgb in [0, 1]

    @property
    def prims(self) -> List[Tuple[Primitive, int]]:
        return [(p, part.id) for part in self.parts for p in part.prims]


def build_scene(seed: int, num_objects: int, background: Sequence[int] = (255, 255, 255)) -> Scene:
    """The seeded scene description (objects, parts and their primitives) in world coordinates."""
    if not 1 <= num_objects <= 12:
        raise ValueError(f"num_objects must be in 1..12, got {num_objects}")
    rng = np.random.default_rng([seed, 1])
    names = list(OBJECT_TEMPLATES)
    order = rng.permutation(len(names))
    kinds = [names[order[i % len(names)]] for i in range(num_objects)]
    templates = []
    for kind in kinds:
        parts = OBJECT_TEMPLATES[kind]()
        scale = rng.uniform(0.85, 1.15)
        parts = [(pn, [p.transformed(scale, np.zeros(3)) for p in prims]) for pn, prims in parts]
        lo = np.min([p.bounds()[0] for _, prims in parts for p in prims], axis=0)
        hi = np.max([p.bounds()[1] for _, prims in parts for p in prims], axis=0)
        footprint = float(np.max(np.abs(np.concatenate([lo[:2], hi[:2]]))) * math.sqrt(2))
        templates.append((kind, parts, footprint))

    # non-overlapping placement on the xy plane (rejection sampling in a disk that grows when crowded)
    centres: List[np.ndarray] = []
    radius = 0.15 + 0.2 * num_objects
    for _, _, fp in templates:
        for attempt in range(10000):
            if attempt and attempt % 500 == 0:
                radius *= 1.1
            a, r = rng.uniform(0, 2 * math.pi), radius * math.sqrt(rng.random())
            c = np.array([r * math.cos(a), r * math.sin(a)])
            if all(np.linalg.norm(c - c2) > fp + templates[j][2] + 0.05 for j, c2 in enumerate(centres)):
                break
        centres.append(c)

    placed = []
    for (kind, parts, _), c in zip(templates, centres):
        dz = rng.uniform(-0.3, 0.3)  # no floor: objects float at slightly different heights
        placed.append((kind, [(pn, [p.transformed(1.0, np.array([c[0], c[1], dz])) for p in prims])
                              for pn, prims in parts]))
    # normalise into about [-1, 1]^3
    allp = [p for _, parts in placed for _, prims in parts for p in prims]
    lo = np.min([p.bounds()[0] for p in allp], axis=0)
    hi = np.max([p.bounds()[1] for p in allp], axis=0)
    mid = (lo + hi) / 2
    s = 0.95 / float(np.max((hi - lo) / 2))
    pool: List[np.ndarray] = []

    def pick_color(taken: List[np.ndarray]) -> np.ndarray:
        if not pool:
            pool.extend(PALETTE[rng.permutation(len(PALETTE))])
        for i, c in enumerate(pool):
            if all(np.linalg.norm(c - t) >= MIN_PART_COLOR_DISTANCE for t in taken):
                return pool.pop(i)
        return pool.pop(0)

    objects, parts_out = [], []
    seen: Dict[str, int] = {}
    for oi, (kind, parts) in enumerate(placed, start=1):
        seen[kind] = seen.get(kind, 0) + 1
        oname = kind if seen[kind] == 1 else f"{kind}_{seen[kind]}"
        ids, taken = [], []
        for pn, prims in parts:
            pid = len(parts_out) + 1
            dirs = rng.normal(size=(2, 3))
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
            taken.append(pick_color(taken))
            parts_out.append(Part(
                id=pid, name=f"{oname}/{pn}", object_id=oi, color=taken[-1],
                prims=[p.transformed(s, -mid * s) for p in prims],
                tex_freq=float(rng.uniform(10.0, 18.0)), tex_dir=dirs,
            ))
            ids.append(pid)
        objects.append(Obj(id=oi, name=oname, part_ids=ids))
    return Scene(objects=objects, parts=parts_out, background=np.asarray(background, dtype=np.float64) / 255.0)


def cast_rays(scene: Scene, origins: np.ndarray, dirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of each ray: (t [N] (inf on a miss), part id [N] (0 on a miss), normal [N, 3])."""
    n = origins.shape[0]
    t_best = np.full(n, np.inf)
    part = np.zeros(n, dtype=np.int64)
    normal = np.zeros((n, 3))
    for prim, pid in scene.prims:
        # cheap cull: only rays passing through the primitive's bounding sphere are intersected exactly
        lo, hi = prim.bounds()
        centre, radius = (lo + hi) / 2, float(np.linalg.norm(hi - lo)) / 2 * 1.001 + 1e-6
        oc = centre - origins
        proj = np.einsum("ij,ij->i", oc, dirs) / np.einsum("ij,ij->i", dirs, dirs) ** 0.5
        near = np.einsum("ij,ij->i", oc, oc) - proj**2 <= radius**2
        idx = np.nonzero(near)[0]
        if idx.size == 0:
            continue
        t, nrm = prim.intersect(origins[idx], dirs[idx])
        better = t < t_best[idx]
        sel = idx[better]
        t_best[sel] = t[better]
        part[sel] = pid
        normal[sel] = nrm[better]
    return t_best, part, normal


def _albedo(scene: Scene, part_ids: np.ndarray, points: np.ndarray) -> np.ndarray:
    out = np.zeros((part_ids.shape[0], 3))
    for part in scene.parts:
        sel = part_ids == part.id
        if not sel.any():
            continue
        p = points[sel]
        w = np.sin(part.tex_freq * p @ part.tex_dir[0]) * np.sin(part.tex_freq * p @ part.tex_dir[1])
        out[sel] = np.clip(part.color[None] * (1.0 + TEXTURE_AMPLITUDE * w[:, None]), 0.0, 1.0)
    return out


def shade(scene: Scene, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Colour of each ray in [0, 1]: textured albedo x (ambient + Lambertian), background where missed."""
    t, part, normal = cast_rays(scene, origins, dirs)
    hit = part > 0
    rgb = np.tile(scene.background, (origins.shape[0], 1))
    p = origins[hit] + t[hit, None] * dirs[hit]
    lam = np.clip(normal[hit] @ LIGHT_DIR, 0.0, 1.0)
    rgb[hit] = _albedo(scene, part[hit], p) * (AMBIENT + (1 - AMBIENT) * lam)[:, None]
    return rgb


# --------------------------------------------------------------------------------------------------------
# Cameras


def intrinsics(width: int, height: int) -> Dict[str, float]:
    fl = 0.5 * width / math.tan(math.radians(HORIZONTAL_FOV_DEG) / 2)
    return {"fl_x": fl, "fl_y": fl, "cx": width / 2.0, "cy": height / 2.0, "w": width, "h": height}


def look_at(eye: np.ndarray, target: np.ndarray = np.zeros(3), up: np.ndarray = np.array([0.0, 0.0, 1.0])):
    """4x4 camera-to-world, OpenGL convention (x right, y up, looking down -z)."""
    z = eye - target
    z = z / np.linalg.norm(z)
    x = np.cross(up, z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def camera_distance(scene: Scene, intr: Dict[str, float], seed: int, num_train: int, num_eval: int) -> float:
    """The closest ring distance at which every primitive's bounding box projects inside every view, at least
    FRAME_MARGIN_PX pixels from the border (starts from the distance that fits the bounding sphere)."""
    radius = max(p.max_norm() for p, _ in scene.prims)
    half_fov = min(math.atan(intr["cx"] / intr["fl_x"]), math.atan(intr["cy"] / intr["fl_y"]))
    corners = []
    for p, _ in scene.prims:
        lo, hi = p.bounds()
        corners += [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    corners = np.array(corners)

    def fits(distance: float) -> bool:
        for _, c2w, _ in camera_ring(seed, num_train, num_eval, distance):
            u, v, z = project(corners, c2w, intr)
            m = FRAME_MARGIN_PX
            inside = (z > 0) & (u >= m) & (u <= intr["w"] - m) & (v >= m) & (v <= intr["h"] - m)
            if not inside.all():
                return False
        return True

    distance = radius / math.sin(half_fov)
    while distance > 1.2 * radius and fits(distance * 0.97):
        distance *= 0.97
    return distance


def project(points: np.ndarray, c2w: np.ndarray, intr: Dict[str, float]):
    """Pinhole projection of world points: (u, v) in pixels (pixel centres at index + 0.5) and depth z > 0 in
    front of the camera (OpenGL camera: looks down -z)."""
    w2c = np.linalg.inv(c2w)
    pc = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = -pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = intr["cx"] + intr["fl_x"] * pc[:, 0] / z
        v = intr["cy"] - intr["fl_y"] * pc[:, 1] / z
    return u, v, z


def camera_ring(seed: int, num_train: int, num_eval: int, distance: float) -> List[Tuple[float, np.ndarray, bool]]:
    """(azimuth, c2w, is_train) for every view, sorted by azimuth, on a ring of the given distance around the
    origin. Eval azimuths are offset by half a train step, so no eval view coincides with a train view."""
    rng = np.random.default_rng([seed, 2])
    az0 = rng.uniform(0, 2 * math.pi)
    phase = rng.uniform(0, 2 * math.pi)
    views = []
    for i in range(num_train):
        views.append((2 * math.pi * i / num_train, True))
    for j in range(num_eval):
        views.append((2 * math.pi * j / num_eval + math.pi / max(num_train, 1), False))
    out = []
    for az, is_train in sorted(views, key=lambda v: (v[0], not v[1])):
        elev = math.radians(28.0 + 10.0 * math.sin(3 * az + phase))
        a = az + az0
        eye = distance * np.array([math.cos(elev) * math.cos(a), math.cos(elev) * math.sin(a), math.sin(elev)])
        out.append((az, look_at(eye), is_train))
    return out


def pixel_rays(c2w: np.ndarray, intr: Dict[str, float], offsets: Sequence[float] = (0.5,)):
    """World-space rays through the pixels (nerfstudio's convention: pixel centre = index + 0.5).
    Returns origins and unit directions of shape [len(offsets)^2, H*W, 3]."""
    w, h = int(intr["w"]), int(intr["h"])
    oo, dd = [], []
    for oy in offsets:
        for ox in offsets:
            j, i = np.meshgrid(np.arange(h) + oy, np.arange(w) + ox, indexing="ij")
            d_cam = np.stack([(i - intr["cx"]) / intr["fl_x"], -(j - intr["cy"]) / intr["fl_y"], -np.ones_like(i)], -1)
            d = d_cam.reshape(-1, 3) @ c2w[:3, :3].T
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            dd.append(d)
            oo.append(np.broadcast_to(c2w[:3, 3], d.shape))
    return np.stack(oo), np.stack(dd)


def render_view(scene: Scene, c2w: np.ndarray, intr: Dict[str, float]):
    """(rgb uint8 [H, W, 3], part ids [H, W], object ids [H, W], depth along the ray [H, W])."""
    w, h = int(intr["w"]), int(intr["h"])
    o, d = pixel_rays(c2w, intr)
    t, part, _ = cast_rays(scene, o[0], d[0])
    offs = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    so, sd = pixel_rays(c2w, intr, offs)
    rgb = shade(scene, so.reshape(-1, 3), sd.reshape(-1, 3)).reshape(len(so), -1, 3).mean(0)
    rgb8 = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8).reshape(h, w, 3)
    part_to_obj = np.zeros(len(scene.parts) + 1, dtype=np.int64)
    for p in scene.parts:
        part_to_obj[p.id] = p.object_id
    parts = part.reshape(h, w)
    return rgb8, parts.astype(np.uint8), part_to_obj[parts].astype(np.uint8), t.reshape(h, w)


def sample_seed_points(scene: Scene, seed: int, points_per_part: int):
    """Points on each part's outer surface (not inside another primitive). Returns xyz [N, 3] float32,
    rgb [N, 3] uint8 and part id [N]."""
    rng = np.random.default_rng([seed, 3])
    allprims = scene.prims
    xyz, pid = [], []
    for part in scene.parts:
        areas = np.array([p.area() for p in part.prims])
        got, need = [], points_per_part
        for _ in range(50):
            if need <= 0:
                break
            counts = rng.multinomial(2 * need + 16, areas / areas.sum())
            pts = np.concatenate([p.sample_surface(rng, int(c)) for p, c in zip(part.prims, counts)])
            pts = pts[rng.permutation(len(pts))]
            inside = np.zeros(len(pts), dtype=bool)
            for q, _ in allprims:
                inside |= q.contains(pts, eps=1e-6)
            pts = pts[~inside][:need]
            got.append(pts)
            need -= len(pts)
        pts = np.concatenate(got) if got else np.zeros((0, 3))
        xyz.append(pts)
        pid.append(np.full(len(pts), part.id))
    xyz = np.concatenate(xyz)
    pid = np.concatenate(pid)
    rgb = np.clip(np.round(_albedo(scene, pid, xyz) * 255), 0, 255).astype(np.uint8)
    return xyz.astype(np.float32), rgb, pid


# --------------------------------------------------------------------------------------------------------
# SAM-like masks


def _jitter(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SAM-like boundary error: dilate by 1 px (2 px a quarter of the time) or erode by 1 px. Thin masks that
    erosion would mostly wipe out are dilated instead."""
    from scipy import ndimage

    struct = ndimage.generate_binary_structure(2, 1)
    grow = rng.random() < 0.5
    iterations = 2 if rng.random() < 0.25 else 1
    if not grow:
        eroded = ndimage.binary_erosion(mask, struct, iterations=1, border_value=0)
        if eroded.sum() >= 0.6 * mask.sum():
            return eroded
    return ndimage.binary_dilation(mask, struct, iterations=iterations)


def _adjacent(a: np.ndarray, b: np.ndarray) -> bool:
    from scipy import ndimage

    return bool((ndimage.binary_dilation(a, iterations=1) & b).any())


def sam_like_masks(scene: Scene, parts_map: np.ndarray, objects_map: np.ndarray, flaw_rate: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Multi-granularity masks [N, H, W] bool for one view: objects + parts, with seeded SAM-like flaws."""
    p_missing, p_merge, p_jitter = flaw_rate, flaw_rate * 2.0 / 3.0, min(1.0, 3.0 * flaw_rate)
    masks: List[np.ndarray] = []
    for obj in scene.objects:
        om = objects_map == obj.id
        if not om.any():
            continue
        masks.append(om)
        visible = [pid for pid in obj.part_ids if (parts_map == pid).any()]
        merged = set()
        for pid in visible:
            if pid in merged or rng.random() >= p_merge:
                continue
            pm = parts_map == pid
            nbrs = [q for q in visible if q != pid and q not in merged and _adjacent(pm, parts_map == q)]
            if not nbrs:
                continue
            q = nbrs[int(rng.integers(len(nbrs)))]
            merged.update((pid, q))
            masks.append(pm | (parts_map == q))
        for pid in visible:
            if pid in merged or rng.random() < p_missing:
                continue
            masks.append(parts_map == pid)
    out = []
    for m in masks:
        if rng.random() < p_jitter:
            m = _jitter(m, rng)
        if m.sum() >= MIN_MASK_AREA:
            out.append(m)
    h, w = parts_map.shape
    if not out:
        return np.zeros((0, h, w), dtype=bool)
    order = rng.permutation(len(out))
    return np.stack([out[i] for i in order]).astype(bool)


# --------------------------------------------------------------------------------------------------------
# Writing


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Readers never see a partial file (see :func:`segsplat_ns.io.atomic_open`)."""
    with atomic_open(path) as handle:
        handle.write(data)


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _ply_bytes(xyz: np.ndarray, rgb: np.ndarray) -> bytes:
    from plyfile import PlyData, PlyElement

    v = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                  ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v["x"], v["y"], v["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    v["red"], v["green"], v["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    buf = io.BytesIO()
    PlyData([PlyElement.describe(v, "vertex")], text=False, byte_order="<").write(buf)
    return buf.getvalue()


def _pt_bytes(masks: np.ndarray) -> bytes:
    import torch

    buf = io.BytesIO()  # in memory: the archive name does not depend on the (temporary) file name
    torch.save(torch.from_numpy(np.ascontiguousarray(masks)), buf)
    return buf.getvalue()


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


LANGUAGE_SUBDIRS = ("language_features", "gt/text/objects", "gt/text/parts")
"""Folders of the stand-in language files (``SceneConfig.language``)."""


def _prepare_output(output: Path, overwrite: bool, language: bool = False) -> None:
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a folder; choose another output folder.")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"Output folder {output} exists and is not empty; pass --overwrite to replace its synthetic "
                "dataset files, or choose another folder."
            )
        # An interrupted overwrite must not look like a complete dataset: transforms.json comes back last.
        (output / "transforms.json").unlink(missing_ok=True)
    for sub in ("images", "gt/objects", "gt/parts", "sam_masks") + (LANGUAGE_SUBDIRS if language else ()):
        (output / sub).mkdir(parents=True, exist_ok=True)


def _remove_stale(folder: Path, keep: set, pattern: str) -> None:
    for f in folder.glob(pattern):
        if f.name not in keep:
            f.unlink()


def check_scene_config(config: SceneConfig) -> None:
    """Raise :class:`InputError` (a ValueError) naming the option for any value make-scene cannot use."""
    problems = []
    if not 1 <= config.num_objects <= 12:
        problems.append(f"--num-objects {config.num_objects}: must be 1..12")
    for name, value in (("--width", config.width), ("--height", config.height)):
        if value < 8:
            problems.append(f"{name} {value}: must be at least 8 pixels")
    if config.num_train_views < 1:
        problems.append(f"--num-train-views {config.num_train_views}: must be at least 1")
    if config.num_eval_views < 1:
        problems.append(f"--num-eval-views {config.num_eval_views}: must be at least 1 (ns-eval, the segmentation "
                        "metrics and `segsplat segment --split eval` use the eval views)")
    if config.points_per_part < 1:
        problems.append(f"--points-per-part {config.points_per_part}: must be at least 1")
    if not 0.0 <= config.mask_flaw_rate < 1.0:
        problems.append(f"--mask-flaw-rate {config.mask_flaw_rate}: must be in [0, 1)")
    if len(config.background) != 3 or not all(0 <= int(c) <= 255 for c in config.background):
        problems.append(f"--background {' '.join(str(c) for c in config.background)}: three values in 0..255")
    if problems:
        raise InputError("make-scene: " + "; ".join(problems))


def make_scene(config: SceneConfig) -> Path:
    """Generate the dataset described in the module docstring into ``config.output``; returns that folder."""
    check_scene_config(config)
    output = Path(config.output)
    scene = build_scene(config.seed, config.num_objects, config.background)
    _prepare_output(output, config.overwrite, config.language)

    intr = intrinsics(config.width, config.height)
    views = camera_ring(config.seed, config.num_train_views, config.num_eval_views,
                        camera_distance(scene, intr, config.seed, config.num_train_views, config.num_eval_views))
    mask_rng = np.random.default_rng([config.seed, 4])
    frames, train, evals = [], [], []
    names, train_names = set(), set()
    language_train, language_eval = [], []  # the maps and masks the stand-in language files are made from
    for idx, (_, c2w, is_train) in enumerate(views):
        name = f"frame_{idx:05d}"
        names.add(name)
        rgb, parts_map, objects_map, _ = render_view(scene, c2w, intr)
        file_path = f"images/{name}.png"
        atomic_write_bytes(output / file_path, _png_bytes(rgb))
        atomic_write_bytes(output / "gt" / "objects" / f"{name}.png", _png_bytes(objects_map))
        atomic_write_bytes(output / "gt" / "parts" / f"{name}.png", _png_bytes(parts_map))
        if is_train:
            train_names.add(name)
            masks = sam_like_masks(scene, parts_map, objects_map, config.mask_flaw_rate, mask_rng)
            atomic_write_bytes(output / "sam_masks" / f"{name}.pt", _pt_bytes(masks))
            language_train.append((name, masks, parts_map, objects_map))
        else:
            language_eval.append((name, parts_map, objects_map))
        frames.append({"file_path": file_path, "transform_matrix": np.round(c2w, 10).tolist()})
        (train if is_train else evals).append(file_path)

    _remove_stale(output / "images", {f"{n}.png" for n in names}, "frame_*.png")
    _remove_stale(output / "gt" / "objects", {f"{n}.png" for n in names}, "frame_*.png")
    _remove_stale(output / "gt" / "parts", {f"{n}.png" for n in names}, "frame_*.png")
    _remove_stale(output / "sam_masks", {f"{n}.pt" for n in train_names}, "frame_*.pt")
    # without language, any earlier run's language files are stale: keep none of them
    lang_train = train_names if config.language else set()
    lang_eval = names - train_names if config.language else set()
    _remove_stale(output / "language_features", {f"{n}_{s}.npy" for n in lang_train for s in "sf"}, "frame_*_[sf].npy")
    _remove_stale(output / "gt" / "text" / "objects", {f"{n}.json" for n in lang_eval}, "frame_*.json")
    _remove_stale(output / "gt" / "text" / "parts", {f"{n}.json" for n in lang_eval}, "frame_*.json")
    if not config.language:
        _remove_stale(output / "language_features", set(), "text_encoder.*")

    xyz, rgb, _ = sample_seed_points(scene, config.seed, config.points_per_part)
    atomic_write_bytes(output / "sparse_pc.ply", _ply_bytes(xyz, rgb))

    meta = {
        "objects": [{"id": o.id, "name": o.name, "parts": list(o.part_ids)} for o in scene.objects],
        "parts": [{"id": p.id, "name": p.name, "object": p.object_id,
                   "color": [int(round(c * 255)) for c in p.color]} for p in scene.parts],
        "train_frames": train,
        "eval_frames": evals,
    }
    atomic_write_bytes(output / "gt" / "meta.json", _json_bytes(meta))

    if config.language:
        from segsplat_ns.synthetic_language import write_language

        kinds = {kind: [part for part, _ in template()] for kind, template in OBJECT_TEMPLATES.items()}
        write_language(output, scene, kinds, language_train, language_eval, config.seed)

    transforms = {
        "camera_model": "OPENCV",
        **intr,
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "frames": frames,
        "ply_file_path": "sparse_pc.ply",
        "train_filenames": train,
        "val_filenames": evals,
        "test_filenames": evals,
        "segsplat": {"seed": config.seed, "version": FORMAT_VERSION, "num_objects": config.num_objects},
    }
    atomic_write_bytes(output / "transforms.json", _json_bytes(transforms))
    return output


def colorize_ids(ids: np.ndarray, scene_or_meta=None) -> np.ndarray:
    """RGB uint8 visualisation of an id map (0 = black; ids by the part colours in gt/meta.json when given)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    rng = np.random.default_rng(12345)
    lut[1:] = rng.integers(40, 256, size=(255, 3))
    if isinstance(scene_or_meta, dict):
        for p in scene_or_meta.get("parts", []):
            if "color" in p:
                lut[p["id"]] = p["color"]
    return lut[ids]
