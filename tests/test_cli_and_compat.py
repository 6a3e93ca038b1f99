"""The `segsplat` command's help, and the CPU/offline compatibility pieces that need no trained model."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from conftest import BIN, run


@pytest.mark.parametrize("words", [["--help"], ["make-scene", "--help"], ["segment", "--help"], ["demo", "--help"]])
def test_segsplat_help(words, tmp_path):
    result = run([str(BIN / "segsplat"), *words], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage: segsplat" in result.stdout


def test_make_scene_refuses_to_overwrite_with_a_clear_message(tmp_path):
    (tmp_path / "scene").mkdir()
    (tmp_path / "scene" / "keep.txt").write_text("user data")
    result = run([str(BIN / "segsplat"), "make-scene", "--output", "scene"], cwd=tmp_path)
    assert result.returncode == 2
    assert "--overwrite" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "scene" / "keep.txt").read_text() == "user data"


def test_lpips_without_weights_is_reported_unavailable(monkeypatch):
    from torchmetrics.image import lpip

    from segsplat_ns import compat

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(lpip, "LearnedPerceptualImagePatchSimilarity", offline)
    monkeypatch.delenv("SEGSPLAT_NO_DOWNLOAD", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(compat.nerfstudio, "_can_download", lambda: True)  # the host answers, the download fails
    with pytest.warns(UserWarning, match="LPIPS not available.*left out of the metrics"):
        lpips = compat.make_lpips()
    assert isinstance(lpips, compat.LpipsUnavailable)
    assert torch.isnan(lpips(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)))


def test_lpips_offline_makes_no_download_attempt(monkeypatch, tmp_path, capfd):
    """Offline with nothing cached: no "Downloading" line, one warning naming the file that would enable LPIPS."""
    from torchmetrics.image import lpip

    from segsplat_ns import compat

    def must_not_run(*args, **kwargs):
        raise AssertionError("LPIPS construction attempted a download offline")

    monkeypatch.setattr(lpip, "LearnedPerceptualImagePatchSimilarity", must_not_run)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("SEGSPLAT_NO_DOWNLOAD", "1")
    with pytest.warns(UserWarning, match=f"LPIPS not available.*{compat.nerfstudio.ALEXNET_WEIGHTS}"):
        lpips = compat.make_lpips()
    assert isinstance(lpips, compat.LpipsUnavailable)
    assert "Downloading" not in capfd.readouterr().err


def test_default_device_type_follows_cuda_availability():
    from segsplat_ns.compat import default_device_type

    assert default_device_type() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_nerfstudio_discovers_the_saga_method():
    from nerfstudio.plugins.registry import discover_methods

    methods, descriptions = discover_methods()
    assert "saga" in methods and "SAGA" in descriptions["saga"]
    assert np.isclose(methods["saga"].optimizers["affinity_features"]["optimizer"].lr, 0.0025)
