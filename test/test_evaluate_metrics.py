"""Tests of evaluate.metrics on hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spatialvlm_ros.core.answers import ParseConfig
from spatialvlm_ros.evaluate.metrics import (
    aggregate,
    BANDS,
    EvalItem,
    evaluate_items,
    mean_of_samples,
    MetricsConfig,
    quantitative_metrics,
    score_item,
)


def _q(answers, truth, qa_type='distance'):
    return EvalItem(qa_type, 'quantitative', answers, truth)


@pytest.mark.parametrize(('pred', 'truth', 'inside'), [
    (0.5, 1.0, (True, False, False)),
    (2.0, 1.0, (True, False, False)),
    (0.499, 1.0, (False, False, False)),
    (2.001, 1.0, (False, False, False)),
    (2.0, 3.0, (True, True, False)),  # ratio exactly 2/3: inside [66.7%, 150%]
    (0.667, 1.0, (True, True, False)),
    (0.666, 1.0, (True, False, False)),
    (1.5, 1.0, (True, True, False)),
    (1.501, 1.0, (True, False, False)),
    (0.9, 1.0, (True, True, True)),
    (1.1, 1.0, (True, True, True)),
    (0.99, 1.1, (True, True, True)),  # 0.9000000000000001 in floats
    (1.21, 1.1, (True, True, True)),
    (1.0, 1.0, (True, True, True)),
])
def test_band_edges_are_closed(pred, truth, inside):
    out = quantitative_metrics([pred], [truth])
    assert tuple(out[name] == 1.0 for name in BANDS) == inside


def test_quantitative_hand_case():
    # truths 1, 2, 4, 0.5 m; predictions 1.5, none, 4.2, 0.2
    out = quantitative_metrics([1.5, None, 4.2, 0.2], [1.0, 2.0, 4.0, 0.5])
    assert out['n'] == 4 and out['n_numeric'] == 3 and out['n_zero_truth'] == 0
    assert out['numeric_share'] == 0.75
    assert out['within_50_200'] == 0.5  # 1.5 and 1.05; the missing answer counts as a miss
    assert out['within_66_150'] == 0.5
    assert out['within_90_110'] == 0.25
    errors = np.array([0.5, 0.2, -0.3])
    assert out['mse_m2'] == pytest.approx(np.mean(errors ** 2))
    assert out['rmse_m'] == pytest.approx(math.sqrt(np.mean(errors ** 2)))
    assert out['mae_m'] == pytest.approx(np.mean(np.abs(errors)))
    assert out['median_relative_error'] == pytest.approx(0.5)  # of 0.5, 0.05, 0.6


def test_zero_truth_is_left_out_of_ratios_but_kept_in_errors():
    out = quantitative_metrics([0.0, 0.1, 1.0], [0.0, 0.0, 1.0])
    assert out['n_zero_truth'] == 2
    assert out['within_50_200'] == 1.0  # only the positive-truth item is rated
    assert out['mse_m2'] == pytest.approx(0.01 / 3)
    assert out['median_relative_error'] == 0.0
    only_zero = quantitative_metrics([0.1], [0.0])
    assert only_zero['within_50_200'] is None and only_zero['median_relative_error'] is None


def test_float_residue_truths_count_as_zero():
    # 6e-17 m: the height difference of two objects on one table after the canonical transform
    out = quantitative_metrics([0.02, 0.3], [5.551115123125783e-17, 0.3])
    assert out['n_zero_truth'] == 1
    assert out['median_relative_error'] == 0.0 and out['within_90_110'] == 1.0
    strict = quantitative_metrics([0.02, 0.3], [5.551115123125783e-17, 0.3], zero_truth_m=0.0)
    assert strict['n_zero_truth'] == 0 and strict['median_relative_error'] > 1e14
    assert quantitative_metrics([0.02], [2e-6])['n_zero_truth'] == 0  # 2 micrometres is a truth
    item = EvalItem('above_difference', 'quantitative', ['0.02 m'], 6e-17)
    assert score_item(item).ratio is None
    with pytest.raises(ValueError, match='zero_truth_m'):
        MetricsConfig(zero_truth_m=0.01)


def test_empty_and_invalid_inputs():
    out = quantitative_metrics([], [])
    assert out['numeric_share'] is None and out['mse_m2'] is None
    with pytest.raises(ValueError, match='length'):
        quantitative_metrics([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match='truths'):
        quantitative_metrics([1.0], [-1.0])
    with pytest.raises(ValueError, match='quantitative truth'):
        _q('1 m', None)
    with pytest.raises(ValueError, match='kind'):
        EvalItem('x', 'essay', ['a'], True)
    with pytest.raises(ValueError, match='predicate truth'):
        EvalItem('left_predicate', 'predicate', ['yes'], 1)
    with pytest.raises(ValueError, match='index'):
        EvalItem('left_choice', 'choice', ['mug'], 2, ('mug', 'box'))
    with pytest.raises(ValueError, match='ratio_tolerance'):
        MetricsConfig(ratio_tolerance=-1.0)


def test_multi_sample_averaging_ignores_unparseable_samples():
    mean, n = mean_of_samples(['1 m', 'I cannot tell', '50 cm', 'about 150 centimeters'])
    assert n == 3 and mean == pytest.approx(1.0)
    assert mean_of_samples(['far', 'close']) == (None, 0)
    score = score_item(_q(['2 m', 'no idea', '3 m'], 2.0))
    assert score.prediction == pytest.approx(2.5) and score.ratio == pytest.approx(1.25)
    assert score.n_samples == 3 and score.n_parsed == 2 and score.numeric
    none = score_item(_q(['far', 'hmm'], 2.0))
    assert none.prediction is None and not none.numeric and none.ratio is None


def test_bare_numbers_follow_the_parse_config():
    item = _q(['2.5'], 2.0)
    assert score_item(item).prediction is None
    config = MetricsConfig(parse=ParseConfig(default_unit='m'))
    assert score_item(item, config).prediction == 2.5


def test_qualitative_grading_and_majority_vote():
    yes = EvalItem('left_predicate', 'predicate', ['Yes.', 'No.', 'Yes, it is.'], True)
    assert score_item(yes).correct is True
    tie = EvalItem('left_predicate', 'predicate', ['Yes.', 'No.', 'Hard to say.'], True)
    assert score_item(tie).correct is False and score_item(tie).prediction is None
    unread = EvalItem('left_predicate', 'predicate', 'Hard to say.', False)
    assert score_item(unread).correct is False and score_item(unread).n_parsed == 0
    ambiguous = EvalItem('left_predicate', 'predicate', 'Yes.', None)
    assert score_item(ambiguous).correct is None
    choice = EvalItem('left_choice', 'choice', 'The red mug.', 1, ('mug', 'red mug'))
    assert score_item(choice).correct is True and score_item(choice).prediction == 1
    classify = EvalItem('left_right_classify', 'classify', 'It is to the right of the box.', 0,
                        ('to the left of', 'to the right of'))
    assert score_item(classify).correct is False


def test_report_overall_by_kind_and_by_type_is_json():
    items = [
        EvalItem('left_predicate', 'predicate', 'Yes.', True),
        EvalItem('left_predicate', 'predicate', 'No.', True),
        EvalItem('left_choice', 'choice', 'The box.', 1, ('mug', 'box')),
        EvalItem('left_predicate', 'predicate', 'Yes.', None),
        _q('About 1 meter.', 1.0),
        _q('I cannot tell.', 2.0),
        _q('3 feet', 0.5, 'height'),
        _q(['20 cm', '40 cm'], 0.0, 'gap'),
    ]
    report = evaluate_items(items)
    overall = report.overall
    assert overall['n'] == 8 and overall['n_qualitative'] == 4 and overall['n_graded'] == 3
    assert overall['qualitative_accuracy'] == pytest.approx(2 / 3)
    assert overall['qualitative_answered_share'] == 1.0
    assert overall['n_quantitative'] == 4 and overall['numeric_share'] == 0.75
    assert overall['n_zero_truth'] == 1
    assert overall['within_50_200'] == pytest.approx(2 / 3)  # 1.0 and 0.9144/0.5 = 1.83
    assert overall['within_66_150'] == pytest.approx(1 / 3)
    assert overall['mse_m2'] == pytest.approx((0.0 + (0.9144 - 0.5) ** 2 + 0.3 ** 2) / 3)
    assert set(report.by_kind) == {'predicate', 'choice', 'quantitative'}
    assert report.by_kind['predicate']['qualitative_accuracy'] == 0.5
    assert report.by_type['height']['within_50_200'] == 1.0
    assert report.by_type['gap']['within_50_200'] is None
    assert report.by_type['distance']['numeric_share'] == 0.5
    text = json.dumps(report.to_dict(include_items=True), allow_nan=False)
    assert json.loads(text)['overall']['n'] == 8


def test_aggregate_of_nothing_has_every_key():
    out = aggregate([])
    assert out['n'] == 0 and out['qualitative_accuracy'] is None
    assert all(out[name] is None for name in BANDS)
    json.dumps(out, allow_nan=False)


def test_paper_scale_random_case_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.1, 10.0, 500)
    pred = truth * np.exp(rng.normal(0.0, 0.6, 500))
    pred[rng.random(500) < 0.1] = np.nan
    out = quantitative_metrics(pred, truth)
    ratio = pred / truth
    for name, (low, high) in BANDS.items():
        assert out[name] == pytest.approx(np.mean((ratio >= low) & (ratio <= high)))
    finite = np.isfinite(pred)
    assert out['mse_m2'] == pytest.approx(np.mean((pred[finite] - truth[finite]) ** 2))


def _series(predictions, truths, key):
    return [EvalItem('gripper_distance', 'quantitative', [f'{p} m'] if p is not None else ['?'],
                     t, series=key) for p, t in zip(predictions, truths, strict=True)]


def test_tracking_follows_the_truth_within_each_series():
    truths = [0.5, 0.4, 0.3, 0.2]
    items = (_series([0.6, 0.5, 0.35, 0.3], truths, 'ep0: gripper / mug')  # same order: 1
             + _series([0.2, 0.3, 0.4, 0.5], truths, 'ep1: gripper / mug')  # reversed: -1
             + _series([0.4, 0.4, 0.4, 0.4], truths, 'ep2: gripper / box')  # constant
             + _series([0.5, 0.1], truths[:2], 'ep3: gripper / box')  # too short: left out
             + [_q('1 m', 1.0)])  # in no series
    tracking = evaluate_items(items).tracking
    assert tracking['n_series'] == 3
    assert tracking['n_defined'] == 2
    assert tracking['spearman_defined'] == pytest.approx(0.0)
    assert tracking['spearman_all'] == pytest.approx(0.0)
    assert tracking['median_distinct'] == 4
    only_good = evaluate_items(items[:4] + items[8:12]).tracking
    assert only_good['spearman_defined'] == pytest.approx(1.0)
    assert only_good['spearman_all'] == pytest.approx(0.5)  # the constant series counts as 0
    assert only_good['median_distinct'] == 2.5
    assert json.loads(json.dumps(evaluate_items(items).to_dict()))['tracking'] == tracking


def test_tracking_skips_unreadable_answers_and_is_none_without_series():
    truths = [0.5, 0.4, 0.3, 0.2, 0.1]
    items = _series([0.5, None, 0.3, 0.25, 0.2], truths, 'ep0: gripper / mug')
    tracking = evaluate_items(items).tracking
    assert tracking['n_defined'] == 1 and tracking['spearman_defined'] == pytest.approx(1.0)
    assert evaluate_items([_q('1 m', 1.0), _q('2 m', 1.0), _q('3 m', 1.0)]).tracking is None
    assert evaluate_items([_q('1 m', 1.0)]).to_dict()['tracking'] is None


def test_only_quantitative_items_join_a_series():
    with pytest.raises(ValueError, match='series'):
        EvalItem('left_predicate', 'predicate', ['Yes.'], True, series='ep0: a / b')
    with pytest.raises(ValueError, match='series'):
        EvalItem('distance', 'quantitative', ['1 m'], 1.0, series=3)
