"""Tests of core.smoothing: outlier rejection, lag, holding, staleness, Kalman gating."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spatialvlm_ros.core.smoothing import (
    Kalman1D,
    KalmanConfig,
    make_smoother,
    MedianEMA,
    MedianEMAConfig,
    smooth_series,
)

CONFIGS = [MedianEMAConfig(), MedianEMAConfig(tau_s=0.2), KalmanConfig(),
           KalmanConfig(model='constant_velocity', process_var=0.05)]


def _noisy_ramp(n=200, dt=0.1, seed=0):
    """Return times, a distance falling from 1 m at 0.03 m/s (floor 0.1 m), and it + 1 cm noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) * dt
    truth = np.maximum(1.0 - 0.03 * t, 0.1)
    return t, truth, truth + rng.normal(0.0, 0.01, n)


@pytest.mark.parametrize('config', CONFIGS, ids=lambda c: type(c).__name__)
def test_injected_spike_is_rejected(config):
    t = np.arange(50) * 0.1
    values = np.full(50, 0.8) + np.random.default_rng(1).normal(0, 0.005, 50)
    values[25] = 5.0  # a misparsed answer
    values[35] = 0.0
    out = smooth_series(t, values, config)
    assert out.rejected[25] and out.rejected[35]
    assert out.rejected.sum() == 2
    assert np.all(np.abs(out.value[3:] - 0.8) < 0.03)
    assert out.valid.all()


@pytest.mark.parametrize('config', CONFIGS, ids=lambda c: type(c).__name__)
def test_follows_a_ramp_with_bounded_lag(config):
    t, truth, noisy = _noisy_ramp()
    out = smooth_series(t, noisy, config)
    assert not out.rejected.any()
    error = np.abs(out.value - truth)[10:]
    assert error.max() < 0.08
    assert np.abs(np.mean(out.value[10:] - truth[10:])) < 0.05


def test_constant_velocity_model_has_less_lag_than_random_walk_on_a_ramp():
    t, truth, noisy = _noisy_ramp()
    lag = {}
    for model in ('random_walk', 'constant_velocity'):
        out = smooth_series(t, noisy, KalmanConfig(model=model, process_var=0.01,
                                                   measurement_var=0.01))
        lag[model] = np.mean((out.value - truth)[20:150])
    assert abs(lag['constant_velocity']) < abs(lag['random_walk'])


@pytest.mark.parametrize('config', CONFIGS, ids=lambda c: type(c).__name__)
def test_holds_through_invalid_samples_then_goes_stale(config):
    smoother = make_smoother(config)
    first = smoother.update(0.0, None)
    assert math.isnan(first.value) and not first.valid and not first.stale
    assert first.age_s == math.inf
    for k in range(5):
        state = smoother.update(0.1 * k, 0.5)
    held = state.value
    assert state.valid
    for t, value in ((0.6, None), (0.8, float('nan')), (1.0, float('inf')), (1.4, None)):
        state = smoother.update(t, value)
        assert state.value == held and state.valid and not state.stale and not state.rejected
    state = smoother.update(1.41, None)  # 1.01 s after the last accepted sample (t = 0.4)
    assert state.stale and not state.valid and state.value == held
    assert state.age_s == pytest.approx(1.01)
    state = smoother.update(2.0, 0.3)  # restarts from the new sample after a stale period
    assert state.valid and not state.stale
    assert state.value == 0.3


def test_rejected_samples_do_not_keep_the_estimate_fresh():
    smoother = MedianEMA(MedianEMAConfig(window=9, stale_after_s=0.5))
    for k in range(9):
        smoother.update(0.1 * k, 1.0)
    states = [smoother.update(0.8 + 0.1 * k, 9.0) for k in range(1, 5)]
    assert all(s.rejected and s.valid for s in states)
    assert states[-1].value == 1.0
    state = smoother.update(1.31, None)  # 0.51 s after the last accepted sample
    assert state.stale and not state.valid and state.value == 1.0
    state = smoother.update(1.4, 9.0)  # after a stale gap the filter starts over
    assert not state.rejected and state.valid and state.value == 9.0


def test_median_window_accepts_a_lasting_level_change():
    smoother = MedianEMA(MedianEMAConfig(window=7, alpha=1.0))
    for k in range(10):
        smoother.update(0.1 * k, 1.0)
    states = [smoother.update(1.0 + 0.1 * k, 2.0) for k in range(6)]
    rejected = [s.rejected for s in states]
    assert rejected[:3] == [True, True, True] and not any(rejected[4:])
    assert states[-1].value == 2.0


