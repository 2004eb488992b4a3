"""
Camera geometry in numpy: back-projection, rigid transforms, boxes.

Formats: depth float32 metres ``(H, W)`` (``nan`` or ``<= 0`` = no reading); masks bool
``(H, W)``; points ``(N, 3)`` metres in the camera optical frame (x right, y down, z forward);
transforms ``(4, 4)``, ``T_a_b`` maps frame-b points into frame a.
"""

from __future__ import annotations

import numpy as np

from spatialvlm_ros.core.datatypes import CameraIntrinsics


def backproject(depth: np.ndarray, intrinsics: CameraIntrinsics,
                mask: np.ndarray | None = None) -> np.ndarray:
    """
    Lift the valid depth pixels (optionally only those in ``mask``) to camera-frame points.

    Returns ``(N, 3)`` float64 metres. Pixels with non-finite or non-positive depth are skipped.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f'depth must be (H, W), got shape {depth.shape}')
    if depth.shape != (intrinsics.height, intrinsics.width):
        raise ValueError(f'depth is {depth.shape[1]}x{depth.shape[0]} but intrinsics are for '
                         f'{intrinsics.width}x{intrinsics.height}')
    valid = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != depth.shape:
            raise ValueError(f'mask shape {mask.shape} differs from depth shape {depth.shape}')
        valid &= mask
    v, u = np.nonzero(valid)  # pixel rows and columns
    z = depth[v, u].astype(np.float64)
    x = (u + 0.5 - intrinsics.cx) * z / intrinsics.fx  # pixel centres at +0.5
    y = (v + 0.5 - intrinsics.cy) * z / intrinsics.fy
    return np.stack([x, y, z], axis=1)  # (N, 3)


def project(points: np.ndarray, intrinsics: CameraIntrinsics) -> np.ndarray:
    """Project camera-frame points ``(N, 3)`` to pixel coordinates ``(N, 2)`` (u, v)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    z = points[:, 2]
    u = intrinsics.fx * points[:, 0] / z + intrinsics.cx
    v = intrinsics.fy * points[:, 1] / z + intrinsics.cy
    return np.stack([u, v], axis=1)  # (N, 2)


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply the rigid transform ``T`` (4, 4) to points ``(N, 3)``."""
    points = np.asarray(points, dtype=np.float64)
    return points @ T[:3, :3].T + T[:3, 3]


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform (4, 4) without a general matrix inverse."""
    R, t = T[:3, :3], T[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


def aabb(points: np.ndarray) -> np.ndarray:
    """Axis-aligned bounds ``(2, 3)`` = ``[min, max]`` of points ``(N, 3)``; N must be > 0."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(points) == 0:
        raise ValueError('cannot bound an empty point set')
    return np.stack([points.min(axis=0), points.max(axis=0)])
