"""Tests of synth.qa, synth.templates and synth.rounding."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from spatialvlm_ros.synth.qa import (
    AXES,
    evaluate,
    generate_qa,
    QAConfig,
    QUESTION_TYPES,
    SceneObject,
)
from spatialvlm_ros.synth.rounding import humanize_distance, RoundingConfig, UNIT_METRES
from spatialvlm_ros.synth.templates import DEFAULT_TEMPLATES, render, TemplateBank, unfilled_slots

STARRED = {'above', 'below', 'tall', 'short', 'big', 'small'}  # the paper's starred relations
CANONICAL_QUANTITIES = {'height', 'elevation', 'vertical_distance', 'horizontal_distance',
                        'above_difference', 'below_difference'}


def _obj(object_id: str, centre_canon, size, caption: str | None = None) -> SceneObject:
    """
    Build an object given in a canonical frame equal to a level camera 1 m above the floor.

    Canonical (x forward, y left, z up) -> camera (x right, y down, z forward).
    """
    c = np.asarray(centre_canon, dtype=np.float64)
    half = np.asarray(size, dtype=np.float64) / 2
    to_cam = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], dtype=np.float64)
    offset = np.array([0.0, 1.0, 0.0])  # camera is 1 m above the floor
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    cam = (c + corners * half) @ to_cam.T + offset
    return SceneObject(object_id, caption or f'the {object_id}', c @ to_cam.T + offset,
                       np.stack([cam.min(0), cam.max(0)]), c, np.stack([c - half, c + half]))


# A: left (y > 0), higher, closer, taller, thinner, smaller than B.
A = _obj('mug', [1.5, 0.6, 0.9], [0.1, 0.1, 0.5])
B = _obj('box', [3.0, -0.8, 0.2], [0.6, 0.8, 0.4])


def test_43_types_with_the_reference_canonical_marks():
    assert len(QUESTION_TYPES) == 43
    kinds = collections.Counter(t.kind for t in QUESTION_TYPES.values())
    assert kinds == {'predicate': 12, 'choice': 12, 'classify': 6, 'quantitative': 13}
    for name, qtype in QUESTION_TYPES.items():
        if qtype.qualitative:
            words = set(name.rsplit('_', 1)[0].split('_'))
            assert qtype.needs_canonical == bool(words & STARRED), name
        else:
            assert qtype.needs_canonical == (name in CANONICAL_QUANTITIES), name
    assert sum(t.needs_canonical for t in QUESTION_TYPES.values()) == 21


def test_templates_cover_every_type_and_render_without_slots():
    bank = TemplateBank.load()
    assert set(bank.types) == set(QUESTION_TYPES)
    for name, qtype in QUESTION_TYPES.items():
        entry = bank.types[name]
        assert len(entry['questions']) >= 20 and len(set(entry['questions'])) == len(
            entry['questions']), name
        answer_keys = {'predicate': ['true', 'false', 'uncertain'],
                       'choice': ['answers', 'uncertain'], 'classify': ['answers', 'uncertain'],
                       'quantitative': ['answers']}[qtype.kind]
        for key in answer_keys:
            assert entry[key], (name, key)
        assert sum(len(entry[k]) for k in answer_keys if k != 'uncertain') >= 10, name
        for key in ['questions'] + answer_keys:
            for template in entry[key]:
                text = render(template, 'the mug', 'the box', '2 meters')
                assert not unfilled_slots(text), (name, template)
                if qtype.unary:
                    assert '[B]' not in template, (name, template)


def test_every_type_generates_a_rendered_qa():
    seen = set()
    for seed in range(60):
        for qa in generate_qa([A, B], True, np.random.default_rng(seed), QAConfig(30)):
            seen.add(qa.qa_type)
            assert not unfilled_slots(qa.question) and not unfilled_slots(qa.answer)
            assert qa.question[0].isupper() and qa.answer
    assert seen == set(QUESTION_TYPES)


@pytest.mark.parametrize('qa_type, truth', [
    ('left_predicate', True), ('right_predicate', False), ('above_predicate', True),
    ('below_predicate', False), ('behind_predicate', False), ('front_predicate', True),
    ('tall_predicate', True), ('short_predicate', False), ('wide_predicate', False),
    ('thin_predicate', True), ('big_predicate', False), ('small_predicate', True),
    ('left_choice', 'mug'), ('right_choice', 'box'), ('above_choice', 'mug'),
    ('behind_choice', 'box'), ('tall_choice', 'mug'), ('wide_choice', 'box'),
    ('small_choice', 'mug'), ('left_right_classify', 'left'), ('above_below_classify', 'above'),
    ('behind_front_classify', 'front'), ('tall_short_classify', 'tall'),
    ('wide_thin_classify', 'thin'), ('big_small_classify', 'small'),
])
def test_qualitative_truth(qa_type, truth):
    result = evaluate(qa_type, A, B)
    assert result.truth == truth and not result.ambiguous


def test_quantitative_truth():
    values = {name: evaluate(name, A, B).value for name, t in QUESTION_TYPES.items()
              if not t.qualitative}
    assert values['distance'] == pytest.approx(np.linalg.norm([1.5, 1.4, 0.7]))
    assert values['height'] == pytest.approx(0.5)
    assert values['width'] == pytest.approx(0.1)  # camera x extent = canonical y extent
    assert values['elevation'] == pytest.approx(0.65)
    assert values['vertical_distance'] == pytest.approx(0.7)
    assert values['horizontal_distance'] == pytest.approx(np.hypot(1.5, 1.4))
    assert values['above_difference'] == pytest.approx(0.65)
    assert values['below_difference'] == pytest.approx(-0.65)
    assert values['left_difference'] == pytest.approx(1.4)
    assert values['right_difference'] == pytest.approx(-1.4)
    ranges = [np.linalg.norm(o.centroid_cam) for o in (A, B)]
    assert values['front_difference'] == pytest.approx(ranges[1] - ranges[0])
    assert values['gap'] == pytest.approx(np.linalg.norm([2.7 - 1.55, 0.55 - -0.4, 0.65 - 0.4]))


def test_tiny_differences_are_ambiguous_and_answered_with_uncertainty():
    a = _obj('cup', [2.0, 0.51, 0.5], [0.2, 0.2, 0.2])
    b = _obj('can', [2.0, 0.50, 0.5], [0.2, 0.2, 0.21])
    assert evaluate('left_predicate', a, b).ambiguous
    assert evaluate('tall_short_classify', a, b).ambiguous
    qas = [qa for seed in range(20)
           for qa in generate_qa([a, b], True, np.random.default_rng(seed), QAConfig(20))
           if qa.qa_type in ('left_predicate', 'tall_choice')]
    uncertain = set(TemplateBank.load().get('left_predicate', 'uncertain'))
    assert qas and all(qa.ambiguous for qa in qas)
    assert any(qa.answer in {render(t, a.caption, b.caption) for t in uncertain} for qa in qas)


def test_directed_differences_ask_about_the_true_relation():
    for seed in range(30):
        for qa in generate_qa([A, B], True, np.random.default_rng(seed), QAConfig(20)):
            if qa.kind == 'quantitative':
                assert qa.value_m > 0 and qa.stated_value_m > 0
                assert 0.6 < qa.stated_value_m / qa.value_m < 1.6
            if qa.qa_type == 'right_difference':
                assert qa.object_ids == ('box', 'mug')  # the box is right of the mug


def test_canonical_failure_skips_starred_types():
    a = SceneObject('mug', 'the mug', A.centroid_cam, A.aabb_cam)
    b = SceneObject('box', 'the box', B.centroid_cam, B.aabb_cam)
    qas = generate_qa([a, b], False, np.random.default_rng(0), QAConfig(200))
    assert qas and not any(qa.needs_canonical for qa in qas)
    with pytest.raises(ValueError, match='canonical'):
        generate_qa([a, b], True, np.random.default_rng(0))
    with pytest.raises(ValueError, match='canonical'):
        evaluate('height', a)


def test_sampling_is_balanced_concise_and_deterministic():
    cfg = QAConfig(2000)
    qas = generate_qa([A, B], True, np.random.default_rng(7), cfg)
    share = np.mean([qa.kind != 'quantitative' for qa in qas])
    assert share == pytest.approx(0.5, abs=0.04)
    again = generate_qa([A, B], True, np.random.default_rng(7), cfg)
    assert [q.to_dict() for q in qas[:50]] == [q.to_dict() for q in again[:50]]
    json.dumps([q.to_dict() for q in qas[:50]])  # metadata is JSON-ready
    answers = TemplateBank.load().get('distance', 'answers')
    counts = collections.Counter(qa.answer.split()[-1] != 'apart.' for qa in qas
                                 if qa.qa_type == 'distance')
    assert counts  # distance questions were asked
    short = np.mean([len(qa.answer.split()) for qa in qas if qa.qa_type == 'distance'])
    assert short < np.mean([len(t.split()) for t in answers]) + 1  # biased toward short answers


def test_single_object_gets_unary_questions_only():
    qas = generate_qa([A], True, np.random.default_rng(0), QAConfig(20))
    assert len(qas) == 20 and {qa.qa_type for qa in qas} <= {'height', 'width', 'elevation'}
    assert generate_qa([], True, np.random.default_rng(0)) == []


def test_rounding_frequencies():
    rng = np.random.default_rng(0)
    n = 4000
    draws = [humanize_distance(0.86, rng) for _ in range(n)]
    one_metre = np.mean([unit == 'm' and value == 1.0 for _, value, unit in draws])
    imperial = np.mean([unit in ('in', 'ft', 'yd') for _, _, unit in draws])
    assert one_metre == pytest.approx(0.75, abs=0.03)
    assert imperial == pytest.approx(0.2, abs=0.03)
    texts = {text for text, _, _ in draws}
    assert {'1 m', '1 meter', '90 cm', '3 feet'} <= texts
    twenty = np.mean([humanize_distance(23.0, rng)[1] == 20.0 for _ in range(n)])
    assert 0.6 < twenty < 0.76


def test_rounding_error_is_bounded():
    rng = np.random.default_rng(1)
    for metres in np.geomspace(0.02, 2000.0, 400):
        for _ in range(10):
            text, stated, unit = humanize_distance(float(metres), rng)
            assert abs(stated - metres) / metres <= 0.35, (metres, text)
            number = float(text.split()[0])
            assert stated == pytest.approx(number * UNIT_METRES[unit])


def test_rounding_validation():
    with pytest.raises(ValueError, match='metres'):
        humanize_distance(0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match='imperial_prob'):
        RoundingConfig(imperial_prob=1.5)
    metric = RoundingConfig(imperial_prob=0.0)
    assert all(humanize_distance(3.0, np.random.default_rng(s), metric)[2] == 'm'
               for s in range(50))


def test_template_file_is_valid_json_with_all_axes():
    data = json.loads(DEFAULT_TEMPLATES.read_text(encoding='utf-8'))
    for axis in AXES:
        values = data['types'][f'{axis}_classify']['x_values']
        assert set(values) == {'positive', 'negative'}
