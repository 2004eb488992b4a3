"""Tests of core.answers: distances, yes/no and choices, against real template phrasings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spatialvlm_ros.core.answers import (
    is_uncertain,
    parse_choice,
    parse_distance,
    parse_number_text,
    parse_yes_no,
    ParseConfig,
    UNIT_METRES,
)
from spatialvlm_ros.synth.qa import QUESTION_TYPES
from spatialvlm_ros.synth.rounding import humanize_distance, RoundingConfig
from spatialvlm_ros.synth.rounding import UNIT_METRES as SYNTH_UNIT_METRES
from spatialvlm_ros.synth.templates import render, TemplateBank

IN, FT, YD = 0.0254, 0.3048, 0.9144
CAPTION_PAIRS = [('the mug', 'the red mug'), ('red ceramic mug', 'mug'),
                 ('small blue plastic cube', 'the yellow rubber duck'),
                 ('the large green wooden jenga tower block', 'ring')]

# (answer, metres, unit); the value must be recovered within 1e-9 relative
DISTANCES = [
    ('About 86 centimeters apart.', 0.86, 'cm'),
    ('The distance is roughly 0.4m.', 0.4, 'm'),
    ('It is 3 ft away', 3 * FT, 'ft'),
    ('1 meter.', 1.0, 'm'),
    ('2.5 m', 2.5, 'm'),
    ('They are 30 cm apart.', 0.3, 'cm'),
    ('The mug is 12 mm thick', 0.012, 'mm'),
    ('3 km', 3000.0, 'km'),
    ('3 kilometres', 3000.0, 'km'),
    ('20 yards', 20 * YD, 'yd'),
    ('2 yd.', 2 * YD, 'yd'),
    ('34 inches.', 34 * IN, 'in'),
    ('1 inch', IN, 'in'),
    ('It is 3 in away from the box.', 3 * IN, 'in'),
    ('6" wide', 6 * IN, 'in'),
    ("4' tall", 4 * FT, 'ft'),
    ('5 feet 3 inches', 5 * FT + 3 * IN, 'ft'),
    ('5 ft, 3 in.', 5 * FT + 3 * IN, 'ft'),
    ('5\'3"', 5 * FT + 3 * IN, 'ft'),
    ("5'3", 5 * FT + 3 * IN, 'ft'),
    ('5\u20323\u2033', 5 * FT + 3 * IN, 'ft'),
    ('1 m 20 cm', 1.2, 'm'),
    ('1 yard and 2 feet', YD + 2 * FT, 'yd'),
    ('1,5 m', 1.5, 'm'),
    ('0,75 m', 0.75, 'm'),
    ('1,500 mm', 1.5, 'mm'),
    ('1,000 feet', 1000 * FT, 'ft'),
    ('1.234,5 mm', 1.2345, 'mm'),
    ('1.500 m', 1.5, 'm'),
    ('The distance is 2.5e-1 m', 0.25, 'm'),
    ('3e2 cm', 3.0, 'cm'),
    ('2E-1m', 0.2, 'm'),
    ('It is 5 x 10^-2 m away', 0.05, 'm'),
    ('5\u00d710^2 mm', 0.5, 'mm'),
    ('5*10**-1 m', 0.5, 'm'),
    ('a 3 x 102 cm board', 1.02, 'cm'),
    ('two and a half feet', 2.5 * FT, 'ft'),
    ('one hundred and twenty centimeters', 1.2, 'cm'),
    ('a hundred meters', 100.0, 'm'),
    ('twenty-five centimetres', 0.25, 'cm'),
    ('thirty five cm', 0.35, 'cm'),
    ('one point five meters', 1.5, 'm'),
    ('a foot', FT, 'ft'),
    ('About a meter apart.', 1.0, 'm'),
    ('half a meter', 0.5, 'm'),
    ('half a metre', 0.5, 'm'),
    ('a half meter', 0.5, 'm'),
    ('a quarter of a meter', 0.25, 'm'),
    ('three quarters of a meter', 0.75, 'm'),
    ('a foot and a half', 1.5 * FT, 'ft'),
    ('one and a half meters', 1.5, 'm'),
    ('2 and a half metres', 2.5, 'm'),
    ('a couple of inches', 2 * IN, 'in'),
    ('a few feet', 3 * FT, 'ft'),
    ('1/2 m', 0.5, 'm'),
    ('3 1/2 feet', 3.5 * FT, 'ft'),
    ('1\u00bd ft', 1.5 * FT, 'ft'),
    ('between 2 and 3 feet', 2.5 * FT, 'ft'),
    ('2-3 m', 2.5, 'm'),
    ('2\u20133 m', 2.5, 'm'),
    ('from 2 to 3 meters', 2.5, 'm'),
    ('2 or 3 feet', 2.5 * FT, 'ft'),
    ('It is between 50 cm and 1 m.', 0.75, 'm'),
    ('less than a meter', 1.0, 'm'),
    ('at least 2 m', 2.0, 'm'),
    ('a 3-foot gap', 3 * FT, 'ft'),
    ('~40cm', 0.4, 'cm'),
    ('The red mug is 1.5 m to the left of the box.', 1.5, 'm'),
    ('Object 2 is 3 m away from object 1.', 3.0, 'm'),
    ('I estimate 0.3 meters between the mug and the box.', 0.3, 'm'),
    ('5 feet (1.5 m)', 5 * FT, 'ft'),
    ('They are zero meters apart.', 0.0, 'm'),
    ('Roughly 2 inches up.', 2 * IN, 'in'),
    ('\u2248 70 cm', 0.7, 'cm'),
    ('It is .5 m away.', 0.5, 'm'),
    ('point five meters', 0.5, 'm'),
    ('He is six foot two tall.', 74 * IN, 'ft'),
    ('about a dozen inches', 12 * IN, 'in'),
    ('Approx. 2m', 2.0, 'm'),
    ('1 to 1.5 m', 1.25, 'm'),
]

UNPARSEABLE = [
    'I cannot tell.', 'close', 'far away', 'object 2 is left', 'It is on the left.', '', '   ',
    'The mug is closer.', 'There are 2 in the box.', '2.5', 'About 3.', 'Object 2.',
    'The answer is "3".', '50% of the way', 'It is in the box.', 'A gap.', 'Maybe a few.',
    'It is one of the two.', 'The distance is unknown.', 'several meters',
]


@pytest.mark.parametrize(('text', 'metres', 'unit'), DISTANCES)
def test_parse_distance_table(text, metres, unit):
    parsed = parse_distance(text)
    assert parsed.ok, (text, parsed)
    assert parsed.value_m == pytest.approx(metres, rel=1e-9, abs=1e-12)
    assert parsed.unit == unit
    assert parsed.span is not None and text[parsed.span[0]:parsed.span[1]] == parsed.text


@pytest.mark.parametrize('text', UNPARSEABLE)
def test_unparseable_answers_are_none_never_a_number(text):
    parsed = parse_distance(text)
    assert parsed.value_m is None and not parsed.ok
    assert parsed.reason
    assert parsed.span is None


def test_flags_for_ranges_bounds_hedges_and_vague_numbers():
    ranged = parse_distance('between 2 and 3 feet')
    assert ranged.range_m == pytest.approx((2 * FT, 3 * FT))
    assert parse_distance('less than a meter').bound == 'upper'
    assert parse_distance('more than 2 m').bound == 'lower'
    assert parse_distance('about 2 m').approximate
    assert not parse_distance('2 m').approximate and parse_distance('2 m').bound is None
    assert parse_distance('a couple of inches').vague
    strict = ParseConfig(allow_vague=False, allow_bounds=False)
    assert parse_distance('a couple of inches', strict).value_m is None
    assert parse_distance('less than a meter', strict).value_m is None
    assert parse_distance('about 2 m', strict).value_m == 2.0
    assert parse_distance('5 feet (1.5 m)').candidates == 2


def test_random_text_without_numbers_never_parses_and_nothing_raises():
    rng = np.random.default_rng(7)
    vocabulary = ('the mug is left of box close far away about roughly meters feet inch in m '
                  'cm between and to or less than a an half of it is hard to tell yes no '
                  '. , - \' " / %').split() + ["'", '"']
    for _ in range(2000):
        words = rng.choice(vocabulary, size=int(rng.integers(1, 12)))
        text = ' '.join(words)
        parsed = parse_distance(text)
        if parsed.ok:  # only 'a'/'an'/'half' + a spelled unit can state a length here
            assert parsed.text.split()[0].lower() in ('a', 'an', 'half'), text
    alphabet = list('0123456789.,/-\'" abcmftinyd%\u00bd')
    for _ in range(2000):
        text = ''.join(rng.choice(alphabet, size=int(rng.integers(0, 16))))
        parsed = parse_distance(text)
        assert parsed.value_m is None or (math.isfinite(parsed.value_m) and parsed.value_m >= 0)


def test_bare_numbers_need_a_default_unit_and_must_end_the_answer():
    metres = ParseConfig(default_unit='m')
    assert parse_distance('2.5', metres).value_m == 2.5
    assert parse_distance('The distance is 3.', metres).value_m == 3.0
    assert parse_distance('About 40.', ParseConfig(default_unit='cm')).value_m == pytest.approx(
        0.4)
    for text in ('object 2 is left', 'Object 2.', 'Between 2 and 3.', '50%', 'It is 2 or 3.'):
        assert parse_distance(text, metres).value_m is None, text
    with pytest.raises(ValueError, match='default_unit'):
        ParseConfig(default_unit='furlong')


@pytest.mark.parametrize(('text', 'value'), [
    ('1,500', 1500.0), ('1,5', 1.5), ('0,500', 0.5), ('12,25', 12.25), ('1.5', 1.5),
    ('1,234.5', 1234.5), ('1.234,5', 1234.5), ('1.234.567', 1234567.0), ('1,2,3', None),
    ('1.2.3', None), ('abc', None),
])
def test_number_separators(text, value):
    assert parse_number_text(text) == value


def test_unit_table_matches_the_rounding_module():
    assert UNIT_METRES == SYNTH_UNIT_METRES


def _rendered_quantitative_answers(seed: int = 0):
    """Yield (answer, stated metres, stated text) for every quantitative answer template."""
    bank = TemplateBank.load()
    rng = np.random.default_rng(seed)
    configs = [RoundingConfig(), RoundingConfig(imperial_prob=1.0),
               RoundingConfig(spelled_prob=0.0), RoundingConfig(spelled_prob=1.0, yard_prob=1.0),
               RoundingConfig(metre_prob=0.0, coarse_prob=0.0)]
    for name, qtype in QUESTION_TYPES.items():
        if qtype.kind != 'quantitative':
            continue
        for template in bank.get(name, 'answers'):
            for a, b in CAPTION_PAIRS:
                for config in configs:
                    metres = float(np.exp(rng.uniform(np.log(0.003), np.log(3000.0))))
                    text, stated, _ = humanize_distance(metres, rng, config)
                    yield render(template, a, b, text), stated, text


def test_every_quantitative_template_round_trips_through_the_parser():
    """The trainer's contract: parse_distance recovers the stated value of every answer."""
    count = 0
    for answer, stated, text in _rendered_quantitative_answers():
        parsed = parse_distance(answer)
        assert parsed.ok, (answer, parsed.reason)
        assert math.isclose(parsed.value_m, stated, rel_tol=1e-6), (answer, parsed)
        assert parsed.text.lower() == text.lower(), (answer, parsed.text)
        assert parsed.candidates == 1, answer
        count += 1
    assert count >= 13 * 10 * len(CAPTION_PAIRS) * 5


