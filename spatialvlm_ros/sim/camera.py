"""
Pinhole camera for PyBullet's software renderer: matrices, depth linearisation, rendering.

Conventions (see :mod:`spatialvlm_ros.core.datatypes`): ``T_world_cam`` is the pose of the ROS
optical frame (x right, y down, z forward). The OpenGL camera frame used by PyBullet's view
matrix is the optical frame turned 180 degrees about x (x right, y up, z backward).

The projection matrix is built from the intrinsics ``K`` (not from a field of view), so the
principal point is honoured exactly, also off-centre. The core convention
(:func:`spatialvlm_ros.core.geometry.backproject`) puts the centre of pixel ``(u, v)`` at
continuous coordinates ``(u + 0.5, v + 0.5)``. PyBullet's tiny renderer does not sample pixel
centres: measured against the exact meshes, pixel ``(u, v)`` shows the ray through
``(u, v + 1)`` of the projection matrix (error < 1 um there, about 1 mm at 1 m with the naive
mapping). :func:`render` therefore shifts the principal point it hands to the renderer by
:data:`TINY_RENDERER_SHIFT` so that the published ``K`` is exact for pixel centres;
``test_sim_world`` checks this numerically.

Segmentation: pixels of catalog objects get their index in ``Frame.objects``; the table,
the robot (arm and gripper) and the background are all ``-1``, as pinned by the core types.
The robot's pixels are available separately from :func:`render` (``robot_mask``) but are not
stored in ``Frame``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spatialvlm_ros.core.datatypes import CameraIntrinsics
from spatialvlm_ros.core.geometry import invert_transform

# optical frame (x right, y down, z forward) -> OpenGL camera frame (x right, y up, z back)
GL_FROM_OPTICAL = np.diag([1.0, -1.0, -1.0, 1.0])
# (du, dv) added to (cx, cy) in the renderer's projection so pixel centres follow K exactly
TINY_RENDERER_SHIFT = (-0.5, 0.5)


@dataclass(frozen=True)
class Light:
    """Directional light of the tiny renderer (direction points from the scene to the light)."""

    direction: tuple[float, float, float] = (0.5, -0.3, 1.0)
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.6
    diffuse: float = 0.35
    specular: float = 0.05

    def __post_init__(self) -> None:
        if not np.linalg.norm(self.direction) > 0:
            raise ValueError(f'light direction must be non-zero, got {self.direction}')
        for name in ('ambient', 'diffuse', 'specular'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f'light {name} must be in [0, 1], got {getattr(self, name)}')


def look_at(eye: np.ndarray, target: np.ndarray,
            up: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """``T_world_cam`` (4, 4) of an optical frame at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = target - eye
    if not np.linalg.norm(z) > 0:
        raise ValueError('camera eye and target coincide')
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if not np.linalg.norm(x) > 1e-9:
        raise ValueError('camera up vector is parallel to the viewing direction')
    x /= np.linalg.norm(x)
    y = np.cross(z, x)  # image down
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


def view_matrix(T_world_cam: np.ndarray) -> list[float]:
    """Return PyBullet's view matrix (16 floats, column-major) for an optical-frame pose."""
    gl = GL_FROM_OPTICAL @ invert_transform(np.asarray(T_world_cam, dtype=np.float64))
    return [float(v) for v in gl.flatten(order='F')]


def projection_matrix(intrinsics: CameraIntrinsics, near: float, far: float) -> list[float]:
    """
    Return the OpenGL projection matrix (16 floats, column-major) reproducing ``K`` exactly.

    A camera point with optical coordinates ``(x, y, z)`` lands at continuous pixel
    coordinates ``u = fx x / z + cx``, ``v = fy y / z + cy`` (row 0 at the top).
    """
    if not 0.0 < near < far:
        raise ValueError(f'need 0 < near < far, got near={near} far={far}')
    w, h = intrinsics.width, intrinsics.height
    fx, fy, cx, cy = intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy
    # In GL eye coordinates x_e = x, y_e = -y, z_e = -z; NDC x = 2u / w - 1, NDC y = 1 - 2v / h.
    P = np.zeros((4, 4))
    P[0, 0] = 2.0 * fx / w
    P[0, 2] = 1.0 - 2.0 * cx / w
    P[1, 1] = 2.0 * fy / h
    P[1, 2] = 2.0 * cy / h - 1.0
    P[2, 2] = -(far + near) / (far - near)
    P[2, 3] = -2.0 * far * near / (far - near)
    P[3, 2] = -1.0
    return [float(v) for v in P.flatten(order='F')]


