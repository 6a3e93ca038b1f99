"""Per-mask 3D scale (the recipe of SAGA's get_scale.py and GARField's _calculate_3d_groups).

For each 2D mask: erode it, back-project its pixels with the RGB splat's depth, and take
``scale = || 2 * std(points) ||_2`` (std per world axis, unbiased, as ``torch.std``). SAGA's Eq. 2 is
``|| std(points) ||_2``; ``get_scale.py`` doubles it, as we do, and the factor cancels in the quantile
normalisation every consumer applies.
:class:`ScaleQuantiles` maps raw scales to [0, 1] the way SAGA's ``QuantileTransformer(uniform)`` does,
for the scale gate and the viewer slider.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F


def erode_masks(masks: torch.Tensor) -> torch.Tensor:
    """Erode ``bool [M, H, W]`` masks with SAGA's rule (get_scale.py): a pixel is in the result when at
    least 5 of its 3x3 neighbourhood (itself included; outside the image counts as empty) are in the mask.
    Like SAGA this is a 3x3 majority filter, so it also fills one-pixel holes (a pixel with >= 5 set
    neighbours); on convex shapes it strips the corners and one-pixel-wide parts. A mask that it would
    empty is kept as it was."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be [M, H, W], got {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return masks.bool()
    m = masks.bool()
    # 3x3 box sum with zero padding (= SAGA's conv2d with a ones kernel, padding=1), as two separable
    # uint8 sums: exact (max 9) and ~10x faster than conv2d on CPU.
    pad = F.pad(m.to(torch.uint8), (1, 1, 1, 1))
    rows = pad[:, :, :-2] + pad[:, :, 1:-1] + pad[:, :, 2:]
    counts = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    eroded = counts >= 5
    emptied = ~eroded.flatten(1).any(1)
    if emptied.any():
        eroded[emptied] = m[emptied]
    return eroded


def backproject(
    depth: torch.Tensor,
    K: torch.Tensor,
    c2w: torch.Tensor,
    convention: Literal["opengl", "opencv"] = "opengl",
) -> torch.Tensor:
    """World points ``[H, W, 3]`` of every pixel.

    ``depth [H, W]`` is z-depth: distance along the camera's viewing axis (splatfacto's "ED" render / gsplat's
    depth), not ray length. ``K [3, 3]`` intrinsics in pixels with pixel centres at ``(col + 0.5, row + 0.5)``
    (nerfstudio's ray convention). ``c2w [3, 4]`` (or ``[4, 4]``) camera-to-world:

    - ``"opengl"`` (default; nerfstudio cameras): camera x right, y up, looking down -z, so a pixel maps to
      ``depth * ((u - cx) / fx, -(v - cy) / fy, -1)`` in camera space;
    - ``"opencv"`` (COLMAP, 3DGS): x right, y down, looking down +z: ``depth * ((u - cx) / fx, (v - cy) / fy, 1)``.
    """
    h, w = depth.shape
    dev, dt = depth.device, depth.dtype if depth.is_floating_point() else torch.float32
    depth = depth.to(dt)
    K = K.to(device=dev, dtype=dt)
    c2w = c2w.to(device=dev, dtype=dt)[:3, :4]
    v, u = torch.meshgrid(torch.arange(h, device=dev, dtype=dt) + 0.5, torch.arange(w, device=dev, dtype=dt) + 0.5,
                          indexing="ij")
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    if convention == "opengl":
        cam = torch.stack([x, -y, -torch.ones_like(x)], -1)
    elif convention == "opencv":
        cam = torch.stack([x, y, torch.ones_like(x)], -1)
    else:
        raise ValueError(f"convention must be 'opengl' or 'opencv', got {convention!r}")
    cam = cam * depth[..., None]
    return cam @ c2w[:, :3].T + c2w[:, 3]


