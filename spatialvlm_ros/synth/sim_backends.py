"""
Simulator backends of the data engine (registered as ``'sim'``) and the ``sim`` scene source.

The simulator knows everything a model would have to estimate, so these backends read it from
``SceneInput.truth`` (the rendered :class:`~spatialvlm_ros.core.datatypes.Frame`) and
``SceneInput.extras``, optionally degraded by :mod:`spatialvlm_ros.synth.noise`:

- filter ``'sim'``: keeps every rendered scene but still returns a label and scores, like the
  CLIP filter; filter ``'none'`` keeps every image of any source;
- context ``'sim'``: one region per object from the instance segmentation (XYXY box from the
  mask, the mask, a caption of 1-6 words drawn with the generator from the object's true
  captions); objects with too few visible pixels are skipped;
- depth ``'sim'``: the renderer's metric depth and the camera's ``K``;
- surface ``'sim'``: the table-top pixels (``extras['surface_mask']``), optionally the floor.

:func:`sim_scenes` renders random scenes, reusing one PyBullet client (``World.reset``), and
:func:`true_scene_objects` builds exact QA geometry from the ground truth for scoring answers.
pybullet is imported only by :func:`sim_scenes`.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from spatialvlm_ros.core.datatypes import CameraIntrinsics, Frame
from spatialvlm_ros.core.geometry import aabb, invert_transform, transform_points
from spatialvlm_ros.synth.noise import (
    apply_depth_noise,
    apply_intrinsics_noise,
    apply_mask_noise,
    confuse_caption,
    NoiseConfig,
)
from spatialvlm_ros.synth.qa import SceneObject
from spatialvlm_ros.synth.stages import DepthResult, FilterResult, Region, register, SceneInput

SIM_LABEL = 'an iphone photo of an indoor scene'


def _truth(scene: SceneInput, stage: str) -> Frame:
    if scene.truth is None:
        raise ValueError(f'the sim {stage} backend needs SceneInput.truth (a simulator Frame); '
                         f'{scene.image_id!r} has none')
    return scene.truth


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Return the XYXY box ``(4,)`` float of a bool mask (exclusive max), None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


class SimFilter:
    """Keep every simulated scene; report the paper's positive indoor label with score 1."""

    def run(self, scene: SceneInput) -> FilterResult:
        """Return keep=True with the indoor label."""
        return FilterResult(True, SIM_LABEL, {SIM_LABEL: 1.0})


class NoFilter:
    """Keep every image (no classification)."""

    def run(self, scene: SceneInput) -> FilterResult:
        """Return keep=True with the label 'unfiltered'."""
        return FilterResult(True, 'unfiltered', {})


class SimContext:
    """Regions from the instance segmentation with captions drawn from the true captions."""

    def __init__(self, min_pixels: int = 30, noise: NoiseConfig | dict | str | None = None,
                 max_caption_words: int = 6) -> None:
        """
        Set the visibility threshold and the noise.

        :param min_pixels: objects with fewer visible pixels (after mask noise) are skipped.
        :param noise: mask and caption noise (default none).
        :param max_caption_words: captions longer than this are not drawn (1..6).
        """
        if min_pixels < 1:
            raise ValueError(f'min_pixels must be >= 1, got {min_pixels}')
        if not 1 <= max_caption_words <= 6:
            raise ValueError(f'max_caption_words must be in 1..6, got {max_caption_words}')
        self.min_pixels = int(min_pixels)
        self.noise = NoiseConfig.from_value(noise)
        self.max_caption_words = int(max_caption_words)

    def run(self, scene: SceneInput, rng: np.random.Generator) -> list[Region]:
        """Return one region per sufficiently visible object, in object order."""
        frame = _truth(scene, 'context')
        regions = []
        for index, obj in enumerate(frame.objects):
            if obj.visible_pixels < self.min_pixels:
                continue
            mask = apply_mask_noise(frame.segmentation == index, self.noise)
            if int(mask.sum()) < self.min_pixels:
                continue
            captions = [c for c in obj.captions if len(c.split()) <= self.max_caption_words]
            caption = captions[int(rng.integers(len(captions)))]
            caption, _ = confuse_caption(caption, self.noise, rng)
            regions.append(Region(mask_box(mask), mask, caption, 1.0, obj.object_id))
        return regions


