"""Image/text encoders for language features: one small interface, OpenCLIP ViT-B-16 behind it.

``OpenClipEncoder.from_config`` is the product path: LangSplat's/GAGS's CLIP (open_clip ``ViT-B-16``,
``laion2b_s34b_b88k``), its weights from a checkpoint path, else from the per-user cache
(``$SEGSPLAT_CACHE/clip``, default ``~/.cache/segsplat_ns/clip``), into which they are downloaded once when
online. ``OpenClipEncoder.random_weights`` builds the same network with random weights, for tests only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from segsplat_ns.language.features import LanguageSourceError

CLI_PREFIX = "--pipeline.datamanager.language"
"""The option prefix under which ``LanguageSourceConfig`` is meant to appear in ``ns-train`` (messages only)."""

CLIP_MODEL = "ViT-B-16"
CLIP_PRETRAINED = "laion2b_s34b_b88k"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINT_NAMES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")


class ClipWeightsError(LanguageSourceError):
    """The CLIP weights cannot be found, downloaded or loaded."""


class ImageTextEncoder:
    """Turns crops and phrases into unit vectors of the same space."""

    dim: int = 0
    """Embedding size D."""
    kind: str = f"CLIP {CLIP_MODEL} ({CLIP_PRETRAINED})"
    """What the encoder is, for messages and tables."""

    def identity(self) -> Dict[str, Any]:
        """JSON-able description of the weights (the language cache is keyed on it)."""
        raise NotImplementedError

    def encode_images(self, crops: np.ndarray) -> torch.Tensor:
        """``uint8 [B, 224, 224, 3]`` RGB crops -> ``float32 [B, D]`` L2-normalised, on the CPU."""
        raise NotImplementedError

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Phrases -> ``float32 [T, D]`` L2-normalised, on the CPU."""
        raise NotImplementedError


def clip_cache_dir() -> Path:
    """Where CLIP weights are looked for and downloaded to: ``<segsplat cache root>/clip``."""
    from segsplat_ns.masks.sources import segsplat_cache_root

    return segsplat_cache_root() / "clip"


def _missing_weights_error(reason: str) -> ClipWeightsError:
    return ClipWeightsError(
        f"The CLIP weights ({CLIP_MODEL}, {CLIP_PRETRAINED}) are missing ({reason}). Either download "
        f"open_clip_pytorch_model.bin from https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K and pass "
        f"{CLI_PREFIX}.clip-checkpoint PATH, or run once online so it is cached in {clip_cache_dir()}, or use "
        f"{CLI_PREFIX}.source folder with precomputed features (<data>/language_features/<stem>_s.npy and "
        f"<stem>_f.npy, as LangSplat's preprocess.py writes them)."
    )


def _cached_checkpoint(cache_dir: Path) -> Optional[Path]:
    """A previously downloaded checkpoint in ``cache_dir`` (huggingface_hub's layout), if any."""
    repo = "models--laion--CLIP-ViT-B-16-laion2B-s34B-b88K"
    for name in CHECKPOINT_NAMES:
        found = sorted((cache_dir / repo).glob(f"snapshots/*/{name}")) if (cache_dir / repo).is_dir() else []
        for path in found:
            if path.is_file():  # a dangling symlink (interrupted download) does not count
                return path
    return None


def resolve_clip_checkpoint(checkpoint: Optional[Path] = None) -> Path:
    """The CLIP checkpoint: the given path, else the cache, else downloaded once into the cache.

    ``SEGSPLAT_NO_DOWNLOAD=1`` never tries the network. Raises :class:`ClipWeightsError` when none can be had.
    """
    if checkpoint is not None:
        checkpoint = Path(checkpoint).expanduser()
        if not checkpoint.is_file():
            raise _missing_weights_error(f"no file at {checkpoint}")
        return checkpoint
    cache_dir = clip_cache_dir()
    cached = _cached_checkpoint(cache_dir)
    if cached is not None:
        return cached
    if os.environ.get("SEGSPLAT_NO_DOWNLOAD", "") not in ("", "0"):
        raise _missing_weights_error(f"not in {cache_dir} and SEGSPLAT_NO_DOWNLOAD is set")
    try:
        import open_clip
        from open_clip.pretrained import download_pretrained

        cfg = open_clip.get_pretrained_cfg(CLIP_MODEL, CLIP_PRETRAINED)
        cache_dir.mkdir(parents=True, exist_ok=True)
        path = download_pretrained(cfg, cache_dir=str(cache_dir))
    except Exception as e:  # noqa: BLE001 - offline, proxy, disk full...: all end in the same advice
        raise _missing_weights_error(f"not in {cache_dir} and the download failed: {type(e).__name__}: {e}") from e
    if not path or not Path(path).is_file():
        raise _missing_weights_error(f"not in {cache_dir} and the download returned nothing")
    return Path(path)


