"""
Canonicalization (the paper's Listing 3): a gravity-aligned frame from a horizontal plane.

The paper lets a segmentation model mark floor and tabletop pixels, fits the largest plane among
them with RANSAC (distance threshold 0.05 m, 3 points, 1000 iterations) and builds a frame with
origin = camera origin projected onto the plane, z = plane normal (up), x = the camera's z axis
projected onto the plane. If the horizontal-surface mask covers too little of the image the frame
is marked failed and questions that need it are not generated.

The largest plane in an indoor image is often a wall or a cabinet front, not the floor (NYU
frame 00100). A plain largest-plane RANSAC then returns a vertical plane and every "above" and
"height" question built on it is wrong. The ``'horizontal'`` plane search here therefore scores
only near-horizontal hypotheses: a hypothesis whose normal is more than ``max_tilt_deg`` from the
prior up direction is discarded before its inliers are counted (constrained RANSAC). This was
chosen over "remove the largest plane's inliers and search again" because it needs one pass, does
not depend on how many vertical planes come first, and does not delete floor points that happen
to lie within the threshold of a wall plane. The ``'largest'`` search (orientation ignored) is
kept as a baseline to show the trap.

Formats: depth float32 metres ``(H, W)`` (``nan`` / ``<= 0`` = none); masks bool ``(H, W)``;
points in the camera optical frame (x right, y down, z forward), so the prior up is ``-y``;
``T_canon_cam`` (4, 4) maps camera-frame points into the canonical frame (x forward, y left,
z up, origin on the plane below the camera).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from spatialvlm_ros.core.datatypes import CameraIntrinsics
from spatialvlm_ros.core.geometry import backproject, invert_transform, transform_points

CAMERA_UP = np.array([0.0, -1.0, 0.0])  # optical frame: y points down


@dataclass
class CanonicalizationConfig:
    """
    Settings of the canonicalization stage.

    :ivar distance_threshold: RANSAC inlier distance to the plane in metres (paper: 0.05).
    :ivar ransac_n: points per plane hypothesis (paper: 3).
    :ivar iterations: RANSAC hypotheses (paper: 1000).
    :ivar max_tilt_deg: the largest angle between a plane's normal and the up prior for the plane
        to count as horizontal (``'horizontal'`` search only).
    :ivar plane_search: ``'horizontal'`` (only near-horizontal hypotheses are scored) or
        ``'largest'`` (orientation ignored; the naive baseline). Keys of ``PLANE_SEARCHES``.
    :ivar min_mask_fraction: the horizontal-surface candidates (mask pixels with valid depth) must
        cover at least this share of the image, else the frame is marked failed.
    :ivar min_inlier_fraction: the chosen plane's inliers must cover at least this share of the
        image, else the frame is marked failed.
    :ivar max_points: candidate points are thinned with a fixed stride to at most this many before
        RANSAC (speed); the final plane is refitted on all inliers.
    :ivar refine: refit the plane by least squares (SVD), three times, on the points within half
        the distance threshold of the current plane.
    """

    distance_threshold: float = 0.05
    ransac_n: int = 3
    iterations: int = 1000
    max_tilt_deg: float = 30.0
    plane_search: str = 'horizontal'
    min_mask_fraction: float = 0.05
    min_inlier_fraction: float = 0.03
    max_points: int = 20000
    refine: bool = True

    def __post_init__(self) -> None:
        if not self.distance_threshold > 0:
            raise ValueError(f'distance_threshold must be > 0 m, got {self.distance_threshold}')
        if self.ransac_n < 3:
            raise ValueError(f'ransac_n must be >= 3 points, got {self.ransac_n}')
        if self.iterations < 1:
            raise ValueError(f'iterations must be >= 1, got {self.iterations}')
        if not 0.0 < self.max_tilt_deg < 90.0:
            raise ValueError(f'max_tilt_deg must be in (0, 90), got {self.max_tilt_deg}')
        if self.plane_search not in PLANE_SEARCHES:
            raise ValueError(f'unknown plane_search {self.plane_search!r}; '
                             f'choose one of {sorted(PLANE_SEARCHES)}')
        for name in ('min_mask_fraction', 'min_inlier_fraction'):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'{name} must be in [0, 1], got {value}')
        if self.max_points < self.ransac_n:
            raise ValueError(f'max_points must be >= ransac_n, got {self.max_points}')


@dataclass
class CanonicalFrame:
    """
    The result of canonicalization; ``ok`` is False (with ``reason``) when it failed.

    :ivar ok: whether a horizontal plane was found and the frame is usable.
    :ivar reason: why it failed ('' when ok).
    :ivar T_canon_cam: (4, 4) camera -> canonical transform (None when failed).
    :ivar plane_normal: (3,) unit normal in the camera frame, pointing to the camera's side.
    :ivar plane_offset: ``d`` in ``n . p + d = 0`` (camera frame, metres); equals the camera
        height.
    :ivar inlier_fraction: the plane's inliers as a share of the candidate points.
    :ivar mask_fraction: the candidate pixels (with valid depth) as a share of the image.
    :ivar angle_to_up_deg: angle between the plane normal and the up prior, degrees.
    :ivar camera_height: the camera's distance above the plane, metres.
    :ivar num_inliers: inlier count among the candidate points.
    """

    ok: bool
    reason: str = ''
    T_canon_cam: np.ndarray | None = None
    plane_normal: np.ndarray | None = None
    plane_offset: float = float('nan')
    inlier_fraction: float = 0.0
    mask_fraction: float = 0.0
    angle_to_up_deg: float = float('nan')
    camera_height: float = float('nan')
    num_inliers: int = 0

    @property
    def T_cam_canon(self) -> np.ndarray | None:
        """Return the canonical -> camera transform (None when failed)."""
        return None if self.T_canon_cam is None else invert_transform(self.T_canon_cam)

    def to_canonical(self, points: np.ndarray) -> np.ndarray:
        """Map camera-frame points ``(N, 3)`` into the canonical frame."""
        if self.T_canon_cam is None:
            raise ValueError(f'canonicalization failed ({self.reason}); no canonical frame')
        return transform_points(self.T_canon_cam, points)


def plane_from_points(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares plane ``(n, d)`` with ``n . p + d = 0`` through points ``(N, 3)``, N >= 3."""
    points = np.asarray(points, dtype=np.float64)
    centre = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    normal = vt[-1]
    return normal, float(-normal @ centre)