class SimDepth:
    """The renderer's depth and intrinsics, optionally with monocular-like noise."""

    def __init__(self, noise: NoiseConfig | dict | str | None = None) -> None:
        """Keep the noise settings (default none: exact depth and ``K``)."""
        self.noise = NoiseConfig.from_value(noise)

    def run(self, scene: SceneInput, rng: np.random.Generator) -> DepthResult:
        """Return the (noisy) depth and (noisy) intrinsics."""
        depth = scene.depth if scene.depth is not None else _truth(scene, 'depth').depth
        intrinsics: CameraIntrinsics | None = scene.intrinsics
        if intrinsics is None:
            intrinsics = _truth(scene, 'depth').intrinsics
        depth, _ = apply_depth_noise(depth, self.noise, rng)
        return DepthResult(depth, apply_intrinsics_noise(intrinsics, self.noise))


class SimSurface:
    """Horizontal-surface pixels from the renderer: the table top, optionally the floor."""

    def __init__(self, include_floor: bool = False) -> None:
        """Choose whether floor pixels count as support surface too."""
        self.include_floor = bool(include_floor)

    def run(self, scene: SceneInput) -> np.ndarray:
        """Return ``extras['surface_mask']`` (or'ed with ``extras['floor_mask']``)."""
        if 'surface_mask' not in scene.extras:
            raise ValueError(f'the sim surface backend needs extras["surface_mask"]; '
                             f'{scene.image_id!r} has none (render with synth.sim_backends.'
                             'sim_scenes or sim.truth.capture_layers)')
        mask = np.asarray(scene.extras['surface_mask'], dtype=bool)
        if self.include_floor and 'floor_mask' in scene.extras:
            mask = mask | np.asarray(scene.extras['floor_mask'], dtype=bool)
        return mask


@register('filter', 'sim')
def _sim_filter() -> SimFilter:
    return SimFilter()


@register('filter', 'none')
def _no_filter() -> NoFilter:
    return NoFilter()


@register('context', 'sim')
def _sim_context(**kwargs: Any) -> SimContext:
    return SimContext(**kwargs)


@register('depth', 'sim')
def _sim_depth(**kwargs: Any) -> SimDepth:
    return SimDepth(**kwargs)


@register('surface', 'sim')
def _sim_surface(**kwargs: Any) -> SimSurface:
    return SimSurface(**kwargs)


def true_canonical_transform(T_world_cam: np.ndarray, plane_height: float) -> np.ndarray:
    """
    Return the exact ``T_canon_cam`` (4, 4) for a horizontal plane at world height z.

    As in Listing 3: z = world up, origin = the camera centre projected onto the plane, x = the
    camera's optical axis projected onto the plane, y = z x x.
    """
    T_world_cam = np.asarray(T_world_cam, dtype=np.float64)
    z_axis = np.array([0.0, 0.0, 1.0])
    x_axis = T_world_cam[:3, 2] - T_world_cam[2, 2] * z_axis
    if np.linalg.norm(x_axis) < 1e-9:  # looking straight down: the image's up direction
        x_axis = -T_world_cam[:3, 1] + T_world_cam[2, 1] * z_axis
    x_axis /= np.linalg.norm(x_axis)
    T_world_canon = np.eye(4)
    T_world_canon[:3, :3] = np.stack([x_axis, np.cross(z_axis, x_axis), z_axis], axis=1)
    T_world_canon[:3, 3] = [T_world_cam[0, 3], T_world_cam[1, 3], plane_height]
    return invert_transform(T_world_canon) @ T_world_cam


