"""YAML configs into validated dataclasses, and the sim episode command using one."""

from __future__ import annotations

from pathlib import Path
import subprocess
import sys

import pytest

from spatialvlm_ros.configfile import ConfigError, load_config
from spatialvlm_ros.sim.episode import EpisodeConfig

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_episode_config_loads_with_overrides():
    config = load_config(EpisodeConfig, ROOT / 'config' / 'sim_episode.yaml', 'episode',
                         {'seed': 5, 'width': None})
    assert config.seed == 5 and config.width == 320 and config.n_objects == (3, 8)


@pytest.mark.parametrize('text, message', [
    ('episode:\n  seeed: 3\n', "unknown key(s) ['seeed']"),
    ('episode:\n  rate_hz: 100\n', 'rate_hz must be within [10, 30]'),
    ('- 1\n- 2\n', 'must hold a mapping'),
    ('episode: [unclosed\n', 'not valid YAML'),
])
def test_bad_configs_name_the_problem(tmp_path, text, message):
    path = tmp_path / 'bad.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(EpisodeConfig, path, 'episode')
    assert message in str(err.value) and str(path) in str(err.value)


def test_float_fields_take_yaml_exponents_and_reject_words(tmp_path):
    from spatialvlm_ros.train.config import TrainConfig

    path = tmp_path / 'train.yaml'
    path.write_text('train:\n  lr: 1e-3\n  min_lr: 2e-5\n  weight_decay: 0\n')
    config = load_config(TrainConfig, path, 'train', {'max_grad_norm': '0.5', 'data': ['d']})
    assert (config.lr, config.min_lr, config.max_grad_norm) == (1e-3, 2e-5, 0.5)
    assert isinstance(config.weight_decay, float)
    with pytest.raises(ConfigError, match="lr must be a number, got 'fast'"):
        load_config(TrainConfig, None, None, {'lr': 'fast', 'data': ['d']})
    with pytest.raises(ConfigError, match='min_lr must be a number'):
        load_config(TrainConfig, None, None, {'min_lr': True, 'data': ['d']})


@pytest.mark.parametrize('key, value, message', [
    ('freeze_vision', 'maybe', "freeze_vision must be true or false, got 'maybe'"),
    ('max_steps', True, 'max_steps must be an integer, got True'),
    ('max_steps', 2.5, 'max_steps must be an integer, got 2.5'),
    ('out_dir', 5, 'out_dir must be text, got 5'),
])
def test_values_of_the_wrong_type_are_refused(key, value, message):
    from spatialvlm_ros.train.config import TrainConfig

    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, None, {key: value, 'data': ['d']})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match='cannot read config file'):
        load_config(EpisodeConfig, tmp_path / 'nope.yaml')


def test_sim_episode_command_with_config_writes_a_bag(tmp_path):
    config = tmp_path / 'ep.yaml'
    config.write_text('episode:\n  scenario: pause\n  num_frames: 12\n  width: 96\n'
                      '  height: 72\n  seed: 2\n')
    cmd = [sys.executable, '-m', 'spatialvlm_ros', 'sim', 'episode', '--config', str(config),
           '--seed', '4', '--out', str(tmp_path / 'bag'), '--storage', 'mcap', '--json']
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    summary = __import__('json').loads(result.stdout)
    assert summary['seed'] == 4 and summary['scenario'] == 'pause' and summary['frames'] == 12
    assert Path(summary['bag']).joinpath('metadata.yaml').is_file()

    bad = subprocess.run([*cmd[:5], '--scenario', 'dance', '--out', str(tmp_path / 'b2')],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and 'unknown scenario' in bad.stderr
    assert 'Traceback' not in bad.stderr
