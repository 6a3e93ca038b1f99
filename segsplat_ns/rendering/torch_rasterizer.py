"""The exact pure-PyTorch reference rasterizer: gsplat 1.4.0's ``rasterization`` on any device, in plain PyTorch.

:func:`rasterize_torch_reference` is what :func:`segsplat_ns.rendering.rasterize` runs for CPU tensors. It is
the *reference* implementation: exact (it reproduces gsplat's decisions: which Gaussian touches which pixel, in
which order, where a pixel stops), checked against an independent brute-force per-pixel renderer and with
``torch.autograd.gradcheck`` in float64 (``tests/test_rendering.py``), and deliberately simple rather than fast:
it is **not tiled**: it enumerates every contributing (pixel, Gaussian) pair of all cameras at once and
composites them with segmented cumulative sums, instead of working tile by tile as gsplat's kernels do. Memory
and time grow with the number of pairs. A faster tiled CPU rasterizer is a separate, planned piece of work; it
would be tested against this one.

It is differentiable w.r.t. means, quats, scales, opacities, colors (and backgrounds) through autograd, works in
float32 and float64, renders features of any width and fills the ``info`` dict that gsplat's
``DefaultStrategy`` and nerfstudio's splatfacto read (``means2d`` with ``.grad`` / ``.absgrad``, ``radii``,
``width``, ``height``, ``n_cameras``, ...).

Semantics matched (from gsplat 1.4.0's CUDA kernels ``fully_fused_projection_fwd``,
``isect_tiles`` and ``rasterize_to_pixels_fwd``):

* quaternions (wxyz) are normalised; covariance ``R S S R^T``; world->camera with ``viewmats``;
* EWA perspective projection, with x/z and y/z clamped to ``(W - cx)/fx + 0.3 tan_fovx`` (and the
  other three limits) for the Jacobian only, exactly as ``persp_proj``;
* ``eps2d`` added to the 2D covariance diagonal; ``antialiased`` multiplies opacities by
  ``sqrt(max(0, det_orig / det_blur))``; conic = inverse of the blurred 2D covariance;
* radius ``ceil(3 sqrt(b + sqrt(max(0.01, b^2 - det))))``; culled (radius 0): depth outside
  ``[near, far]``, ``det <= 0``, ``radius <= radius_clip``, radius box entirely off-screen;
* a Gaussian is only considered for the pixels of the 16x16 tiles its radius box touches
  (``isect_tiles``); inside those, pixel centres ``(x + 0.5, y + 0.5)``,
  ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy``, ``alpha = min(0.999, o exp(-sigma))``, pairs with
  ``sigma < 0`` or ``alpha < 1/255`` are skipped; front to back by camera depth (ties by index);
  a pixel stops at the first Gaussian whose next transmittance ``T (1 - alpha) <= 1e-4``, and that
  Gaussian is excluded;
* ``render + T_final * background``; render modes RGB / D / ED / RGB+D / RGB+ED (depth appended as
  the last channel, ED divided by ``alpha.clamp(min=1e-10)``); SH colours evaluated with view
  directions from the camera centre, ``+ 0.5`` and ``clamp_min(0)``.

Implementation: (pixel, Gaussian) pairs are enumerated only inside the part of each Gaussian's
tile box where its alpha can reach 1/255 (the alpha-threshold ellipse's bounding box, one pixel of
margin), filtered, stably sorted by pixel (pairs are generated in depth order), and composited with
a segmented cumulative sum of ``log(1 - alpha)`` in float64. The index building runs under
``no_grad``; only the surviving pairs enter the autograd graph. Colour accumulation is a small
custom autograd function working in chunks, so no ``[pairs x channels]`` tensor is kept for backward.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from segsplat_ns.rendering.projection import finish_render, gsplat_info, isect_keys, prepare, tile_boxes

__all__ = ["rasterize_torch_reference"]

_ALPHA_MIN = 1.0 / 255.0
_ALPHA_MAX = 0.999
_T_STOP = 1e-4
# elements of one [pairs x channels] temporary in the colour accumulation
_CHUNK_ELEMS = 1 << 22


# --------------------------------------------------------------------------------------------
# colour accumulation
# --------------------------------------------------------------------------------------------


class _Accumulate(torch.autograd.Function):
    """out[pix[k]] += w[k] * colors[cidx[k]], in chunks (no [pairs x D] tensor saved)."""

    @staticmethod
    def forward(ctx, w, colors, cidx, pix, n_pix):
        D = colors.shape[-1]
        out = colors.new_zeros(n_pix, D)
        step = max(1, _CHUNK_ELEMS // max(D, 1))
        for s in range(0, w.shape[0], step):
            e = s + step
            out.index_add_(0, pix[s:e], colors[cidx[s:e]] * w[s:e, None])
        ctx.save_for_backward(w, colors, cidx, pix)
        return out

    @staticmethod
    def backward(ctx, g_out):
        w, colors, cidx, pix = ctx.saved_tensors
        D = colors.shape[-1]
        step = max(1, _CHUNK_ELEMS // max(D, 1))
        g_out = g_out.contiguous()
        grad_w = torch.empty_like(w) if ctx.needs_input_grad[0] else None
        grad_c = torch.zeros_like(colors) if ctx.needs_input_grad[1] else None
        for s in range(0, w.shape[0], step):
            e = s + step
            go = g_out[pix[s:e]]
            if grad_w is not None:
                grad_w[s:e] = (go * colors[cidx[s:e]]).sum(-1)
            if grad_c is not None:
                grad_c.index_add_(0, cidx[s:e], go * w[s:e, None])
        return grad_w, grad_c, None, None, None


# --------------------------------------------------------------------------------------------
# pair enumeration
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def _isect_info(depths, tx0, ty0, tx1, ty1, C, N, tile_width, tile_height):
    """gsplat's ``tiles_per_gauss`` / ``isect_ids`` / ``flatten_ids`` / ``isect_offsets``."""
    device = depths.device
    nx = (tx1 - tx0).clamp_min(0)
    ny = (ty1 - ty0).clamp_min(0)
    tiles_per_gauss = (nx * ny).to(torch.int32)  # [C,N]
    cnt = tiles_per_gauss.reshape(-1).long()
    n_isects = int(cnt.sum())
    ids = torch.repeat_interleave(torch.arange(C * N, device=device), cnt)
    start = torch.cumsum(cnt, 0) - cnt
    local = torch.arange(n_isects, device=device) - start[ids]
    nxf = nx.reshape(-1)[ids].clamp_min(1)
    tile_x = tx0.reshape(-1)[ids] + local % nxf
    tile_y = ty0.reshape(-1)[ids] + local // nxf
    tile_id = tile_y * tile_width + tile_x
    cam = ids // max(N, 1)
    n_tiles = tile_width * tile_height
    isect_ids = isect_keys(depths, ids, tile_id, N, n_tiles)
    isect_ids, order = torch.sort(isect_ids, stable=True)
    flatten_ids = ids[order].to(torch.int32)
    key = (cam[order] * n_tiles + tile_id[order]) if n_isects else tile_id
    isect_offsets = torch.searchsorted(
        key.contiguous(), torch.arange(C * n_tiles, device=device)
    ).to(torch.int32).reshape(C, tile_height, tile_width)
    return tiles_per_gauss, isect_ids, flatten_ids, isect_offsets


