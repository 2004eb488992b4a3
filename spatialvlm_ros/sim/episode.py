"""
Episodes: the Panda's gripper moving relative to a named target object, rendered per frame.

The grasp point follows straight Cartesian segments between waypoints with minimum-jerk timing;
every frame the arm joints come from ``p.calculateInverseKinematics`` for the end-effector link
(seeded with the previous frame's joints, so joint motion is smooth) and are applied with
``resetJointState``; nothing is simulated dynamically, which keeps episodes bit-identical for a
seed. Scenarios:

- ``approach``: from the home pose to above the target, then down until the grasp point is
  ``standoff`` metres from the target's surface;
- ``approach_retreat``: the approach, then back up and away;
- ``pause``: the approach with two holds on the way;
- ``grasp_lift``: open, descend around the target, close the fingers to its width, and lift
  it (the object is attached kinematically to the hand from the moment of closing);
- ``distractor_first``: approach another object first, rise, then approach the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection

import numpy as np

from spatialvlm_ros.core.datatypes import Episode, Frame
from spatialvlm_ros.sim import catalog
from spatialvlm_ros.sim.scene import (
    EE_LINK,
    GRASP_IN_HAND_Z,
    MAX_OPENING,
    sample_scene,
    SceneConfig,
    World,
)
from spatialvlm_ros.sim.truth import capture, grasp_point, surface_distance

SCENARIOS = ('approach', 'approach_retreat', 'pause', 'grasp_lift', 'distractor_first')
EE_IN_HAND_Z = 0.105  # panda_grasptarget along the hand's z axis
DEFAULT_START_NS = 1_700_000_000_000_000_000


@dataclass(frozen=True)
class EpisodeConfig:
    """What to generate; ``duration_s`` (if set) overrides ``num_frames``."""

    seed: int = 0
    scenario: str = 'approach'
    rate_hz: float = 15.0
    width: int = 320
    height: int = 240
    n_objects: tuple[int, int] = (3, 8)
    num_frames: int = 60
    duration_s: float | None = None
    target_id: str | None = None
    standoff: tuple[float, float] = (0.01, 0.03)
    start_ns: int = DEFAULT_START_NS
    robot_visual: str = 'low'

    def __post_init__(self) -> None:
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f'seed must be a non-negative integer, got {self.seed!r}')
        if self.scenario not in SCENARIOS:
            raise ValueError(f'unknown scenario {self.scenario!r}; choose from {SCENARIOS}')
        if not 10.0 <= self.rate_hz <= 30.0:
            raise ValueError(f'rate_hz must be within [10, 30], got {self.rate_hz}')
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f'duration_s must be positive, got {self.duration_s}')
        if not 10 <= self.frames <= 10_000:
            raise ValueError(f'an episode needs 10..10000 frames, got {self.frames}')
        a, b = self.standoff
        if not 0.0 < a <= b <= 0.1:
            raise ValueError(f'standoff must be a range within (0, 0.1] m, got {self.standoff}')
        if self.start_ns < 0:
            raise ValueError(f'start_ns must be non-negative, got {self.start_ns}')
        if len(self.n_objects) != 2 or self.n_objects[0] > self.n_objects[1]:
            raise ValueError(f'n_objects must be a (low, high) range with low <= high, got '
                             f'{tuple(self.n_objects)}')
        if self.scenario == 'distractor_first' and self.n_objects[1] < 2:
            raise ValueError('distractor_first needs at least two objects')
        self.scene_config()  # validates width, height, n_objects, robot_visual

    @property
    def frames(self) -> int:
        """Return the number of frames to render."""
        if self.duration_s is not None:
            return int(round(self.duration_s * self.rate_hz))
        return int(self.num_frames)

    def scene_config(self) -> SceneConfig:
        """Return the scene ranges for this episode."""
        lo = max(self.n_objects[0], 2) if self.scenario == 'distractor_first' else (
            self.n_objects[0])
        return SceneConfig(width=self.width, height=self.height,
                           n_objects=(lo, max(lo, self.n_objects[1])),
                           robot_visual=self.robot_visual)


def _min_jerk(s: np.ndarray) -> np.ndarray:
    return s ** 3 * (10.0 - 15.0 * s + 6.0 * s * s)


def _hand_quaternion(yaw: float) -> list[float]:
    import pybullet as p

    return list(p.getQuaternionFromEuler([np.pi, 0.0, yaw]))


class _Planner:
    """Waypoints in grasp-point space turned into per-frame targets."""

    def __init__(self, world: World, rng: np.random.Generator, config: EpisodeConfig) -> None:
        self.world, self.rng, self.config = world, rng, config
        self.start = grasp_point(world)

    def above(self, index: int, height: float = 0.15) -> np.ndarray:
        T = self.world.object_pose(index)
        top = T[2, 3] + self.world.scene.objects[index].half_extents[2]
        return np.array([T[0, 3], T[1, 3], top + height])

    def near(self, index: int) -> np.ndarray:
        """Point above the object's centre whose surface distance equals a random standoff."""
        standoff = float(self.rng.uniform(*self.config.standoff))
        top = self.above(index, 0.0)
        bottom = self.world.object_pose(index)[:3, 3]
        best = top + np.array([0.0, 0.0, standoff])
        for z in np.linspace(top[2] + standoff, bottom[2], 40):
            point = np.array([top[0], top[1], z])
            if surface_distance(self.world, index, point) <= standoff:
                return point
            best = point
        return best

    def grasp(self, index: int) -> tuple[np.ndarray, float]:
        """Grasp point between the fingers around the object, and the finger gap there."""
        obj = self.world.scene.objects[index]
        T = self.world.object_pose(index)
        half = obj.half_extents
        z = max(T[2, 3] - half[2] + 0.012, T[2, 3] + half[2] - 0.04)
        narrow = 0 if half[0] <= half[1] else 1
        return np.array([T[0, 3], T[1, 3], z]), float(2.0 * half[narrow])


