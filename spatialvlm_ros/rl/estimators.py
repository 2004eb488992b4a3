"""Build the reward estimator for an env: the oracles read the env's true distance."""

from __future__ import annotations

from typing import Any

import numpy as np

from spatialvlm_ros.replay.estimators import build_estimator, NoisyOracleConfig


def make_estimator(kind: str, env: Any, rng: np.random.Generator | None = None,
                   seed: int = 0, noise: NoisyOracleConfig | None = None,
                   model_folder: str | None = None) -> Any:
    """
    Return an estimator of ``kind`` for ``env``.

    The oracles look up ``env.unwrapped.distance_centre`` (the true gripper-to-target centre
    distance after the last reset / step; :class:`~spatialvlm_ros.rl.env.PandaReachEnv` has
    it); ``'vlm'`` loads the model from ``model_folder`` and only looks at the images.
    """
    base = env.unwrapped

    def lookup(image: np.ndarray) -> float | None:
        value = getattr(base, 'distance_centre', None)
        return None if value is None or not np.isfinite(value) else float(value)

    return build_estimator(kind, lookup=lookup, rng=rng if rng is not None else
                           np.random.default_rng(seed), noise=noise, model_folder=model_folder)
