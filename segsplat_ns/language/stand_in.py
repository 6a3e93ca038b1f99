"""A stand-in for CLIP on the synthetic scene (``segsplat make-scene``): a fixed vocabulary and its text vectors.

Not a language model. ``segsplat make-scene`` writes the vocabulary beside the scene's language features
(``<scene>/language_features/text_encoder.json`` + ``text_encoder.npy``), so a text benchmark can run on the
synthetic scene without CLIP's weights; :class:`StandInTextEncoder` answers ``encode_text`` for exactly those
phrases and nothing else (a real scene uses CLIP).

Phrases: every object kind and its synonyms ("snowman", "snow man"), every part as "<kind> <part>" and
"<part> of the <kind>" ("lamp shade", "shade of the lamp"), and LERF's canonical phrases "object", "things",
"stuff", "texture". Phrases are matched case-insensitively after stripping and collapsing whitespace;
synonyms share one row.

Vectors (D = 512, deterministic from the concept's name through sha256, so independent of Python's hash
randomisation and of which kinds a scene holds):

- ``word(name)``: a unit vector seeded from the name, made orthogonal to the shared "photo" direction;
- an object kind's text vector is ``word("object:<kind>")``;
- a part's text vector is ``normalise(PART_OF_OBJECT * object vector + PART_WORD * word("part:<part>"))``: a
  query for an object is moderately similar to its parts, and "lamp foot" to "table foot" (the shared
  part word, as CLIP would);
- a canonical phrase's vector is ``normalise(CANONICAL_PHOTO * photo + sqrt(1 - CANONICAL_PHOTO^2) * word)``:
  like CLIP, the generic phrases are close to every image embedding through the shared photo component
  (the image side, ``segsplat_ns.synthetic_language.image_embedding``, carries the same component).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch

from segsplat_ns.io import atomic_open
from segsplat_ns.language.encoders import ImageTextEncoder
from segsplat_ns.language.features import LanguageSourceError
from segsplat_ns.language.relevancy import CANONICAL_PHRASES

STAND_IN_FILE = "text_encoder.json"
"""The vocabulary (phrase -> row) in the language feature folder."""
VECTORS_FILE = "text_encoder.npy"
"""The text vectors, ``float32 [rows, DIM]``, beside ``STAND_IN_FILE``."""
KIND = "synthetic stand-in for CLIP (segsplat make-scene); not a language model"
DIM = 512

KIND_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "snowman": ("snow man",),
    "table": ("pedestal table",),
    "mushroom": ("toadstool",),
    "lamp": ("floor lamp",),
    "tree": ("small tree",),
    "robot": ("toy robot",),
}
"""Extra names of each object kind of ``segsplat_ns.synthetic.OBJECT_TEMPLATES`` (same row as the kind)."""

PART_OF_OBJECT = 0.6
PART_WORD = 0.8
CANONICAL_PHOTO = 0.6
"""Weight of the photo direction in the canonical phrases' vectors (tuned with the image side's
``IMAGE_PHOTO``; see ``segsplat_ns.synthetic_language`` for the measured relevancies)."""


def normalize_phrase(text: str) -> str:
    """How phrases are matched: case-insensitive, stripped, inner whitespace collapsed to one space."""
    return " ".join(str(text).split()).lower()


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _seeded_vector(name: str) -> np.ndarray:
    # sha256, not hash(): the same name gives the same vector in every process
    seed = int.from_bytes(hashlib.sha256(f"segsplat stand-in/{name}".encode()).digest()[:16], "little")
    return _unit(np.random.default_rng(seed).standard_normal(DIM))


PHOTO = _seeded_vector("photo")
"""The direction every image embedding and every canonical phrase shares (CLIP's "it is a photo" component)."""


def word(name: str) -> np.ndarray:
    """Unit vector of a name, orthogonal to :data:`PHOTO` (so the photo weight alone sets that similarity)."""
    v = _seeded_vector(name)
    return _unit(v - (v @ PHOTO) * PHOTO)


def object_vector(kind: str) -> np.ndarray:
    return word(f"object:{kind}")


def part_vector(kind: str, part: str) -> np.ndarray:
    return _unit(PART_OF_OBJECT * object_vector(kind) + PART_WORD * word(f"part:{part}"))


def canonical_vector(phrase: str) -> np.ndarray:
    return _unit(CANONICAL_PHOTO * PHOTO + np.sqrt(1.0 - CANONICAL_PHOTO**2) * word(f"canonical:{phrase}"))


def part_phrase(kind: str, part: str) -> str:
    """The part's category in the text ground truth ("lamp shade")."""
    return f"{kind} {part}"


def build_vocabulary(kinds: Mapping[str, Sequence[str]]) -> Tuple[List[str], Dict[str, int], np.ndarray]:
    """``(concepts, {phrase: row}, float32 [rows, DIM])`` for object kinds ``{kind: [part names]}``.

    One row per concept (object kind, part of a kind, canonical phrase); concepts are named ``object:<kind>``,
    ``part:<kind>/<part>`` and ``canonical:<phrase>``.
    """
    concepts: List[str] = []
    rows: List[np.ndarray] = []
    phrases: Dict[str, int] = {}

    def add(concept: str, vector: np.ndarray, names: Sequence[str]) -> None:
        concepts.append(concept)
        rows.append(vector)
        for name in names:
            key = normalize_phrase(name)
            if key in phrases:
                raise ValueError(f"phrase {key!r} names two concepts ({concepts[phrases[key]]} and {concept})")
            phrases[key] = len(rows) - 1

    for kind, parts in kinds.items():
        add(f"object:{kind}", object_vector(kind), [kind, *KIND_SYNONYMS.get(kind, ())])
        for part in parts:
            add(f"part:{kind}/{part}", part_vector(kind, part), [part_phrase(kind, part), f"{part} of the {kind}"])
    for phrase in CANONICAL_PHRASES:
        add(f"canonical:{phrase}", canonical_vector(phrase), [phrase])
    return concepts, phrases, np.stack(rows).astype(np.float32)


def write_vocabulary(folder: Path, kinds: Mapping[str, Sequence[str]]) -> Path:
    """Write ``text_encoder.npy`` then ``text_encoder.json`` (atomically) into ``folder``; returns the JSON's path."""
    folder = Path(folder)
    concepts, phrases, vectors = build_vocabulary(kinds)
    with atomic_open(folder / VECTORS_FILE) as handle:
        np.save(handle, vectors, allow_pickle=False)
    doc = {
        "kind": KIND,
        "dim": DIM,
        "vectors": VECTORS_FILE,
        "vectors_sha256": hashlib.sha256((folder / VECTORS_FILE).read_bytes()).hexdigest(),
        "canonical": list(CANONICAL_PHRASES),
        "concepts": concepts,
        "phrases": phrases,
    }
    path = folder / STAND_IN_FILE
    with atomic_open(path) as handle:
        handle.write((json.dumps(doc, indent=1) + "\n").encode("utf-8"))
    return path


class StandInTextEncoder(ImageTextEncoder):
    """The synthetic scene's stand-in for CLIP's text encoder: a lookup of its own vocabulary's vectors."""

    def __init__(self, phrases: Mapping[str, int], vectors: np.ndarray, source: Path, sha256: str,
                 kind: str = KIND):
        self.phrases = {normalize_phrase(k): int(v) for k, v in phrases.items()}
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.dim = int(self.vectors.shape[1])
        self.kind = kind
        self.source = Path(source)
        self._sha256 = sha256

    @staticmethod
    def present(folder: Path) -> bool:
        return (Path(folder) / STAND_IN_FILE).is_file()

    @classmethod
    def from_folder(cls, folder: Path) -> "StandInTextEncoder":
        """Read ``<folder>/text_encoder.json`` and its vectors; :class:`LanguageSourceError` says what is wrong."""
        path = Path(folder) / STAND_IN_FILE

        def bad(why: str) -> LanguageSourceError:
            return LanguageSourceError(f"Malformed stand-in text encoder {path}: {why}. It is written by "
                                       f"`segsplat make-scene`; regenerate the scene (with --overwrite).")

        try:
            raw = path.read_bytes()
            doc: Any = json.loads(raw)
        except FileNotFoundError as e:
            raise LanguageSourceError(f"No stand-in text encoder at {path}: only a synthetic scene made by "
                                      f"`segsplat make-scene` has one; a real scene uses CLIP.") from e
        except (OSError, ValueError) as e:
            raise bad(f"not readable JSON ({e})") from e
        if not isinstance(doc, dict):
            raise bad("expected a JSON object")
        dim, phrases, vectors_name = doc.get("dim"), doc.get("phrases"), doc.get("vectors", VECTORS_FILE)
        if not isinstance(doc.get("kind"), str) or "stand-in" not in doc["kind"]:
            raise bad(f"'kind' is {doc.get('kind')!r}, expected the stand-in's description")
        if not isinstance(dim, int) or dim <= 0:
            raise bad(f"'dim' is {dim!r}, expected a positive integer")
        if not isinstance(phrases, dict) or not phrases:
            raise bad("'phrases' must be a non-empty {phrase: row} object")
        if not isinstance(vectors_name, str) or Path(vectors_name).name != vectors_name:
            raise bad(f"'vectors' is {vectors_name!r}, expected a file name beside the JSON")
        vectors_path = path.parent / vectors_name
        try:
            vectors_bytes = vectors_path.read_bytes()
            vectors = np.load(vectors_path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any read failure is reported with the file name
            raise bad(f"cannot read its vectors {vectors_path} ({e})") from e
        expected_sha = doc.get("vectors_sha256")
        if expected_sha is not None and hashlib.sha256(vectors_bytes).hexdigest() != expected_sha:
            raise bad(f"{vectors_path.name} does not match the sha256 recorded in the JSON")
        if vectors.ndim != 2 or vectors.shape[1] != dim or not np.issubdtype(vectors.dtype, np.floating):
            raise bad(f"vectors of shape {tuple(vectors.shape)} and dtype {vectors.dtype}, expected float [rows, {dim}]")
        if not np.isfinite(vectors).all() or not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3):
            raise bad("vectors must be finite unit rows")
        for phrase, row in phrases.items():
            if not isinstance(row, int) or isinstance(row, bool) or not 0 <= row < vectors.shape[0]:
                raise bad(f"phrase {phrase!r} maps to row {row!r}; there are {vectors.shape[0]} rows")
        sha = hashlib.sha256(raw).hexdigest()  # the JSON records the vectors' sha256: one hash covers both
        return cls(phrases, vectors, path, sha, kind=doc["kind"])

    def identity(self) -> Dict[str, Any]:
        return {"encoder": "stand-in", "sha256": self._sha256}

    def vocabulary(self) -> List[str]:
        """Every phrase it knows (normalised), sorted."""
        return sorted(self.phrases)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        rows = []
        for text in texts:
            key = normalize_phrase(text)
            if key not in self.phrases:
                known = sorted(self.phrases, key=lambda p: (len(p.split()), p))  # one-word phrases (kinds) first
                raise LanguageSourceError(
                    f"Unknown phrase {text!r}: the synthetic scene's stand-in text encoder knows only its own "
                    f"vocabulary: {', '.join(repr(p) for p in known[:8])} ... ({len(known)} phrases, see "
                    f"{self.source}); a real scene uses CLIP.")
            rows.append(self.phrases[key])
        if not rows:
            return torch.zeros((0, self.dim))
        out = torch.from_numpy(self.vectors[rows].astype(np.float32))
        return torch.nn.functional.normalize(out, dim=-1)

    def encode_images(self, crops: np.ndarray) -> torch.Tensor:
        raise LanguageSourceError(
            f"The synthetic scene's stand-in for CLIP ({self.source}) has no image encoder: its image features are "
            f"precomputed in the scene's language_features/<stem>_s.npy / _f.npy (language source 'folder'). "
            f"A real scene uses CLIP.")
