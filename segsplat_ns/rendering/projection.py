"""What every CPU rasterizer shares: gsplat 1.4.0's projection, spherical harmonics and tile boxes, in PyTorch.

:func:`prepare` checks the arguments of ``gsplat.rasterization`` (pinhole, ``packed=False``), projects the
Gaussians (differentiably: the compositing step's gradients flow back through it by autograd), evaluates the
colours (SH or features of any width) and appends depth for the depth render modes. The two CPU rasterizers,
:mod:`~segsplat_ns.rendering.torch_rasterizer` (the exact reference) and
:mod:`~segsplat_ns.rendering.numba_rasterizer` (tiled, compiled), differ only in how they composite.
The semantics matched are listed in :mod:`~segsplat_ns.rendering.torch_rasterizer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["Projected", "finish_render", "gsplat_info", "isect_keys", "prepare", "project", "project_numba", "project_torch",
           "spherical_harmonics",
           "tile_boxes"]

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


# --------------------------------------------------------------------------------------------
# projection
# --------------------------------------------------------------------------------------------


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """Covariance ``R S S R^T`` from (unnormalised, wxyz) quaternions and scales. [N, 3, 3]"""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)
    M = R * scales[:, None, :]
    return M @ M.transpose(-1, -2)


def project(means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
            radius_clip, covars=None):
    """gsplat's ``fully_fused_projection`` (pinhole, packed=False).

    Returns radii [C,N] int32, means2d [C,N,2], depths [C,N], conics [C,N,3],
    compensations [C,N], covar2d [C,N,3] (a, b, c of the blurred 2D covariance).
    Values of culled entries are finite but meaningless (gsplat leaves them uninitialised).
    Differentiable (:func:`project_torch`) when a gradient can reach the geometry or the camera; otherwise one
    numba pass (:mod:`~segsplat_ns.rendering._projection_kernel`), which every inference render and the pixel
    query share.
    """
    inputs = (means, quats, scales, viewmats, Ks)
    if (covars is not None or means.device.type != "cpu" or means.dtype not in (torch.float32, torch.float64)
            or (torch.is_grad_enabled() and any(t.requires_grad for t in inputs))):  # fmt: skip
        return project_torch(means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                             radius_clip, covars)  # fmt: skip
    return project_numba(means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip)


def project_numba(means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip):
    """:func:`project` in one numba pass (CPU, no gradients; float64 arithmetic, outputs in the means' dtype)."""
    from segsplat_ns.rendering import _projection_kernel
    from segsplat_ns.rendering._numba_kernels import KERNEL_LOCK

    C, N, dtype = viewmats.shape[0], means.shape[0], means.dtype

    def array(*shape):
        return np.empty(shape, dtype=np.float32 if dtype == torch.float32 else np.float64)

    radii = np.empty((C, N), np.int32)
    means2d, depths, conics, comps, covar2d = array(C, N, 2), array(C, N), array(C, N, 3), array(C, N), array(C, N, 3)
    with KERNEL_LOCK:
        _projection_kernel.project(*(t.detach().contiguous().numpy() for t in (means, quats, scales)),
                                   viewmats.detach().double().contiguous().numpy(),
                                   Ks.detach().double().contiguous().numpy(), float(width), float(height),
                                   float(eps2d), float(near_plane), float(far_plane), float(radius_clip), radii,
                                   means2d, depths, conics, comps, covar2d)  # fmt: skip
    return tuple(torch.from_numpy(a) for a in (radii, means2d, depths, conics, comps, covar2d))


def project_torch(means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                  radius_clip, covars=None):
    """:func:`project` in PyTorch ops (any device; differentiable by autograd)."""
    R = viewmats[:, :3, :3]  # [C,3,3]
    t = viewmats[:, :3, 3]  # [C,3]
    mean_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C,N,3]
    if covars is None:
        covar = quat_scale_to_covar(quats, scales)  # [N,3,3]
    else:
        covar = covars
    covar_c = torch.einsum("cij,njk,clk->cnil", R, covar, R)  # [C,N,3,3]

    x, y, z = mean_c.unbind(-1)
    depth_ok = (z >= near_plane) & (z <= far_plane)
    z_s = torch.where(depth_ok, z, torch.ones_like(z))  # keep culled entries finite (and grads 0)
    fx, fy = Ks[:, 0, 0][:, None], Ks[:, 1, 1][:, None]
    cx, cy = Ks[:, 0, 2][:, None], Ks[:, 1, 2][:, None]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    rz = 1.0 / z_s
    rz2 = rz * rz
    tx = z_s * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = z_s * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    zero = torch.zeros_like(z_s)
    J = torch.stack(
        [fx * rz, zero, -fx * tx * rz2, zero, fy * rz, -fy * ty * rz2], dim=-1
    ).reshape(*z.shape, 2, 3)  # [C,N,2,3]
    cov2d = J @ covar_c @ J.transpose(-1, -2)  # [C,N,2,2]
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)  # [C,N,2]

    a0, b, c0 = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det_orig = a0 * c0 - b * b
    a = a0 + eps2d
    c = c0 + eps2d
    det = a * c - b * b
    valid = depth_ok & (det > 0)
    det_s = torch.where(valid, det, torch.ones_like(det))
    compensations = torch.sqrt(torch.clamp(det_orig / det_s, min=0.0))
    conics = torch.stack([c / det_s, -b / det_s, a / det_s], dim=-1)

    with torch.no_grad():
        bm = 0.5 * (a + c)
        v1 = bm + torch.sqrt(torch.clamp(bm * bm - det, min=0.01))
        radius = torch.ceil(3.0 * torch.sqrt(torch.clamp(v1, min=0.0)))
        valid = valid & (radius > radius_clip)
        mx, my = means2d[..., 0], means2d[..., 1]
        valid = valid & ~(
            (mx + radius <= 0) | (mx - radius >= width) | (my + radius <= 0) | (my - radius >= height)
        )
        radii = torch.where(valid, radius, torch.zeros_like(radius)).to(torch.int32)
    covar2d = torch.stack([a, b, c], dim=-1)
    return radii, means2d, z, conics, compensations, covar2d


