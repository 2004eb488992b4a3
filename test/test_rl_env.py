"""PandaReachEnv (gymnasium checks, determinism) and the SpatialVLMReward wrapper."""

import math

import numpy as np
import pytest

gym = pytest.importorskip('gymnasium')

from spatialvlm_ros.model.estimator import (  # noqa: E402 - after the importorskip
    DEFAULT_NUMBER_DECODING,
    NUMBER_DECODINGS,
)
from spatialvlm_ros.rl import ENV_ID  # noqa: E402 - after the importorskip
from spatialvlm_ros.rl.env import PandaReachEnv, ReachConfig  # noqa: E402
from spatialvlm_ros.rl.estimators import make_estimator  # noqa: E402
from spatialvlm_ros.rl.wrapper import SpatialVLMReward  # noqa: E402

SMALL = {'width': 48, 'height': 36, 'max_steps': 12}


def _rollout(env, seed, steps=8):
    obs, _ = env.reset(seed=seed)
    out = [np.asarray(obs['state'] if isinstance(obs, dict) else obs).copy()]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, 3))
        out.append((np.asarray(obs['state'] if isinstance(obs, dict) else obs).copy(),
                    reward, terminated, truncated, info.get('true_reward')))
        if terminated or truncated:
            break
    return out


@pytest.mark.parametrize('image_obs', [False, True])
def test_env_passes_the_gymnasium_checker(image_obs):
    from gymnasium.utils.env_checker import check_env

    env = gym.make(ENV_ID, render_mode='rgb_array', image_obs=image_obs, **SMALL).unwrapped
    try:
        check_env(env, skip_render_check=False)
        obs, info = env.reset(seed=1)
        if image_obs:
            assert obs['image'].shape == (36, 48, 3) and obs['image'].dtype == np.uint8
        assert env.render().shape == (36, 48, 3)
        assert set(info) >= {'distance_centre', 'distance_surface', 'is_success',
                             'target_phrase'}
    finally:
        env.close()


def test_registered_id_makes_the_env():
    env = gym.make(ENV_ID, **SMALL)
    try:
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
    finally:
        env.close()


def test_env_is_deterministic_for_a_seed():
    a, b = PandaReachEnv(**SMALL), PandaReachEnv(**SMALL)
    try:
        ra, rb = _rollout(a, 5), _rollout(b, 5)
        np.testing.assert_array_equal(ra[0], rb[0])
        for x, y in zip(ra[1:], rb[1:], strict=True):
            np.testing.assert_array_equal(x[0], y[0])
            assert x[1:] == y[1:]
        assert not np.array_equal(_rollout(a, 6)[0], ra[0])
    finally:
        a.close()
        b.close()


def test_moving_to_the_target_succeeds_and_terminates():
    env = PandaReachEnv(**{**SMALL, 'max_steps': 40})
    try:
        obs, _ = env.reset(seed=2)
        start = env.distance_centre
        for _ in range(40):
            obs, reward, terminated, truncated, info = env.step(np.clip(obs[6:9] / 0.04, -1, 1))
            assert reward == pytest.approx(-info['distance_centre'])
            if terminated or truncated:
                break
        assert terminated and info['is_success'] and info['distance_centre'] < start
        assert info['distance_surface'] <= env.config.success_threshold_m
    finally:
        env.close()


def test_config_is_validated():
    with pytest.raises(ValueError, match='max_step_m'):
        ReachConfig(max_step_m=0.0)
    with pytest.raises(ValueError, match='render_mode'):
        PandaReachEnv(render_mode='human')


def test_wrapper_replaces_the_reward_and_keeps_the_true_one():
    plain = PandaReachEnv(**SMALL)
    base = PandaReachEnv(render_mode='rgb_array', **SMALL)
    wrapped = SpatialVLMReward(base, make_estimator('noisy_oracle', base, seed=3))
    try:
        truth, vlm = _rollout(plain, 4), _rollout(wrapped, 4)
        assert len(truth) == len(vlm)
        rewards, true_rewards = [], []
        for t, v in zip(truth[1:], vlm[1:], strict=True):
            np.testing.assert_array_equal(t[0], v[0])  # same dynamics
            assert v[4] == t[1]  # info['true_reward'] is the env's reward
            rewards.append(v[1])
            true_rewards.append(t[1])
        assert all(math.isfinite(r) for r in rewards)
        assert rewards != true_rewards
        assert 'spatialvlm' in wrapped.reset(seed=4)[1]
    finally:
        wrapped.close()
        plain.close()