def mask_scales(
    masks: torch.Tensor,
    depth: torch.Tensor,
    K: torch.Tensor,
    c2w: torch.Tensor,
    valid: Optional[torch.Tensor] = None,
    convention: Literal["opengl", "opencv"] = "opengl",
    erode: bool = True,
    chunk: int = 16,
) -> torch.Tensor:
    """``float [M]``: ``|| 2 * std(points) ||_2`` over each (eroded) mask's pixels with valid depth.

    Valid depth: finite and > 0, and ``valid`` where given. Masks with fewer than 2 such pixels get 0.
    Means and variances come from matrix products (masks as ``[M, HW]`` @ points ``[HW, 3]``), in chunks of
    ``chunk`` masks, accumulated in float64 on the points centred at their overall mean (so a small mask far
    from the centroid keeps its precision).
    """
    m_count = masks.shape[0]
    if masks.shape[1:] != depth.shape:
        raise ValueError(f"masks {tuple(masks.shape)} and depth {tuple(depth.shape)} differ in size")
    dt = depth.dtype if depth.is_floating_point() else torch.float32
    if m_count == 0:
        return torch.zeros(0, dtype=dt, device=depth.device)
    points = backproject(depth, K, c2w, convention).reshape(-1, 3)
    ok = torch.isfinite(depth) & (depth > 0) & torch.isfinite(points).all(-1).reshape(depth.shape)
    if valid is not None:
        ok = ok & valid.to(device=depth.device, dtype=torch.bool)
    ok = ok.reshape(-1)
    masks = masks.to(depth.device)
    # float64 accumulation: E[x^2] - E[x]^2 cancels badly in float32 for a small mask far from the centroid
    acc = torch.float64 if depth.device.type != "mps" else torch.float32
    points = torch.where(ok[:, None], points, torch.zeros_like(points)).to(acc)
    if ok.any():
        points = points - points[ok].mean(0)
    points = torch.where(ok[:, None], points, torch.zeros_like(points))
    sq = points * points
    out = torch.zeros(m_count, dtype=dt, device=depth.device)
    for s in range(0, m_count, chunk):
        part = masks[s:s + chunk].bool()
        if erode:  # per chunk, so the temporaries stay at chunk size
            part = erode_masks(part)
        w = (part.reshape(-1, ok.shape[0]) & ok).to(acc)  # [m, HW]
        n = w.sum(1)
        mean = (w @ points) / n.clamp(min=1)[:, None]
        ex2 = (w @ sq) / n.clamp(min=1)[:, None]
        var = (ex2 - mean * mean).clamp(min=0) * (n / (n - 1).clamp(min=1))[:, None]  # unbiased, as torch.std
        scale = 2.0 * var.sum(1).sqrt()  # || 2 * std ||_2 = 2 * sqrt(sum of per-axis variances)
        out[s:s + chunk] = torch.where(n >= 2, scale, torch.zeros_like(scale)).to(dt)
    return out


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """``np.interp`` in torch for increasing (possibly repeated) ``xp``; clamps outside."""
    q = xp.shape[0]
    if q == 1:
        return fp[0].expand_as(x).clone()
    idx = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, q - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    f0, f1 = fp[idx - 1], fp[idx]
    span = x1 - x0
    t = torch.where(span > 0, (x - x0) / torch.where(span > 0, span, torch.ones_like(span)), torch.ones_like(x))
    y = f0 + t.clamp(0, 1) * (f1 - f0)
    y = torch.where(x <= xp[0], fp[0], y)
    return torch.where(x >= xp[-1], fp[-1], y)


class ScaleQuantiles:
    """Quantile normalisation of mask scales, as SAGA's sklearn ``QuantileTransformer(output_distribution=
    "uniform")``: ``num_quantiles`` quantiles of the fitted scales at references ``linspace(0, 1)``;
    ``normalize`` is the piecewise-linear CDF (ties averaged as sklearn does), ``denormalize`` its inverse.
    Stored as one ``float32 [num_quantiles]`` tensor (:meth:`as_tensor`) so it fits a model buffer."""

    def __init__(self, quantiles: torch.Tensor):
        q = torch.as_tensor(quantiles, dtype=torch.float32).reshape(-1)
        if q.numel() < 1:
            raise ValueError("ScaleQuantiles needs at least one quantile")
        self.quantiles = torch.cummax(q, 0).values  # guard against float round-off breaking monotonicity

    @classmethod
    def fit(cls, scales: torch.Tensor, num_quantiles: int = 1001) -> "ScaleQuantiles":
        """Fit on all (finite) mask scales."""
        s = torch.as_tensor(scales).detach().reshape(-1).double().cpu()
        s = s[torch.isfinite(s)]
        if s.numel() == 0:
            raise ValueError("ScaleQuantiles.fit: no finite scales to fit")
        refs = torch.linspace(0, 1, num_quantiles, dtype=torch.float64)
        return cls(torch.quantile(s, refs).float())

    @property
    def num_quantiles(self) -> int:
        return self.quantiles.shape[0]

    def _refs(self, like: torch.Tensor) -> torch.Tensor:
        return torch.linspace(0, 1, self.num_quantiles, dtype=like.dtype, device=like.device)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw scale -> [0, 1] (monotone; clamps outside the fitted range)."""
        raw_t = torch.as_tensor(raw)
        dt = raw_t.dtype if raw_t.is_floating_point() else torch.float32
        x = raw_t.to(dt)
        q = self.quantiles.to(device=x.device, dtype=dt)
        refs = self._refs(x)
        flat = x.reshape(-1)
        fwd = _interp(flat, q, refs)
        bwd = -_interp(-flat, -q.flip(0), -refs.flip(0))
        return (0.5 * (fwd + bwd)).clamp(0, 1).reshape(x.shape)

    def denormalize(self, u: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> raw scale (inverse of :meth:`normalize`; clamps outside [0, 1])."""
        u_t = torch.as_tensor(u)
        dt = u_t.dtype if u_t.is_floating_point() else torch.float32
        x = u_t.to(dt).clamp(0, 1)
        q = self.quantiles.to(device=x.device, dtype=dt)
        return _interp(x.reshape(-1), self._refs(x), q).reshape(x.shape)

    def as_tensor(self) -> torch.Tensor:
        """``float32 [num_quantiles]`` (a copy)."""
        return self.quantiles.clone()

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "ScaleQuantiles":
        return cls(t.detach().float().cpu())