def test_kalman_gating_and_reinitialisation_after_a_real_jump():
    config = KalmanConfig(measurement_var=0.01 ** 2, process_var=1e-4, gate_sigma=3.0,
                          max_rejections=3)
    kf = Kalman1D(config)
    for k in range(20):
        kf.update(0.1 * k, 1.0)
    assert kf.variance < 1e-4
    # innovation of 4 sigma (sigma ~ sqrt(P + R)) is gated, 2 sigma is not
    sigma = math.sqrt(kf.variance + config.process_var * 0.1 + config.measurement_var)
    assert kf.update(2.0, 1.0 + 4 * sigma).rejected
    assert not kf.update(2.0, 1.0 + 2 * sigma).rejected
    for k in range(3):
        assert kf.update(2.1 + 0.1 * k, 3.0).rejected
    state = kf.update(2.5, 3.0)  # the fourth in a row: re-initialise
    assert not state.rejected and state.value == 3.0
    assert not kf.update(2.6, 3.0).rejected


def test_kalman_without_gating_accepts_everything():
    kf = Kalman1D(KalmanConfig(gate_sigma=math.inf))
    for k in range(5):
        kf.update(0.1 * k, 1.0)
    assert not kf.update(0.5, 100.0).rejected


def test_irregular_timestamps_and_time_going_backwards():
    smoother = Kalman1D(KalmanConfig(model='constant_velocity'))
    rng = np.random.default_rng(3)
    t = np.cumsum(rng.uniform(0.01, 0.3, 60))
    for ti in t:
        state = smoother.update(float(ti), 2.0 - 0.1 * float(ti))
    assert state.value == pytest.approx(2.0 - 0.1 * t[-1], abs=0.01)
    assert smoother.velocity == pytest.approx(-0.1, abs=0.02)
    with pytest.raises(ValueError, match='backwards'):
        smoother.update(float(t[-1]) - 1.0, 1.0)
    smoother.reset()
    assert smoother.update(0.0, 1.0).value == 1.0
    with pytest.raises(ValueError, match='finite'):
        smoother.update(float('nan'), 1.0)


@pytest.mark.parametrize('config', CONFIGS, ids=lambda c: type(c).__name__)
def test_deterministic_and_live_equals_offline_and_reset(config):
    t, _, noisy = _noisy_ramp(seed=5)
    noisy = noisy.astype(object)
    noisy[::7] = None
    a = smooth_series(t, noisy, config)
    b = smooth_series(t, noisy, config)
    np.testing.assert_array_equal(a.value, b.value)
    live = make_smoother(config)
    values = [live.update(float(ti), vi).value for ti, vi in zip(t, noisy, strict=True)]
    np.testing.assert_array_equal(np.array(values), a.value)
    live.reset()
    again = [live.update(float(ti), vi).value for ti, vi in zip(t, noisy, strict=True)]
    np.testing.assert_array_equal(np.array(again), a.value)


def test_random_invalid_streams_never_produce_a_nan_after_the_first_sample():
    rng = np.random.default_rng(11)
    for config in CONFIGS:
        for _ in range(20):
            n = 80
            t = np.cumsum(rng.uniform(0.0, 0.4, n))
            values = rng.uniform(0.0, 3.0, n)
            mask = rng.random(n) < 0.3
            values[mask] = np.nan
            values[rng.random(n) < 0.05] = 50.0
            out = smooth_series(t, values, config)
            first = np.argmax(~np.isnan(values))
            assert np.all(np.isfinite(out.value[first:]))
            assert not out.valid[:first].any()
            assert not (out.valid & out.stale).any()


@pytest.mark.parametrize(('cls', 'kwargs', 'match'), [
    (MedianEMAConfig, {'window': 0}, 'window'),
    (MedianEMAConfig, {'alpha': 0.0}, 'alpha'),
    (MedianEMAConfig, {'alpha': 1.5}, 'alpha'),
    (MedianEMAConfig, {'tau_s': -1.0}, 'tau_s'),
    (MedianEMAConfig, {'outlier_threshold': 0.0}, 'outlier_threshold'),
    (MedianEMAConfig, {'min_relative': -0.1}, 'min_relative'),
    (MedianEMAConfig, {'window': 3, 'min_samples': 4}, 'min_samples'),
    (MedianEMAConfig, {'stale_after_s': float('nan')}, 'stale_after_s'),
    (KalmanConfig, {'model': 'spline'}, 'model'),
    (KalmanConfig, {'process_var': 0.0}, 'process_var'),
    (KalmanConfig, {'measurement_var': -1.0}, 'measurement_var'),
    (KalmanConfig, {'gate_sigma': 0.0}, 'gate_sigma'),
    (KalmanConfig, {'max_rejections': -1}, 'max_rejections'),
])
def test_config_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_smooth_series_checks_lengths_and_config_type():
    with pytest.raises(ValueError, match='same length'):
        smooth_series([0.0, 1.0], [1.0], MedianEMAConfig())
    with pytest.raises(TypeError, match='no smoother'):
        smooth_series([0.0], [1.0], object())  # type: ignore[arg-type]
