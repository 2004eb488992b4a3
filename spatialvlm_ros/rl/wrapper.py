"""
``SpatialVLMReward``: replace any camera env's reward by the spatial VLM's distance reward.

After every ``reset`` and ``step`` the wrapper takes the camera image (``obs[image_key]`` of a
dict observation, else ``env.render()`` in ``rgb_array`` mode), asks the estimator how far the
subject is from the target, and runs the answer through the same smoother and shaping as the
ROS 2 reward node (:class:`~spatialvlm_ros.replay.pipeline.RewardPipeline`, reset per episode,
stamps ``step * dt``). The env's own reward is kept in ``info['true_reward']`` and the frame's
record in ``info['spatialvlm']``. Before the first valid answer of an episode the shaped reward
is undefined and ``missing_reward`` is returned. Termination and truncation stay the env's.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from spatialvlm_ros.core.reward import RewardConfig
from spatialvlm_ros.core.smoothing import MedianEMAConfig, SmootherConfig
from spatialvlm_ros.replay.estimators import needs_image
from spatialvlm_ros.replay.pipeline import DEFAULT_SUBJECT, FrameRecord, RewardPipeline

_DEFAULT = object()


class SpatialVLMReward(gym.Wrapper):
    """
    Reward an env by estimated subject-to-target distances (see the module docstring).

    :param env: an env with camera frames.
    :param estimator: a ``DistanceEstimator``.
    :param subject: the moving part's phrase.
    :param target: the target phrase; None reads ``env.unwrapped.target_phrase`` at each reset
        (envs whose target changes per episode, like ``PandaReachEnv``).
    :param smoother_cfg: smoother settings (default ``MedianEMAConfig()``); None: no smoothing.
    :param reward_cfg: shaping settings (default ``RewardConfig()``: negative distance).
    :param image_key: the image entry of a dict observation; None uses ``env.render()``.
    :param dt: seconds per step (default ``env.unwrapped.dt``, else ``1 / render_fps``, else
        0.1).
    :param missing_reward: reward while no valid answer has been seen in the episode.
    :param always_render: render frames for estimators that do not look at them (the
        oracles) too; by default they get a blank image, which keeps a step cheap.
    """

    def __init__(self, env: gym.Env, estimator: Any, subject: str = DEFAULT_SUBJECT,
                 target: str | None = None, smoother_cfg: Any = _DEFAULT,
                 reward_cfg: RewardConfig | None = None, image_key: str | None = None,
                 dt: float | None = None, missing_reward: float = 0.0,
                 always_render: bool = False) -> None:
        super().__init__(env)
        smoother: SmootherConfig | None = (MedianEMAConfig() if smoother_cfg is _DEFAULT
                                           else smoother_cfg)
        if image_key is None and getattr(env, 'render_mode', None) != 'rgb_array':
            raise ValueError("without image_key the env must have render_mode='rgb_array'")
        if not math.isfinite(missing_reward):
            raise ValueError(f'missing_reward must be finite, got {missing_reward}')
        self.image_key = image_key
        self.render_images = always_render or needs_image(estimator)
        self._blank = np.zeros((2, 2, 3), dtype=np.uint8)
        self.fixed_target = target
        self.missing_reward = float(missing_reward)
        self.dt = float(dt if dt is not None else self._env_dt(env))
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f'dt must be finite and > 0, got {self.dt}')
        self.pipeline = RewardPipeline(estimator, subject, target or 'the target', smoother,
                                       reward_cfg)
        self._t = 0
        self.last_record: FrameRecord | None = None

    @staticmethod
    def _env_dt(env: gym.Env) -> float:
        dt = getattr(env.unwrapped, 'dt', None)
        if dt:
            return float(dt)
        fps = (getattr(env, 'metadata', None) or {}).get('render_fps')
        return 1.0 / float(fps) if fps else 0.1

    def _image(self, obs: Any) -> np.ndarray:
        if not self.render_images:
            return self._blank
        if self.image_key is not None:
            if not isinstance(obs, dict) or self.image_key not in obs:
                raise KeyError(f'observation has no {self.image_key!r} entry')
            return np.asarray(obs[self.image_key])
        image = self.env.render()
        if image is None:
            raise RuntimeError('env.render() returned no image')
        return np.asarray(image)

    def _score(self, obs: Any, info: dict[str, Any]) -> float:
        record = self.pipeline.step(self._t * self.dt, self._image(obs))
        self._t += 1
        self.last_record = record
        info['spatialvlm'] = record.as_dict()
        return record.reward if math.isfinite(record.reward) else self.missing_reward

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """
        Reset the env and the pipeline and score the first frame.

        With a ``seed``, an estimator that draws random numbers (``reseed``, as the noisy
        oracle) starts again from it too, so the same seed and actions give the same rewards.
        The VLM estimator seeds each call itself.
        """
        obs, info = self.env.reset(seed=seed, options=options)
        reseed = getattr(self.pipeline.estimator, 'reseed', None)
        if seed is not None and reseed is not None:
            reseed(int(seed))
        target = self.fixed_target or getattr(self.env.unwrapped, 'target_phrase', None)
        if not target:
            raise ValueError('no target phrase: pass target= or use an env with '
                             '.target_phrase')
        self.pipeline.target = str(target)
        self.pipeline.reset()
        self._t = 0
        info = dict(info)
        self._score(obs, info)
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Step the env and return the estimated-distance reward (true one in info)."""
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info['true_reward'] = float(true_reward)
        reward = self._score(obs, info)
        return obs, float(reward), terminated, truncated, info

    def close(self) -> None:
        """Close the env and the estimator."""
        try:
            self.pipeline.close()
        finally:
            super().close()
