"""Make nerfstudio 1.1.5 run where it was not written to run: CPU-only machines, no network, torch >= 2.6.

Everything here acts from our own code at import time or around our own calls; nothing in site-packages is
edited.
"""

from __future__ import annotations

import errno
import pickle
import re
import struct
import warnings

import numpy as np
import torch

_checkpoint_globals_registered = False


def allow_nerfstudio_checkpoints() -> None:
    """Let torch's default ``weights_only=True`` load nerfstudio checkpoints.

    nerfstudio's schedulers return numpy scalars from their lambdas, so ``_last_lr`` in every checkpoint
    holds ``numpy.float64`` objects. torch >= 2.6 refuses those under ``weights_only=True`` (its default),
    which breaks ``ns-eval``, ``ns-viewer`` and ``--load-dir``. Registering the numpy scalar reconstructors
    as safe globals keeps the safe loader on while admitting exactly what nerfstudio writes.
    """
    global _checkpoint_globals_registered
    if _checkpoint_globals_registered:
        return
    safe = [np.core.multiarray.scalar, np.dtype]
    # numpy >= 1.25 pickles dtypes through their concrete classes (np.dtypes.Float64DType, ...)
    dtypes_module = getattr(np, "dtypes", None)
    if dtypes_module is not None:
        safe += [getattr(dtypes_module, name) for name in dir(dtypes_module) if name.endswith("DType")]
    torch.serialization.add_safe_globals(safe)
    _checkpoint_globals_registered = True


class LpipsUnavailable:
    """Stands in for LPIPS when its AlexNet weights cannot be had (offline, nothing cached).

    Calling it returns NaN, and the model reports ``lpips`` as not available instead of crashing.
    """

    reason: str

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return torch.tensor(float("nan"))

    def to(self, *args, **kwargs) -> "LpipsUnavailable":
        return self


ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"
"""The torchvision checkpoint torchmetrics' LPIPS loads (from torch hub's cache, downloaded when absent)."""


def _can_download(host: str = "download.pytorch.org", timeout: float = 1.5) -> bool:
    """Whether torchvision's weights host answers (no download attempt, hence no "Downloading" line, offline)."""
    import os
    import socket

    if os.environ.get("SEGSPLAT_NO_DOWNLOAD") or os.environ.get("HF_HUB_OFFLINE"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def make_lpips() -> "torch.nn.Module | LpipsUnavailable":
    """torchmetrics' LPIPS if its AlexNet weights are cached or can be downloaded, else a stand-in that makes the
    model leave ``lpips`` out of its metrics (one warning says so and how to get it)."""
    from pathlib import Path

    weights = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS
    fix = f"; lpips is left out of the metrics (put {ALEXNET_WEIGHTS} at {weights} to get it)"
    if not weights.is_file() and not _can_download():
        message = f"LPIPS not available (no network and no cached AlexNet weights){fix}"
        warnings.warn(message, stacklevel=2)
        return LpipsUnavailable(message)
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(normalize=True)
    except Exception as error:  # the download failed after all, or the cached file is damaged
        message = f"LPIPS not available ({type(error).__name__}: {str(error).splitlines()[0][:120]}){fix}"
        warnings.warn(message, stacklevel=2)
        return LpipsUnavailable(message)


def load_error_summary(error: BaseException) -> str:
    """One line for why ``torch.load`` refused a file (not torch's advice to retry with ``weights_only=False``)."""
    text = str(error)
    disallowed = _disallowed_pickle_content(text)
    if disallowed:  # a real pickle, holding something outside torch's safe list
        return f"not a checkpoint torch can load safely ({disallowed})"
    if "WeightsUnpickler error:" in text:  # e.g. "Unsupported operand 194": bytes that are no pickle at all
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        return _not_a_checkpoint(" ".join(detail.split()) or type(error).__name__)
    if _is_decoding_error(error, text):
        first = text.strip().splitlines()[0] if text.strip() else ""
        kind = type(error)
        name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__.lstrip('_')}.{kind.__name__}"
        return _not_a_checkpoint(f"{name} {first[:80]}".strip())
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"{type(error).__name__}: {first[:200]}"


def _not_a_checkpoint(detail: str) -> str:
    return f"not a PyTorch checkpoint (damaged, truncated or another kind of file: {detail})"


def _disallowed_pickle_content(text: str) -> str:
    """torch's reason when a well-formed pickle names a class or module it will not load safely, else "".

    Random bytes can also read as a GLOBAL opcode, but its "name" is then no dotted identifier (e.g. ``.``)."""
    for pattern in (r"Unsupported global: GLOBAL (\S+) was not an allowed global by default\.",
                    r"Trying to load unsupported GLOBAL (\S+) whose module \S+ is blocked\."):
        found = re.search(pattern, text)
        if found and all(part.isidentifier() for part in found.group(1).split(".")):
            return found.group(0)
    found = re.search(r"(?:\S+ and )?\S+ must be imported to load [^\n]*", text)
    return found.group(0).strip() if found else ""


def _is_decoding_error(error: BaseException, text: str) -> bool:
    """Whether ``torch.load`` failed on the file's bytes (not on its access): its unpickler raises these on bytes
    that are no pickle (IndexError "pop from empty list", EOFError, struct.error, ...), its zip reader these."""
    if isinstance(error, (pickle.UnpicklingError, EOFError, IndexError, KeyError, ValueError, TypeError,
                          OverflowError, struct.error)):
        return True
    if isinstance(error, OSError):
        return error.errno == errno.EINVAL  # a damaged zip archive; not a missing or unreadable file
    markers = ("PytorchStreamReader", "inline_container", "corrupt", "magic number", "unexpected EOF")
    return isinstance(error, RuntimeError) and any(marker in text for marker in markers)


def safe_torch_load(path, mmap: bool = False):
    """``torch.load(path, weights_only=True)`` on the CPU; with ``mmap`` the tensors are not read (cheap checks of
    big files), falling back to a full read for files in torch's old non-zip format."""
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap can only be used" not in str(error):
                raise
    return torch.load(path, map_location="cpu", weights_only=True)


def default_device_type() -> str:
    """nerfstudio defaults to "cuda"; on a machine without CUDA, training on "cpu" is what a user wants."""
    return "cuda" if torch.cuda.is_available() else "cpu"
