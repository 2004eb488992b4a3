"""Tests of core.reward: hand cases per mode, bonus modes, invalid input, monotone approach."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spatialvlm_ros.core.reward import RewardConfig, RewardShaper
from spatialvlm_ros.core.smoothing import MedianEMAConfig, smooth_series


def _rewards(config, distances, valid=None):
    shaper = RewardShaper(config)
    valid = [True] * len(distances) if valid is None else valid
    return [shaper.update(d, v) for d, v in zip(distances, valid, strict=True)]


def _spearman(a, b):
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def test_negative_distance_hand_cases():
    states = _rewards(RewardConfig('negative_distance', success_threshold_m=None),
                      [0.6, 0.3, 0.0])
    assert [s.reward for s in states] == pytest.approx([-0.6, -0.3, 0.0])
    scaled = _rewards(RewardConfig('negative_distance', scale=0.5), [0.6])
    assert scaled[0].reward == pytest.approx(-1.2)


def test_progress_hand_cases_and_telescoping_across_gaps():
    config = RewardConfig('progress', success_threshold_m=None)
    states = _rewards(config, [0.6, 0.5, None, 0.2, 0.3])
    assert states[0].reward == 0.0 and states[0].valid
    assert states[1].reward == pytest.approx(0.1)
    assert not states[2].valid and states[2].reward == states[1].reward
    assert states[3].reward == pytest.approx(0.3)  # against the last valid distance, 0.5
    assert states[4].reward == pytest.approx(-0.1)  # moving away is negative
    total = sum(s.reward for s in states if s.valid)
    assert total == pytest.approx(0.6 - 0.3)


def test_exp_hand_cases_in_unit_interval():
    states = _rewards(RewardConfig('exp', scale=0.2), [0.0, 0.2, 0.4, 10.0])
    assert [s.reward for s in states] == pytest.approx([1.0, math.exp(-1), math.exp(-2),
                                                        math.exp(-50)])
    assert all(0.0 <= s.reward <= 1.0 for s in states)


@pytest.mark.parametrize(('bonus_mode', 'expected'), [
    ('once', [-0.1, -0.04 + 1, -0.03, -0.1, -0.02]),
    ('on_entry', [-0.1, -0.04 + 1, -0.03, -0.1, -0.02 + 1]),
    ('every_step', [-0.1, -0.04 + 1, -0.03 + 1, -0.1, -0.02 + 1]),
])
def test_success_bonus_modes(bonus_mode, expected):
    config = RewardConfig('negative_distance', success_threshold_m=0.05, success_bonus=1.0,
                          bonus_mode=bonus_mode)
    states = _rewards(config, [0.1, 0.04, 0.03, 0.1, 0.02])
    assert [s.reward for s in states] == pytest.approx(expected)
    assert [s.success for s in states] == [False, True, True, False, True]


def test_threshold_is_inclusive_and_clip_bounds_the_final_reward():
    states = _rewards(RewardConfig('exp', success_threshold_m=0.05, success_bonus=5.0,
                                   clip=(0.0, 2.0)), [0.05, 0.06])
    assert states[0].success and states[0].reward == 2.0
    assert not states[1].success and states[1].reward == pytest.approx(math.exp(-0.06))


def test_invalid_inputs_never_change_the_reward():
    for mode in ('negative_distance', 'progress', 'exp'):
        shaper = RewardShaper(RewardConfig(mode, success_bonus=1.0))
        before = shaper.update(None)
        assert math.isnan(before.reward) and not before.valid and not before.success
        assert math.isnan(shaper.update(float('nan')).reward)
        assert math.isnan(shaper.update(0.3, valid=False).reward)
        first = shaper.update(0.3)
        assert first.valid and math.isfinite(first.reward)
        for bad, flag in ((None, True), (float('nan'), True), (float('inf'), True),
                          (0.01, False), (-float('inf'), True)):
            state = shaper.update(bad, flag)
            assert not state.valid
            assert state.reward == first.reward and state.success == first.success
        # and the memory is untouched: progress is against 0.3, no bonus was used up
        nxt = shaper.update(0.2)
        if mode == 'progress':
            assert nxt.reward == pytest.approx(0.1)


def test_negative_distance_is_read_as_contact():
    states = _rewards(RewardConfig('exp', success_threshold_m=0.0), [-0.01])
    assert states[0].reward == 1.0 and states[0].success


def test_reset_starts_a_new_episode():
    shaper = RewardShaper(RewardConfig('progress', success_bonus=1.0))
    shaper.update(0.5)
    shaper.update(0.01)
    shaper.reset()
    state = shaper.update(0.01)
    assert state.reward == pytest.approx(1.0)  # first step: progress 0 + the bonus again


@pytest.mark.parametrize('mode', ['negative_distance', 'exp'])
def test_monotone_approach_gives_monotone_reward(mode):
    t = np.linspace(0.0, 6.0, 61)
    truth = 0.6 * (1.0 - t / 6.0)  # 0.6 m to contact, as in the paper's Fig. 5
    noisy = truth + np.random.default_rng(2).normal(0.0, 0.01, t.size)
    noisy[[15, 40]] = [3.0, 0.0]  # two wild answers
    smoothed = smooth_series(t, noisy, MedianEMAConfig(alpha=0.5))
    states = _rewards(RewardConfig(mode, success_threshold_m=None), smoothed.value)
    rewards = np.array([s.reward for s in states])
    assert _spearman(rewards, -truth) > 0.99
    clean = np.array([s.reward for s in _rewards(RewardConfig(mode, success_threshold_m=None),
                                                 truth)])
    assert _spearman(clean, -truth) == pytest.approx(1.0)
    assert np.all(np.diff(clean) > 0)


def test_progress_is_positive_on_a_clean_approach():
    truth = np.linspace(0.6, 0.0, 30)
    rewards = [s.reward for s in _rewards(RewardConfig('progress'), truth)][1:]
    assert np.all(np.array(rewards) > 0)


@pytest.mark.parametrize(('kwargs', 'match'), [
    ({'mode': 'linear'}, 'mode'),
    ({'bonus_mode': 'sometimes'}, 'bonus_mode'),
    ({'scale': 0.0}, 'scale'),
    ({'success_threshold_m': -0.1}, 'success_threshold_m'),
    ({'success_bonus': float('nan')}, 'success_bonus'),
    ({'clip': (1.0, 0.0)}, 'clip'),
    ({'clip': (0.0, float('inf'))}, 'clip'),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RewardConfig(**kwargs)
