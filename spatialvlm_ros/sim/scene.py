"""
Random tabletop scenes: sampling (pure numpy) and building them in PyBullet.

A scene is a box table on a floor, a Franka Panda on a pedestal beside the table's -x edge
facing +x, 3-8 catalog objects resting on the table without overlapping, a camera looking at
the objects from a random azimuth, elevation and distance, a random field of view, principal
point jitter, light direction and background colour. :func:`sample_scene` draws all of it from
a ``np.random.Generator`` without touching PyBullet; :class:`World` builds it in a private
PyBullet ``DIRECT`` client and renders it.

Each object's body frame is the centre of its oriented box (the bounds of its upright, scaled
mesh), so the body position is the object's centroid. Visual and collision shapes use the same
mesh (collision as a static concave triangle mesh), which makes ``getClosestPoints`` exact
against what is rendered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import hashlib
import os
import tempfile
from typing import Any

import numpy as np

from spatialvlm_ros.core.datatypes import CameraIntrinsics
from spatialvlm_ros.core.geometry import (
    backproject,
    invert_transform,
    project,
    transform_points,
)
from spatialvlm_ros.sim import catalog
from spatialvlm_ros.sim.camera import (
    Light,
    look_at,
    render,
    render_bodies,
    segmentation_from_bodies,
)

ARM_JOINTS = (0, 1, 2, 3, 4, 5, 6)
FINGER_JOINTS = (9, 10)
HAND_LINK = 8
FINGER_LINKS = (9, 10)
EE_LINK = 11  # panda_grasptarget, 0.105 m along the hand's z axis
FINGER_TIP_Z = 0.054  # finger tip in the finger link frame (top of the finger mesh)
GRASP_IN_HAND_Z = 0.0584 + FINGER_TIP_Z  # finger-tip midpoint along the hand's z axis
HOME_JOINTS = (0.0, -0.6, 0.0, -2.4, 0.0, 1.9, 0.785)
MAX_OPENING = 0.08


@dataclass(frozen=True)
class SceneConfig:
    """Ranges from which scenes are drawn (lengths in metres, angles in degrees)."""

    width: int = 320
    height: int = 240
    n_objects: tuple[int, int] = (3, 8)
    fov_deg: tuple[float, float] = (42.0, 60.0)
    principal_jitter: float = 0.02
    cam_distance: tuple[float, float] = (0.75, 1.25)
    cam_elevation_deg: tuple[float, float] = (30.0, 65.0)
    cam_azimuth_deg: tuple[float, float] = (-110.0, 110.0)
    near: float = 0.05
    far: float = 3.0
    table_height: tuple[float, float] = (0.62, 0.74)
    table_size: tuple[float, float] = (0.8, 1.2)
    categories: tuple[str, ...] = ()
    robot_visual: str = 'low'
    min_gap: float = 0.02

    def __post_init__(self) -> None:
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise ValueError(f'image size must be within 16..4096 px, got '
                             f'{self.width}x{self.height}')
        lo, hi = self.n_objects
        if not 1 <= lo <= hi <= 8:
            raise ValueError(f'n_objects must satisfy 1 <= min <= max <= 8, got {self.n_objects}')
        for name in ('fov_deg', 'cam_distance', 'cam_elevation_deg', 'cam_azimuth_deg',
                     'table_height'):
            a, b = getattr(self, name)
            if not a <= b:
                raise ValueError(f'{name} must be a (min, max) range, got {(a, b)}')
        if not (10.0 <= self.fov_deg[0] and self.fov_deg[1] <= 120.0):
            raise ValueError(f'fov_deg must lie within [10, 120], got {self.fov_deg}')
        if not self.cam_distance[0] > 0:
            raise ValueError(f'cam_distance must be positive, got {self.cam_distance}')
        if not 0.0 < self.near < self.far:
            raise ValueError(f'need 0 < near < far, got near={self.near} far={self.far}')
        if not 0.0 <= self.principal_jitter <= 0.2:
            raise ValueError(f'principal_jitter must be in [0, 0.2], got {self.principal_jitter}')
        unknown = sorted(set(self.categories) - set(catalog.CATALOG))
        if unknown:
            raise ValueError(f'unknown categories {unknown}; known: {sorted(catalog.CATALOG)}')
        if self.categories and len(self.categories) < hi:
            raise ValueError(f'need at least {hi} categories for up to {hi} objects, got '
                             f'{len(self.categories)}')
        if self.robot_visual not in ('low', 'full'):
            raise ValueError(f"robot_visual must be 'low' or 'full', got {self.robot_visual!r}")


@dataclass
class PlacedObject:
    """One object of a sampled scene (its pose is the initial one)."""

    object_id: str
    category: str
    attributes: dict[str, str]
    captions: tuple[str, ...]
    multiplier: float
    rgb: tuple[float, float, float]
    position: np.ndarray
    yaw: float

    @property
    def spec(self) -> catalog.ObjectSpec:
        """Return the catalog entry."""
        return catalog.CATALOG[self.category]

    @property
    def half_extents(self) -> np.ndarray:
        """Half extents (3,) of the oriented box along the body axes."""
        return catalog.local_geometry(self.spec, self.multiplier)[2]

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description."""
        return {'id': self.object_id, 'category': self.category,
                'attributes': dict(self.attributes), 'captions': list(self.captions),
                'half_extents': [float(v) for v in self.half_extents],
                'mesh': self.spec.mesh, 'scale_multiplier': self.multiplier,
                'rgb': list(self.rgb)}


