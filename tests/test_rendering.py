"""Tests of segsplat_ns.rendering.rasterize on CPU, against an independent brute-force reference: every test runs
with both CPU rasterizers (the tiled numba one, the default, and the exact pure-PyTorch reference), and the two are
compared with each other on random scenes.

The reference below is written from gsplat 1.4.0's CUDA kernels in the plainest way (one Gaussian,
one pixel at a time, Python floats for all the decisions), not from segsplat_ns.rendering.
"""

from __future__ import annotations

import math

import pytest
import torch

from segsplat_ns.rendering import CPU_RASTERIZERS, cpu_rasterizer, rasterize
from segsplat_ns.rendering.numba_rasterizer import last_pair_count, rasterize_numba
from segsplat_ns.rendering.torch_rasterizer import rasterize_torch_reference

TILE = 16


@pytest.fixture(autouse=True, params=CPU_RASTERIZERS)
def cpu_impl(request, monkeypatch):
    """Every test below, once per CPU rasterizer (SEGSPLAT_CPU_RASTERIZER)."""
    monkeypatch.setenv("SEGSPLAT_CPU_RASTERIZER", request.param)
    return request.param


# ----------------------------------------------------------------------------------------------
# brute-force reference
# ----------------------------------------------------------------------------------------------


def ref_project(means, quats, scales, viewmat, K, W, H, eps2d=0.3, near=0.01, far=1e10):
    """Per-Gaussian projection, one camera. Returns a list of dicts (None when culled)."""
    out = []
    Rv = viewmat[:3, :3]
    tv = viewmat[:3, 3]
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    for i in range(means.shape[0]):
        w, x, y, z = (quats[i] / quats[i].norm()).tolist()
        Rq = torch.tensor(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
            ],
            dtype=torch.float64,
        )
        S = torch.diag(scales[i].double())
        Sigma = Rq @ S @ S @ Rq.T
        pc = Rv.double() @ means[i].double() + tv.double()
        px, py, pz = pc.tolist()
        if pz < near or pz > far:
            out.append(None)
            continue
        Sc = Rv.double() @ Sigma @ Rv.double().T
        limx_p = (W - cx) / fx + 0.3 * 0.5 * W / fx
        limx_n = cx / fx + 0.3 * 0.5 * W / fx
        limy_p = (H - cy) / fy + 0.3 * 0.5 * H / fy
        limy_n = cy / fy + 0.3 * 0.5 * H / fy
        tx = pz * min(limx_p, max(-limx_n, px / pz))
        ty = pz * min(limy_p, max(-limy_n, py / pz))
        J = torch.tensor(
            [[fx / pz, 0.0, -fx * tx / pz**2], [0.0, fy / pz, -fy * ty / pz**2]], dtype=torch.float64
        )
        cov = J @ Sc @ J.T
        a, b, c = cov[0, 0].item(), cov[0, 1].item(), cov[1, 1].item()
        det0 = a * c - b * b
        a += eps2d
        c += eps2d
        det = a * c - b * b
        if det <= 0:
            out.append(None)
            continue
        mx, my = fx * px / pz + cx, fy * py / pz + cy
        half = 0.5 * (a + c)
        radius = math.ceil(3.0 * math.sqrt(half + math.sqrt(max(0.01, half * half - det))))
        if mx + radius <= 0 or mx - radius >= W or my + radius <= 0 or my - radius >= H:
            out.append(None)
            continue
        out.append(
            dict(
                mean2d=(mx, my), depth=pz, conic=(c / det, -b / det, a / det), radius=radius,
                comp=math.sqrt(max(0.0, det0 / det)),
            )
        )
    return out


def ref_tiles(g, W, H):
    """Tiles [x0, x1) x [y0, y1) that gsplat's isect_tiles assigns to a projected Gaussian."""
    tw, th = math.ceil(W / TILE), math.ceil(H / TILE)
    mx, my = g["mean2d"]
    r = g["radius"] / TILE
    x0 = min(max(0, math.floor(mx / TILE - r)), tw)
    x1 = min(max(0, math.ceil(mx / TILE + r)), tw)
    y0 = min(max(0, math.floor(my / TILE - r)), th)
    y1 = min(max(0, math.ceil(my / TILE + r)), th)
    return x0, x1, y0, y1