# --------------------------------------------------------------------------------------------
# spherical harmonics (gsplat's _evalsh_bases_fast / CUDA sh_coeffs_to_color_fast)
# --------------------------------------------------------------------------------------------


def sh_bases(num_bases: int, dirs: Tensor) -> Tensor:
    out = [None] * num_bases
    out[0] = torch.full_like(dirs[..., 0], 0.2820947917738781)
    if num_bases > 1:
        x, y, z = dirs.unbind(-1)
        fTmpA = -0.48860251190292
        out[1] = fTmpA * y
        out[2] = -fTmpA * z
        out[3] = fTmpA * x
    if num_bases > 4:
        z2 = z * z
        fTmpB = -1.092548430592079 * z
        fTmpA = 0.5462742152960395
        fC1 = x * x - y * y
        fS1 = 2 * x * y
        out[4] = fTmpA * fS1
        out[5] = fTmpB * y
        out[6] = 0.9461746957575601 * z2 - 0.3153915652525201
        out[7] = fTmpB * x
        out[8] = fTmpA * fC1
    if num_bases > 9:
        fTmpC = -2.285228997322329 * z2 + 0.4570457994644658
        fTmpB = 1.445305721320277 * z
        fTmpA = -0.5900435899266435
        fC2 = x * fC1 - y * fS1
        fS2 = x * fS1 + y * fC1
        out[9] = fTmpA * fS2
        out[10] = fTmpB * fS1
        out[11] = fTmpC * y
        out[12] = z * (1.865881662950577 * z2 - 1.119528997770346)
        out[13] = fTmpC * x
        out[14] = fTmpB * fC1
        out[15] = fTmpA * fC2
    if num_bases > 16:
        fTmpD = z * (-4.683325804901025 * z2 + 2.007139630671868)
        fTmpC = 3.31161143515146 * z2 - 0.47308734787878
        fTmpB = -1.770130769779931 * z
        fTmpA = 0.6258357354491763
        fC3 = x * fC2 - y * fS2
        fS3 = x * fS2 + y * fC2
        out[16] = fTmpA * fS3
        out[17] = fTmpB * fS2
        out[18] = fTmpC * fS1
        out[19] = fTmpD * y
        out[20] = 1.984313483298443 * z2 * (1.865881662950577 * z2 - 1.119528997770346) + (
            -1.006230589874905 * (0.9461746957575601 * z2 - 0.3153915652525201)
        )
        out[21] = fTmpD * x
        out[22] = fTmpC * fC1
        out[23] = fTmpB * fC2
        out[24] = fTmpA * fC3
    return torch.stack(out, dim=-1)


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """dirs [..., 3] (unnormalised), coeffs [..., K, 3] -> [..., 3] (before the +0.5)."""
    if degree > 4:
        raise NotImplementedError("sh_degree > 4 is not supported (gsplat supports up to 4)")
    num_bases = (degree + 1) ** 2
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    bases = sh_bases(num_bases, dirs)  # [..., B]
    return (bases[..., None] * coeffs[..., :num_bases, :]).sum(dim=-2)



