"""
Lifting: one object's cleaned point cloud and boxes from depth + mask + intrinsics.

Cleaning follows the paper's Listing 2 with thresholds scaled by the object's size:
``scale = norm(std(points)) * 3``; statistical outlier removal (50 neighbours, std ratio 1.2);
voxel downsampling with voxel size ``max(0.01, scale / 20)``; DBSCAN with ``eps = scale / 3.6``
and ``min_points = len / 10``, keeping the largest cluster.

Formats: depth float32 metres ``(H, W)`` (``nan`` / ``<= 0`` = none); mask bool ``(H, W)``;
points ``(N, 3)`` float64 metres in the camera optical frame (x right, y down, z forward);
axis-aligned boxes ``(2, 3)`` = ``[min, max]``. When a canonical frame is given the object is
also expressed there (z up) and its oriented box is the minimal-area rectangle in the horizontal
plane extruded along z; otherwise the oriented box comes from PCA in the camera frame.

scipy (``cKDTree``, ``ConvexHull``) and scikit-learn (``DBSCAN``) are imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Callable

import numpy as np

from spatialvlm_ros.core.datatypes import CameraIntrinsics, OrientedBox
from spatialvlm_ros.core.geometry import aabb, backproject, invert_transform, transform_points


@dataclass
class LiftingConfig:
    """
    Settings of the lifting stage (defaults follow the paper's Listing 2).

    :ivar scale_factor: ``scale = norm(std(points)) * scale_factor``.
    :ivar sor_neighbors: neighbours of the statistical outlier removal.
    :ivar sor_std_ratio: points whose mean neighbour distance exceeds
        ``mean + sor_std_ratio * std`` (over all points) are removed.
    :ivar voxel_min: the smallest voxel edge, metres.
    :ivar voxel_divisor: voxel edge = ``max(voxel_min, scale / voxel_divisor)``.
    :ivar eps_divisor: DBSCAN ``eps = scale / eps_divisor``.
    :ivar min_cluster_fraction: DBSCAN ``min_points = len(points) * min_cluster_fraction``.
    :ivar clusterer: key of ``CLUSTERERS`` (``'dbscan'`` or ``'none'``).
    :ivar min_points: fewer valid points than this (raw, or left after cleaning) is a failure.
    :ivar max_points: raw points are thinned with a fixed stride to at most this many (speed).
    :ivar keep_resolution: return the outlier-free points of the voxels in the kept cluster
        (extents are not shrunk by voxel averaging); False returns the voxel means, as
        Open3D's pipeline does. Clustering runs on the voxel means either way.
    """

    scale_factor: float = 3.0
    sor_neighbors: int = 50
    sor_std_ratio: float = 1.2
    voxel_min: float = 0.01
    voxel_divisor: float = 20.0
    eps_divisor: float = 3.6
    min_cluster_fraction: float = 0.1
    clusterer: str = 'dbscan'
    min_points: int = 20
    max_points: int = 20000
    keep_resolution: bool = True

    def __post_init__(self) -> None:
        for name in ('scale_factor', 'sor_std_ratio', 'voxel_min', 'voxel_divisor',
                     'eps_divisor'):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)}')
        if self.sor_neighbors < 1:
            raise ValueError(f'sor_neighbors must be >= 1, got {self.sor_neighbors}')
        if not 0.0 < self.min_cluster_fraction <= 1.0:
            raise ValueError('min_cluster_fraction must be in (0, 1], got '
                             f'{self.min_cluster_fraction}')
        if self.clusterer not in CLUSTERERS:
            raise ValueError(f'unknown clusterer {self.clusterer!r}; '
                             f'choose one of {sorted(CLUSTERERS)}')
        if self.min_points < 4:
            raise ValueError(f'min_points must be >= 4 (a box needs a volume), got '
                             f'{self.min_points}')
        if self.max_points < self.min_points:
            raise ValueError(f'max_points ({self.max_points}) must be >= min_points '
                             f'({self.min_points})')


@dataclass
class LiftedObject:
    """
    One lifted object; ``ok`` is False (with ``reason``) when lifting failed.

    Camera-frame fields are always set when ``ok``; ``*_canon`` fields only when a canonical
    frame was given. ``centroid`` is the mean of the cleaned points (the visible surface).

    :ivar ok: whether enough points survived.
    :ivar reason: why it failed ('' when ok).
    :ivar points: (N, 3) cleaned points, camera frame.
    :ivar centroid: (3,) camera frame.
    :ivar aabb: (2, 3) camera-frame axis-aligned box.
    :ivar obb: oriented box, camera frame.
    :ivar points_canon: (N, 3) cleaned points, canonical frame.
    :ivar centroid_canon: (3,) canonical frame.
    :ivar aabb_canon: (2, 3) canonical-frame axis-aligned box (z up).
    :ivar obb_canon: oriented box, canonical frame (yaw-only rotation).
    :ivar num_raw: valid points in the mask before cleaning.
    :ivar scale: the size scale ``norm(std) * 3`` that set the thresholds, metres.
    """

    ok: bool
    reason: str = ''
    points: np.ndarray | None = None
    centroid: np.ndarray | None = None
    aabb: np.ndarray | None = None
    obb: OrientedBox | None = None
    points_canon: np.ndarray | None = None
    centroid_canon: np.ndarray | None = None
    aabb_canon: np.ndarray | None = None
    obb_canon: OrientedBox | None = None
    num_raw: int = 0
    scale: float = float('nan')


def statistical_outlier_mask(points: np.ndarray, neighbors: int = 50,
                             std_ratio: float = 1.2) -> np.ndarray:
    """
    Open3D-style statistical outlier removal; returns the bool keep-mask ``(N,)``.

    A point is kept if its mean distance to its ``neighbors`` nearest neighbours is at most
    ``mean + std_ratio * std`` of that quantity over all points.
    """
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    k = min(neighbors, len(points) - 1)
    if k < 1:
        return np.ones(len(points), dtype=bool)
    dist, _ = cKDTree(points).query(points, k=k + 1)  # (N, k + 1); column 0 is the point itself
    mean_dist = dist[:, 1:].mean(axis=1)
    return mean_dist <= mean_dist.mean() + std_ratio * mean_dist.std()


def voxel_downsample(points: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """
    Replace the points in each ``voxel``-sized cube by their mean (as Open3D does).

    Returns ``(means (M, 3), voxel_of_point (N,))``, the second indexing the first.
    """
    points = np.asarray(points, dtype=np.float64)
    keys = np.floor(points / voxel).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse, points)
    return sums / counts[:, None], inverse


DBSCAN_BRUTE_FORCE_MAX = 2000  # up to this many points DBSCAN runs on a dense distance matrix


def _dbscan_largest(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """
    Keep-mask of the largest DBSCAN cluster (``min_samples`` counts the point itself).

    Up to :data:`DBSCAN_BRUTE_FORCE_MAX` points (the voxel means of one object: typically
    100-500) this is a dense numpy/scipy DBSCAN, about 10x faster than scikit-learn's call
    overhead; clusters are the connected components of core points, and a border point joins
    the cluster of its first core neighbour (scikit-learn may pick another cluster for a border
    point within ``eps`` of two clusters; the largest cluster's core is the same). Larger inputs
    use scikit-learn.
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    if n == 0:
        return np.zeros(0, dtype=bool)
    if n > DBSCAN_BRUTE_FORCE_MAX:
        return _dbscan_largest_sklearn(points, eps, min_points)
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    squared = np.einsum('ij,ij->i', points, points)
    d2 = squared[:, None] + squared[None, :] - 2.0 * points @ points.T  # (N, N)
    near = d2 <= eps * eps
    core = near.sum(axis=1) >= max(1, min_points)
    if not core.any():
        return np.zeros(n, dtype=bool)
    core_idx = np.flatnonzero(core)
    _, labels_core = connected_components(csr_matrix(near[np.ix_(core_idx, core_idx)]),
                                          directed=False)
    labels = np.full(n, -1, dtype=np.int64)
    labels[core_idx] = labels_core
    border = np.flatnonzero(~core & near[:, core].any(axis=1))
    if len(border):
        first_core = np.argmax(near[np.ix_(border, core_idx)], axis=1)  # (B,)
        labels[border] = labels_core[first_core]
    clustered = labels[labels >= 0]
    return labels == np.bincount(clustered).argmax()


def _dbscan_largest_sklearn(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    labels = DBSCAN(eps=eps, min_samples=max(1, min_points)).fit_predict(points)
    clustered = labels[labels >= 0]
    if len(clustered) == 0:
        return np.zeros(len(points), dtype=bool)
    return labels == np.bincount(clustered).argmax()


def _no_clustering(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    return np.ones(len(points), dtype=bool)


Clusterer = Callable[[np.ndarray, float, int], np.ndarray]

CLUSTERERS: dict[str, Clusterer] = {
    'dbscan': _dbscan_largest,
    'dbscan_sklearn': _dbscan_largest_sklearn,
    'none': _no_clustering,
}


def pca_box(points: np.ndarray) -> OrientedBox:
    """Oriented box from the principal axes of points ``(N, 3)`` (right-handed rotation)."""
    points = np.asarray(points, dtype=np.float64)
    mean = points.mean(axis=0)
    _, vectors = np.linalg.eigh(np.cov((points - mean).T))  # columns, ascending variance
    rotation = vectors[:, ::-1].copy()  # largest variance first
    if np.linalg.det(rotation) < 0:
        rotation[:, 2] *= -1
    local = (points - mean) @ rotation  # (N, 3)
    lo, hi = local.min(axis=0), local.max(axis=0)
    return OrientedBox(mean + rotation @ ((lo + hi) / 2), rotation, (hi - lo) / 2)


def horizontal_box(points: np.ndarray) -> OrientedBox:
    """Box with z up: minimal-area rectangle of the xy footprint, extruded over the z range."""
    from scipy.spatial import ConvexHull, QhullError

    points = np.asarray(points, dtype=np.float64)
    xy = points[:, :2]
    try:
        hull = xy[ConvexHull(xy).vertices]  # (H, 2), counter-clockwise
    except (QhullError, ValueError):  # collinear or too few points: any rectangle is minimal
        hull = xy
    edges = np.roll(hull, -1, axis=0) - hull
    angles = np.unique(np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2))
    if len(angles) == 0:
        angles = np.zeros(1)
    best = None
    for angle in angles:  # rotating calipers: an optimal rectangle has a side on a hull edge
        c, s = np.cos(angle), np.sin(angle)
        local = hull @ np.array([[c, -s], [s, c]])  # coordinates along (c, s), (-s, c)
        lo, hi = local.min(axis=0), local.max(axis=0)
        area = np.prod(hi - lo)
        if best is None or area < best[0] - 1e-12:
            best = (area, angle, lo, hi)
    _, angle, lo, hi = best
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    z_lo, z_hi = points[:, 2].min(), points[:, 2].max()
    mid = rotation[:2, :2] @ ((lo + hi) / 2)
    center = np.array([mid[0], mid[1], (z_lo + z_hi) / 2])
    half = np.array([(hi - lo)[0] / 2, (hi - lo)[1] / 2, (z_hi - z_lo) / 2])
    return OrientedBox(center, rotation, half)


def clean_points(points: np.ndarray, config: LiftingConfig | None = None) -> tuple[
        np.ndarray, float]:
    """Clean one object's points as in Listing 2; return ``(cleaned (M, 3), scale)``."""
    cfg = config or LiftingConfig()
    points = np.asarray(points, dtype=np.float64)
    scale = float(np.linalg.norm(points.std(axis=0)) * cfg.scale_factor) + 1e-6
    points = points[statistical_outlier_mask(points, cfg.sor_neighbors, cfg.sor_std_ratio)]
    voxel = max(cfg.voxel_min, scale / cfg.voxel_divisor)
    voxels, voxel_of_point = voxel_downsample(points, voxel)
    # Listing 2's eps = scale / 3.6, but never below a voxel diagonal: for a small object
    # (scale < 3.6 x the 1 cm voxel floor) no voxel would reach its neighbour and the object
    # would shrink to its single largest voxel (a 2 cm object measured 8 mm)
    eps = max(scale / cfg.eps_divisor, voxel * math.sqrt(3.0))
    keep = CLUSTERERS[cfg.clusterer](voxels, eps, int(len(voxels) * cfg.min_cluster_fraction))
    if cfg.keep_resolution:  # the points of the kept voxels, not the voxel means
        return points[keep[voxel_of_point]], scale
    return voxels[keep], scale


class ObjectLifter:
    """Lift one masked object from a depth image to a cleaned point cloud with boxes."""

    def __init__(self, config: LiftingConfig | None = None) -> None:
        """Keep the configuration (defaults follow the paper)."""
        self.config = config or LiftingConfig()

    def run(self, depth: np.ndarray, mask: np.ndarray, intrinsics: CameraIntrinsics,
            T_canon_cam: np.ndarray | None = None) -> LiftedObject:
        """
        Lift the object under ``mask``.

        :param depth: float32 metres ``(H, W)``; ``nan`` or ``<= 0`` = no reading.
        :param mask: bool ``(H, W)``, the object's pixels.
        :param intrinsics: the depth image's intrinsics.
        :param T_canon_cam: optional (4, 4) camera -> canonical transform (z up); when given the
            canonical-frame fields are filled and the oriented box is gravity-aligned.

        :returns: A ``LiftedObject``; ``ok`` is False with a reason when too few points remain.
        """
        cfg = self.config
        points = backproject(depth, intrinsics, mask)
        num_raw = len(points)
        if num_raw < cfg.min_points:
            return LiftedObject(False, f'{num_raw} valid depth points in the mask '
                                       f'(< {cfg.min_points})', num_raw=num_raw)
        points = points[::int(np.ceil(num_raw / cfg.max_points))]
        cleaned, scale = clean_points(points, cfg)
        if len(cleaned) < cfg.min_points:
            return LiftedObject(False, f'{len(cleaned)} points left after cleaning '
                                       f'(< {cfg.min_points})', num_raw=num_raw, scale=scale)
        return self.describe(cleaned, T_canon_cam, num_raw=num_raw, scale=scale)

    @staticmethod
    def describe(points: np.ndarray, T_canon_cam: np.ndarray | None = None,
                 num_raw: int = 0, scale: float = float('nan')) -> LiftedObject:
        """Centroid and boxes of already-cleaned camera-frame points ``(N, 3)``."""
        points = np.asarray(points, dtype=np.float64)
        result = LiftedObject(True, '', points, points.mean(axis=0), aabb(points),
                              pca_box(points), num_raw=num_raw or len(points), scale=scale)
        if T_canon_cam is not None:
            T_canon_cam = np.asarray(T_canon_cam, dtype=np.float64)
            canon = transform_points(T_canon_cam, points)
            result.points_canon = canon
            result.centroid_canon = canon.mean(axis=0)
            result.aabb_canon = aabb(canon)
            result.obb_canon = horizontal_box(canon)
            result.obb = result.obb_canon.transformed(invert_transform(T_canon_cam))
        return result