def _yaw_for(world: World, index: int) -> float:
    """Hand yaw closing the fingers along the object's narrower horizontal axis."""
    T = world.object_pose(index)
    half = world.scene.objects[index].half_extents
    axis = T[:3, 0] if half[0] <= half[1] else T[:3, 1]
    yaw = float(np.arctan2(axis[1], axis[0])) - np.pi / 2  # hand y axis is the finger axis
    return float((yaw + np.pi / 2) % np.pi - np.pi / 2)


def _choose_target(world: World, config: EpisodeConfig, rng: np.random.Generator) -> int:
    ids = [o.object_id for o in world.scene.objects]
    if config.target_id is not None:
        if config.target_id not in ids:
            raise ValueError(f'target_id {config.target_id!r} is not in the scene; '
                             f'objects: {ids}')
        return ids.index(config.target_id)
    candidates = list(range(len(ids)))
    if config.scenario == 'grasp_lift':
        graspable = [i for i in candidates
                     if 2.0 * min(world.scene.objects[i].half_extents[:2]) < MAX_OPENING - 0.01]
        candidates = graspable or candidates
    return int(candidates[int(rng.integers(len(candidates)))])


def _segments(config: EpisodeConfig, planner: _Planner, target: int,
              distractor: int | None) -> list[tuple[np.ndarray, float, float, str]]:
    """Waypoints ``(grasp point, finger gap, relative duration, action)`` after the start."""
    home = planner.start
    rng = planner.rng
    o = MAX_OPENING
    if config.scenario == 'approach':
        return [(planner.above(target), o, 1.0, 'move'), (planner.near(target), o, 0.8, 'move')]
    if config.scenario == 'approach_retreat':
        back = home + np.array([0.0, 0.0, 0.05])
        near = planner.near(target)
        return [(planner.above(target), o, 1.0, 'move'), (near, o, 0.7, 'move'),
                (near, o, 0.2, 'hold'), (back, o, 1.0, 'move')]
    if config.scenario == 'pause':
        above = planner.above(target)
        mid = (home + above) / 2.0
        near = planner.near(target)
        return [(mid, o, 0.5, 'move'), (mid, o, float(rng.uniform(0.2, 0.4)), 'hold'),
                (above, o, 0.5, 'move'), (above, o, float(rng.uniform(0.2, 0.4)), 'hold'),
                (near, o, 0.6, 'move')]
    if config.scenario == 'grasp_lift':
        point, width = planner.grasp(target)
        closed = float(np.clip(width - 0.002, 0.0, o))
        lifted = point + np.array([0.0, 0.0, 0.15])
        pre = np.array([point[0], point[1], point[2] + 0.12])
        return [(pre, o, 1.0, 'move'), (point, o, 0.6, 'move'), (point, closed, 0.3, 'close'),
                (lifted, closed, 0.8, 'lift')]
    assert distractor is not None
    above = planner.above(distractor)
    return [(above, o, 0.8, 'move'), (planner.near(distractor), o, 0.6, 'move'),
            (above, o, 0.4, 'move'), (planner.above(target), o, 0.7, 'move'),
            (planner.near(target), o, 0.6, 'move')]


def _solve_ik(world: World, point: np.ndarray, yaw: float, iterations: int = 4) -> None:
    """Move the arm so the grasp point reaches ``point`` with the hand pointing down."""
    import pybullet as p

    quat = _hand_quaternion(yaw)
    rot = np.asarray(p.getMatrixFromQuaternion(quat)).reshape(3, 3)  # (3, 3)
    ee_target = point - rot[:, 2] * (GRASP_IN_HAND_Z - EE_IN_HAND_Z)
    lower = [-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973]
    upper = [2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973]
    ranges = [u - lo for u, lo in zip(upper, lower, strict=True)]
    for _ in range(iterations):
        q = p.calculateInverseKinematics(
            world.robot, EE_LINK, ee_target.tolist(), quat, lowerLimits=lower + [0, 0],
            upperLimits=upper + [0.04, 0.04], jointRanges=ranges + [0.04, 0.04],
            restPoses=list(world.arm_joints()) + [0.02, 0.02],
            maxNumIterations=100, residualThreshold=1e-5, physicsClientId=world.client)
        world.set_arm(np.clip(q[:7], lower, upper))
        if np.linalg.norm(grasp_point(world) - point) < 5e-4:
            break