@torch.no_grad()
def tile_boxes(means2d, radii, tile_size, tile_width, tile_height):
    """gsplat ``isect_tiles``: [tile_min, tile_max) per (camera, Gaussian), int64 [C,N] each."""
    r = radii.to(means2d.dtype)
    tr = r / tile_size
    tx = means2d[..., 0] / tile_size
    ty = means2d[..., 1] / tile_size
    tx0 = torch.floor(tx - tr).clamp(0, tile_width).long()
    ty0 = torch.floor(ty - tr).clamp(0, tile_height).long()
    tx1 = torch.ceil(tx + tr).clamp(0, tile_width).long()
    ty1 = torch.ceil(ty + tr).clamp(0, tile_height).long()
    live = radii > 0
    tx1 = torch.where(live, tx1, tx0)
    ty1 = torch.where(live, ty1, ty0)
    return tx0, ty0, tx1, ty1



@dataclass
class Projected:
    """The per-(camera, Gaussian) inputs of compositing. ``colors`` is [N, D] when every camera shares it
    (index with the Gaussian id) or [C*N, D] (index with camera*N + id)."""

    C: int
    N: int
    width: int
    height: int
    radii: Tensor  # [C, N] int32, 0 = culled
    means2d: Tensor  # [C, N, 2]
    depths: Tensor  # [C, N]
    conics: Tensor  # [C, N, 3]
    covar2d: Tensor  # [C, N, 3]
    opacities: Tensor  # [C, N] (times the compensation when antialiased)
    colors: Tensor  # [N, D] or [C*N, D]
    shared_colors: bool
    backgrounds: Optional[Tensor]  # [C, D] or None

    @property
    def channels(self) -> int:
        return self.colors.shape[-1]