def ref_composite(proj, opac, colors, W, H, bg=None, xy=None, conic=None, op=None):
    """Front-to-back compositing of one camera, pixel by pixel.

    proj: ref_project output; opac/colors: per Gaussian (opacity already compensated).
    xy / conic / op: optional differentiable tensors [N,2]/[N,3]/[N] overriding the projected
    values (used for gradient checks); the skip/stop decisions are made on Python floats.
    Returns render [H, W, D], alpha [H, W, 1].
    """
    D = colors.shape[-1]
    vis = [i for i, g in enumerate(proj) if g is not None]
    vis.sort(key=lambda i: (proj[i]["depth"], i))
    tiles = {i: ref_tiles(proj[i], W, H) for i in vis}
    rows, arows = [], []
    for yy in range(H):
        row, arow = [], []
        for xx in range(W):
            tx, ty = xx // TILE, yy // TILE
            T = 1.0
            used = []
            for i in vis:
                x0, x1, y0, y1 = tiles[i]
                if not (x0 <= tx < x1 and y0 <= ty < y1):
                    continue
                mx, my = proj[i]["mean2d"]
                ca, cb, cc = proj[i]["conic"]
                dx, dy = mx - (xx + 0.5), my - (yy + 0.5)
                sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                alpha = min(0.999, float(opac[i]) * math.exp(-sigma))
                if sigma < 0 or alpha < 1.0 / 255.0:
                    continue
                if T * (1 - alpha) <= 1e-4:
                    break
                T *= 1 - alpha
                used.append(i)
            if xy is None:
                col = torch.zeros(D, dtype=colors.dtype)
                Tt = 1.0
                for i in used:
                    mx, my = proj[i]["mean2d"]
                    ca, cb, cc = proj[i]["conic"]
                    dx, dy = mx - (xx + 0.5), my - (yy + 0.5)
                    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                    alpha = min(0.999, float(opac[i]) * math.exp(-sigma))
                    col = col + colors[i] * alpha * Tt
                    Tt *= 1 - alpha
                Tt = torch.tensor(Tt, dtype=colors.dtype)
            else:
                col = torch.zeros(D, dtype=colors.dtype)
                Tt = torch.ones((), dtype=colors.dtype)
                for i in used:
                    dx = xy[i, 0] - (xx + 0.5)
                    dy = xy[i, 1] - (yy + 0.5)
                    sigma = 0.5 * (conic[i, 0] * dx * dx + conic[i, 2] * dy * dy) + conic[i, 1] * dx * dy
                    alpha = torch.clamp(op[i] * torch.exp(-sigma), max=0.999)
                    col = col + colors[i] * alpha * Tt
                    Tt = Tt * (1 - alpha)
            if bg is not None:
                col = col + Tt * bg
            row.append(col)
            arow.append((1 - Tt).reshape(1))
        rows.append(torch.stack(row))
        arows.append(torch.stack(arow))
    return torch.stack(rows), torch.stack(arows)


def ref_render(means, quats, scales, opacities, colors, viewmats, Ks, W, H, bg=None, mode="RGB",
               antialiased=False):
    """Full reference for all cameras, with render modes D/ED/RGB+D/RGB+ED."""
    outs, alphas = [], []
    for c in range(viewmats.shape[0]):
        proj = ref_project(means, quats, scales, viewmats[c], Ks[c], W, H)
        depth = torch.tensor([g["depth"] if g else 0.0 for g in proj], dtype=torch.float64)[:, None]
        opac = opacities.double().clone()
        if antialiased:
            opac = opac * torch.tensor([g["comp"] if g else 0.0 for g in proj], dtype=torch.float64)
        col = colors.double() if colors.dim() == 2 else colors[c].double()
        bgc = None if bg is None else bg[c].double()
        if mode in ("RGB+D", "RGB+ED"):
            col = torch.cat([col, depth], -1)
            bgc = None if bgc is None else torch.cat([bgc, torch.zeros(1, dtype=torch.float64)])
        elif mode in ("D", "ED"):
            col = depth
            bgc = None if bgc is None else torch.zeros(1, dtype=torch.float64)
        r, a = ref_composite(proj, opac, col, W, H, bg=bgc)
        if mode in ("ED", "RGB+ED"):
            r = torch.cat([r[..., :-1], r[..., -1:] / a.clamp(min=1e-10)], -1)
        outs.append(r)
        alphas.append(a)
    return torch.stack(outs), torch.stack(alphas)


# ----------------------------------------------------------------------------------------------
# scenes
# ----------------------------------------------------------------------------------------------


def look_at(eye, target=(0.0, 0.0, 0.0)):
    """world->camera (OpenCV: x right, y down, z forward)."""
    eye = torch.tensor(eye, dtype=torch.float64)
    f = torch.tensor(target, dtype=torch.float64) - eye
    f = f / f.norm()
    up = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)
    r = torch.linalg.cross(f, up)
    if r.norm() < 1e-6:
        r = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    r = r / r.norm()
    d = torch.linalg.cross(f, r)
    R = torch.stack([r, d, f])
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M


