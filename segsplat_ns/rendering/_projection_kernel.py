"""numba kernel of :func:`~segsplat_ns.rendering.projection.project` for inference (no gradients through the
geometry): one pass over the (camera, Gaussian) pairs instead of ~60 PyTorch ops.

The arithmetic is the PyTorch projection's, written per Gaussian (quaternion -> R S S^T R^T, world -> camera,
the clamped Jacobian, the blurred 2D covariance, conic, compensation, radius and the cull), evaluated in float64
and stored in the inputs' dtype, so it can differ from the float32 PyTorch path in the last bits (and a radius by
one pixel where ``3 sqrt(v1)`` lands within rounding of an integer). Every inference render and the pixel query
read this one kernel, so they agree with each other bit for bit. No ``fastmath``: the vectorised and scalar
iterations of the loop must round alike, which is what keeps a Gaussian's result independent of its neighbours.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, error_model="numpy")
def project(means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip,
            radii, means2d, depths, conics, comps, covar2d):  # pragma: no cover - compiled  # fmt: skip
    """Fills radii [C, N] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3], comps [C, N], covar2d
    [C, N, 3] as :func:`~segsplat_ns.rendering.projection.project` does (culled entries finite, radius 0)."""
    C = viewmats.shape[0]
    N = means.shape[0]
    for job in prange(C * N):
        cam = job // N
        n = job - cam * N
        v = viewmats[cam]
        # the Gaussian's covariance in the world: R(q) diag(s)^2 R(q)^T
        qw, qx, qy, qz = np.float64(quats[n, 0]), np.float64(quats[n, 1]), np.float64(quats[n, 2]), np.float64(quats[n, 3])
        qn = np.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
        w, x, y, z = qw / qn, qx / qn, qy / qn, qz / qn
        s0, s1, s2 = np.float64(scales[n, 0]), np.float64(scales[n, 1]), np.float64(scales[n, 2])
        m00, m01, m02 = (1 - 2 * (y * y + z * z)) * s0, (2 * (x * y - w * z)) * s1, (2 * (x * z + w * y)) * s2
        m10, m11, m12 = (2 * (x * y + w * z)) * s0, (1 - 2 * (x * x + z * z)) * s1, (2 * (y * z - w * x)) * s2
        m20, m21, m22 = (2 * (x * z - w * y)) * s0, (2 * (y * z + w * x)) * s1, (1 - 2 * (x * x + y * y)) * s2
        # camera frame: W = R_cam M, covariance W W^T
        w00 = v[0, 0] * m00 + v[0, 1] * m10 + v[0, 2] * m20
        w01 = v[0, 0] * m01 + v[0, 1] * m11 + v[0, 2] * m21
        w02 = v[0, 0] * m02 + v[0, 1] * m12 + v[0, 2] * m22
        w10 = v[1, 0] * m00 + v[1, 1] * m10 + v[1, 2] * m20
        w11 = v[1, 0] * m01 + v[1, 1] * m11 + v[1, 2] * m21
        w12 = v[1, 0] * m02 + v[1, 1] * m12 + v[1, 2] * m22
        w20 = v[2, 0] * m00 + v[2, 1] * m10 + v[2, 2] * m20
        w21 = v[2, 0] * m01 + v[2, 1] * m11 + v[2, 2] * m21
        w22 = v[2, 0] * m02 + v[2, 1] * m12 + v[2, 2] * m22
        c00 = w00 * w00 + w01 * w01 + w02 * w02
        c01 = w00 * w10 + w01 * w11 + w02 * w12
        c02 = w00 * w20 + w01 * w21 + w02 * w22
        c11 = w10 * w10 + w11 * w11 + w12 * w12
        c12 = w10 * w20 + w11 * w21 + w12 * w22
        c22 = w20 * w20 + w21 * w21 + w22 * w22
        px, py, pz = np.float64(means[n, 0]), np.float64(means[n, 1]), np.float64(means[n, 2])
        mx = v[0, 0] * px + v[0, 1] * py + v[0, 2] * pz + v[0, 3]
        my = v[1, 0] * px + v[1, 1] * py + v[1, 2] * pz + v[1, 3]
        mz = v[2, 0] * px + v[2, 1] * py + v[2, 2] * pz + v[2, 3]
        depth_ok = (mz >= near_plane) and (mz <= far_plane)
        zs = mz if depth_ok else 1.0  # keeps culled entries finite
        k = Ks[cam]
        fx, fy, cx, cy = np.float64(k[0, 0]), np.float64(k[1, 1]), np.float64(k[0, 2]), np.float64(k[1, 2])
        tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
        lxp, lxn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
        lyp, lyn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
        rz = 1.0 / zs
        rz2 = rz * rz
        tx = zs * min(lxp, max(-lxn, mx * rz))
        ty = zs * min(lyp, max(-lyn, my * rz))
        j00, j02 = fx * rz, -fx * tx * rz2
        j11, j12 = fy * rz, -fy * ty * rz2
        a0 = j00 * j00 * c00 + 2.0 * j00 * j02 * c02 + j02 * j02 * c22
        b = j00 * j11 * c01 + j00 * j12 * c02 + j02 * j11 * c12 + j02 * j12 * c22
        cc0 = j11 * j11 * c11 + 2.0 * j11 * j12 * c12 + j12 * j12 * c22
        u = fx * mx * rz + cx
        vv = fy * my * rz + cy
        det_orig = a0 * cc0 - b * b
        a = a0 + eps2d
        c = cc0 + eps2d
        det = a * c - b * b
        valid = depth_ok and det > 0
        det_s = det if valid else 1.0
        comps[cam, n] = np.sqrt(max(det_orig / det_s, 0.0))
        conics[cam, n, 0] = c / det_s
        conics[cam, n, 1] = -b / det_s
        conics[cam, n, 2] = a / det_s
        bm = 0.5 * (a + c)
        v1 = bm + np.sqrt(max(bm * bm - det, 0.01))
        radius = np.ceil(3.0 * np.sqrt(max(v1, 0.0)))
        valid = valid and radius > radius_clip
        valid = valid and not (u + radius <= 0 or u - radius >= width or vv + radius <= 0 or vv - radius >= height)
        radii[cam, n] = np.int32(radius) if valid else np.int32(0)
        means2d[cam, n, 0] = u
        means2d[cam, n, 1] = vv
        depths[cam, n] = mz
        covar2d[cam, n, 0] = a
        covar2d[cam, n, 1] = b
        covar2d[cam, n, 2] = c
