"""
Temporal smoothing of a stream of distance estimates, with outlier rejection and staleness.

Both filters take ``update(t_seconds, value_or_None)`` with non-decreasing timestamps (irregular
spacing is fine) and return a ``SmoothedState``:

- an input of ``None``, ``nan`` or ``inf`` is *invalid*: nothing is learned from it and the last
  estimate is held;
- a finite input the filter judges an outlier is *rejected*: also held, ``rejected=True``;
- ``stale`` turns True once no sample has been *accepted* for longer than ``stale_after_s``
  (rejected samples do not keep the estimate fresh); ``valid`` is True while an estimate exists
  and is not stale. Before the first accepted sample ``value`` is ``nan`` and ``valid`` False.

``MedianEMA`` rejects a sample far from the median of the recent finite samples (a Hampel
test), then applies an exponential moving average. ``Kalman1D`` is a scalar Kalman filter
(random-walk or constant-velocity model) that rejects a sample whose innovation falls outside a
gate of ``gate_sigma`` standard deviations. ``smooth_series`` replays a whole series offline.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import math
from typing import Any, Union

import numpy as np

MAD_TO_SIGMA = 1.4826  # a normal sample's standard deviation per median absolute deviation


@dataclass(frozen=True)
class SmoothedState:
    """
    One filter output.

    :ivar value: the current estimate in metres (held through invalid / rejected samples);
        ``nan`` before the first accepted sample.
    :ivar valid: an estimate exists and is not stale.
    :ivar stale: no sample accepted for more than ``stale_after_s`` (False before any sample).
    :ivar rejected: this update's finite input was rejected as an outlier.
    :ivar age_s: seconds since the last accepted sample (``inf`` before any).
    """

    value: float
    valid: bool
    stale: bool
    rejected: bool
    age_s: float


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _check_positive(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f'{name} must be finite and > 0, got {value}')


@dataclass
class MedianEMAConfig:
    """
    Settings of ``MedianEMA``.

    :ivar window: finite samples (accepted and rejected) kept for the running median. Rejected
        samples are kept so a lasting level change is accepted after about ``window / 2``
        samples instead of being rejected forever.
    :ivar alpha: EMA weight of a new sample, in (0, 1]; 1 disables averaging. Used per sample
        unless ``tau_s`` is set.
    :ivar tau_s: if set, the EMA time constant in seconds: the weight becomes
        ``1 - exp(-dt / tau_s)``, which suits irregular sample spacing.
    :ivar outlier_threshold: a sample is an outlier when it differs from the window median by
        more than this many robust standard deviations (``1.4826 * MAD``) ...
    :ivar min_deviation_m: ... and by more than this many metres ...
    :ivar min_relative: ... and by more than this fraction of the median. The two floors keep a
        near-constant window (MAD about 0) from rejecting every small change.
    :ivar min_samples: the test runs only once the window holds this many samples.
    :ivar stale_after_s: seconds without an accepted sample after which the output is stale.
        After a stale period the filter starts over: the window is emptied and the EMA
        restarts from the next sample (which therefore cannot be rejected).
    """

    window: int = 7
    alpha: float = 0.3
    tau_s: float | None = None
    outlier_threshold: float = 3.0
    min_deviation_m: float = 0.05
    min_relative: float = 0.2
    min_samples: int = 3
    stale_after_s: float = 1.0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f'window must be >= 1, got {self.window}')
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f'alpha must be in (0, 1], got {self.alpha}')
        if self.tau_s is not None:
            _check_positive(self, 'tau_s')
        _check_positive(self, 'outlier_threshold', 'stale_after_s')
        for name in ('min_deviation_m', 'min_relative'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f'{name} must be finite and >= 0, got {value}')
        if not 1 <= self.min_samples <= self.window:
            raise ValueError(f'min_samples must be in [1, window={self.window}], '
                             f'got {self.min_samples}')


@dataclass
class KalmanConfig:
    """
    Settings of ``Kalman1D``.

    :ivar model: ``'random_walk'`` (state: distance; it drifts as a Wiener process with
        ``process_var`` m^2/s) or ``'constant_velocity'`` (state: distance and rate; white-noise
        acceleration with spectral density ``process_var`` m^2/s^3).
    :ivar process_var: process noise intensity, units as above.
    :ivar measurement_var: variance of one measurement, m^2.
    :ivar gate_sigma: reject a measurement whose innovation exceeds this many standard
        deviations of its predicted spread; ``inf`` disables gating.
    :ivar max_rejections: after this many consecutive rejections the filter re-initialises at
        the next measurement (so a real jump is not gated out forever); 0 never re-initialises.
    :ivar initial_velocity_var: prior variance of the rate, (m/s)^2 (constant velocity only).
    :ivar stale_after_s: seconds without an accepted sample after which the output is stale.
        The filter re-initialises at the next accepted sample after a stale period.
    """

    model: str = 'random_walk'
    process_var: float = 0.01
    measurement_var: float = 0.01
    gate_sigma: float = 3.0
    max_rejections: int = 5
    initial_velocity_var: float = 0.25
    stale_after_s: float = 1.0

    def __post_init__(self) -> None:
        if self.model not in ('random_walk', 'constant_velocity'):
            raise ValueError("model must be 'random_walk' or 'constant_velocity', "
                             f'got {self.model!r}')
        _check_positive(self, 'process_var', 'measurement_var', 'initial_velocity_var',
                        'stale_after_s')
        if not self.gate_sigma > 0:
            raise ValueError(f'gate_sigma must be > 0, got {self.gate_sigma}')
        if self.max_rejections < 0:
            raise ValueError(f'max_rejections must be >= 0, got {self.max_rejections}')


class _Smoother:
    """Shared timing, holding and staleness logic; subclasses implement ``_accept``."""

    stale_after_s: float

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self._last_t: float | None = None
        self._last_accept_t: float | None = None
        self._value = math.nan

    def reset(self) -> None:
        """Forget everything (a new episode or a time jump)."""
        self._last_t = None
        self._last_accept_t = None
        self._value = math.nan
        self._reset_filter()

    def _reset_filter(self) -> None:
        raise NotImplementedError

    def _accept(self, t: float, value: float, restart: bool) -> float | None:
        """Return the new estimate, or None to reject ``value``."""
        raise NotImplementedError

    def update(self, t_seconds: float, value: float | None) -> SmoothedState:
        """
        Feed one sample taken at ``t_seconds`` (None / nan: no valid estimate this time).

        :raise ValueError: if time goes backwards or is not finite (call ``reset`` first).
        """
        t = float(t_seconds)
        if not math.isfinite(t):
            raise ValueError(f't_seconds must be finite, got {t_seconds}')
        if self._last_t is not None and t < self._last_t:
            raise ValueError(f'time went backwards: {t} < {self._last_t}; call reset()')
        self._last_t = t
        sample = _finite(value)
        rejected = False
        if sample is not None:
            restart = self._last_accept_t is None or self._stale_at(t)
            estimate = self._accept(t, sample, restart)
            if estimate is None:
                rejected = True
            else:
                self._value = estimate
                self._last_accept_t = t
        return self._state(t, rejected)

    def _stale_at(self, t: float) -> bool:
        return self._last_accept_t is not None and t - self._last_accept_t > self.stale_after_s

    def _state(self, t: float, rejected: bool) -> SmoothedState:
        age = math.inf if self._last_accept_t is None else t - self._last_accept_t
        stale = self._stale_at(t)
        return SmoothedState(self._value, self._last_accept_t is not None and not stale, stale,
                             rejected, age)


class MedianEMA(_Smoother):
    """Hampel outlier rejection over a running window, then an exponential moving average."""

    def __init__(self, config: MedianEMAConfig | None = None) -> None:
        self.config = config or MedianEMAConfig()
        super().__init__(self.config.stale_after_s)
        self._window: deque[float] = deque(maxlen=self.config.window)
        self._ema: float | None = None
        self._ema_t = 0.0

    def _reset_filter(self) -> None:
        self._window.clear()
        self._ema = None

    def is_outlier(self, value: float) -> bool:
        """Return whether ``value`` fails the Hampel test against the current window."""
        cfg = self.config
        if len(self._window) < cfg.min_samples:
            return False
        window = np.fromiter(self._window, dtype=np.float64)
        median = float(np.median(window))
        mad = float(np.median(np.abs(window - median)))
        limit = max(cfg.outlier_threshold * MAD_TO_SIGMA * mad, cfg.min_deviation_m,
                    cfg.min_relative * abs(median))
        return abs(value - median) > limit

    def _accept(self, t: float, value: float, restart: bool) -> float | None:
        if restart:
            self._window.clear()  # samples from before a stale gap are outdated
        outlier = self.is_outlier(value)
        self._window.append(value)
        if outlier:
            return None
        if restart or self._ema is None:
            self._ema = value
        else:
            cfg = self.config
            alpha = cfg.alpha if cfg.tau_s is None else \
                1.0 - math.exp(-max(t - self._ema_t, 0.0) / cfg.tau_s)
            self._ema += alpha * (value - self._ema)
        self._ema_t = t
        return self._ema


class Kalman1D(_Smoother):
    """Scalar Kalman filter with innovation gating (see ``KalmanConfig`` for the models)."""

    def __init__(self, config: KalmanConfig | None = None) -> None:
        self.config = config or KalmanConfig()
        super().__init__(self.config.stale_after_s)
        self._x: np.ndarray | None = None  # (n,) state: distance [, rate]
        self._P = np.zeros((0, 0))  # (n, n) covariance
        self._t = 0.0
        self._rejections = 0

    @property
    def velocity(self) -> float:
        """Return the estimated rate in m/s (0 for the random-walk model, nan before data)."""
        if self._x is None:
            return math.nan
        return float(self._x[1]) if self._x.shape[0] > 1 else 0.0

    @property
    def variance(self) -> float:
        """Return the posterior variance of the distance, m^2 (nan before data)."""
        return float(self._P[0, 0]) if self._x is not None else math.nan

    def _reset_filter(self) -> None:
        self._x = None
        self._P = np.zeros((0, 0))
        self._rejections = 0

    def _initialise(self, t: float, value: float) -> float:
        cfg = self.config
        if cfg.model == 'constant_velocity':
            self._x = np.array([value, 0.0])
            self._P = np.diag([cfg.measurement_var, cfg.initial_velocity_var])
        else:
            self._x = np.array([value])
            self._P = np.array([[cfg.measurement_var]])
        self._t = t
        self._rejections = 0
        return value

    def _predict(self, dt: float) -> tuple[np.ndarray, np.ndarray]:
        assert self._x is not None
        q = self.config.process_var
        if self.config.model == 'constant_velocity':
            F = np.array([[1.0, dt], [0.0, 1.0]])
            Q = q * np.array([[dt ** 3 / 3.0, dt ** 2 / 2.0], [dt ** 2 / 2.0, dt]])
            return F @ self._x, F @ self._P @ F.T + Q
        return self._x.copy(), self._P + q * dt

    def _accept(self, t: float, value: float, restart: bool) -> float | None:
        cfg = self.config
        if restart or self._x is None:
            return self._initialise(t, value)
        x, P = self._predict(t - self._t)
        innovation = value - float(x[0])
        S = float(P[0, 0]) + cfg.measurement_var
        if innovation * innovation > cfg.gate_sigma ** 2 * S:
            self._rejections += 1
            if cfg.max_rejections and self._rejections > cfg.max_rejections:
                return self._initialise(t, value)
            return None
        self._rejections = 0
        K = P[:, 0] / S  # (n,) gain for H = [1, 0, ...]
        self._x = x + K * innovation
        self._P = P - np.outer(K, P[0, :])
        self._t = t
        return float(self._x[0])


SmootherConfig = Union[MedianEMAConfig, KalmanConfig]
SMOOTHERS: dict[type, type] = {MedianEMAConfig: MedianEMA, KalmanConfig: Kalman1D}


def make_smoother(config: SmootherConfig) -> MedianEMA | Kalman1D:
    """Return the filter for a config (``MedianEMAConfig`` or ``KalmanConfig``)."""
    try:
        cls = SMOOTHERS[type(config)]
    except KeyError:
        raise TypeError(f'no smoother for {type(config).__name__}; '
                        f'known: {[c.__name__ for c in SMOOTHERS]}') from None
    smoother: MedianEMA | Kalman1D = cls(config)
    return smoother


@dataclass(frozen=True)
class SmoothedSeries:
    """
    ``smooth_series`` output: one entry per input sample.

    :ivar value: (N,) float64 estimates (``nan`` before the first accepted sample).
    :ivar valid: (N,) bool.
    :ivar stale: (N,) bool.
    :ivar rejected: (N,) bool.
    """

    value: np.ndarray
    valid: np.ndarray
    stale: np.ndarray
    rejected: np.ndarray


def smooth_series(times: Any, values: Any, config: SmootherConfig) -> SmoothedSeries:
    """
    Replay a recorded series through a fresh filter (offline; same result as live updates).

    :param times: (N,) seconds, non-decreasing.
    :param values: (N,) metres; ``None`` or ``nan`` where there was no valid estimate.
    :param config: a ``MedianEMAConfig`` or ``KalmanConfig``.
    """
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    v = np.array([math.nan if x is None else x for x in values], dtype=np.float64).reshape(-1)
    if t.shape != v.shape:
        raise ValueError(f'times and values must have the same length, got {t.size} and {v.size}')
    smoother = make_smoother(config)
    states = [smoother.update(float(ti), float(vi)) for ti, vi in zip(t, v, strict=True)]
    return SmoothedSeries(np.array([s.value for s in states], dtype=np.float64),
                          np.array([s.valid for s in states], dtype=bool),
                          np.array([s.stale for s in states], dtype=bool),
                          np.array([s.rejected for s in states], dtype=bool))