def test_every_distance_the_rounding_tree_can_state_parses_exactly():
    rng = np.random.default_rng(1)
    for metres in np.exp(np.linspace(np.log(0.001), np.log(5000.0), 400)):
        for config in (RoundingConfig(imperial_prob=0.0), RoundingConfig(imperial_prob=1.0)):
            text, stated, unit = humanize_distance(float(metres), rng, config)
            parsed = parse_distance(text)
            assert parsed.unit == unit and math.isclose(parsed.value_m, stated, rel_tol=1e-9)


def _rendered(key_kinds, seed=0):
    bank = TemplateBank.load()
    for name, qtype in QUESTION_TYPES.items():
        if qtype.kind not in key_kinds:
            continue
        for key in key_kinds[qtype.kind]:
            for template in bank.get(name, key):
                for a, b in CAPTION_PAIRS:
                    yield name, key, template, a, b


def test_yes_no_on_every_predicate_template():
    expected = {'true': True, 'false': False, 'uncertain': None}
    n = 0
    for _, key, template, a, b in _rendered({'predicate': ['true', 'false', 'uncertain']}):
        answer = render(template, a, b)
        assert parse_yes_no(answer) is expected[key], (key, answer)
        n += 1
    assert n >= 12 * 28 * len(CAPTION_PAIRS)


