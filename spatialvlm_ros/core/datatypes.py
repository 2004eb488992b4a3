"""
Plain data types shared by the simulator, the bag tools, the data engine and the node.

Formats (pinned, every module follows them):

- images: RGB ``uint8`` arrays of shape ``(H, W, 3)``;
- depth: ``float32`` metres, shape ``(H, W)``, ``nan`` where there is no reading;
- segmentation: ``int32`` ``(H, W)``, ``-1`` for background, else the object's index in
  ``Frame.objects``;
- points: ``(N, 3)`` ``float64`` metres; the camera frame is the ROS optical frame (x right,
  y down, z forward); the world frame is z up;
- poses: ``(4, 4)`` homogeneous transforms; ``T_a_b`` maps points from frame b into frame a;
- boxes: 2D boxes are XYXY pixels; 3D axis-aligned boxes are ``(2, 3)`` rows ``[min, max]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _as_matrix(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f'{name} must have shape {shape}, got {array.shape}')
    if not np.all(np.isfinite(array)):
        raise ValueError(f'{name} must be finite, got {array}')
    return array


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics in pixels for an image of ``width`` x ``height``."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f'image size must be positive, got {self.width}x{self.height}')
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f'focal lengths must be positive, got fx={self.fx} fy={self.fy}')
        if not (np.isfinite(self.cx) and np.isfinite(self.cy)):
            raise ValueError(f'principal point must be finite, got ({self.cx}, {self.cy})')

    @property
    def K(self) -> np.ndarray:
        """Return the 3x3 camera matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @classmethod
    def from_matrix(cls, K: Any, width: int, height: int) -> CameraIntrinsics:
        """Build from a 3x3 camera matrix (row-major, as in sensor_msgs/CameraInfo.k)."""
        m = _as_matrix(np.asarray(K, dtype=np.float64).reshape(3, 3), (3, 3), 'K')
        return cls(float(m[0, 0]), float(m[1, 1]), float(m[0, 2]), float(m[1, 2]),
                   int(width), int(height))

    @classmethod
    def from_fov(cls, fov_y_deg: float, width: int, height: int) -> CameraIntrinsics:
        """Square pixels, principal point at the image centre, vertical field of view in deg."""
        if not 0.0 < fov_y_deg < 180.0:
            raise ValueError(f'vertical field of view must be in (0, 180) deg, got {fov_y_deg}')
        f = 0.5 * height / np.tan(np.deg2rad(fov_y_deg) / 2.0)
        return cls(float(f), float(f), width / 2.0, height / 2.0, int(width), int(height))


@dataclass(frozen=True)
class OrientedBox:
    """A 3D box: centre (3,), rotation (3, 3) whose columns are the box axes, half extents (3,)."""

    center: np.ndarray
    rotation: np.ndarray
    half_extents: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, 'center', _as_matrix(self.center, (3,), 'center'))
        object.__setattr__(self, 'rotation', _as_matrix(self.rotation, (3, 3), 'rotation'))
        half = _as_matrix(self.half_extents, (3,), 'half_extents')
        if np.any(half < 0):
            raise ValueError(f'half_extents must be non-negative, got {half}')
        object.__setattr__(self, 'half_extents', half)

    def corners(self) -> np.ndarray:
        """Return the eight corners, shape (8, 3)."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        return self.center + (signs * self.half_extents) @ self.rotation.T  # (8, 3)

    def transformed(self, T: np.ndarray) -> OrientedBox:
        """Return this box in another frame, ``T`` mapping this frame into it."""
        T = _as_matrix(T, (4, 4), 'T')
        return OrientedBox(T[:3, :3] @ self.center + T[:3, 3], T[:3, :3] @ self.rotation,
                           self.half_extents)


@dataclass
class ObjectTruth:
    """
    Ground truth for one object in one frame (world and camera frames).

    ``centroid_*`` is the centre of the object's oriented box (its geometric centre), not the
    centre of the visible surface.
    """

    object_id: str
    category: str
    attributes: dict[str, str]
    captions: tuple[str, ...]
    centroid_world: np.ndarray
    centroid_cam: np.ndarray
    aabb_world: np.ndarray
    aabb_cam: np.ndarray
    obb_world: OrientedBox
    obb_cam: OrientedBox
    visible_pixels: int = 0


@dataclass
class Frame:
    """
    One rendered camera frame with exact ground truth.

    ``distance_centre`` / ``distance_surface`` map object id to the gripper grasp point's
    distance in metres to the object's centre and to its closest surface.
    """

    index: int
    stamp_ns: int
    rgb: np.ndarray
    depth: np.ndarray
    segmentation: np.ndarray
    intrinsics: CameraIntrinsics
    T_world_cam: np.ndarray
    objects: list[ObjectTruth]
    gripper_world: np.ndarray
    gripper_cam: np.ndarray
    distance_centre: dict[str, float]
    distance_surface: dict[str, float]
    gripper_opening: float = 0.0

    def get_object(self, object_id: str) -> ObjectTruth:
        """Return the object with this id; ``KeyError`` naming the known ids if absent."""
        for obj in self.objects:
            if obj.object_id == object_id:
                return obj
        raise KeyError(f'no object {object_id!r}; known: {[o.object_id for o in self.objects]}')


@dataclass
class Episode:
    """A sequence of frames of the gripper moving relative to a named target object."""

    seed: int
    rate_hz: float
    target_id: str
    scenario: str
    frames: list[Frame] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rate_hz > 0:
            raise ValueError(f'rate_hz must be positive, got {self.rate_hz}')

    @property
    def target_captions(self) -> tuple[str, ...]:
        """Return the captions of the target object (from the first frame)."""
        return self.frames[0].get_object(self.target_id).captions if self.frames else ()