def prepare(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=0.01, far_plane=1e10,
            radius_clip=0.0, eps2d=0.3, sh_degree=None, packed=False, backgrounds=None, render_mode="RGB",
            rasterize_mode="classic", distributed=False, camera_model="pinhole", covars=None) -> Projected:
    """Check the arguments, project, and evaluate the colours (see the module docstring)."""
    width, height = int(width), int(height)
    if packed:
        raise NotImplementedError(
            "segsplat_ns.rendering.rasterize: packed=True is only available on CUDA (gsplat); "
            "the CPU path implements packed=False"
        )
    if distributed:
        raise NotImplementedError("distributed rasterization is only available on CUDA (gsplat)")
    if camera_model != "pinhole":
        raise NotImplementedError(f"camera_model={camera_model!r} is only available on CUDA (gsplat)")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"unknown rasterize_mode {rasterize_mode!r}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"unknown render_mode {render_mode!r}")

    N = means.shape[0]
    C = viewmats.shape[0]
    H, W = height, width
    dtype = means.dtype
    assert means.shape == (N, 3), means.shape
    if covars is None:
        assert quats.shape == (N, 4), quats.shape
        assert scales.shape == (N, 3), scales.shape
    else:
        assert covars.shape == (N, 3, 3), covars.shape
    assert opacities.shape == (N,), opacities.shape
    assert viewmats.shape == (C, 4, 4), viewmats.shape
    assert Ks.shape == (C, 3, 3), Ks.shape
    viewmats = viewmats.to(dtype)
    Ks = Ks.to(dtype)

    # ---------------- projection ----------------
    radii, means2d, depths, conics, comps, covar2d = project(
        means, quats, scales, viewmats, Ks, W, H, eps2d, near_plane, far_plane, radius_clip, covars
    )
    opac = opacities.repeat(C, 1)  # [C, N]
    if rasterize_mode == "antialiased":
        opac = opac * comps

    # ---------------- colours ----------------
    if sh_degree is None:
        assert (colors.dim() == 2 and colors.shape[0] == N) or (
            colors.dim() == 3 and colors.shape[:2] == (C, N)
        ), colors.shape
        cols = colors  # [N, D] or [C, N, D]
    else:
        assert (colors.dim() == 3 and colors.shape[0] == N and colors.shape[2] == 3) or (
            colors.dim() == 4 and colors.shape[:2] == (C, N) and colors.shape[3] == 3
        ), colors.shape
        assert (sh_degree + 1) ** 2 <= colors.shape[-2], colors.shape
        camtoworlds = torch.inverse(viewmats)
        dirs = means[None, :, :] - camtoworlds[:, None, :3, 3]  # [C,N,3]
        shs = colors.expand(C, -1, -1, -1) if colors.dim() == 3 else colors
        cols = torch.clamp_min(spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)  # [C,N,3]
    if render_mode in ("RGB+D", "RGB+ED"):
        cols3 = cols.expand(C, -1, -1) if cols.dim() == 2 else cols
        cols = torch.cat([cols3, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        cols = depths[..., None]
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(C, 1)
    Dout = cols.shape[-1]
    shared_cols = cols.dim() == 2  # [N, D]: index with gaussian id, else with camera*N + id
    cols_flat = cols if shared_cols else cols.reshape(C * N, Dout)
    return Projected(C, N, W, H, radii, means2d, depths, conics, covar2d, opac, cols_flat, shared_cols, backgrounds)


# --------------------------------------------------------------------------------------------
# what both rasterizers return
# --------------------------------------------------------------------------------------------


def isect_keys(depths: Tensor, flat_ids: Tensor, tile_ids: Tensor, N: int, n_tiles: int) -> Tensor:
    """gsplat's ``isect_ids``: camera | tile | float32 depth bits, one int64 per (camera*N + Gaussian) entry."""
    cam = flat_ids // max(N, 1)
    tile_n_bits = max(1, math.ceil(math.log2(max(n_tiles, 2))))
    depth_bits = depths.detach().float().contiguous().view(torch.int32).reshape(-1)[flat_ids].long() & 0xFFFFFFFF
    return (cam << (32 + tile_n_bits)) | (tile_ids << 32) | depth_bits


def gsplat_info(p: Projected, tile_size: int, tile_width: int, tile_height: int, tiles_per_gauss: Tensor,
                isect_ids: Tensor, flatten_ids: Tensor, isect_offsets: Tensor) -> Dict:  # fmt: skip
    """The ``info`` dict gsplat fills for ``packed=False`` (what ``DefaultStrategy`` and splatfacto read)."""
    return {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": p.radii,
        "means2d": p.means2d,
        "depths": p.depths,
        "conics": p.conics,
        "opacities": p.opacities,
        "tile_width": tile_width,
        "tile_height": tile_height,
        "tiles_per_gauss": tiles_per_gauss,
        "isect_ids": isect_ids,
        "flatten_ids": flatten_ids,
        "isect_offsets": isect_offsets,
        "width": p.width,
        "height": p.height,
        "tile_size": tile_size,
        "n_cameras": p.C,
    }


def finish_render(p: Projected, render: Tensor, render_alphas: Tensor, t_final: Tensor, render_mode: str,
                  empty: bool) -> tuple:  # fmt: skip
    """From composited ``render`` [C*H*W, D], ``render_alphas`` and ``t_final`` [C*H*W] (1 - alpha, each as its
    rasterizer computes it) to gsplat's outputs: background under T_final, expected depth divided by alpha.
    ``empty``: nothing was composited, so the outputs are tied to the inputs by zeros (as gsplat's autograd
    function keeps them)."""
    C, H, W = p.C, p.height, p.width
    if empty:
        render = render + 0.0 * p.means2d.sum() + 0.0 * p.colors.sum() + 0.0 * p.opacities.sum()
    render = render.reshape(C, H, W, p.channels)
    render_alphas = render_alphas.reshape(C, H, W, 1)
    if p.backgrounds is not None:
        render = render + t_final.reshape(C, H, W, 1) * p.backgrounds.to(render.dtype)[:, None, None, :]
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1)
    return render, render_alphas

