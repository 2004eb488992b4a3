"""
Reward shaping from a (smoothed) distance estimate, as in the paper's reward annotation.

The paper turns per-frame distance answers ("how far is the gripper from the coke can?") into
rewards; this module does that step for a stream. ``RewardShaper.update(distance_m, valid)``
returns a ``RewardState``:

- ``'negative_distance'``: ``-d / scale``;
- ``'progress'``: ``(d_prev - d) / scale`` with ``d_prev`` the last *valid* distance (positive
  when approaching; 0 on the first valid sample; summed over an episode it telescopes to
  ``(d_first - d_last) / scale`` even across invalid gaps);
- ``'exp'``: ``exp(-d / scale)``, 1 at contact and in (0, 1] everywhere.

``success`` is ``d <= success_threshold_m``; ``success_bonus`` is added when it holds, either
``'once'`` per episode (first success only), ``'on_entry'`` (each time the distance enters the
threshold) or ``'every_step'``. The final reward (bonus included) is clipped to ``clip``.

Invalid input (``valid=False``, ``None``, ``nan``, ``inf``) never becomes a number: the state
holds the last reward and success with ``valid=False`` and the shaper's memory (previous
distance, bonus bookkeeping) is untouched. Before any valid sample the reward is ``nan``,
``success`` False and ``valid`` False. A negative finite distance (a filter overshooting past
contact) is read as 0.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

REWARD_MODES = ('negative_distance', 'progress', 'exp')
BONUS_MODES = ('once', 'on_entry', 'every_step')


@dataclass
class RewardConfig:
    """
    Settings of ``RewardShaper``.

    :ivar mode: one of ``REWARD_MODES``.
    :ivar scale: metres; distances are divided by it (the decay length of ``'exp'``).
    :ivar success_threshold_m: success when the distance is at most this; None disables.
    :ivar success_bonus: added to the reward on success (see ``bonus_mode``).
    :ivar bonus_mode: one of ``BONUS_MODES``.
    :ivar clip: ``(low, high)`` bounds of the final reward, or None.
    """

    mode: str = 'negative_distance'
    scale: float = 1.0
    success_threshold_m: float | None = 0.05
    success_bonus: float = 0.0
    bonus_mode: str = 'once'
    clip: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in REWARD_MODES:
            raise ValueError(f'mode must be one of {REWARD_MODES}, got {self.mode!r}')
        if self.bonus_mode not in BONUS_MODES:
            raise ValueError(f'bonus_mode must be one of {BONUS_MODES}, got {self.bonus_mode!r}')
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f'scale must be finite and > 0, got {self.scale}')
        if self.success_threshold_m is not None and not (
                math.isfinite(self.success_threshold_m) and self.success_threshold_m >= 0):
            raise ValueError('success_threshold_m must be finite and >= 0 or None, '
                             f'got {self.success_threshold_m}')
        if not math.isfinite(self.success_bonus):
            raise ValueError(f'success_bonus must be finite, got {self.success_bonus}')
        if self.clip is not None:
            low, high = (float(c) for c in self.clip)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f'clip must be finite (low, high) with low <= high, '
                                 f'got {self.clip}')
            self.clip = (low, high)


@dataclass(frozen=True)
class RewardState:
    """
    One shaped reward.

    :ivar reward: the reward (held from the last valid step when ``valid`` is False; ``nan``
        before any valid step).
    :ivar success: the distance is within the success threshold (held when invalid).
    :ivar valid: this step's input was a valid distance.
    """

    reward: float
    success: bool
    valid: bool


class RewardShaper:
    """Turn a stream of distances into rewards (stateful: call ``reset`` between episodes)."""

    def __init__(self, config: RewardConfig | None = None) -> None:
        self.config = config or RewardConfig()
        self.reset()

    def reset(self) -> None:
        """Start a new episode."""
        self._previous: float | None = None
        self._succeeded = False
        self._was_success = False
        self._last = RewardState(math.nan, False, False)

    def shaped(self, distance_m: float, previous_m: float | None) -> float:
        """Return the shaping term (no bonus, no clip) for a valid distance."""
        cfg = self.config
        d = max(distance_m, 0.0) / cfg.scale
        if cfg.mode == 'negative_distance':
            return -d
        if cfg.mode == 'exp':
            return math.exp(-d)
        return 0.0 if previous_m is None else (max(previous_m, 0.0) / cfg.scale - d)

    def update(self, distance_m: float | None, valid: bool = True) -> RewardState:
        """
        Shape one step's distance (metres) into a reward; see the module docstring.

        :param distance_m: the (smoothed) distance, or None.
        :param valid: False when the estimate is not usable (e.g. a stale filter).
        """
        d = None if distance_m is None else float(distance_m)
        if not valid or d is None or not math.isfinite(d):
            self._last = RewardState(self._last.reward, self._last.success, False)
            return self._last
        d = max(d, 0.0)
        cfg = self.config
        reward = self.shaped(d, self._previous)
        success = cfg.success_threshold_m is not None and d <= cfg.success_threshold_m
        if success:
            if cfg.bonus_mode == 'every_step' or \
                    (cfg.bonus_mode == 'once' and not self._succeeded) or \
                    (cfg.bonus_mode == 'on_entry' and not self._was_success):
                reward += cfg.success_bonus
            self._succeeded = True
        self._was_success = success
        if cfg.clip is not None:
            reward = min(max(reward, cfg.clip[0]), cfg.clip[1])
        self._previous = d
        self._last = RewardState(reward, success, True)
        return self._last