@pytest.mark.parametrize(('text', 'expected'), [
    ('Yes', True), ('yes.', True), ('Yeah, it is.', True), ('Correct.', True), ('True', True),
    ("That's right.", True), ('It is.', True), ('Indeed it is.', True), ('Of course.', True),
    ('No', False), ('nope', False), ('False.', False), ('Incorrect.', False),
    ("It isn't.", False), ('It is not.', False), ("That's wrong.", False),
    ('The mug is not to the left of the box.', False), ('Not really.', False),
    ('I am not sure.', None), ("I can't tell.", None), ('Maybe.', None), ('', None),
    ('The mug is to the left of the box.', None), ('Hard to say.', None), ('Unclear', None),
])
def test_yes_no_phrasings(text, expected):
    assert parse_yes_no(text) is expected


def test_choice_on_every_choice_and_classify_template():
    bank = TemplateBank.load()
    n = 0
    for name, key, template, a, b in _rendered({'choice': ['answers', 'uncertain'],
                                                'classify': ['answers', 'uncertain']}):
        qtype = QUESTION_TYPES[name]
        if qtype.kind == 'choice':
            options = [a, b]
            cases = [(a, 0), (b, 1)]
        else:
            x_values = bank.types[name]['x_values']
            options = [x_values['positive'], x_values['negative']]
            cases = [(options[0], 0), (options[1], 1)]
        for x, index in cases:
            answer = render(template, a, b, x)
            expected = None if key == 'uncertain' else index
            assert parse_choice(answer, options) == expected, (name, answer, options)
            n += 1
    assert n > 500


