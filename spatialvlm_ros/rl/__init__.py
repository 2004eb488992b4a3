"""
Reinforcement learning with the spatial VLM as the reward (needs the ``rl`` extra: gymnasium).

``env.PandaReachEnv`` (registered as ``'SpatialVLM/PandaReach-v0'``) is a kinematic Panda
reach-the-object task on the simulator; ``wrapper.SpatialVLMReward`` replaces any camera env's
reward by the reward node's estimated-distance reward; ``estimators.make_estimator`` builds the
oracle / noisy oracle / VLM estimator for an env; ``train_example`` trains PPO (stable-baselines3)
with the true and with the estimated reward and compares success rates.
"""

from __future__ import annotations

ENV_ID = 'SpatialVLM/PandaReach-v0'


def register_envs() -> None:
    """Register ``ENV_ID`` with gymnasium (idempotent; a no-op without gymnasium)."""
    try:
        import gymnasium
    except ImportError:
        return
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(ENV_ID, entry_point='spatialvlm_ros.rl.env:PandaReachEnv')


register_envs()
