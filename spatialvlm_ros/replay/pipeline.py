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

Staleness is judged on the image stamps (offline), or, when a ``clock`` is given (the live
node passes ``time.monotonic``), on that clock: stale once no answer was accepted for the
smoother's ``stale_after_s`` of clock time (see :meth:`RewardPipeline.stale_at`).

Only numpy and the core are imported (no rclpy, no torch): the estimator is injected. The step is
deterministic given the estimator's answers, so a replay reproduces the node's output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import math
from typing import Any, Callable

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
    :ivar stale: no answer accepted for longer than the smoother's ``stale_after_s`` (judged
        on the stamps, or on the pipeline's ``clock`` when it has one).
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
    :param clock: if given, a function returning seconds (``time.monotonic``): staleness is
        judged on it instead of on the stamps (the live node's wall clock); the reference
        before the first accepted answer is the time of construction / :meth:`reset`.
    """

    def __init__(self, estimator: Any, subject: str, target: str,
                 smoother: SmootherConfig | None = None,
                 reward: RewardConfig | None = None,
                 clock: Callable[[], float] | None = None) -> None:
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
        self.clock = clock
        self.steps = 0
        self.last_stamp_s: float | None = None
        self._accepted_at: float | None = None
        self._clock_start = clock() if clock is not None else 0.0

    @property
    def stale_after_s(self) -> float:
        """Return the smoother's ``stale_after_s`` (``inf`` without a smoother)."""
        return float(getattr(self.smoother_config, 'stale_after_s', math.inf))

    def reset(self) -> None:
        """Start a new episode (smoother and shaper forget everything)."""
        self._smoother.reset()
        self._shaper.reset()
        self.steps = 0
        self.last_stamp_s = None
        self._accepted_at = None
        self._clock_start = self.clock() if self.clock is not None else 0.0

    def stale_at(self, now_s: float) -> bool:
        """
        Return whether no answer was accepted for ``stale_after_s`` at ``clock`` time ``now_s``.

        Measured from the last accepted answer, or from construction / :meth:`reset` before
        one; meaningful with a ``clock`` only.
        """
        reference = self._accepted_at if self._accepted_at is not None else self._clock_start
        return now_s - reference > self.stale_after_s

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
        self.last_stamp_s = float(stamp_s)
        accepted = valid and not state.rejected
        fresh = accepted and state.valid
        stale = bool(state.stale)
        if self.clock is not None:
            now = self.clock()
            if fresh:
                self._accepted_at = now
            stale = self.stale_at(now)
        shaped = self._shaper.update(state.value if fresh else None, fresh)
        self.steps += 1
        return FrameRecord(
            stamp_s=float(stamp_s), text=str(estimate.text), distance_raw_m=raw, valid=valid,
            distance_m=float(state.value), smoothed_valid=bool(state.valid),
            rejected=bool(state.rejected), stale=stale, reward=float(shaped.reward),
            reward_fresh=bool(shaped.valid), success=bool(shaped.success),
            latency_s=float(getattr(estimate, 'latency_s', 0.0)),
            reason=str(getattr(estimate, 'reason', '') or ''))

    def close(self) -> None:
        """Release the estimator."""
        self.estimator.close()
