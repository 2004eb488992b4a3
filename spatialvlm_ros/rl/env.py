"""
``PandaReachEnv``: move the Panda's gripper to a named object on a simulated table.

Each episode samples a tabletop scene (:func:`~spatialvlm_ros.sim.scene.sample_scene`, small
images by default) and a target object. The simulator is used kinematically, as the episode
generator does: an action is a Cartesian step of the grasp point (the midpoint between the
finger tips), solved with PyBullet's inverse kinematics and applied with ``resetJointState``;
nothing is simulated dynamically, so a step costs about a millisecond and an episode is
reproducible for a seed. The scene is rendered only when asked (``image_obs`` or ``render()``).

- action: ``(3,)`` in [-1, 1], times ``max_step_m`` metres of grasp-point motion in the world
  frame; the commanded point is kept inside a box over the table.
- observation: ``(9,)`` float32 state: grasp point, target centroid (optionally with a fixed
  per-episode Gaussian error of ``target_noise_m``, e.g. a detector's) and their difference, all
  in metres relative to the robot base; with ``image_obs`` a dict ``{'state', 'image'}`` with
  the RGB camera image ``(H, W, 3)`` uint8.
- reward: ``-distance_centre`` (grasp point to the target's centroid, the distance the spatial
  VLM is asked about), ``+ success_bonus`` on success.
- success (``info['is_success']``): the grasp point is within ``success_threshold_m`` of the
  target's surface; the episode terminates then (``terminate_on_success``), and is truncated
  after ``max_steps``.

``info`` holds ``distance_centre``, ``distance_surface`` (``inf`` when it was not needed: it is
computed only when the centroid is close enough for success to be possible), ``is_success``,
``target_id`` and ``target_phrase``.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any

import gymnasium as gym
from gymnasium import spaces
import numpy as np

from spatialvlm_ros.rl import ENV_ID  # noqa: F401 - re-exported

EE_IN_HAND_Z = 0.105  # panda_grasptarget along the hand's z axis
ARM_LOWER = (-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973)
ARM_UPPER = (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973)


@dataclass
class ReachConfig:
    """
    Settings of :class:`PandaReachEnv`.

    :ivar width: camera image width (px).
    :ivar height: camera image height (px).
    :ivar n_objects: (min, max) objects on the table.
    :ivar max_steps: steps before truncation.
    :ivar max_step_m: grasp-point motion of a full action (m).
    :ivar success_threshold_m: success when the grasp point is this close to the surface (m).
    :ivar success_bonus: added to the reward on success.
    :ivar terminate_on_success: end the episode on success.
    :ivar image_obs: observe ``{'state', 'image'}`` instead of the state alone.
    :ivar target_noise_m: std of a fixed per-episode error of the observed target position (m).
    :ivar start_noise_m: half width of the random start offset from the home pose (m).
    :ivar control_hz: step rate (``1 / dt``), also the render fps.
    :ivar ik_iterations: IK refinements per step.
    """

    width: int = 96
    height: int = 72
    n_objects: tuple[int, int] = (1, 4)
    max_steps: int = 50
    max_step_m: float = 0.04
    success_threshold_m: float = 0.03
    success_bonus: float = 0.0
    terminate_on_success: bool = True
    image_obs: bool = False
    target_noise_m: float = 0.0
    start_noise_m: float = 0.05
    control_hz: float = 10.0
    ik_iterations: int = 2

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f'max_steps must be >= 1, got {self.max_steps}')
        for name in ('max_step_m', 'control_hz'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f'{name} must be finite and > 0, got {value}')
        for name in ('success_threshold_m', 'target_noise_m', 'start_noise_m'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f'{name} must be finite and >= 0, got {value}')
        if self.ik_iterations < 1:
            raise ValueError(f'ik_iterations must be >= 1, got {self.ik_iterations}')
        self.scene_config()  # validates width, height, n_objects

    def scene_config(self) -> Any:
        """Return the scene ranges."""
        from spatialvlm_ros.sim.scene import SceneConfig

        return SceneConfig(width=self.width, height=self.height, n_objects=self.n_objects)


class PandaReachEnv(gym.Env):
    """Reach a named object with the Panda's gripper (see the module docstring)."""

    metadata = {'render_modes': ['rgb_array'], 'render_fps': 10}

    def __init__(self, config: ReachConfig | None = None, render_mode: str | None = None,
                 **overrides: Any) -> None:
        """Create the env; ``overrides`` are :class:`ReachConfig` fields."""
        if config is None:
            config = ReachConfig(**overrides)
        elif overrides:
            raise ValueError('pass either config or ReachConfig fields, not both')
        if render_mode is not None and render_mode not in self.metadata['render_modes']:
            raise ValueError(f'render_mode must be one of {self.metadata["render_modes"]}, '
                             f'got {render_mode!r}')
        self.config = config
        self.render_mode = render_mode
        self.metadata = {**self.metadata, 'render_fps': config.control_hz}
        self.dt = 1.0 / config.control_hz
        self.action_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        state = spaces.Box(-5.0, 5.0, shape=(9,), dtype=np.float32)
        if config.image_obs:
            self.observation_space: spaces.Space = spaces.Dict({
                'state': state,
                'image': spaces.Box(0, 255, shape=(config.height, config.width, 3),
                                    dtype=np.uint8)})
        else:
            self.observation_space = state
        self._world: Any = None
        self._target = 0
        self._target_obs = np.zeros(3)
        self._grip = np.zeros(3)
        self._steps = 0
        self._yaw = 0.0
        self._lo = np.zeros(3)
        self._hi = np.zeros(3)
        self.target_id = ''
        self.target_phrase = ''
        self.distance_centre = math.nan
        self.distance_surface = math.inf

    # -- gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Sample a scene, a target and a start pose; return the first observation and info."""
        from spatialvlm_ros.sim import catalog
        from spatialvlm_ros.sim.scene import sample_scene, World

        super().reset(seed=seed)
        rng = self.np_random
        scene = sample_scene(self.config.scene_config(), rng)
        if self._world is None:
            self._world = World(scene)
        else:
            self._world.reset(scene)
        world = self._world
        self._target = int(rng.integers(len(scene.objects)))
        obj = scene.objects[self._target]
        self.target_id = obj.object_id
        self.target_phrase = catalog.sample_caption(obj.captions, rng)
        centre = world.object_pose(self._target)[:3, 3]
        noise = rng.normal(0.0, self.config.target_noise_m, size=3) \
            if self.config.target_noise_m > 0 else np.zeros(3)
        self._target_obs = centre + noise
        table_top = scene.table_height
        self._lo = np.array([scene.robot_base[0] + 0.2, -0.45, table_top + 0.005])
        self._hi = np.array([0.45, 0.45, table_top + 0.6])
        from spatialvlm_ros.sim.truth import grasp_point

        home = grasp_point(world)
        hand_x = world.hand_pose()[:3, 0]
        self._yaw = float(np.arctan2(hand_x[1], hand_x[0]))
        offset = rng.uniform(-1.0, 1.0, size=3) * self.config.start_noise_m
        self._move_to(np.clip(home + offset, self._lo, self._hi))
        self._steps = 0
        self._measure()
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Move the grasp point by ``action * max_step_m`` and return the transition."""
        if self._world is None:
            raise RuntimeError('call reset() before step()')
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(3), -1.0, 1.0)
        goal = np.clip(self._grip + a * self.config.max_step_m, self._lo, self._hi)
        self._move_to(goal)
        self._steps += 1
        success = self._measure()
        reward = -self.distance_centre + (self.config.success_bonus if success else 0.0)
        terminated = bool(success and self.config.terminate_on_success)
        truncated = bool(not terminated and self._steps >= self.config.max_steps)
        return self._observation(), float(reward), terminated, truncated, self._info()

    def render(self) -> np.ndarray | None:
        """Return the camera image (RGB uint8 ``(H, W, 3)``) when ``render_mode`` asks for it."""
        if self.render_mode != 'rgb_array':
            return None
        return self.camera_image()

    def close(self) -> None:
        """Disconnect the simulator."""
        if self._world is not None:
            self._world.close()
            self._world = None

    # -- helpers -----------------------------------------------------------------------------
    def camera_image(self) -> np.ndarray:
        """Render and return the scene camera's RGB image."""
        if self._world is None:
            raise RuntimeError('call reset() first')
        rgb = self._world.render()[0]
        return np.ascontiguousarray(rgb[:, :, :3], dtype=np.uint8)

    @property
    def success(self) -> bool:
        """Return whether the grasp point is within the success threshold of the surface."""
        return bool(self.distance_surface <= self.config.success_threshold_m)

    def _move_to(self, point: np.ndarray) -> None:
        import pybullet as p

        from spatialvlm_ros.sim.scene import EE_LINK, GRASP_IN_HAND_Z
        from spatialvlm_ros.sim.truth import grasp_point

        world = self._world
        quat = p.getQuaternionFromEuler([math.pi, 0.0, self._yaw])
        rot = np.asarray(p.getMatrixFromQuaternion(quat)).reshape(3, 3)  # (3, 3)
        ranges = [u - lo for u, lo in zip(ARM_UPPER, ARM_LOWER, strict=True)]
        target = np.asarray(point, dtype=np.float64)
        for _ in range(self.config.ik_iterations):
            ee = target - rot[:, 2] * (GRASP_IN_HAND_Z - EE_IN_HAND_Z)
            q = p.calculateInverseKinematics(
                world.robot, EE_LINK, ee.tolist(), quat, lowerLimits=list(ARM_LOWER) + [0, 0],
                upperLimits=list(ARM_UPPER) + [0.04, 0.04], jointRanges=ranges + [0.04, 0.04],
                restPoses=list(world.arm_joints()) + [0.04, 0.04], maxNumIterations=50,
                residualThreshold=1e-5, physicsClientId=world.client)
            world.set_arm(np.clip(q[:7], ARM_LOWER, ARM_UPPER))
            self._grip = grasp_point(world)
            if np.linalg.norm(self._grip - point) < 1e-3:
                break

    def _measure(self) -> bool:
        from spatialvlm_ros.sim.truth import surface_distance

        world = self._world
        centre = world.object_pose(self._target)[:3, 3]
        self.distance_centre = float(np.linalg.norm(self._grip - centre))
        reach = float(np.linalg.norm(world.scene.objects[self._target].half_extents))
        if self.distance_centre - reach <= self.config.success_threshold_m:
            self.distance_surface = surface_distance(world, self._target, self._grip)
        else:
            self.distance_surface = math.inf  # surely farther than the threshold
        return self.success

    def _observation(self) -> Any:
        base = self._world.scene.robot_base
        grip = self._grip - base
        target = self._target_obs - base
        state = np.concatenate([grip, target, target - grip]).astype(np.float32)
        if self.config.image_obs:
            return {'state': state, 'image': self.camera_image()}
        return state

    def _info(self) -> dict[str, Any]:
        return {'distance_centre': self.distance_centre,
                'distance_surface': self.distance_surface, 'is_success': self.success,
                'target_id': self.target_id, 'target_phrase': self.target_phrase,
                'steps': self._steps}