def ransac_plane(points: np.ndarray, rng: np.random.Generator, distance_threshold: float = 0.05,
                 iterations: int = 1000, ransac_n: int = 3, up: np.ndarray | None = None,
                 max_tilt_deg: float | None = None,
                 chunk: int = 64) -> tuple[np.ndarray, float, np.ndarray] | None:
    """
    Fit the plane with the most inliers; optionally only near-``up`` normals are scored.

    :param points: ``(N, 3)`` candidate points, metres.
    :param rng: seeded generator drawing the minimal samples.
    :param distance_threshold: inlier distance, metres.
    :param iterations: number of hypotheses.
    :param ransac_n: points per hypothesis (3 defines the plane; more are fitted by SVD).
    :param up: unit up prior (3,); with ``max_tilt_deg``, each hypothesis' normal is turned toward
        the camera (the origin) and hypotheses whose normal is further than that angle from
        ``up`` are discarded before scoring, so walls and ceilings never win.
    :param max_tilt_deg: see ``up``; None scores every hypothesis (plain largest-plane RANSAC).
    :param chunk: hypotheses scored per vectorized batch (memory ``chunk * N`` floats).

    :returns: ``(normal, offset, inlier_mask)`` or None when no admissible hypothesis was found.
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    if n < ransac_n:
        return None
    samples = rng.integers(0, n, size=(iterations, ransac_n))  # (I, ransac_n); repeats are
    # degenerate (zero normal) and dropped below
    p0, p1, p2 = (points[samples[:, k]] for k in range(3))  # each (I, 3)
    normals = np.cross(p1 - p0, p2 - p0)  # (I, 3)
    if ransac_n > 3:  # more than 3 points: least-squares normal of each sample
        normals = np.stack([plane_from_points(points[s])[0] for s in samples])
    norms = np.linalg.norm(normals, axis=1)
    keep = norms > 1e-12
    normals[keep] /= norms[keep, None]
    offsets = -np.einsum('ij,ij->i', normals, p0)  # (I,)
    if up is not None and max_tilt_deg is not None:
        flip = offsets < 0  # orient each normal toward the camera (origin) side
        normals[flip], offsets[flip] = -normals[flip], -offsets[flip]
        keep &= normals @ up >= np.cos(np.deg2rad(max_tilt_deg))  # below the camera, level
    normals, offsets = normals[keep], offsets[keep]
    if len(normals) == 0:
        return None
    counts = np.empty(len(normals), dtype=np.int64)
    for start in range(0, len(normals), chunk):
        dist = np.abs(points @ normals[start:start + chunk].T + offsets[start:start + chunk])
        counts[start:start + chunk] = (dist < distance_threshold).sum(axis=0)
    best = int(np.argmax(counts))  # first maximum: deterministic for a seed
    normal, offset = normals[best], float(offsets[best])
    inliers = np.abs(points @ normal + offset) < distance_threshold
    return normal, offset, inliers


def _search_horizontal(points: np.ndarray, rng: np.random.Generator,
                       config: CanonicalizationConfig,
                       up: np.ndarray) -> tuple[np.ndarray, float, np.ndarray] | None:
    return ransac_plane(points, rng, config.distance_threshold, config.iterations,
                        config.ransac_n, up=up, max_tilt_deg=config.max_tilt_deg)


def _search_largest(points: np.ndarray, rng: np.random.Generator,
                    config: CanonicalizationConfig,
                    up: np.ndarray) -> tuple[np.ndarray, float, np.ndarray] | None:
    return ransac_plane(points, rng, config.distance_threshold, config.iterations,
                        config.ransac_n)


PlaneSearch = Callable[[np.ndarray, np.random.Generator, CanonicalizationConfig, np.ndarray],
                       'tuple[np.ndarray, float, np.ndarray] | None']

PLANE_SEARCHES: dict[str, PlaneSearch] = {
    'horizontal': _search_horizontal,
    'largest': _search_largest,
}


def frame_from_plane(normal: np.ndarray, offset: float) -> np.ndarray:
    """
    ``T_canon_cam`` (4, 4) for the plane ``n . p + d = 0`` given in the camera frame.

    z = the normal flipped toward the camera's side; origin = the camera origin projected onto
    the plane; x = the camera's optical axis projected onto the plane (the image's up direction
    projected when the camera looks straight along the normal); y = z x x.
    """
    normal = np.asarray(normal, dtype=np.float64)
    normal = normal / np.linalg.norm(normal)
    if offset < 0:  # the camera (origin) must be on the positive side: n . 0 + d = d > 0
        normal, offset = -normal, -offset
    origin = -offset * normal  # camera origin projected onto the plane
    x_axis = np.array([0.0, 0.0, 1.0]) - normal[2] * normal
    if np.linalg.norm(x_axis) < 1e-6:  # looking straight down or up: use image up instead
        x_axis = CAMERA_UP - (CAMERA_UP @ normal) * normal
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(normal, x_axis)
    T_cam_canon = np.eye(4)
    T_cam_canon[:3, :3] = np.stack([x_axis, y_axis, normal], axis=1)  # columns: canon axes
    T_cam_canon[:3, 3] = origin
    return invert_transform(T_cam_canon)


class Canonicalizer:
    """Find the supporting horizontal plane and build the canonical frame (Listing 3)."""

    def __init__(self, config: CanonicalizationConfig | None = None) -> None:
        """Keep the configuration (defaults follow the paper)."""
        self.config = config or CanonicalizationConfig()

    def run(self, depth: np.ndarray, intrinsics: CameraIntrinsics, rng: np.random.Generator,
            mask: np.ndarray | None = None, up_hint: np.ndarray | None = None) -> CanonicalFrame:
        """
        Canonicalize one frame.

        :param depth: float32 metres ``(H, W)``; ``nan`` or ``<= 0`` = no reading.
        :param intrinsics: the depth image's intrinsics.
        :param rng: seeded generator for RANSAC.
        :param mask: bool ``(H, W)`` horizontal-surface candidates (floor, tabletops) from a
            segmentation model; None uses every valid depth pixel.
        :param up_hint: up direction in the camera frame (e.g. from gravity / an IMU); defaults to
            the optical frame's ``-y``.

        :returns: A ``CanonicalFrame``; on failure ``ok`` is False and ``reason`` says why.
        """
        cfg = self.config
        up = CAMERA_UP if up_hint is None else np.asarray(up_hint, dtype=np.float64)
        if up.shape != (3,) or not np.linalg.norm(up) > 0:
            raise ValueError(f'up_hint must be a non-zero (3,) vector, got {up_hint}')
        up = up / np.linalg.norm(up)
        points = backproject(depth, intrinsics, mask)  # (N, 3)
        image_pixels = intrinsics.width * intrinsics.height
        mask_fraction = len(points) / image_pixels
        if mask_fraction < cfg.min_mask_fraction:
            return CanonicalFrame(False, f'horizontal-surface candidates cover {mask_fraction:.1%}'
                                         f' of the image (< {cfg.min_mask_fraction:.1%})',
                                  mask_fraction=mask_fraction)
        stride = int(np.ceil(len(points) / cfg.max_points))
        sample = points[::stride]
        found = PLANE_SEARCHES[cfg.plane_search](sample, rng, cfg, up)
        if found is None:
            return CanonicalFrame(False, 'no plane hypothesis within '
                                         f'{cfg.max_tilt_deg:g} deg of the up direction',
                                  mask_fraction=mask_fraction)
        normal, offset, _ = found
        inliers = np.abs(points @ normal + offset) < cfg.distance_threshold
        if cfg.refine:  # least squares on the points close to the plane (a tighter band keeps
            # e.g. the foot of a wall, within the RANSAC threshold of the floor, out of the fit)
            for _ in range(3):
                near = np.abs(points @ normal + offset) < cfg.distance_threshold / 2
                if near.sum() < 3:
                    break
                normal, offset = plane_from_points(points[near])
            inliers = np.abs(points @ normal + offset) < cfg.distance_threshold
        if offset < 0:
            normal, offset = -normal, -offset
        angle = float(np.degrees(np.arccos(np.clip(normal @ up, -1.0, 1.0))))
        num_inliers = int(inliers.sum())
        result = CanonicalFrame(True, '', frame_from_plane(normal, offset), normal, offset,
                                num_inliers / len(points), mask_fraction, angle, offset,
                                num_inliers)
        if cfg.plane_search == 'horizontal' and angle > cfg.max_tilt_deg:
            result.ok, result.reason = False, (f'refined plane is {angle:.1f} deg from up '
                                               f'(> {cfg.max_tilt_deg:g})')
        elif num_inliers / image_pixels < cfg.min_inlier_fraction:
            share = num_inliers / image_pixels
            result.ok, result.reason = False, (f'plane inliers cover {share:.1%} of the image '
                                               f'(< {cfg.min_inlier_fraction:.1%})')
        if not result.ok:
            result.T_canon_cam = None
        return result