def make_scene(n, W, H, C=2, D=3, seed=0, dtype=torch.float64, scale=(0.05, 0.3), opac=(0.05, 0.99)):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 2.0
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = scale[0] + (scale[1] - scale[0]) * torch.rand(n, 3, generator=g, dtype=torch.float64)
    opacities = opac[0] + (opac[1] - opac[0]) * torch.rand(n, generator=g, dtype=torch.float64)
    colors = torch.rand(n, D, generator=g, dtype=torch.float64)
    eyes = [(0.3, -0.2, -4.0), (3.5, -0.5, -2.0), (-2.0, 1.0, 3.5)][:C]
    viewmats = torch.stack([look_at(e) for e in eyes])
    f = 1.2 * W
    Ks = torch.tensor([[f, 0, W / 2 + 0.3], [0, f, H / 2 - 0.2], [0, 0, 1]], dtype=torch.float64)
    Ks = Ks.expand(C, 3, 3).clone()
    cast = lambda t: t.to(dtype)  # noqa: E731
    return tuple(map(cast, (means, quats, scales, opacities, colors, viewmats, Ks)))


def test_inference_projection_is_the_pytorch_projection_in_one_numba_pass():
    """``project`` without gradients runs the numba kernel: in float64 it equals the PyTorch ops to rounding, radii
    included, culled entries too (near plane, behind the camera, off screen); with a gradient to take it is the
    PyTorch path, differentiable."""
    from segsplat_ns.rendering.projection import project, project_numba, project_torch

    W, H = 64, 48
    means, quats, scales, _, _, viewmats, Ks = make_scene(400, W, H, C=3, seed=5)
    means = torch.cat([means, torch.tensor([[0.3, -0.2, -4.0], [0.0, 0.0, -9.0], [40.0, 0.0, 0.0]], dtype=means.dtype)])
    quats = torch.cat([quats, torch.randn(3, 4, dtype=quats.dtype)])
    scales = torch.cat([scales, torch.full((3, 3), 0.1, dtype=scales.dtype)])
    args = (viewmats, Ks, W, H, 0.3, 0.01, 1e10, 0.0)
    fast, exact = project_numba(means, quats, scales, *args), project_torch(means, quats, scales, *args)
    assert torch.equal(fast[0], exact[0]) and 0 < int((fast[0] > 0).sum()) < fast[0].numel()
    for a, b in zip(fast[1:], exact[1:]):
        assert a.dtype == b.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    f32 = [t.float() for t in (means, quats, scales, viewmats, Ks)]
    fast32, exact32 = project_numba(*f32[:3], *f32[3:], *args[2:]), project_torch(*f32[:3], *f32[3:], *args[2:])
    assert fast32[1].dtype == torch.float32
    live = (fast32[0] > 0) & (exact32[0] > 0)
    assert (fast32[0] != exact32[0]).float().mean() < 0.01  # a radius may move by a pixel at an integer
    torch.testing.assert_close(fast32[1][live], exact32[1][live], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(fast32[3][live], exact32[3][live], rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        assert torch.equal(project(means, quats, scales, *args)[1], fast[1])
    means.requires_grad_(True)
    radii, means2d, *_ = project(means, quats, scales, *args)
    means2d[radii > 0].sum().backward()
    assert means.grad is not None and means.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# 1. values against the brute-force reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("D", [3, 32])
@pytest.mark.parametrize("mode", ["RGB+ED", "RGB", "D"])
def test_matches_bruteforce(D, mode):
    W, H = 24, 20
    means, quats, scales, opac, colors, viewmats, Ks = make_scene(30, W, H, C=2, D=D, seed=D)
    bg = torch.rand(2, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out, alpha, info = rasterize(
        means, quats, scales, opac, colors, viewmats, Ks, W, H, backgrounds=bg, render_mode=mode
    )
    ref, ref_a = ref_render(means, quats, scales, opac, colors, viewmats, Ks, W, H, bg=bg, mode=mode)
    assert out.shape == ref.shape and alpha.shape == (2, H, W, 1)
    assert (alpha > 0.5).any(), "scene should be partly covered"
    torch.testing.assert_close(alpha, ref_a, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # projection info matches the reference too
    for c in range(2):
        proj = ref_project(means, quats, scales, viewmats[c], Ks[c], W, H)
        radii = [g["radius"] if g else 0 for g in proj]
        assert info["radii"][c].tolist() == radii
        for i, g in enumerate(proj):
            if g:
                torch.testing.assert_close(
                    info["means2d"][c, i], torch.tensor(g["mean2d"], dtype=torch.float64)
                )
                torch.testing.assert_close(info["conics"][c, i], torch.tensor(g["conic"], dtype=torch.float64))


def test_matches_bruteforce_float32_antialiased_sh():
    """float32, antialiased compensation, SH colours (degree 1), 1 camera, many overlaps."""
    W, H = 24, 20
    means, quats, scales, opac, _, viewmats, Ks = make_scene(60, W, H, C=1, seed=3, scale=(0.1, 0.4))
    g = torch.Generator().manual_seed(5)
    sh = torch.randn(60, 4, 3, generator=g, dtype=torch.float64) * 0.5
    out, alpha, info = rasterize(
        *(t.float() for t in (means, quats, scales, opac, sh, viewmats, Ks)), W, H,
        sh_degree=1, rasterize_mode="antialiased",
    )
    # SH evaluated independently: degree-1 basis  (0.2820948, -0.4886025 y, 0.4886025 z, -0.4886025 x)
    campos = torch.inverse(viewmats[0])[:3, 3]
    d = means - campos
    d = d / d.norm(dim=-1, keepdim=True)
    basis = torch.stack(
        [torch.full_like(d[:, 0], 0.28209479177387814), -0.4886025119029199 * d[:, 1],
         0.4886025119029199 * d[:, 2], -0.4886025119029199 * d[:, 0]], -1
    )
    rgb = ((basis[:, :, None] * sh).sum(1) + 0.5).clamp_min(0.0)
    ref, ref_a = ref_render(means, quats, scales, opac, rgb, viewmats, Ks, W, H, antialiased=True)
    assert (ref_a > 0.9).float().mean() > 0.2
    torch.testing.assert_close(alpha.double(), ref_a, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=1e-4)


def test_stop_rule_and_culling():
    """Opaque stacks hit the T <= 1e-4 stop; behind-camera and off-screen Gaussians get radius 0."""
    W, H = 16, 16
    n = 12
    means = torch.zeros(n, 3, dtype=torch.float64)
    means[:, 2] = torch.linspace(2.0, 3.0, n)
    means[:, 0] = torch.linspace(-0.05, 0.05, n)
    means[-2] = torch.tensor([0.0, 0.0, -1.0])  # behind the camera
    means[-1] = torch.tensor([50.0, 0.0, 2.0])  # off-screen
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).repeat(n, 1)
    scales = torch.full((n, 3), 0.5, dtype=torch.float64)
    opac = torch.full((n,), 0.98, dtype=torch.float64)
    colors = torch.rand(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    viewmats = torch.eye(4, dtype=torch.float64)[None]
    Ks = torch.tensor([[[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]], dtype=torch.float64)
    out, alpha, info = rasterize(means, quats, scales, opac, colors, viewmats, Ks, W, H)
    assert info["radii"][0, -1] == 0 and info["radii"][0, -2] == 0
    assert info["radii"].dtype == torch.int32 and info["radii"].shape == (1, n)
    ref, ref_a = ref_render(means, quats, scales, opac, colors, viewmats, Ks, W, H)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(alpha, ref_a, atol=1e-6, rtol=1e-6)
    # the centre pixel stopped early: its transmittance is above 1e-4 although 10 layers of 0.98
    assert 1 - alpha[0, 8, 8, 0] > 1e-4


# ----------------------------------------------------------------------------------------------
# 2. gradcheck
# ----------------------------------------------------------------------------------------------


def test_gradcheck():
    W, H = 8, 8
    g = torch.Generator().manual_seed(7)
    n = 5
    means = torch.cat(
        [(torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 0.8,
         2.0 + torch.rand(n, 1, generator=g, dtype=torch.float64)], -1
    )
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = 0.1 + 0.2 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    opac = 0.3 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    viewmats = torch.eye(4, dtype=torch.float64)[None]
    Ks = torch.tensor([[[10.0, 0, 4], [0, 10.0, 4], [0, 0, 1]]], dtype=torch.float64)
    bg = torch.tensor([[0.2, 0.5, 0.7]], dtype=torch.float64)

    # no alpha at a threshold in this scene
    _, _, info = rasterize(means, quats, scales, opac, colors, viewmats, Ks, W, H)
    assert (info["radii"] > 0).all()

    def fn(m, q, s, o, c):
        r, a, _ = rasterize(m, q, s, o, c, viewmats, Ks, W, H, backgrounds=bg, render_mode="RGB+ED")
        return r, a

    inputs = tuple(t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# 3. means2d grad and absgrad
# ----------------------------------------------------------------------------------------------


def _two_gauss_scene():
    means = torch.tensor([[-0.05, 0.02, 2.0], [0.08, -0.04, 2.5]], dtype=torch.float64)
    quats = torch.tensor([[1.0, 0.2, -0.1, 0.3], [0.7, 0.1, 0.5, -0.2]], dtype=torch.float64)
    scales = torch.tensor([[0.15, 0.08, 0.1], [0.2, 0.12, 0.09]], dtype=torch.float64)
    opac = torch.tensor([0.7, 0.85], dtype=torch.float64)
    colors = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.5]], dtype=torch.float64)
    viewmats = torch.eye(4, dtype=torch.float64)[None]
    Ks = torch.tensor([[[12.0, 0, 4.1], [0, 12.0, 3.9], [0, 0, 1]]], dtype=torch.float64)
    return means, quats, scales, opac, colors, viewmats, Ks


def test_means2d_grad_and_absgrad():
    W, H = 8, 8
    means, quats, scales, opac, colors, viewmats, Ks = _two_gauss_scene()
    means.requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    wt = torch.randn(1, H, W, 3, generator=g, dtype=torch.float64)
    wa = torch.randn(1, H, W, 1, generator=g, dtype=torch.float64)
    bg = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)

    out, alpha, info = rasterize(
        means, quats, scales, opac, colors, viewmats, Ks, W, H, backgrounds=bg, absgrad=True
    )
    info["means2d"].retain_grad()  # what DefaultStrategy.step_pre_backward does
    ((out * wt).sum() + (alpha * wa).sum()).backward()
    grad = info["means2d"].grad[0]
    absgrad = info["means2d"].absgrad[0]
    assert info["means2d"].absgrad.shape == info["means2d"].shape

    # reference: same projected values, independent compositing, differentiable in xy
    proj = ref_project(means.detach(), quats, scales, viewmats[0], Ks[0], W, H)
    xy = info["means2d"][0].detach().clone().requires_grad_(True)
    conic = info["conics"][0].detach()
    r, a = ref_composite(proj, opac, colors, W, H, bg=bg[0], xy=xy, conic=conic, op=opac)
    ((r * wt[0]).sum() + (a * wa[0]).sum()).backward()
    torch.testing.assert_close(grad, xy.grad, atol=1e-10, rtol=1e-8)

    # absgrad: sum over pixels of |d L_pixel / d means2d|, by brute force pixel by pixel
    ref_abs = torch.zeros(2, 2, dtype=torch.float64)
    for yy in range(H):
        for xx in range(W):
            xy_p = info["means2d"][0].detach().clone().requires_grad_(True)
            r, a = ref_composite(proj, opac, colors, W, H, bg=bg[0], xy=xy_p, conic=conic, op=opac)
            lp = (r[yy, xx] * wt[0, yy, xx]).sum() + (a[yy, xx] * wa[0, yy, xx]).sum()
            (gp,) = torch.autograd.grad(lp, xy_p, allow_unused=True)
            if gp is not None:
                ref_abs += gp.abs()
    torch.testing.assert_close(absgrad, ref_abs, atol=1e-10, rtol=1e-8)
    assert (absgrad >= grad.abs() - 1e-12).all()
    assert (absgrad > grad.abs() + 1e-6).any(), "per-pixel signs should differ somewhere"


# ----------------------------------------------------------------------------------------------
# 4. densification with gsplat's DefaultStrategy on CPU
# ----------------------------------------------------------------------------------------------


def test_default_strategy_densification_on_cpu():
    """gsplat's DefaultStrategy (pure Python) drives densification from our info on CPU.

    Model = the target scene exactly, except the Gaussians on one side (x > 0.5) have wrong colours
    (the error is there) and 10 extra transparent Gaussians (to be pruned). Splatfacto's thresholds
    (absgrad=True, grow_grad2d=0.0008, prune_opa=0.1, ...) with refinement every 10 steps.
    Scale documented by this test (32x32, L1 mean loss): the running average of the normalised
    absgrad ``|sum_pixels |dL/dmeans2d|| * W/2`` is ~1e-4..1e-2 per Gaussian; gsplat's threshold
    0.0008 sits inside that range, the wrong-colour Gaussians are well above it, the correct ones
    far from the error have exactly 0.
    """
    from gsplat.strategy import DefaultStrategy

    torch.manual_seed(0)
    W, H = 32, 32
    tm, tq, ts, to, tc, viewmats, Ks = make_scene(80, W, H, C=1, seed=11, dtype=torch.float32,
                                                   scale=(0.04, 0.15), opac=(0.5, 0.95))
    g = torch.Generator().manual_seed(2)
    n_extra = 10
    wrong = (tm[:, 0] > 0.5).nonzero().flatten()  # a region on one side of the image
    colors0 = tc.clone()
    colors0[wrong] = 1.0 - colors0[wrong]
    colors0 = colors0.clamp(0.02, 0.98)
    means0 = torch.cat([tm, (torch.rand(n_extra, 3, generator=g) - 0.5)])
    n0 = 80 + n_extra
    params = torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(means0),
            "scales": torch.nn.Parameter(torch.log(torch.cat([ts, torch.full((n_extra, 3), 0.05)]))),
            "quats": torch.nn.Parameter(torch.cat([tq, torch.randn(n_extra, 4, generator=g)])),
            "opacities": torch.nn.Parameter(torch.logit(torch.cat([to, torch.full((n_extra,), 0.003)]))),
            "colors": torch.nn.Parameter(torch.logit(torch.cat([colors0, torch.full((n_extra, 3), 0.5)]))),
        }
    )
    # target: the same parametrisation with the right colours, rendered through the differentiable projection that
    # training uses (under no_grad the projection is the float64 numba pass, a few ulps away from it, and the
    # correct Gaussians would no longer have exactly zero error)
    target, _, _ = rasterize(
        params["means"], params["quats"], torch.exp(params["scales"]),
        torch.sigmoid(params["opacities"]), torch.sigmoid(torch.logit(torch.cat([tc.clamp(0.02, 0.98), torch.full((n_extra, 3), 0.5)]))),
        viewmats, Ks, W, H,
    )
    target = target.detach()
    assert not (torch.sigmoid(params["opacities"][80:]) >= 1 / 255).any()
    lrs = {"means": 1.6e-3, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "colors": 2.5e-2}
    optimizers = {k: torch.optim.Adam([{"params": params[k], "lr": lr, "name": k}], eps=1e-15)
                  for k, lr in lrs.items()}
    # nerfstudio splatfacto's thresholds. One refinement, at step 1 (stats of steps 0 and 1): with
    # an L1 loss every pixel with a nonzero error has a full-size gradient, so after a few Adam
    # steps the error (and the absgrad) spreads over the whole 32x32 image and everything grows.
    # refine_scale2d_stop_iter=0: splatfacto's split_screen_size=0.05 splits every Gaussian with
    # radius > 0.05 * max(W, H) pixels, i.e. all of them at 32x32 (a resolution effect, not ours).
    strategy = DefaultStrategy(
        prune_opa=0.1, grow_grad2d=0.0008, grow_scale3d=0.01, grow_scale2d=0.05,
        prune_scale3d=0.5, prune_scale2d=0.15, refine_scale2d_stop_iter=0,
        refine_start_iter=0, refine_stop_iter=2, reset_every=3000, refine_every=1,
        pause_refine_after_reset=0, absgrad=True, revised_opacity=False, verbose=False,
    )
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)

    log = []
    grow, prune = strategy._grow_gs, strategy._prune_gs

    def grow_spy(params_, optimizers_, state_, step_):
        avg = state_["grad2d"] / state_["count"].clamp_min(1)
        entry = {"step": step_, "n_before": len(params_["means"]), "avg": avg.clone(),
                 "count": state_["count"].clone()}
        n_dupli, n_split = grow(params_, optimizers_, state_, step_)
        entry.update(n_dupli=n_dupli, n_split=n_split)
        log.append(entry)
        return n_dupli, n_split

    def prune_spy(params_, optimizers_, state_, step_):
        n = prune(params_, optimizers_, state_, step_)
        log[-1]["n_prune"] = n
        return n

    strategy._grow_gs, strategy._prune_gs = grow_spy, prune_spy

    losses = []
    for step in range(21):
        out, alpha, info = rasterize(
            params["means"], params["quats"], torch.exp(params["scales"]),
            torch.sigmoid(params["opacities"]), torch.sigmoid(params["colors"]),
            viewmats, Ks, W, H, packed=False, absgrad=True,
        )
        strategy.step_pre_backward(params, optimizers, state, step, info)
        loss = (out - target).abs().mean()
        loss.backward()
        losses.append(loss.item())
        assert info["means2d"].grad is not None and hasattr(info["means2d"], "absgrad")
        for opt in optimizers.values():
            opt.step()
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        assert torch.isfinite(state["grad2d"]).all() and torch.isfinite(state["count"]).all()

    assert [e["step"] for e in log] == [1]
    assert sum(e["n_prune"] for e in log) >= n_extra, "the transparent Gaussians must be pruned"
    assert sum(e["n_dupli"] + e["n_split"] for e in log) > 0, "some Gaussians must grow"
    n_final = len(params["means"])
    assert 0 < n_final < 10 * n0, n_final
    assert losses[-1] < losses[2], losses  # training goes on after the split (which perturbs the image)
    # running stats in gsplat's scale (normalised absgrad per view)
    first = log[0]
    seen = first["count"] > 0
    avg = first["avg"][seen]
    assert torch.isfinite(avg).all() and (first["count"][seen] <= 2).all()
    assert 1e-5 < avg.median().item() < 1e-1, avg.median()
    # growth where the error is: the wrong-colour Gaussians are the high-gradient ones
    high = first["avg"] > strategy.grow_grad2d
    is_wrong = torch.zeros(n0, dtype=torch.bool)
    is_wrong[wrong] = True
    vis_wrong = is_wrong & seen
    assert high[vis_wrong].all()
    assert high[vis_wrong].float().mean() > high[~is_wrong & seen].float().mean()
    assert first["avg"][vis_wrong].median() > 1.5 * first["avg"][~is_wrong & seen].median()
    # the never-rendered transparent Gaussians: no gradient, not grown, pruned
    assert (first["avg"][80:] == 0).all() and not high[80:].any()
    assert first["n_prune"] >= n_extra