def generate_episode(config: EpisodeConfig, progress: bool = False,
                     frames: Collection[int] | None = None) -> Episode:
    """
    Sample a scene for ``config.seed``, plan the scenario and render its frames.

    :param frames: indices of the frames to render and return (None: all). The arm still
        moves through every frame, so a returned frame has the full episode's poses and truth;
        its image can differ in a few edge pixels, because the renderer keeps a little state
        from one image to the next (measured: one pixel in 17 of 120 images at 320x240). The
        same call always gives the same frames. Rendering is most of an episode's time (about
        85% at 320x240), so datasets that keep a few frames per episode ask only for those.
    :raises ValueError: a frame index outside ``[0, config.frames)``.
    """
    from tqdm import tqdm

    wanted = None if frames is None else {int(k) for k in frames}
    if wanted is not None and any(not 0 <= k < config.frames for k in wanted):
        raise ValueError(f'frames must be in [0, {config.frames}), got {sorted(wanted)}')
    rng = np.random.default_rng(config.seed)
    scene = sample_scene(config.scene_config(), rng)
    with World(scene) as world:
        target = _choose_target(world, config, rng)
        distractor = None
        if config.scenario == 'distractor_first':
            others = [i for i in range(len(scene.objects)) if i != target]
            far = [i for i in others if np.linalg.norm(
                scene.objects[i].position[:2] - scene.objects[target].position[:2]) > 0.15]
            pool = far or others
            distractor = int(pool[int(rng.integers(len(pool)))])
        planner = _Planner(world, rng, config)
        waypoints = _segments(config, planner, target, distractor)
        n = config.frames
        weights = np.array([w[2] for w in waypoints])
        bounds = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])  # (S + 1,)
        times = np.arange(n) / max(n - 1, 1)
        hand_x = world.hand_pose()[:3, 0]
        yaws = [float(np.arctan2(hand_x[1], hand_x[0]))]
        for j in range(len(waypoints)):
            goal = _yaw_for(world, distractor if distractor is not None and j < 3 else target)
            # the fingers are symmetric: take the equivalent yaw (mod pi) nearest the last one
            yaws.append(yaws[-1] + (goal - yaws[-1] + np.pi / 2) % np.pi - np.pi / 2)
        attach: np.ndarray | None = None
        captured: list[Frame] = []
        points = [planner.start] + [w[0] for w in waypoints]
        gaps = [MAX_OPENING] + [w[1] for w in waypoints]
        for k in tqdm(range(n), desc=f'episode {config.scenario}', disable=not progress):
            seg = int(min(np.searchsorted(bounds, times[k], side='right') - 1, len(waypoints) - 1))
            s = (times[k] - bounds[seg]) / max(bounds[seg + 1] - bounds[seg], 1e-9)
            s = float(_min_jerk(np.clip(np.array(s), 0.0, 1.0)))
            point = points[seg] + s * (points[seg + 1] - points[seg])
            gap = gaps[seg] + s * (gaps[seg + 1] - gaps[seg])
            hand_yaw = yaws[seg] + s * (yaws[seg + 1] - yaws[seg])
            if waypoints[seg][3] == 'lift' and attach is None:
                # held from the closed hand's pose, before this first lift frame moves it
                attach = np.linalg.inv(world.hand_pose()) @ world.object_pose(target)
            _solve_ik(world, point, hand_yaw)
            world.set_opening(gap)
            if attach is not None:
                world.set_object_pose(target, world.hand_pose() @ attach)
            if wanted is None or k in wanted:
                stamp = config.start_ns + int(round(k * 1e9 / config.rate_hz))
                captured.append(capture(world, k, stamp))
        metadata: dict[str, Any] = scene.metadata()
        metadata.update({
            'generator': 'spatialvlm_ros.sim', 'seed': int(config.seed),
            'scenario': config.scenario, 'rate_hz': float(config.rate_hz),
            'target_id': scene.objects[target].object_id,
            'target_caption': catalog.sample_caption(scene.objects[target].captions, rng),
            'distractor_id': (scene.objects[distractor].object_id
                              if distractor is not None else None),
            'num_frames': n,
            'waypoints': [{'grasp_point': [float(v) for v in w[0]], 'opening': float(w[1]),
                           'duration': float(w[2]), 'action': w[3]} for w in waypoints],
        })
    return Episode(seed=int(config.seed), rate_hz=float(config.rate_hz),
                   target_id=scene.objects[target].object_id, scenario=config.scenario,
                   frames=captured, metadata=metadata)