def test_the_same_seed_and_actions_give_the_same_noisy_rewards():
    base = PandaReachEnv(render_mode='rgb_array', **SMALL)
    wrapped = SpatialVLMReward(base, make_estimator('noisy_oracle', base, seed=3))
    try:
        first, again = _rollout(wrapped, 5), _rollout(wrapped, 5)
        assert [step[1] for step in first[1:]] == [step[1] for step in again[1:]]
        other = _rollout(wrapped, 6)
        assert [step[1] for step in first[1:]] != [step[1] for step in other[1:]]
    finally:
        wrapped.close()


def test_wrapper_with_the_oracle_and_no_smoothing_gives_the_true_reward():
    base = PandaReachEnv(render_mode='rgb_array', **SMALL)
    wrapped = SpatialVLMReward(base, make_estimator('oracle', base), smoother_cfg=None,
                               always_render=True)
    try:
        for step in _rollout(wrapped, 7)[1:]:
            assert step[1] == pytest.approx(step[4])
        assert wrapped.last_record.text.endswith(' m')
    finally:
        wrapped.close()


def test_wrapper_reads_the_image_of_a_dict_observation():
    seen = []

    class Recorder:
        def estimate(self, image, subject, target):
            from spatialvlm_ros.model.estimator import DistanceEstimate

            seen.append((image.shape, subject, target))
            return DistanceEstimate(None, 'no idea', reason='test')

        def close(self):
            pass

    base = PandaReachEnv(image_obs=True, **SMALL)
    wrapped = SpatialVLMReward(base, Recorder(), image_key='image', missing_reward=-1.0)
    try:
        _, info = wrapped.reset(seed=0)
        _, reward, *_ = wrapped.step(np.zeros(3))
        assert reward == -1.0  # no valid answer yet
        assert seen[0] == ((36, 48, 3), 'the gripper', info['target_phrase'])
    finally:
        wrapped.close()
    with pytest.raises(ValueError, match='render_mode'):
        SpatialVLMReward(PandaReachEnv(**SMALL), Recorder())


def test_rl_example_builds_the_vlm_with_the_sampling_options(monkeypatch):
    pytest.importorskip('stable_baselines3')
    from spatialvlm_ros.replay import estimators
    from spatialvlm_ros.rl import train_example

    built = []

    def fake_build(kind, **kwargs):  # an oracle-like VLM stand-in: no model is loaded
        from spatialvlm_ros.model.estimator import DistanceEstimate

        built.append((kind, kwargs))

        class Fixed:
            def estimate(self, image, subject, target):
                assert image.shape == (36, 48, 3)  # the VLM estimator is given real frames
                return DistanceEstimate(0.3, '30 cm', ['30 cm'])

            def close(self):
                pass

        return Fixed()

    monkeypatch.setattr(estimators, 'build_estimator', fake_build)
    result = train_example.train_one('vlm', 'ppo', 64, 1, 0, 'median_ema', None, 1, SMALL,
                                     samples=8, temperature=1.0)
    assert built == [('vlm', {'model_folder': None, 'samples': 8, 'temperature': 1.0})]
    assert result['reward'] == 'vlm (8 samples, T 1)' and result['samples'] == 8
    greedy = train_example.train_one('vlm', 'ppo', 64, 1, 0, 'median_ema', None, 1, SMALL)
    default = DEFAULT_NUMBER_DECODING  # the node's
    assert built[-1] == ('vlm', {'model_folder': None, 'number_decoding': default})
    assert greedy['reward'] == f'vlm ({default})' and greedy['number_decoding'] == default
    other = next(d for d in NUMBER_DECODINGS if d != default)
    train_example.train_one('vlm', 'ppo', 64, 1, 0, 'median_ema', None, 1, SMALL,
                            number_decoding=other)
    assert built[-1] == ('vlm', {'model_folder': None, 'number_decoding': other})
    assert 0.0 <= greedy['success_rate'] <= 1.0
    assert not greedy['mirror_average']
    mirrored = train_example.train_one('vlm', 'ppo', 64, 1, 0, 'median_ema', None, 1, SMALL,
                                       mirror_average=True)
    assert built[-1] == ('vlm', {'model_folder': None, 'number_decoding': default,
                                 'mirror_average': True})
    assert mirrored['reward'] == f'vlm ({default}, mirror average)'
    assert mirrored['mirror_average'] is True


@pytest.mark.parametrize('flags, match', [(['--samples', '0'], '--samples'),
                                          (['--samples', '17'], '--samples'),
                                          (['--temperature', '0'], '--temperature'),
                                          (['--temperature', 'nan'], '--temperature'),
                                          (['--number-decoding', 'beam'], 'number-decoding')])
def test_rl_example_rejects_bad_sampling_options(flags, match, capsys):
    from spatialvlm_ros.rl import train_example

    with pytest.raises(SystemExit) as exit_info:
        train_example.main(['--reward', 'vlm', *flags])
    assert exit_info.value.code == 2 and match in capsys.readouterr().err