# ----------------------------------------------------------------------------------------------
# 5. features of any width
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("D", [3, 16, 32, 40])
def test_any_width_matches_stacked_single_channels(D):
    W, H = 24, 20
    means, quats, scales, opac, colors, viewmats, Ks = make_scene(40, W, H, C=2, D=D, seed=D,
                                                                   dtype=torch.float32)
    bg = torch.rand(2, D)
    out, alpha, _ = rasterize(means, quats, scales, opac, colors, viewmats, Ks, W, H, backgrounds=bg)
    assert out.shape == (2, H, W, D)
    for k in range(D):
        ok, ak, _ = rasterize(means, quats, scales, opac, colors[:, k : k + 1], viewmats, Ks, W, H,
                              backgrounds=bg[:, k : k + 1])
        torch.testing.assert_close(out[..., k : k + 1], ok, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(alpha, ak)


def test_per_camera_colors_and_packed_error():
    W, H = 16, 12
    means, quats, scales, opac, colors, viewmats, Ks = make_scene(20, W, H, C=2, D=5, seed=4)
    per_cam = torch.stack([colors, 1 - colors])
    out, _, _ = rasterize(means, quats, scales, opac, per_cam, viewmats, Ks, W, H)
    o0, _, _ = rasterize(means, quats, scales, opac, colors, viewmats[:1], Ks[:1], W, H)
    o1, _, _ = rasterize(means, quats, scales, opac, 1 - colors, viewmats[1:], Ks[1:], W, H)
    torch.testing.assert_close(out, torch.cat([o0, o1]))
    with pytest.raises(NotImplementedError, match="packed"):
        rasterize(means, quats, scales, opac, colors, viewmats, Ks, W, H, packed=True)


def test_cpu_dispatch_follows_the_environment(cpu_impl, monkeypatch):
    """On CPU tensors, rasterize() is exactly the rasterizer SEGSPLAT_CPU_RASTERIZER names (numba by default)."""
    W, H = 16, 12
    means, quats, scales, opac, colors, viewmats, Ks = make_scene(20, W, H, C=2, D=5, seed=5)
    impl = {"numba": rasterize_numba, "reference": rasterize_torch_reference}[cpu_impl]
    assert cpu_rasterizer() is impl
    a = rasterize(means, quats, scales, opac, colors, viewmats, Ks, W, H, absgrad=True)
    b = impl(means, quats, scales, opac, colors, viewmats, Ks, W, H, absgrad=True)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    torch.testing.assert_close(a[2]["radii"], b[2]["radii"])
    monkeypatch.delenv("SEGSPLAT_CPU_RASTERIZER")
    assert cpu_rasterizer() is rasterize_numba
    monkeypatch.setenv("SEGSPLAT_CPU_RASTERIZER", "cuda")
    with pytest.raises(ValueError, match="numba, reference"):
        rasterize(means, quats, scales, opac, colors, viewmats, Ks, W, H)


def test_no_threading_layer_warning_in_a_fresh_process(cpu_impl):
    """A fresh process that renders once on CPU prints no NumbaWarning (numba's TBB probe warns when the TBB it
    finds is too old; the rasterizer asks for OpenMP first)."""
    import os
    import subprocess
    import sys

    if cpu_impl != "numba":
        pytest.skip("the numba rasterizer only")
    code = ("import torch; from segsplat_ns.rendering import rasterize; import numba; "
            "m = torch.zeros(1, 3); m[0, 2] = 2.0; q = torch.tensor([[1.0, 0, 0, 0]]); s = torch.full((1, 3), 0.1); "
            "K = torch.tensor([[[10.0, 0, 4], [0, 10.0, 4], [0, 0, 1]]]); "
            "out, alpha, _ = rasterize(m, q, s, torch.ones(1), torch.ones(1, 3), torch.eye(4)[None], K, 8, 8); "
            "print(float(alpha.max()) > 0.5, numba.threading_layer())")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_THREADING")}
    env["SEGSPLAT_CPU_RASTERIZER"] = "numba"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == "True"
    assert "NumbaWarning" not in result.stderr and "TBB" not in result.stderr, result.stderr[-2000:]


def _bench_scene(n, size, channels, seed, dtype):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_rasterize import make_scene as bench_scene

    return [t.to(dtype) for t in bench_scene(n, size, channels, seed=seed)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_numba_matches_reference_on_random_scenes(cpu_impl, dtype, seed):
    """The tiled rasterizer against the reference: 3,000 Gaussians (many overlaps, pixels that stop early), 64^2,
    5 channels, background, absgrad; values, every input's gradient, means2d's absgrad and the info dict."""
    if cpu_impl != "numba":
        pytest.skip("compares the two implementations directly (runs once)")
    means, quats, scales, opac, colors, viewmats, Ks = _bench_scene(3000, 64, 5, seed, dtype)
    bg = torch.linspace(0.1, 0.9, 5, dtype=dtype)[None]
    weight = torch.rand(1, 64, 64, 5, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    results = []
    for impl in (rasterize_torch_reference, rasterize_numba):
        inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors)]
        out, alpha, info = impl(*inputs, viewmats, Ks, 64, 64, backgrounds=bg, absgrad=True)
        info["means2d"].retain_grad()
        ((out * weight).sum() + alpha.square().sum()).backward()
        results.append((out.detach(), alpha.detach(), [t.grad for t in inputs], info))
    (o0, a0, g0, i0), (o1, a1, g1, i1) = results
    tol = dict(atol=2e-6, rtol=2e-5) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-9)
    assert last_pair_count() > 50_000, "the scene should composite many pairs"
    assert (a0 > 0.999).any() and (a0 < 0.5).any()
    torch.testing.assert_close(o1, o0, **tol)
    torch.testing.assert_close(a1, a0, **tol)
    for name, x, y in zip(("means", "quats", "scales", "opacities", "colors"), g1, g0):
        scale = y.abs().max()
        torch.testing.assert_close(x / scale, y / scale, **tol, msg=lambda m, name=name: f"{name}: {m}")
    for key in ("means2d", "radii", "conics", "depths", "opacities"):
        torch.testing.assert_close(i1[key], i0[key], rtol=0, atol=0)
    for key in ("means2d",):
        scale = i0[key].absgrad.abs().max()
        torch.testing.assert_close(i1[key].grad / scale, i0[key].grad / scale, **tol)
        torch.testing.assert_close(i1[key].absgrad / scale, i0[key].absgrad / scale, **tol)
    # gsplat's intersection tables: same lists in the same order (float32: the reference's tables key on float32
    # depths while both composite in the inputs' precision, so float64 near-ties may be listed differently)
    for key in () if dtype == torch.float64 else ("tiles_per_gauss", "isect_ids", "flatten_ids", "isect_offsets"):
        torch.testing.assert_close(i1[key], i0[key], rtol=0, atol=0)


