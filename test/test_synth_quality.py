"""Tests of synth.quality: agreement of the engine's answers with the simulator's truth."""

from __future__ import annotations

import json

import pytest

from spatialvlm_ros.synth import quality
from spatialvlm_ros.synth.qa import QUESTION_TYPES


@pytest.mark.parametrize('meta, expected', [
    ({'kind': 'predicate', 'ambiguous': False, 'truth': True,
      'sim_truth': {'truth': True, 'ambiguous': False, 'value_m': 0.2}},
     {'ambiguous': False, 'agree': True}),
    ({'kind': 'choice', 'ambiguous': False, 'truth': 'a',
      'sim_truth': {'truth': 'b', 'ambiguous': False, 'value_m': 0.2}},
     {'ambiguous': False, 'agree': False}),
    ({'kind': 'classify', 'ambiguous': False, 'truth': 'left',
      'sim_truth': {'truth': 'left', 'ambiguous': True, 'value_m': 0.01}},
     {'ambiguous': True, 'agree': False}),
    ({'kind': 'quantitative', 'value_m': 1.05, 'stated_value_m': 1.0,
      'sim_truth': {'value_m': 1.0}},
     {'exact_10': True, 'stated_10': True, 'stated_2x': True}),
    ({'kind': 'quantitative', 'value_m': 0.85, 'stated_value_m': 1.2,
      'sim_truth': {'value_m': 1.0}},
     {'exact_10': False, 'stated_10': False, 'stated_2x': True}),
    ({'kind': 'quantitative', 'value_m': 0.02, 'stated_value_m': 0.02,
      'sim_truth': {'value_m': -0.01}},  # the relation is reversed
     {'exact_10': False, 'stated_10': False, 'stated_2x': False}),
])
def test_score_qa(meta, expected):
    assert quality.score_qa(meta) == expected


def test_score_qa_unknown_without_truth():
    assert quality.score_qa({'kind': 'predicate', 'ambiguous': False, 'truth': True}) is None


def test_config_validation():
    with pytest.raises(ValueError, match='presets'):
        quality.QualityConfig(conditions=('none', 'blurry'))
    with pytest.raises(ValueError, match='num_scenes'):
        quality.QualityConfig(num_scenes=0)


@pytest.fixture(scope='module')
def report():
    """Measure 12 small scenes (seed 5, not the held-out 1000) with perfect and harsh inputs."""
    pytest.importorskip('pybullet')
    config = quality.QualityConfig(num_scenes=12, seed=5, conditions=('none', 'harsh'),
                                   width=160, height=120, qa_per_image=40)
    return quality.measure(config)


def test_perfect_inputs_agree(report):
    # measured 0.96-0.99 (qualitative) and 0.89-1.0 (distance) on seeds 5-7
    assert quality.overall(report, 'none', 'qualitative', 'agree') >= 0.9
    distance = report['conditions']['none']['per_type']['distance']
    assert distance['scored'] >= 10 and distance['exact_10'] >= 0.8
    none = report['conditions']['none']
    assert none['canonical_failure_rate'] == 0.0
    assert none['normal_error_deg']['max'] < 0.5


def test_noise_lowers_agreement(report):
    def exact(condition):
        return quality.overall(report, condition, 'quantitative_all', 'exact_10')

    assert exact('harsh') < exact('none') - 0.2  # measured 0.58 -> 0.12 on seed 5
    distance = [report['conditions'][c]['per_type']['distance']['exact_10']
                for c in ('none', 'harsh')]
    assert distance[1] < distance[0]


def test_report_renders(report):
    text = quality.markdown(report)
    assert len(text.splitlines()) > len(QUESTION_TYPES)
    for name in QUESTION_TYPES:
        assert f'| {name} |' in text
    json.dumps(report)  # JSON-ready