@dataclass
class Scene:
    """A fully sampled scene; :class:`World` builds it."""

    config: SceneConfig
    intrinsics: CameraIntrinsics
    T_world_cam: np.ndarray
    light: Light
    background: tuple[int, int, int]
    table_height: float
    table_rgb: tuple[float, float, float]
    floor_rgb: tuple[float, float, float]
    robot_base: np.ndarray
    objects: list[PlacedObject] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description (camera, light, table, robot, objects)."""
        k = self.intrinsics
        return {
            'camera': {'width': k.width, 'height': k.height, 'K': k.K.flatten().tolist(),
                       'fx': k.fx, 'fy': k.fy, 'cx': k.cx, 'cy': k.cy,
                       'T_world_cam': self.T_world_cam.tolist(), 'near': self.config.near,
                       'far': self.config.far, 'frame': 'optical (x right, y down, z fwd)'},
            'light': {'direction': list(self.light.direction), 'ambient': self.light.ambient,
                      'diffuse': self.light.diffuse, 'specular': self.light.specular},
            'background_rgb': list(self.background),
            'table': {'height': self.table_height, 'size': list(self.config.table_size),
                      'rgb': list(self.table_rgb)},
            'robot': {'model': 'franka_panda', 'base': self.robot_base.tolist(),
                      'visual': self.config.robot_visual},
            'objects': [o.metadata() for o in self.objects],
        }


def _rectangles_overlap(c1: np.ndarray, h1: np.ndarray, yaw1: float, c2: np.ndarray,
                        h2: np.ndarray, yaw2: float, gap: float) -> bool:
    """Separating-axis test of two yawed rectangles (centre, half size) grown by ``gap / 2``."""
    axes = []
    for yaw in (yaw1, yaw2):
        axes += [np.array([np.cos(yaw), np.sin(yaw)]), np.array([-np.sin(yaw), np.cos(yaw)])]
    d = c2 - c1
    for axis in axes:
        r1 = sum(abs(axes[i] @ axis) * (h1[i] + gap / 2) for i in (0, 1))
        r2 = sum(abs(axes[2 + i] @ axis) * (h2[i] + gap / 2) for i in (0, 1))
        if abs(d @ axis) > r1 + r2:
            return False
    return True


def _sample_objects(config: SceneConfig, rng: np.random.Generator, table_height: float,
                    robot_base: np.ndarray) -> list[PlacedObject] | None:
    names = list(config.categories or catalog.CATALOG)
    n = int(rng.integers(config.n_objects[0], config.n_objects[1] + 1))
    chosen = [names[i] for i in rng.permutation(len(names))[:n]]
    colours = list(catalog.PALETTE)
    placed: list[PlacedObject] = []
    for category in chosen:
        spec = catalog.CATALOG[category]
        multiplier = float(rng.uniform(*spec.scale_range))
        colour = colours[int(rng.integers(len(colours)))]
        material = spec.materials[int(rng.integers(len(spec.materials)))]
        attributes = {'colour': colour, 'size': catalog.size_word(multiplier),
                      'material': material}
        half = catalog.local_geometry(spec, multiplier)[2]
        for _ in range(100):
            xy = np.array([rng.uniform(-0.22, 0.2), rng.uniform(-0.3, 0.3)])
            yaw = float(rng.uniform(-np.pi, np.pi))
            reach = np.linalg.norm(xy - robot_base[:2])
            if not 0.33 <= reach <= 0.72:
                continue
            if any(_rectangles_overlap(xy, half[:2], yaw, o.position[:2], o.half_extents[:2],
                                       o.yaw, config.min_gap) for o in placed):
                continue
            position = np.array([xy[0], xy[1], table_height + half[2]])
            placed.append(PlacedObject(
                category.replace(' ', '_'), category, attributes,
                catalog.captions(spec, attributes), multiplier, catalog.PALETTE[colour],
                position, yaw))
            break
        else:
            return None
    return placed


def _object_corners(obj: PlacedObject) -> np.ndarray:
    half = obj.half_extents
    c, s = np.cos(obj.yaw), np.sin(obj.yaw)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    signs = np.array([[a, b, d] for a in (-1, 1) for b in (-1, 1) for d in (-1, 1)])
    return obj.position + (signs * half) @ rot.T  # (8, 3)


def _sample_camera(config: SceneConfig, rng: np.random.Generator,
                   objects: list[PlacedObject]) -> tuple[CameraIntrinsics, np.ndarray] | None:
    w, h = config.width, config.height
    centre = np.mean([o.position for o in objects], axis=0)
    for _ in range(50):
        fov = float(rng.uniform(*config.fov_deg))
        f = 0.5 * h / np.tan(np.deg2rad(fov) / 2.0)
        jitter = config.principal_jitter * rng.uniform(-1.0, 1.0, size=2)
        intrinsics = CameraIntrinsics(float(f), float(f), float(w / 2.0 + jitter[0] * w),
                                      float(h / 2.0 + jitter[1] * h), w, h)
        az = np.deg2rad(rng.uniform(*config.cam_azimuth_deg))
        el = np.deg2rad(rng.uniform(*config.cam_elevation_deg))
        dist = float(rng.uniform(*config.cam_distance))
        target = centre + np.array([rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), 0.0])
        eye = target + dist * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az),
                                        np.sin(el)])
        T_world_cam = look_at(eye, target)
        T_cam_world = invert_transform(T_world_cam)
        ok = True
        for obj in objects:
            corners = transform_points(T_cam_world, _object_corners(obj))  # (8, 3)
            uv = project(corners, intrinsics)  # (8, 2)
            inside = ((uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
                      & (corners[:, 2] > config.near))
            centre_uv = project(transform_points(T_cam_world, obj.position[None]), intrinsics)[0]
            margin = 0.05 * np.array([w, h])
            if (inside.mean() < 0.75 or np.any(centre_uv < margin)
                    or np.any(centre_uv > np.array([w, h]) - margin)):
                ok = False
                break
        if ok:
            return intrinsics, T_world_cam
    return None


def sample_scene(config: SceneConfig, rng: np.random.Generator) -> Scene:
    """Draw a scene: objects without overlap within the arm's reach, all mostly in view."""
    for _ in range(100):
        table_height = float(rng.uniform(*config.table_height))
        robot_base = np.array([-config.table_size[0] / 2 - 0.12, float(rng.uniform(-0.05, 0.05)),
                               table_height])
        objects = _sample_objects(config, rng, table_height, robot_base)
        if objects is None:
            continue
        camera = _sample_camera(config, rng, objects)
        if camera is None:
            continue
        light_dir = rng.normal(size=3)
        light_dir[2] = abs(light_dir[2]) + 0.5  # from above
        light = Light(direction=tuple(float(v) for v in light_dir / np.linalg.norm(light_dir)),
                      ambient=float(rng.uniform(0.45, 0.7)), diffuse=float(rng.uniform(0.25, 0.5)),
                      specular=float(rng.uniform(0.0, 0.1)))
        background = tuple(int(v) for v in rng.integers(0, 256, size=3))
        table_rgb = tuple(float(v) for v in rng.uniform([0.45, 0.3, 0.15], [0.8, 0.65, 0.45]))
        floor_rgb = tuple(float(v) for v in rng.uniform(0.2, 0.6, size=3))
        return Scene(config, camera[0], camera[1], light, background, table_height, table_rgb,
                     floor_rgb, robot_base, objects)
    raise RuntimeError('could not place the objects without overlap; lower n_objects')


