"""
The per-frame reward step shared by the ROS 2 reward node, the offline replay and the RL wrapper.

``RewardPipeline.step(stamp_s, image)`` asks the estimator "how far is the subject from the
target?", feeds the parsed distance to the temporal smoother (:mod:`spatialvlm_ros.core.smoothing`)
and shapes the smoothed distance into a reward (:mod:`spatialvlm_ros.core.reward`):

- an answer without a distance (``DistanceEstimate.valid`` False) never becomes a number: the
  smoother learns nothing from it, the record's ``valid`` is False and the reward is *held*
  (``reward_fresh`` False);
- a distance the smoother rejects as an outlier also holds the reward;
- a fresh reward is shaped only from an accepted sample of a smoother that is not stale.

Only numpy and the core are imported (no rclpy, no torch): the estimator is injected. The step is
deterministic given the estimator's answers, so a replay reproduces the node's output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import math
from typing import Any

import numpy as np

from spatialvlm_ros.core.reward import RewardConfig, RewardShaper
from spatialvlm_ros.core.smoothing import (
    KalmanConfig,
    make_smoother,
    MedianEMAConfig,
    SmoothedState,
    SmootherConfig,
)

DEFAULT_SUBJECT = 'the gripper'

# --smoother name -> config class (None: no smoothing, each accepted sample passes through)
SMOOTHER_KINDS: dict[str, type | None] = {
    'median_ema': MedianEMAConfig,
    'kalman': KalmanConfig,
    'none': None,
}


def smoother_config(kind: str, **overrides: Any) -> SmootherConfig | None:
    """Return the smoother config for a ``SMOOTHER_KINDS`` name (fields overridable)."""
    try:
        cls = SMOOTHER_KINDS[kind]
    except KeyError:
        raise ValueError(f'unknown smoother {kind!r}; choose from {sorted(SMOOTHER_KINDS)}') \
            from None
    if cls is None:
        if overrides:
            raise ValueError(f'smoother {kind!r} takes no settings, got {sorted(overrides)}')
        return None
    config: SmootherConfig = cls(**overrides)
    return config


@dataclass(frozen=True)
class FrameRecord:
    """
    The outputs of one reward step.

    :ivar stamp_s: the image's stamp in seconds.
    :ivar text: the estimator's raw answer (first sample).
    :ivar distance_raw_m: the parsed distance in metres, None when the answer held none.
    :ivar valid: the answer held a usable distance.
    :ivar distance_m: the smoothed distance (held through invalid / rejected samples; ``nan``
        before the first accepted one).
    :ivar smoothed_valid: the smoother has an estimate that is not stale.
    :ivar rejected: the smoother rejected this answer as an outlier.
    :ivar stale: no answer accepted for longer than the smoother's ``stale_after_s``.
    :ivar reward: the shaped reward (held when not fresh; ``nan`` before the first fresh one).
    :ivar reward_fresh: the reward was computed from this frame's answer.
    :ivar success: the (smoothed) distance is within the success threshold (held when not fresh).
    :ivar latency_s: the estimator's wall time.
    :ivar reason: why ``distance_raw_m`` is None ('' otherwise).
    """

    stamp_s: float
    text: str
    distance_raw_m: float | None
    valid: bool
    distance_m: float
    smoothed_valid: bool
    rejected: bool
    stale: bool
    reward: float
    reward_fresh: bool
    success: bool
    latency_s: float = 0.0
    reason: str = ''

    def as_dict(self) -> dict[str, Any]:
        """Return the record as a plain dict."""
        return asdict(self)


class _Passthrough:
    """A 'smoother' that accepts every valid sample as is (``--smoother none``)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the last value."""
        self._value = math.nan
        self._seen = False

    def update(self, t_seconds: float, value: float | None) -> SmoothedState:
        """Return ``value`` when finite, else hold the last one."""
        if value is not None and math.isfinite(value):
            self._value, self._seen = float(value), True
            return SmoothedState(self._value, True, False, False, 0.0)
        return SmoothedState(self._value, self._seen, False, False,
                             0.0 if self._seen else math.inf)


class RewardPipeline:
    """
    Estimator -> smoother -> reward shaper, one image at a time (stateful; ``reset`` per episode).

    :param estimator: any ``DistanceEstimator`` (``estimate(image, subject, target)``).
    :param subject: the phrase for the moving part ('the gripper').
    :param target: the phrase for the target object ('the red mug').
    :param smoother: a ``MedianEMAConfig`` / ``KalmanConfig``, or None for no smoothing.
    :param reward: the shaping settings (default ``RewardConfig()``).
    """

    def __init__(self, estimator: Any, subject: str, target: str,
                 smoother: SmootherConfig | None = None,
                 reward: RewardConfig | None = None) -> None:
        if not subject or not target:
            raise ValueError(f'subject and target must be non-empty, got {subject!r}, '
                             f'{target!r}')
        self.estimator = estimator
        self.subject = subject
        self.target = target
        self.smoother_config = smoother
        self.reward_config = reward or RewardConfig()
        self._smoother = make_smoother(smoother) if smoother is not None else _Passthrough()
        self._shaper = RewardShaper(self.reward_config)
        self.steps = 0

    def reset(self) -> None:
        """Start a new episode (smoother and shaper forget everything)."""
        self._smoother.reset()
        self._shaper.reset()
        self.steps = 0

    def step(self, stamp_s: float, image: np.ndarray) -> FrameRecord:
        """
        Run one frame: estimate, smooth, shape.

        :param stamp_s: the image stamp in seconds (non-decreasing within an episode).
        :param image: RGB ``uint8`` ``(H, W, 3)``.
        :raise ValueError: if time goes backwards (call ``reset`` first).
        """
        estimate = self.estimator.estimate(image, self.subject, self.target)
        return self.feed(stamp_s, estimate)

    def feed(self, stamp_s: float, estimate: Any) -> FrameRecord:
        """Run the smoothing and shaping part of :meth:`step` on a ready ``DistanceEstimate``."""
        valid = bool(estimate.valid)
        raw = float(estimate.value_m) if valid else None
        state = self._smoother.update(float(stamp_s), raw)
        accepted = valid and not state.rejected
        fresh = accepted and state.valid
        shaped = self._shaper.update(state.value if fresh else None, fresh)
        self.steps += 1
        return FrameRecord(
            stamp_s=float(stamp_s), text=str(estimate.text), distance_raw_m=raw, valid=valid,
            distance_m=float(state.value), smoothed_valid=bool(state.valid),
            rejected=bool(state.rejected), stale=bool(state.stale), reward=float(shaped.reward),
            reward_fresh=bool(shaped.valid), success=bool(shaped.success),
            latency_s=float(getattr(estimate, 'latency_s', 0.0)),
            reason=str(getattr(estimate, 'reason', '') or ''))

    def close(self) -> None:
        """Release the estimator."""
        self.estimator.close()