def true_scene_objects(frame: Frame, captions: dict[str, str],
                       plane_height: float | None = None,
                       vertices_world: dict[str, np.ndarray] | None = None,
                       ) -> dict[str, SceneObject]:
    """
    Return exact QA geometry per object id from the simulator's ground truth.

    Centroids are the oriented-box centres; camera boxes are the tight mesh bounds; canonical
    boxes are the tight mesh bounds in the true canonical frame (world z up, origin below the
    camera on the plane at ``plane_height``, default: the lowest object bottom, i.e. the table
    top) when ``vertices_world`` has the object's mesh, else the bounds of its oriented-box
    corners there (larger than the mesh bounds for round objects turned about z).

    :param frame: the rendered frame.
    :param captions: object id -> the caption to use (objects not listed are skipped).
    :param plane_height: world height of the support plane.
    :param vertices_world: object id -> mesh vertices ``(V, 3)`` in the world frame (the sim
        source's ``extras['vertices_world']``).
    """
    if plane_height is None:
        plane_height = min(float(o.aabb_world[0, 2]) for o in frame.objects)
    T_canon_cam = true_canonical_transform(frame.T_world_cam, plane_height)
    T_canon_world = T_canon_cam @ invert_transform(frame.T_world_cam)
    out = {}
    for obj in frame.objects:
        if obj.object_id not in captions:
            continue
        vertices = (vertices_world or {}).get(obj.object_id)
        if vertices is None:
            vertices = obj.obb_world.corners()  # (8, 3)
        out[obj.object_id] = SceneObject(
            obj.object_id, captions[obj.object_id], obj.centroid_cam, obj.aabb_cam,
            transform_points(T_canon_world, obj.centroid_world[None])[0],
            aabb(transform_points(T_canon_world, vertices)))
    return out


def sim_scenes(seed: int, n: int, width: int = 320, height: int = 240, start: int = 0,
               scene_config: dict[str, Any] | None = None,
               arm_jitter: float = 0.3) -> Iterator[SceneInput]:
    """
    Render random tabletop scenes ``start .. start + n - 1`` for ``seed``.

    Scene ``i`` is drawn from its own generator (``synth.pipeline.scene_generators(seed, i)``),
    so a scene does not depend on which scenes were rendered before it or by which worker. One
    PyBullet client is reused (``World.reset``, frames identical to a fresh ``World``), without
    object collision meshes and gripper distances (unused here).

    :param seed: dataset seed.
    :param n: number of scenes.
    :param width: image width in pixels.
    :param height: image height in pixels.
    :param start: index of the first scene.
    :param scene_config: other ``SceneConfig`` fields (e.g. ``{'n_objects': [2, 5]}``).
    :param arm_jitter: the arm's joints are set to the home pose plus uniform noise in
        ``[-arm_jitter, arm_jitter]`` radians (the arm is part of the scene's variety).

    Yields ``SceneInput`` with ``truth`` (the Frame) and ``extras``: ``surface_mask`` (table
    top), ``floor_mask``, ``table_height``, ``scene_index``, ``seed``, ``up_hint`` (world
    up in the camera frame, (3,): what a robot knows from TF / an IMU) and ``vertices_world``
    (object id -> mesh vertices (V, 3) in the world frame, for exact truth boxes).
    """
    from spatialvlm_ros.sim.scene import HOME_JOINTS, sample_scene, SceneConfig, World
    from spatialvlm_ros.sim.truth import capture_layers
    from spatialvlm_ros.synth.pipeline import scene_generators

    overrides = dict(scene_config or {})
    for key in ('n_objects', 'fov_deg', 'cam_distance', 'cam_elevation_deg', 'cam_azimuth_deg',
                'table_height', 'table_size', 'categories'):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    config = SceneConfig(width=width, height=height, **overrides)
    world = None
    try:
        for index in range(start, start + n):
            rng = scene_generators(seed, index)[0]
            scene = sample_scene(config, rng)
            if world is None:
                world = World(scene, collision_meshes=False)
            else:
                world.reset(scene)
            world.set_arm(np.asarray(HOME_JOINTS) + rng.uniform(-arm_jitter, arm_jitter, 7))
            frame, masks = capture_layers(world, index, 0, gripper_distances=False)
            yield SceneInput(
                image_id=f'sim-{seed}-{index:08d}', image=frame.rgb, depth=frame.depth,
                intrinsics=frame.intrinsics, truth=frame,
                extras={'surface_mask': masks['table_top'], 'floor_mask': masks['floor'],
                        'table_height': scene.table_height, 'scene_index': index,
                        'seed': seed, 'up_hint': frame.T_world_cam[2, :3].copy(),
                        'vertices_world': {
                            obj.object_id: transform_points(world.object_pose(k),
                                                            world.object_geometry[k][0])
                            for k, obj in enumerate(scene.objects)}})
    finally:
        if world is not None:
            world.close()