def checkpoint_identity(checkpoint: Path) -> Dict[str, Any]:
    """Cache-key identity of ViT-B-16 weights in ``checkpoint`` (file name and size; no need to load them)."""
    from importlib.metadata import version

    checkpoint = Path(checkpoint)
    return {"model": CLIP_MODEL, "pretrained": CLIP_PRETRAINED, "checkpoint": checkpoint.name,
            "checkpoint_bytes": checkpoint.stat().st_size, "open_clip": version("open_clip_torch")}


class LazyClipEncoder(ImageTextEncoder):
    """ViT-B-16 from a checkpoint, loaded on first use: a valid cache is used without building the network."""

    def __init__(self, checkpoint: Path, device: str = "cpu"):
        self.checkpoint = Path(checkpoint)
        self.device = device
        self.dim = 512
        self._encoder: Optional["OpenClipEncoder"] = None

    @property
    def encoder(self) -> "OpenClipEncoder":
        if self._encoder is None:
            self._encoder = OpenClipEncoder.from_checkpoint(self.checkpoint, device=self.device)
        return self._encoder

    def identity(self) -> Dict[str, Any]:
        return checkpoint_identity(self.checkpoint)

    def encode_images(self, crops: np.ndarray) -> torch.Tensor:
        return self.encoder.encode_images(crops)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encoder.encode_text(texts)


class OpenClipEncoder(ImageTextEncoder):
    """open_clip ViT-B-16 with LangSplat's preprocessing of the 224 x 224 crops (scale to [0, 1], CLIP mean/std)."""

    def __init__(self, model: Any, identity: Dict[str, Any], device: str = "cpu", model_name: str = CLIP_MODEL):
        """Prefer :meth:`from_checkpoint` / :meth:`from_config`; ``model`` is an ``open_clip.CLIP``."""
        import open_clip

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._identity = dict(identity)
        self.tokenizer = open_clip.get_tokenizer(model_name)  # bundled BPE vocabulary: works offline
        self.dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else 512
        self._mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, checkpoint: Path, device: str = "cpu") -> "OpenClipEncoder":
        """ViT-B-16 with the weights in ``checkpoint`` (open_clip's ``open_clip_pytorch_model.bin`` or similar)."""
        import open_clip

        checkpoint = Path(checkpoint)
        try:
            model = open_clip.create_model(CLIP_MODEL, pretrained=str(checkpoint), device="cpu")
        except Exception as e:  # noqa: BLE001
            raise ClipWeightsError(
                f"Could not load {CLIP_MODEL} weights from {checkpoint}: {type(e).__name__}: {e}. Is it the "
                f"{CLIP_PRETRAINED} checkpoint (laion/CLIP-ViT-B-16-laion2B-s34B-b88K)? A partial download can be "
                f"deleted and fetched again.") from e
        return cls(model, checkpoint_identity(checkpoint), device=device)

    @classmethod
    def from_config(cls, checkpoint: Optional[Path] = None, device: str = "cpu") -> "OpenClipEncoder":
        """The product path: :func:`resolve_clip_checkpoint` then :meth:`from_checkpoint`."""
        return cls.from_checkpoint(resolve_clip_checkpoint(checkpoint), device=device)

    @classmethod
    def random_weights(cls, seed: int = 0, device: str = "cpu") -> "OpenClipEncoder":
        """ViT-B-16 built from its config with RANDOM weights (tests: real shapes and plumbing, meaningless
        features). Never used by the product path."""
        import open_clip

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(CLIP_MODEL, pretrained=None, device="cpu")
        identity = {"model": CLIP_MODEL, "weights": "random", "seed": seed, "torch": torch.__version__,
                    "open_clip": open_clip.__version__}
        return cls(model, identity, device=device)

    # -- interface ---------------------------------------------------------------------------------
    def identity(self) -> Dict[str, Any]:
        return dict(self._identity)

    @torch.no_grad()
    def encode_images(self, crops: np.ndarray) -> torch.Tensor:
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[3] != 3 or crops.dtype != np.uint8:
            raise ValueError(f"crops must be uint8 [B, H, W, 3], got {crops.dtype} {tuple(crops.shape)}")
        if crops.shape[0] == 0:
            return torch.zeros((0, self.dim))
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        x = (x - self._mean) / self._std
        emb = self.model.encode_image(x).float()
        return torch.nn.functional.normalize(emb, dim=-1).cpu()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        texts: List[str] = list(texts)
        if not texts:
            return torch.zeros((0, self.dim))
        tokens = self.tokenizer(texts).to(self.device)
        emb = self.model.encode_text(tokens).float()
        return torch.nn.functional.normalize(emb, dim=-1).cpu()
