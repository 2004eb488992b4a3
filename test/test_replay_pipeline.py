"""The shared reward step, the estimators, the replay of one bag and its metrics."""

import math

import numpy as np
import pytest

from spatialvlm_ros.model.estimator import DistanceEstimate
from spatialvlm_ros.replay import metrics as replay_metrics
from spatialvlm_ros.replay.estimators import (
    build_estimator,
    needs_image,
    NoisyOracleConfig,
    NoisyOracleDistanceEstimator,
    TruthProbe,
)
from spatialvlm_ros.replay.pipeline import FrameRecord, RewardPipeline, smoother_config
from spatialvlm_ros.replay.topics import record_values, RESULT_KEYS

IMAGE = np.zeros((4, 4, 3), dtype=np.uint8)


class ScriptedEstimator:
    """Answer from a list of values (None: an unreadable answer)."""

    def __init__(self, values):
        self.values = list(values)
        self.closed = False

    def estimate(self, image, subject, target):
        value = self.values.pop(0)
        if value is None:
            return DistanceEstimate(None, 'I cannot tell.', reason='no number')
        return DistanceEstimate(value, f'{value} m')

    def close(self):
        self.closed = True


@pytest.fixture(scope='module')
def approach_bag(tmp_path_factory):
    from spatialvlm_ros.bags.writer import write_episode
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    episode = generate_episode(EpisodeConfig(seed=1, scenario='approach', num_frames=24,
                                             width=64, height=48))
    return write_episode(episode, tmp_path_factory.mktemp('bags') / 'approach')


def _run(values, smoother='none'):
    pipe = RewardPipeline(ScriptedEstimator(values), 'the gripper', 'the mug',
                          smoother_config(smoother))
    return [pipe.step(0.1 * i, IMAGE) for i in range(len(values))]


def test_invalid_answers_never_become_numbers_and_hold_the_reward():
    records = _run([0.5, None, 0.4, None, None, 0.3])
    assert [r.valid for r in records] == [True, False, True, False, False, True]
    assert [r.reward_fresh for r in records] == [True, False, True, False, False, True]
    for before, rec in zip(records[:-1], records[1:], strict=True):
        if not rec.valid:
            assert rec.distance_raw_m is None
            assert rec.reward == before.reward
    assert [r.reward for r in records] == pytest.approx([-0.5, -0.5, -0.4, -0.4, -0.4, -0.3])


def test_reward_is_nan_before_the_first_valid_answer():
    records = _run([None, None, 0.2])
    assert math.isnan(records[0].reward) and not records[0].reward_fresh
    assert records[2].reward == pytest.approx(-0.2)


def test_outlier_rejected_by_the_smoother_holds_the_reward():
    records = _run([0.5, 0.5, 0.5, 0.5, 3.0, 0.5], smoother='median_ema')
    assert records[4].valid and records[4].rejected and not records[4].reward_fresh
    assert records[4].reward == records[3].reward


def test_the_plot_tells_rejected_outliers_from_answers_without_a_number():
    pytest.importorskip('matplotlib')
    from spatialvlm_ros.replay.outputs import plot_figure

    records = _run([0.5, 0.5, 0.5, 0.5, 3.0, None, 0.5], smoother='median_ema')
    stamps = [int(1e8 * i) for i in range(len(records))]
    truth = [0.5] * len(records)
    figure = plot_figure('t', stamps, records, truth, truth)
    top = figure.axes[0]
    marks = {line.get_label(): line for line in top.get_lines()}
    rejected, missing = marks['answer rejected as an outlier'], marks['no number in answer']
    # the outlier is drawn where it was answered, the answer without a number on the axis
    assert list(rejected.get_xdata()) == pytest.approx([0.4])
    assert list(rejected.get_ydata()) == pytest.approx([3.0])
    assert list(missing.get_xdata()) == pytest.approx([0.5])
    assert list(missing.get_ydata()) == [0.0]
    clean = plot_figure('t', stamps[:3], records[:3], truth[:3], truth[:3])
    labels = {line.get_label() for line in clean.axes[0].get_lines()}
    assert not labels & {'answer rejected as an outlier', 'no number in answer'}


def test_reset_forgets_and_time_must_not_go_backwards():
    pipe = RewardPipeline(ScriptedEstimator([0.5, 0.4, 0.3]), 'a', 'b',
                          smoother_config('kalman'))
    pipe.step(1.0, IMAGE)
    with pytest.raises(ValueError, match='backwards'):
        pipe.step(0.5, IMAGE)
    pipe.reset()
    assert pipe.step(0.0, IMAGE).distance_m == pytest.approx(0.3)


@pytest.mark.parametrize('kind', ['median_ema', 'kalman', 'none'])
def test_smoother_kinds(kind):
    assert (smoother_config(kind) is None) == (kind == 'none')


def test_unknown_smoother_and_estimator_are_clear_errors():
    with pytest.raises(ValueError, match='unknown smoother'):
        smoother_config('lowpass')
    with pytest.raises(ValueError, match='unknown estimator'):
        build_estimator('magic')
    with pytest.raises(ValueError, match='truth lookup'):
        build_estimator('noisy_oracle')


