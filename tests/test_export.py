"""The selection .ply is byte-for-byte what ``ns-export gaussian-splat`` writes."""

import ast
import subprocess
import sys
import textwrap
import typing
from collections import OrderedDict
from importlib.metadata import version
from pathlib import Path

import nerfstudio.scripts as ns_scripts
import numpy as np
import pytest
import torch

from segsplat_ns.export import (
    LOW_OPACITY_LOGIT,
    export_selection,
    gaussian_splat_ply_fields,
    read_splat_ply,
    write_splat_ply,
)

EXPORTER_PY = Path(ns_scripts.__file__).parent / "exporter.py"


def make_params(n=200, k=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "means": torch.randn(n, 3, generator=g),
        "scales": torch.randn(n, 3, generator=g) - 3.0,
        "quats": torch.randn(n, 4, generator=g),
        "features_dc": torch.randn(n, 3, generator=g),
        "features_rest": torch.randn(n, k, 3, generator=g) * 0.1,
        "opacities": torch.randn(n, 1, generator=g) * 2.0,
    }


def nerfstudio_write_ply():
    """``ExportGaussianSplat.write_ply``, taken from nerfstudio's source without importing the module.

    Importing ``nerfstudio.scripts.exporter`` needs open3d (which needs libusb-1.0 on Linux) and loads every
    registered method plugin; the writer itself needs neither, so this test works without them.
    """
    tree = ast.parse(EXPORTER_PY.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ExportGaussianSplat")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "write_ply")
    fn.decorator_list = []
    namespace = {"np": np, "typing": typing, "version": version}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(EXPORTER_PY), "exec"), namespace)
    return namespace["write_ply"]


def reference_fields(params):
    """nerfstudio's map_to_tensors for an sh_degree>0 model, written out as ExportGaussianSplat.main does."""
    positions = params["means"].numpy()
    n = positions.shape[0]
    m = OrderedDict()
    m["x"], m["y"], m["z"] = positions[:, 0], positions[:, 1], positions[:, 2]
    for k in ("nx", "ny", "nz"):
        m[k] = np.zeros(n, dtype=np.float32)
    shs_0 = params["features_dc"].contiguous().numpy()
    for i in range(shs_0.shape[1]):
        m[f"f_dc_{i}"] = shs_0[:, i, None]
    shs_rest = params["features_rest"].transpose(1, 2).contiguous().numpy().reshape((n, -1))
    for i in range(shs_rest.shape[-1]):
        m[f"f_rest_{i}"] = shs_rest[:, i, None]
    m["opacity"] = params["opacities"].numpy()
    for i in range(3):
        m[f"scale_{i}"] = params["scales"].numpy()[:, i, None]
    for i in range(4):
        m[f"rot_{i}"] = params["quats"].numpy()[:, i, None]
    return m


def test_full_export_byte_identical_to_nerfstudio_writer(tmp_path):
    params = make_params()
    params["opacities"][:5] = 0.5  # make sure nothing is culled in this test
    params["opacities"].clamp_(min=-5.0)
    ref = reference_fields(params)
    ref_path = tmp_path / "ref.ply"
    nerfstudio_write_ply()(str(ref_path), 200, ref)
    ours = tmp_path / "ours.ply"
    assert write_splat_ply(ours, params) == 200
    assert ours.read_bytes() == ref_path.read_bytes()
    assert list(gaussian_splat_ply_fields(params).keys()) == list(ref.keys())
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary behind