def test_empty_and_fully_culled_scenes(cpu_impl):
    """No Gaussians, or all of them far off-screen: background everywhere, alpha 0, gradients defined (zero)."""
    W, H = 20, 12
    means, quats, scales, opac, colors, viewmats, Ks = make_scene(6, W, H, C=2, D=3, seed=2)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=torch.float64)
    behind = means + torch.tensor([1e4, 0.0, 0.0], dtype=torch.float64)
    for m, q, s, o, c in ((means[:0], quats[:0], scales[:0], opac[:0], colors[:0]),
                          (behind, quats, scales, opac, colors)):  # fmt: skip
        c = c.clone().requires_grad_(True)
        out, alpha, info = rasterize(m, q, s, o, c, viewmats, Ks, W, H, backgrounds=bg)
        assert out.shape == (2, H, W, 3) and alpha.shape == (2, H, W, 1)
        torch.testing.assert_close(out, bg[:, None, None, :].expand(2, H, W, 3))
        assert float(alpha.detach().abs().max()) == 0.0
        out.sum().backward()
        assert c.grad is not None and float(c.grad.abs().sum()) == 0.0
        assert info["flatten_ids"].numel() == 0


# ----------------------------------------------------------------------------------------------
# CUDA: the CPU path against gsplat itself
# ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat kernels)")
@pytest.mark.parametrize("D", [3, 32])
def test_cpu_path_matches_gsplat_cuda(D):
    W, H = 64, 48
    scene = make_scene(300, W, H, C=2, D=D, seed=21, dtype=torch.float32, scale=(0.02, 0.12))
    bg = torch.rand(2, D)
    res = {}
    for dev in ("cpu", "cuda"):
        ts = [t.to(dev).clone() for t in scene]
        for t in ts[:5]:
            t.requires_grad_(True)
        out, alpha, info = rasterize(*ts, W, H, backgrounds=bg.to(dev), render_mode="RGB+ED",
                                     packed=False, absgrad=True)
        info["means2d"].retain_grad()
        g = torch.Generator().manual_seed(0)
        wt = torch.randn(out.shape, generator=g).to(dev)
        ((out * wt).sum() + alpha.sum()).backward()
        res[dev] = dict(out=out.detach().cpu(), alpha=alpha.detach().cpu(),
                        radii=info["radii"].cpu(), m2=info["means2d"].detach().cpu(),
                        m2grad=info["means2d"].grad.cpu(), absgrad=info["means2d"].absgrad.cpu(),
                        grads=[t.grad.cpu() for t in ts[:5]])
    a, b = res["cpu"], res["cuda"]
    assert a["radii"].dtype == b["radii"].dtype and a["radii"].shape == b["radii"].shape
    assert (a["radii"] != b["radii"]).float().mean() < 0.01
    torch.testing.assert_close(a["alpha"], b["alpha"], atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(a["out"], b["out"], atol=5e-3, rtol=1e-3)
    vis = (a["radii"] > 0) & (b["radii"] > 0)
    torch.testing.assert_close(a["m2"][vis], b["m2"][vis], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(a["m2grad"][vis], b["m2grad"][vis], atol=1e-3, rtol=1e-2)
    torch.testing.assert_close(a["absgrad"][vis], b["absgrad"][vis], atol=1e-3, rtol=1e-2)
    for ga, gb in zip(a["grads"], b["grads"]):
        torch.testing.assert_close(ga, gb, atol=1e-2, rtol=1e-2)