def test_noisy_oracle_is_seeded_and_parses_its_answers():
    probe = TruthProbe()
    probe.set_value(0.5)
    cfg = NoisyOracleConfig(relative_std=0.1, invalid_prob=0.2, outlier_prob=0.0)
    runs = []
    for _ in range(2):
        est = NoisyOracleDistanceEstimator(probe, cfg, seed=7)
        runs.append([est.estimate(IMAGE, 'a', 'b') for _ in range(300)])
    assert [e.text for e in runs[0]] == [e.text for e in runs[1]]
    values = np.array([e.value_m for e in runs[0] if e.valid])
    invalid = [e for e in runs[0] if not e.valid]
    assert 0.1 < len(invalid) / 300 < 0.3
    assert all(e.value_m is None and e.reason for e in invalid)
    assert np.all(np.abs(np.log(values / 0.5)) < 0.5)  # 5 sigma, plus rounding
    for unit in (' cm', ' feet', ' meters'):
        assert any(unit in e.text for e in runs[0] if e.valid)
    assert not needs_image(NoisyOracleDistanceEstimator(probe))


def test_oracle_without_truth_gives_no_number():
    est = build_estimator('oracle', lookup=TruthProbe())
    answer = est.estimate(IMAGE, 'a', 'b')
    assert not answer.valid and answer.value_m is None


def test_record_values_follow_the_node_result_keys():
    rec = FrameRecord(1.0, 'x', None, False, 0.4, True, False, False, -0.4, False, True,
                      0.002, 'no number')
    values = record_values(rec, 10**9, 'cam', 'the gripper', 'the mug')
    assert tuple(values) == RESULT_KEYS
    assert math.isnan(values['distance_raw']) and values['distance'] == 0.4
    assert values['valid'] is False and values['success'] is True
    assert values['latency_ms'] == pytest.approx(2.0)


def test_rank_correlations_and_detection():
    truth = np.linspace(1.0, 0.1, 10)
    rho, tau = replay_metrics.rank_correlations(-truth, truth)
    assert rho == pytest.approx(1.0) and tau == pytest.approx(1.0)
    assert replay_metrics.rank_correlations(np.ones(10), truth) == (None, None)
    det = replay_metrics.detection([True, True, False, False], [True, False, True, False])
    assert (det['tp'], det['fp'], det['fn']) == (1, 1, 1)
    assert det['success_precision'] == 0.5 and det['success_recall'] == 0.5
    # never flagged although there was a success: F1 0, not undefined
    never = replay_metrics.detection([False, False], [True, False])
    assert never['success_precision'] is None and never['success_f1'] == 0.0
    assert replay_metrics.detection([False], [False])['success_f1'] is None


def test_a_perfect_estimator_scores_perfect_metrics_in_every_reward_mode():
    from spatialvlm_ros.core.reward import RewardConfig
    from spatialvlm_ros.replay.pipeline import RewardPipeline

    centre = np.linspace(0.6, 0.02, 40)  # a steady approach, ending 2 cm from the centre
    surface = np.maximum(centre - 0.08, 0.0)  # a tall object: touched while 8 cm from it
    for mode in ('negative_distance', 'progress', 'exp'):
        pipeline = RewardPipeline(ScriptedEstimator(list(centre)), 'the gripper', 'the mug',
                                  None, RewardConfig(mode=mode))
        records = [pipeline.step(0.1 * i, IMAGE) for i in range(len(centre))]
        m = replay_metrics.episode_metrics(records, list(centre), list(surface), 'centre',
                                           0.05, mode)
        assert m['spearman'] == pytest.approx(1.0), mode
        assert m['success_recall'] == 1.0 and m['success_precision'] == 1.0, mode


def test_oracle_replay_of_an_approach_is_exact(approach_bag):
    from spatialvlm_ros.replay.runner import replay_source, ReplayConfig
    from spatialvlm_ros.replay.source import open_source

    source = open_source(approach_bag)
    config = ReplayConfig(estimator='oracle', smoother='none')
    result = replay_source(source, config)
    m = result.metrics
    assert m['frames'] == 24 and m['numeric_share'] == 1.0
    assert m['mae_m'] == pytest.approx(0.0, abs=1e-12)
    assert m['median_rel_error'] == pytest.approx(0.0, abs=1e-12)
    assert m['smoothed_mae_m'] == pytest.approx(0.0, abs=1e-12)
    assert m['spearman'] > 0.99 and m['kendall_tau'] > 0.95
    assert result.target == source.metadata['extra']['target_caption']
    # the same with the node's default smoother: ordering survives the lag
    smoothed = replay_source(source, ReplayConfig(estimator='oracle'))
    assert smoothed.metrics['spearman'] > 0.9


def test_noisy_oracle_replay_has_bounded_errors_and_is_deterministic(approach_bag):
    from spatialvlm_ros.replay.runner import replay_source, ReplayConfig
    from spatialvlm_ros.replay.source import open_source

    source = open_source(approach_bag)
    config = ReplayConfig(estimator='noisy_oracle',
                          noise=NoisyOracleConfig(invalid_prob=0.25, outlier_prob=0.05))
    first = replay_source(source, config)
    again = replay_source(source, config)
    assert [r.text for r in first.records] == [r.text for r in again.records]
    m = first.metrics
    assert m['numeric_share'] < 1.0
    assert m['median_rel_error'] < 0.3 and m['mae_m'] < 0.15
    assert m['spearman'] > 0.5
    previous = None
    for rec in first.records:
        if not rec.valid:
            assert rec.distance_raw_m is None and not rec.reward_fresh
            if previous is not None:
                assert rec.reward == previous.reward or (math.isnan(rec.reward)
                                                         and math.isnan(previous.reward))
        previous = rec