@pytest.mark.parametrize(('text', 'options', 'expected'), [
    ('The red mug.', ['mug', 'red mug'], 1),
    ('The mug.', ['mug', 'red mug'], 0),
    ('Mug is further left.', ['red mug', 'mug'], 1),
    ('The red mug is further left than the mug.', ['mug', 'red mug'], 1),
    ('The mug is further left than the red mug.', ['mug', 'red mug'], 0),
    ('The red one.', ['red mug', 'blue mug'], 0),
    ('The cup.', ['red mug', 'blue cup'], 1),
    ('B', ['mug', 'box'], 1),
    ('(a)', ['mug', 'box'], 0),
    ('The second one.', ['mug', 'box'], 1),
    ('The former.', ['mug', 'box'], 0),
    ('Neither.', ['mug', 'box'], None),
    ('Hard to tell.', ['mug', 'box'], None),
    ('The lamp.', ['mug', 'box'], None),
    ('', ['mug', 'box'], None),
    ('the mug', [], None),
])
def test_choice_phrasings(text, options, expected):
    assert parse_choice(text, options) == expected


def test_uncertainty_detector():
    assert is_uncertain("It's hard to tell.")
    assert is_uncertain('Barely, if at all; they are about the same size.')
    assert not is_uncertain('Yes, the mug is left of the box.')
    assert not is_uncertain(None)