# --------------------------------------------------------------------------------------------
# the reference rasterizer
# --------------------------------------------------------------------------------------------


def rasterize_torch_reference(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [(C,) N, D] or [(C,) N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: Optional[Tensor] = None,
    render_mode: str = "RGB",
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    channel_chunk: int = 32,
    distributed: bool = False,
    camera_model: str = "pinhole",
    covars: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Dict]:
    """gsplat 1.4.0's ``rasterization`` (``packed=False``, pinhole) in plain PyTorch, on the inputs' device.

    Returns ``(render_colors [C, H, W, D'], render_alphas [C, H, W, 1], info)``. ``channel_chunk`` is accepted
    for gsplat's signature and unused (every channel is rendered in one pass).
    """
    p = prepare(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=near_plane,
        far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d, sh_degree=sh_degree, packed=packed,
        backgrounds=backgrounds, render_mode=render_mode, rasterize_mode=rasterize_mode, distributed=distributed,
        camera_model=camera_model, covars=covars,
    )  # fmt: skip
    C, N, H, W = p.C, p.N, p.height, p.width
    device, dtype = means.device, means.dtype
    radii, means2d, depths, conics, covar2d, opac = p.radii, p.means2d, p.depths, p.conics, p.covar2d, p.opacities
    cols_flat, shared_cols = p.colors, p.shared_colors

    # ---------------- info (what gsplat fills for packed=False) ----------------
    tile_width = math.ceil(W / float(tile_size))
    tile_height = math.ceil(H / float(tile_size))
    tx0, ty0, tx1, ty1 = tile_boxes(means2d.detach(), radii, tile_size, tile_width, tile_height)
    tiles_per_gauss, isect_ids, flatten_ids, isect_offsets = _isect_info(
        depths, tx0, ty0, tx1, ty1, C, N, tile_width, tile_height
    )
    info = gsplat_info(p, tile_size, tile_width, tile_height, tiles_per_gauss, isect_ids, flatten_ids, isect_offsets)

    # ---------------- pair enumeration (no grad) ----------------
    with torch.no_grad():
        m2 = means2d.detach()
        o_d = opac.detach()
        cov_d = covar2d.detach()
        # pixels where alpha can reach 1/255: 0.5 d^T cov^-1 d <= log(255 o); bbox of that ellipse
        smax = torch.log(torch.clamp(o_d * 255.0, min=1e-30)).clamp_min(0.0)
        ex = torch.sqrt(2.0 * smax * cov_d[..., 0]) + 1.0
        ey = torch.sqrt(2.0 * smax * cov_d[..., 2]) + 1.0
        px0 = torch.maximum(torch.ceil(m2[..., 0] - ex - 0.5).clamp(-1, W).long(), tx0 * tile_size)
        px1 = torch.minimum(torch.floor(m2[..., 0] + ex - 0.5).clamp(-1, W).long() + 1, (tx1 * tile_size).clamp_max(W))
        py0 = torch.maximum(torch.ceil(m2[..., 1] - ey - 0.5).clamp(-1, H).long(), ty0 * tile_size)
        py1 = torch.minimum(torch.floor(m2[..., 1] + ey - 0.5).clamp(-1, H).long() + 1, (ty1 * tile_size).clamp_max(H))
        bw = (px1 - px0).clamp_min(0)
        bh = (py1 - py0).clamp_min(0)
        live = (radii > 0) & (o_d >= _ALPHA_MIN)
        bw = torch.where(live, bw, torch.zeros_like(bw))

        # visit (camera, gaussian) entries front to back: stable sort by depth within each camera
        order = torch.sort(depths.detach(), dim=1, stable=True).indices  # [C,N]
        flat_order = (order + torch.arange(C, device=device)[:, None] * N).reshape(-1)
        cnt = (bw * bh).reshape(-1)[flat_order]
        ent = flat_order.index_select(0, (cnt > 0).nonzero().squeeze(1))  # (camera, depth) order
        cnt = (bw * bh).reshape(-1).index_select(0, ent)
        E = ent.shape[0]
        P0 = int(cnt.sum())
        # per-entry table, gathered once per pair
        cam = torch.div(ent, N, rounding_mode="floor")
        tab = torch.stack(
            [
                m2[..., 0].reshape(-1)[ent], m2[..., 1].reshape(-1)[ent],
                conics.detach()[..., 0].reshape(-1)[ent], conics.detach()[..., 1].reshape(-1)[ent],
                conics.detach()[..., 2].reshape(-1)[ent], o_d.reshape(-1)[ent],
                px0.reshape(-1)[ent].to(dtype), py0.reshape(-1)[ent].to(dtype),
            ],
            dim=-1,
        )  # [E, 8]
        pix_base = (cam * (H * W) + py0.reshape(-1)[ent] * W + px0.reshape(-1)[ent])  # [E]
        rep = torch.repeat_interleave(torch.arange(E, device=device), cnt)  # [P0]
        t = tab.index_select(0, rep)
        # position inside the box, in integers (float32 pair indices are inexact past 2^24 pairs)
        box_w = bw.reshape(-1)[ent].index_select(0, rep)
        local = torch.arange(P0, device=device) - (torch.cumsum(cnt, 0) - cnt).index_select(0, rep)
        ly_i = torch.div(local, box_w, rounding_mode="floor")
        lx_i = local - ly_i * box_w
        ly, lx = ly_i.to(dtype), lx_i.to(dtype)
        del box_w, local
        dx = t[:, 0] - (t[:, 6] + lx + 0.5)
        dy = t[:, 1] - (t[:, 7] + ly + 0.5)
        sigma = 0.5 * (t[:, 2] * dx * dx + t[:, 4] * dy * dy) + t[:, 3] * dx * dy
        alpha = torch.clamp(t[:, 5] * torch.exp(-sigma), max=_ALPHA_MAX)
        ok = ((sigma >= 0) & (alpha >= _ALPHA_MIN)).nonzero().squeeze(1)
        rep = rep.index_select(0, ok)
        alpha = alpha.index_select(0, ok)
        pix = pix_base.index_select(0, rep) + ly_i.index_select(0, ok) * W + lx_i.index_select(0, ok)
        g = ent.index_select(0, rep)
        del t, lx, ly, lx_i, ly_i, dx, dy, sigma, ok, rep
        # (pixel, depth) order: pairs were generated in depth order, sort stably by pixel
        pix, perm = torch.sort(pix, stable=True)
        g = g.index_select(0, perm)
        alpha = alpha.index_select(0, perm)
        # transmittance stop rule: exclude the first pair with T * (1 - alpha) <= 1e-4 and after
        upix, inv, counts = torch.unique_consecutive(pix, return_inverse=True, return_counts=True)
        seg_start = torch.cumsum(counts, 0) - counts
        la = torch.log1p(-alpha.double())
        cs = torch.cumsum(la, 0)
        base = (cs - la)[seg_start] if la.numel() else cs
        t_incl = torch.exp(cs - base[inv])
        keep = (t_incl > _T_STOP).nonzero().squeeze(1)
        g = g.index_select(0, keep)
        pix = pix.index_select(0, keep)
        inv = inv.index_select(0, keep)
        counts = torch.bincount(inv, minlength=upix.shape[0])
        seg_start = torch.cumsum(counts, 0) - counts
        seg_end = seg_start + counts - 1
        del la, cs, base, t_incl, keep, alpha, perm

    # ---------------- differentiable compositing on the surviving pairs ----------------
    n_img = C * H * W
    P = g.shape[0]
    means2d_f = means2d.reshape(C * N, 2)
    xy = means2d_f[g]  # [P,2]: per-(pixel, gaussian) copy of means2d
    if absgrad:
        means2d.absgrad = torch.zeros_like(means2d.detach())
        if xy.requires_grad:
            g_hook = g
            m2_ref = means2d

            def _absgrad_hook(grad, g_hook=g_hook, m2_ref=m2_ref):
                buf = torch.zeros(C * N, 2, dtype=grad.dtype, device=grad.device)
                buf.index_add_(0, g_hook, grad.abs())
                m2_ref.absgrad = buf.reshape(C, N, 2)
                return grad

            xy.register_hook(_absgrad_hook)
    pxf = (pix % W).to(dtype) + 0.5
    pyf = ((pix // W) % H).to(dtype) + 0.5
    co = conics.reshape(C * N, 3)[g]
    dx = xy[:, 0] - pxf
    dy = xy[:, 1] - pyf
    sigma = 0.5 * (co[:, 0] * dx * dx + co[:, 2] * dy * dy) + co[:, 1] * dx * dy
    alpha = torch.clamp(opac.reshape(-1)[g] * torch.exp(-sigma), max=_ALPHA_MAX)
    la = torch.log1p(-alpha.double())
    cs = torch.cumsum(la, 0)
    cs_excl = cs - la
    if P > 0:
        base = cs_excl[seg_start]  # [S]
        w = (alpha.double() * torch.exp(cs_excl - base[inv])).to(dtype)
        t_final_seg = torch.exp(cs[seg_end] - base).to(dtype)  # [S]
    else:
        w = alpha
        t_final_seg = alpha.new_zeros(0)

    cidx = (g % N) if shared_cols else g
    render = _Accumulate.apply(w, cols_flat, cidx, pix, n_img)  # [C*H*W, D]
    ones = torch.ones(n_img, dtype=dtype, device=device)
    T_final = ones.index_put((upix,), t_final_seg) if P > 0 else ones
    render, render_alphas = finish_render(p, render, 1.0 - T_final, T_final, render_mode, empty=P == 0)
    return render, render_alphas, info