EXPORT_MAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    import nerfstudio.plugins.registry as registry
    registry.discover_methods = lambda: ({}, {})  # export does not need any plugin method
    from nerfstudio.scripts import exporter
    from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig

    class Pipeline:
        pass

    for params_path, out_dir, sh_degree in zip(*[iter(sys.argv[1:])] * 3):
        params = torch.load(params_path)
        model = SplatfactoModel.__new__(SplatfactoModel)
        torch.nn.Module.__init__(model)
        model.config = SplatfactoModelConfig(sh_degree=int(sh_degree))
        model.gauss_params = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in params.items()})
        pipeline = Pipeline()
        pipeline.model = model
        exporter.eval_setup = lambda *args, **kwargs: (None, pipeline, None, None)
        exporter.ExportGaussianSplat(load_config=Path("unused.yml"), output_dir=Path(out_dir)).main()
    """
)


def test_byte_identical_to_ns_export_gaussian_splat(tmp_path):
    """Run nerfstudio's real ExportGaussianSplat.main() on the same parameters (NaNs, low opacities too).

    One subprocess (importing the exporter is slow) exports an sh_degree 3 and an sh_degree 0 model.
    """
    cases = []
    args = []
    for sh_degree in (3, 0):
        k = 15 if sh_degree == 3 else 0
        params = make_params(n=300, k=k, seed=1 + sh_degree)
        params["opacities"].clamp_(min=-5.0)  # only the ones set below are culled
        params["opacities"][:10] = -8.0  # below logit(1/255): culled
        params["scales"][10, 1] = float("nan")  # non-finite: dropped
        params["quats"][11, 3] = float("inf")
        if k:
            params["features_rest"][12, 4, 2] = float("nan")
        params_path = tmp_path / f"params{sh_degree}.pt"
        torch.save(params, params_path)
        ns_dir = tmp_path / f"ns{sh_degree}"
        cases.append((sh_degree, params, ns_dir, 300 - 10 - 2 - (1 if k else 0)))
        args += [str(params_path), str(ns_dir), str(sh_degree)]
    proc = subprocess.run(
        [sys.executable, "-c", EXPORT_MAIN_SCRIPT, *args], check=False, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        if "libusb" in proc.stderr or "open3d" in proc.stderr:
            pytest.skip("nerfstudio.scripts.exporter cannot import open3d here: " + proc.stderr.strip()[-300:])
        raise AssertionError(proc.stderr[-3000:])
    for sh_degree, params, ns_dir, expected_count in cases:
        ours = tmp_path / f"ours{sh_degree}.ply"
        assert write_splat_ply(ours, params, sh_degree_colors=sh_degree > 0) == expected_count
        assert ours.read_bytes() == (ns_dir / "splat.ply").read_bytes(), f"sh_degree={sh_degree}"


def test_mask_selects_exactly_the_masked_gaussians(tmp_path):
    params = make_params(n=100, k=3)
    params["opacities"].clamp_(min=0.0)
    mask = torch.zeros(100, dtype=torch.bool)
    idx = torch.tensor([3, 17, 18, 50, 99])
    mask[idx] = True
    path = tmp_path / "sel.ply"
    assert write_splat_ply(path, params, mask=mask) == 5
    data = read_splat_ply(path)
    assert list(data.keys()) == list(gaussian_splat_ply_fields(params).keys())
    assert len(data["x"]) == 5
    np.testing.assert_array_equal(data["x"], params["means"][idx, 0].numpy())
    np.testing.assert_array_equal(data["z"], params["means"][idx, 2].numpy())
    np.testing.assert_array_equal(data["opacity"], params["opacities"][idx, 0].numpy())
    np.testing.assert_array_equal(data["rot_3"], params["quats"][idx, 3].numpy())
    # f_rest layout: [N, K, 3] -> [N, 3, K] flattened, so f_rest_{c*K + j} = features_rest[:, j, c]
    np.testing.assert_array_equal(data["f_rest_4"], params["features_rest"][idx, 1, 1].numpy())
    # integer indices select the same Gaussians
    assert write_splat_ply(tmp_path / "idx.ply", params, mask=idx) == 5
    assert (tmp_path / "idx.ply").read_bytes() == path.read_bytes()


def test_segment_id_extra_field_round_trips(tmp_path):
    params = make_params(n=50, k=0)
    params["opacities"].clamp_(min=0.0)
    labels = torch.arange(50) % 7 - 1  # includes -1 ("noise") and large ids
    labels[0] = 123456
    mask = labels != 2
    path = tmp_path / "seg.ply"
    count = write_splat_ply(path, params, mask=mask, extra_fields={"segment_id": labels})
    assert count == int(mask.sum())
    data = read_splat_ply(path)
    assert list(data.keys())[-1] == "segment_id"
    assert data["segment_id"].dtype == np.int32
    np.testing.assert_array_equal(data["segment_id"], labels[mask].numpy())
    header = path.read_bytes().split(b"end_header")[0]
    assert b"property int segment_id" in header
    # the standard part is unchanged by the extra property
    assert write_splat_ply(tmp_path / "std.ply", params, mask=mask) == count
    std = read_splat_ply(tmp_path / "std.ply")
    for key in std:
        np.testing.assert_array_equal(std[key], data[key])
    with pytest.raises(ValueError, match="one value per Gaussian"):
        write_splat_ply(path, params, extra_fields={"segment_id": labels[:10]})
    with pytest.raises(ValueError, match="clashes"):
        write_splat_ply(path, params, extra_fields={"opacity": labels})


def test_empty_selection_raises_and_keeps_existing_file(tmp_path):
    params = make_params(n=20, k=0)
    path = tmp_path / "sel.ply"
    path.write_bytes(b"previous export")
    with pytest.raises(ValueError, match="selection is empty"):
        write_splat_ply(path, params, mask=torch.zeros(20, dtype=torch.bool))
    params["opacities"][:] = -10.0
    with pytest.raises(ValueError, match="opacity"):
        write_splat_ply(path, params)
    assert path.read_bytes() == b"previous export"
    assert not list(tmp_path.glob(".*.tmp"))


def test_nonfinite_and_opacity_filtering():
    params = make_params(n=10, k=2)
    params["opacities"][:] = 1.0
    params["means"][2, 0] = float("nan")  # nerfstudio would drop everything here; we drop this one
    params["features_rest"][4, 1, 0] = float("-inf")
    params["opacities"][6] = LOW_OPACITY_LOGIT - 0.01
    params["opacities"][7] = LOW_OPACITY_LOGIT + 0.01
    keep = export_selection(params)
    assert keep.tolist() == [True, True, False, True, False, True, False, True, True, True]
    assert len(gaussian_splat_ply_fields(params)["x"]) == 7
    assert export_selection(params, cull_low_opacity=False).sum() == 8
    # sh_degree 0 models: colours are RGB2SH(sigmoid(features_dc)) and no f_rest
    fields = gaussian_splat_ply_fields(params, sh_degree_colors=False)
    assert not any(k.startswith("f_rest") for k in fields)
    expected = (torch.sigmoid(params["features_dc"][0]) - 0.5) / 0.28209479177387814
    np.testing.assert_allclose([fields[f"f_dc_{i}"][0] for i in range(3)], expected.numpy(), rtol=1e-6)