def _lowpoly_panda_urdf() -> str:
    """Write a copy of panda.urdf whose visual meshes are the (low-poly) collision meshes."""
    src = os.path.join(catalog.data_path(), 'franka_panda', 'panda.urdf')
    meshes = os.path.join(catalog.data_path(), 'franka_panda', 'meshes')
    with open(src, encoding='utf-8') as f:
        text = f.read()
    text = text.replace('package://meshes/visual/', 'package://meshes/collision/')
    text = text.replace('package://meshes/', meshes + os.sep)
    out_dir = os.path.join(tempfile.gettempdir(), f'spatialvlm_ros_sim_{os.getuid()}')
    os.makedirs(out_dir, exist_ok=True)
    # named by its content: another install's mesh paths (or pybullet_data) get their own file
    digest = hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]
    path = os.path.join(out_dir, f'panda_lowpoly_{digest}.urdf')
    if not os.path.exists(path):
        tmp = f'{path}.{os.getpid()}.tmp'
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
        os.replace(tmp, path)
    return path


class World:
    """
    A scene built in its own PyBullet DIRECT client; use as a context manager.

    :meth:`reset` rebuilds the client for another scene while keeping the connection, which
    the data engine uses to render many scenes in a row. With ``collision_meshes=False`` the
    objects get no collision shapes (about 13 ms less per scene); rendering and boxes are
    unchanged but :func:`~spatialvlm_ros.sim.truth.surface_distance` is unavailable.
    """

    def __init__(self, scene: Scene, collision_meshes: bool = True) -> None:
        """Connect a DIRECT client and create the table, robot, objects and a distance probe."""
        import pybullet as p

        self.collision_meshes = collision_meshes
        self.client = p.connect(p.DIRECT)
        self._build(scene)

    def reset(self, scene: Scene) -> None:
        """
        Replace the current scene by ``scene``, keeping the client.

        Uses ``resetSimulation`` and builds everything again: the frames equal those of a new
        ``World(scene)`` exactly. (Removing only some bodies and keeping the loaded robot was
        measured 10 ms faster but PyBullet reuses the removed body ids and the tiny renderer
        then draws a different image.)
        """
        import pybullet as p

        p.resetSimulation(physicsClientId=self.client)
        self._build(scene)

    def _build(self, scene: Scene) -> None:
        import pybullet as p

        self.scene = scene
        cid = self.client
        p.setGravity(0, 0, -9.81, physicsClientId=cid)
        sx, sy = scene.config.table_size
        th = scene.table_height
        legs = [(a * (sx / 2 - 0.04), b * (sy / 2 - 0.04)) for a in (-1, 1) for b in (-1, 1)]
        table_vis = p.createVisualShapeArray(
            shapeTypes=[p.GEOM_BOX] * 5,
            halfExtents=[[sx / 2, sy / 2, 0.02]] + [[0.025, 0.025, (th - 0.04) / 2]] * 4,
            visualFramePositions=[[0, 0, th - 0.02]] + [
                [x, y, (th - 0.04) / 2] for x, y in legs],
            physicsClientId=cid)
        table_col = p.createCollisionShape(p.GEOM_BOX, halfExtents=[sx / 2, sy / 2, 0.02],
                                           collisionFramePosition=[0, 0, th - 0.02],
                                           physicsClientId=cid)
        self.table = p.createMultiBody(0, table_col, table_vis, [0, 0, 0], physicsClientId=cid)
        p.changeVisualShape(self.table, -1, rgbaColor=[*scene.table_rgb, 1], physicsClientId=cid)
        floor_vis = p.createVisualShape(p.GEOM_BOX, halfExtents=[2.0, 2.0, 0.01],
                                        rgbaColor=[*scene.floor_rgb, 1], physicsClientId=cid)
        self.floor = p.createMultiBody(0, -1, floor_vis, [0, 0, -0.01], physicsClientId=cid)
        base = scene.robot_base
        ped_vis = p.createVisualShape(p.GEOM_BOX, halfExtents=[0.12, 0.12, th / 2],
                                      rgbaColor=[0.25, 0.25, 0.28, 1], physicsClientId=cid)
        self.pedestal = p.createMultiBody(0, -1, ped_vis, [base[0], base[1], th / 2],
                                          physicsClientId=cid)
        urdf = (_lowpoly_panda_urdf() if scene.config.robot_visual == 'low'
                else os.path.join(catalog.data_path(), 'franka_panda', 'panda.urdf'))
        self.robot = p.loadURDF(urdf, base.tolist(), useFixedBase=True, physicsClientId=cid)
        if scene.config.robot_visual == 'low':
            for link in range(-1, p.getNumJoints(self.robot, physicsClientId=cid)):
                dark = link in (HAND_LINK, *FINGER_LINKS, 6, -1)
                rgba = [0.2, 0.2, 0.22, 1] if dark else [0.92, 0.92, 0.92, 1]
                p.changeVisualShape(self.robot, link, rgbaColor=rgba, physicsClientId=cid)
        self.object_bodies: list[int] = []
        self.object_geometry: list[tuple[np.ndarray, np.ndarray]] = []
        for obj in scene.objects:
            spec = obj.spec
            scale, offset, _ = catalog.local_geometry(spec, obj.multiplier)
            path = os.path.join(catalog.data_path(), spec.mesh)
            quat = p.getQuaternionFromEuler(spec.rest_rpy)
            vis = p.createVisualShape(p.GEOM_MESH, fileName=path, meshScale=scale.tolist(),
                                      rgbaColor=[*obj.rgb, 1], visualFramePosition=offset.tolist(),
                                      visualFrameOrientation=quat, physicsClientId=cid)
            col = -1
            if self.collision_meshes:
                col = p.createCollisionShape(p.GEOM_MESH, fileName=path,
                                             meshScale=scale.tolist(),
                                             collisionFramePosition=offset.tolist(),
                                             collisionFrameOrientation=quat,
                                             flags=p.GEOM_FORCE_CONCAVE_TRIMESH,
                                             physicsClientId=cid)
            body = p.createMultiBody(0, col, vis, obj.position.tolist(),
                                     p.getQuaternionFromEuler([0, 0, obj.yaw]),
                                     physicsClientId=cid)
            p.changeVisualShape(body, -1, rgbaColor=[*obj.rgb, 1], textureUniqueId=-1,
                                physicsClientId=cid)
            self.object_bodies.append(body)
            vertices, triangles = catalog.load_mesh(spec.mesh)
            local = (vertices * scale) @ catalog.rpy_matrix(spec.rest_rpy).T + offset  # (V, 3)
            self.object_geometry.append((local, triangles))
        self.probe_radius = 1e-3
        probe_col = p.createCollisionShape(p.GEOM_SPHERE, radius=self.probe_radius,
                                           physicsClientId=cid)
        self.probe = p.createMultiBody(0, probe_col, -1, [0, 0, -1.0], physicsClientId=cid)
        self.body_to_index = {b: i for i, b in enumerate(self.object_bodies)}
        self.set_arm(HOME_JOINTS)
        self.set_opening(MAX_OPENING)

    def __enter__(self) -> World:
        """Return self."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Disconnect."""
        self.close()

    def close(self) -> None:
        """Disconnect the client (idempotent)."""
        import pybullet as p

        if self.client is not None and p.isConnected(self.client):
            p.disconnect(self.client)
        self.client = None

    def set_arm(self, joints: np.ndarray | tuple[float, ...]) -> None:
        """Reset the seven arm joints (radians)."""
        import pybullet as p

        for j, q in zip(ARM_JOINTS, joints, strict=True):
            p.resetJointState(self.robot, j, float(q), physicsClientId=self.client)

    def arm_joints(self) -> np.ndarray:
        """Return the current arm joint angles (7,)."""
        import pybullet as p

        states = p.getJointStates(self.robot, ARM_JOINTS, physicsClientId=self.client)
        return np.array([s[0] for s in states])

    def set_opening(self, opening: float) -> None:
        """Set the gap between the fingers in metres (0 .. 0.08)."""
        import pybullet as p

        half = float(np.clip(opening, 0.0, MAX_OPENING)) / 2.0
        for j in FINGER_JOINTS:
            p.resetJointState(self.robot, j, half, physicsClientId=self.client)

    def opening(self) -> float:
        """Return the current gap between the fingers in metres."""
        import pybullet as p

        states = p.getJointStates(self.robot, FINGER_JOINTS, physicsClientId=self.client)
        return float(sum(s[0] for s in states))

    def hand_pose(self) -> np.ndarray:
        """``T_world_hand`` (4, 4) of the panda_hand link frame."""
        import pybullet as p

        state = p.getLinkState(self.robot, HAND_LINK, computeForwardKinematics=True,
                               physicsClientId=self.client)
        return _pose(state[4], state[5])

    def object_pose(self, index: int) -> np.ndarray:
        """``T_world_object`` (4, 4) of object ``index`` (origin at its box centre)."""
        import pybullet as p

        pos, quat = p.getBasePositionAndOrientation(self.object_bodies[index],
                                                    physicsClientId=self.client)
        return _pose(pos, quat)

    def set_object_pose(self, index: int, T_world_object: np.ndarray) -> None:
        """Move object ``index`` (kinematically)."""
        import pybullet as p

        quat = _quaternion(T_world_object[:3, :3])
        p.resetBasePositionAndOrientation(self.object_bodies[index],
                                          T_world_object[:3, 3].tolist(), quat,
                                          physicsClientId=self.client)

    def render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Render ``(rgb, depth, segmentation, robot_mask)`` from the scene camera."""
        s = self.scene
        return render(self.client, s.intrinsics, s.T_world_cam, s.config.near, s.config.far,
                      self.body_to_index, s.light, s.background, self.robot)

    def render_layers(self, top_tolerance: float = 0.005) -> tuple[
            np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """
        Render ``(rgb, depth, segmentation, masks)``; ``masks`` holds bool (H, W) layers.

        Layers: ``'robot'`` (arm, gripper), ``'table'`` (the whole table body), ``'table_top'``
        (table pixels whose back-projected height is within ``top_tolerance`` metres of the
        table's top face, i.e. the horizontal support surface without legs and edges),
        ``'floor'`` and ``'pedestal'``. Rendering is the same as :meth:`render`.
        """
        s = self.scene
        rgb, depth, body = render_bodies(self.client, s.intrinsics, s.T_world_cam,
                                         s.config.near, s.config.far, s.light, s.background)
        segmentation = segmentation_from_bodies(body, self.body_to_index)
        table = body == self.table
        points = backproject(depth, s.intrinsics, table)  # (N, 3), row-major pixel order
        height = transform_points(s.T_world_cam, points)[:, 2]
        top = np.zeros_like(table)
        top[table & np.isfinite(depth) & (depth > 0)] = (
            np.abs(height - s.table_height) <= top_tolerance)
        masks = {'robot': body == self.robot, 'table': table, 'table_top': top,
                 'floor': body == self.floor, 'pedestal': body == self.pedestal}
        return rgb, depth, segmentation, masks


def _pose(position: Any, quaternion: Any) -> np.ndarray:
    import pybullet as p

    T = np.eye(4)
    T[:3, :3] = np.asarray(p.getMatrixFromQuaternion(quaternion)).reshape(3, 3)  # (3, 3)
    T[:3, 3] = position
    return T


def _quaternion(R: np.ndarray) -> list[float]:
    """Quaternion (x, y, z, w) of a rotation matrix."""
    from scipy.spatial.transform import Rotation

    return [float(v) for v in Rotation.from_matrix(R).as_quat()]