def linearize_depth(zbuffer: np.ndarray, near: float, far: float) -> np.ndarray:
    """Metric depth (float32 metres, ``nan`` where nothing was drawn) from a [0, 1] z-buffer."""
    z = np.asarray(zbuffer, dtype=np.float64)
    depth = far * near / (far - (far - near) * z)
    depth[~(z < 1.0)] = np.nan  # cleared buffer: background at or beyond the far plane
    return depth.astype(np.float32)


def render_bodies(client: int, intrinsics: CameraIntrinsics, T_world_cam: np.ndarray,
                  near: float, far: float, light: Light = Light(),
                  background: tuple[int, int, int] = (255, 255, 255)) -> tuple[
                      np.ndarray, np.ndarray, np.ndarray]:
    """
    Render one frame with the tiny renderer (no shadows, no GUI), keeping PyBullet's body ids.

    Returns ``rgb`` uint8 (H, W, 3) with the background colour where nothing was drawn,
    ``depth`` float32 metres (H, W) with ``nan`` beyond the far plane, and ``body`` int32
    (H, W) holding PyBullet body unique ids, ``-1`` where nothing was drawn.
    """
    import pybullet as p

    w, h = intrinsics.width, intrinsics.height
    du, dv = TINY_RENDERER_SHIFT
    shifted = CameraIntrinsics(intrinsics.fx, intrinsics.fy, intrinsics.cx + du,
                               intrinsics.cy + dv, w, h)
    _, _, rgba, zbuf, seg = p.getCameraImage(
        w, h, viewMatrix=view_matrix(T_world_cam),
        projectionMatrix=projection_matrix(shifted, near, far),
        lightDirection=list(light.direction), lightColor=list(light.colour),
        lightAmbientCoeff=light.ambient, lightDiffuseCoeff=light.diffuse,
        lightSpecularCoeff=light.specular, shadow=0, renderer=p.ER_TINY_RENDERER,
        physicsClientId=client)
    rgb = np.asarray(rgba, dtype=np.uint8).reshape(h, w, 4)[:, :, :3].copy()  # (H, W, 3)
    body = np.asarray(seg, dtype=np.int32).reshape(h, w)  # (H, W) body unique ids, -1 = none
    depth = linearize_depth(np.asarray(zbuf).reshape(h, w), near, far)  # (H, W)
    empty = body < 0
    rgb[empty] = np.asarray(background, dtype=np.uint8)
    depth[empty] = np.nan
    return rgb, depth, body


def segmentation_from_bodies(body: np.ndarray, body_to_index: dict[int, int]) -> np.ndarray:
    """Map body ids (H, W) to object indices via ``body_to_index``; ``-1`` elsewhere (int32)."""
    lookup = np.full(int(body.max(initial=0)) + 2, -1, dtype=np.int32)
    for body_id, index in body_to_index.items():
        if body_id < len(lookup) - 1:
            lookup[body_id] = index
    return lookup[np.where(body < 0, len(lookup) - 1, body)]  # last slot holds -1


def render(client: int, intrinsics: CameraIntrinsics, T_world_cam: np.ndarray,
           near: float, far: float, body_to_index: dict[int, int], light: Light = Light(),
           background: tuple[int, int, int] = (255, 255, 255),
           robot_body: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                   np.ndarray]:
    """
    Render one frame with the tiny renderer (no shadows, no GUI).

    Returns ``rgb`` uint8 (H, W, 3) with the background colour where nothing was drawn,
    ``depth`` float32 metres (H, W) with ``nan`` beyond the far plane, ``segmentation`` int32
    (H, W) holding ``body_to_index[body]`` and ``-1`` elsewhere, and ``robot_mask`` bool (H, W).
    """
    rgb, depth, body = render_bodies(client, intrinsics, T_world_cam, near, far, light,
                                     background)
    segmentation = segmentation_from_bodies(body, body_to_index)
    h, w = body.shape
    robot_mask = body == robot_body if robot_body is not None else np.zeros((h, w), bool)
    return rgb, depth, segmentation.astype(np.int32), robot_mask
