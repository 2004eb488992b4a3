"""The chain-of-thought coordinator: comparisons answered from simpler queries."""

import math

import numpy as np
import pytest

from spatialvlm_ros.core.answers import parse_distance
from spatialvlm_ros.evaluate.metrics import EvalItem, score_item
from spatialvlm_ros.evaluate.reasoning import (
    Comparison,
    ComparisonQuestions,
    DecomposingAnswerer,
    image_size,
)
from spatialvlm_ros.evaluate.runner import _axis_words, EvalConfig
from spatialvlm_ros.synth.templates import TemplateBank

BANK = TemplateBank.load()
SIZE_TYPES = sorted(t for t in BANK.types if t.rsplit('_', 1)[0] in (
    'tall', 'short', 'wide', 'thin', 'big', 'small', 'tall_short', 'wide_thin', 'big_small')
    and t.rsplit('_', 1)[1] in ('predicate', 'choice', 'classify'))
# object phrase -> (height, width) in metres, as the fake VLM states them
SIZES = {'the red mug': (0.12, 0.08), 'large rubber duck': (0.09, 0.15),
         'green domino': (0.05, 0.02), 'the same box': (0.10, 0.10),
         'a cube': (0.10, 0.10)}
# object phrase -> height of its bottom above the floor (m)
ELEVATIONS = {'the red mug': 0.0, 'green domino': 0.1, 'the same box': 0.0, 'a cube': 0.0}


@pytest.fixture(scope='module')
def finder():
    return ComparisonQuestions(BANK)


def _every_template(finder, qa_types):
    """Yield the comparison found in each template of ``qa_types``, checked for its objects."""
    for qa_type in qa_types:
        for template in BANK.get(qa_type, 'questions'):
            question = template.replace('[A]', 'green domino').replace('[B]', 'a cube')
            found = finder.parse(question)
            assert found is not None and found.qa_type == qa_type, question
            assert (found.first, found.second) == ('green domino', 'a cube'), question
            yield found


def test_every_size_template_is_found_with_its_objects(finder):
    assert len(SIZE_TYPES) == 15  # 6 predicates, 6 choices, 3 classifications
    for qa_type in SIZE_TYPES:
        for template in BANK.get(qa_type, 'questions'):
            question = template.replace('[A]', 'large rubber duck').replace('[B]', 'the red mug')
            found = finder.parse(question)
            assert found == Comparison(qa_type, qa_type.rsplit('_', 1)[1],
                                       'large rubber duck', 'the red mug'), question
    positions = sorted(t for t in BANK.types if t.rsplit('_', 1)[0] in (
        'left', 'right', 'front', 'behind', 'left_right', 'behind_front')
        and t.rsplit('_', 1)[1] in ('predicate', 'choice', 'classify'))
    assert len(positions) == 10
    for found in _every_template(finder, positions):
        assert found.position and not found.metric
    offsets = sorted(t for t in BANK.types if t.endswith('_difference')
                     and t.split('_')[0] in ('left', 'right', 'front', 'behind'))
    assert len(offsets) == 4
    for found in _every_template(finder, offsets):
        assert found.metric and found.position and found.kind == 'difference'
    heights = sorted(t for t in BANK.types if t.rsplit('_', 1)[0] in (
        'above', 'below', 'above_below') and t.rsplit('_', 1)[1] in (
        'predicate', 'choice', 'classify')) + ['vertical_distance']
    assert len(heights) == 6
    for found in _every_template(finder, heights):
        assert found.measures == ('elevation', 'height') and not found.position
        assert found.metric == (found.qa_type == 'vertical_distance')
    # other metric questions and free text are not comparisons it decomposes
    for other in ('height', 'distance', 'horizontal_distance', 'gap', 'above_difference',
                  'below_difference', 'elevation', 'width'):
        question = BANK.get(other, 'questions')[0].replace('[A]', 'a').replace('[B]', 'b')
        assert finder.parse(question) is None
    assert finder.parse('Describe the objects in this image.') is None


def test_the_answer_follows_the_sizes_and_grades_as_the_truth(finder):
    taller = finder.parse('Is the red mug taller than green domino?')
    assert taller.measures == ('height',) and taller.sign == 1
    assert finder.answer(taller, 0.12, 0.05) == BANK.get('tall_predicate', 'true')[0]
    assert finder.answer(taller, 0.05, 0.12) == BANK.get('tall_predicate', 'false')[0]
    assert finder.answer(taller, 0.1, 0.1) is None  # equal: no side
    assert finder.answer(taller, float('nan'), 0.1) is None
    thinner = finder.parse('Which is narrower, large rubber duck or green domino?')
    assert thinner.sign == -1 and thinner.measures == ('width',)
    text = finder.answer(thinner, 0.15, 0.02)
    assert 'green domino' in text.lower() and 'large rubber duck' not in text.lower()
    graded = score_item(EvalItem('thin_choice', 'choice', [text], 1,
                                 ('large rubber duck', 'green domino')))
    assert graded.correct is True
    bigger = finder.parse(BANK.get('big_small_classify', 'questions')[0].replace(
        '[A]', 'the red mug').replace('[B]', 'a cube'))
    assert bigger.measures == ('height', 'width')
    for first, second, word in ((2.0, 1.0, 'big'), (1.0, 2.0, 'small')):
        text = finder.answer(bigger, first, second)
        truth = _axis_words('big_small_classify').index(word)
        options = (BANK.x_value('big_small_classify', True),
                   BANK.x_value('big_small_classify', False))
        assert score_item(EvalItem('big_small_classify', 'classify', [text], truth,
                                   options)).correct is True


class FakeVLM:
    """Answers the measures from SIZES / ELEVATIONS, DIRECT's questions, others 'direct: <q>'."""

    DIRECT = {'How far apart are a cube and the red mug vertically?': '0.1 m.'}

    def __init__(self):
        self.calls = []

    def answer_batch(self, images, questions, num_samples, temperature, seed):
        self.calls.append(list(questions))
        out = []
        for image, question in zip(images, questions, strict=True):
            assert image == 'img'
            for prefix, index in (('How tall is ', 0), ('How wide is ', 1),
                                  ('How high above the floor is ', 2)):
                if question.startswith(prefix):
                    name = question[len(prefix):-1]
                    value = (SIZES.get(name, (None, None)) + (ELEVATIONS.get(name),))[index]
                    text = 'I cannot tell.' if value is None else f'{name} is {value} m.'
                    break
            else:
                text = self.DIRECT.get(question, f'direct: {question}')
            out.append([text] * max(1, num_samples))
        return out


def test_the_answerer_decomposes_size_comparisons_only():
    inner = FakeVLM()
    answerer = DecomposingAnswerer(inner, ComparisonQuestions(BANK))
    questions = ['Is the red mug taller than green domino?',  # 0.12 > 0.05: yes
                 'Which is wider, the red mug or large rubber duck?',  # the duck
                 'Is the red mug bigger than large rubber duck?',  # 0.0096 < 0.0135: no
                 'Is the same box taller than a cube?',  # equal heights: asked directly
                 'Is the red mug taller than an unknown thing?',  # unparsed: asked directly
                 'Is the red mug to the left of green domino?']  # position: asked directly
    answers = answerer.answer_batch(['img'] * len(questions), questions, 0, 0.7, 0)
    assert answers[0] == [BANK.get('tall_predicate', 'true')[0]]
    assert 'large rubber duck' in answers[1][0].lower()
    assert answers[2] == [BANK.get('big_predicate', 'false')[0]]
    assert answers[3:] == [[f'direct: {q}'] for q in questions[3:]]
    assert (answerer.decomposed, answerer.fallbacks) == (3, 2)
    # one batch of metric queries (each object and measure once per image), then one direct
    assert len(inner.calls) == 2 and inner.calls[1] == questions[3:]
    assert len(inner.calls[0]) == len(set(inner.calls[0]))
    assert 'How tall is the red mug?' in inner.calls[0]
    # sampled passes keep the sample count
    sampled = answerer.answer_batch(['img'] * 2, questions[:1] + questions[-1:], 3, 0.7, 0)
    assert [len(a) for a in sampled] == [3, 3]


def test_heights_compare_the_centres_and_give_the_vertical_distance():
    inner = FakeVLM()
    answerer = DecomposingAnswerer(inner, ComparisonQuestions(BANK))
    # centres: mug 0 + 0.12 / 2 = 0.06, domino 0.1 + 0.025 = 0.125, cube and box 0.05
    questions = ['Is the red mug above green domino?',  # no: it is taller but lower
                 'Which is lower down, green domino or a cube?',  # the cube
                 'What is the vertical distance between the red mug and green domino?',
                 'How far apart are a cube and the red mug vertically?',
                 'How far apart are a cube and the same box vertically?',  # equal: direct
                 'Is large rubber duck below a cube?']  # no elevation: asked directly
    answers = answerer.answer_batch(['img'] * len(questions), questions, 0, 0.7, 0)
    assert answers[0] == [BANK.get('above_predicate', 'false')[0]]
    assert 'a cube' in answers[1][0].lower() and 'domino' not in answers[1][0].lower()
    # no number in the direct answer: the difference of the centres alone
    assert parse_distance(answers[2][0]).value_m == pytest.approx(0.065)
    # with one: their geometric mean
    assert parse_distance(answers[3][0]).value_m == pytest.approx(math.sqrt(0.1 * 0.01),
                                                                  rel=1e-2)
    assert answers[4:] == [[f'direct: {q}'] for q in questions[4:]]
    assert (answerer.decomposed, answerer.fallbacks) == (4, 2)
    # the equal pair kept the direct answer of the first batch; only the duck was asked again
    assert len(inner.calls) == 2 and inner.calls[1] == questions[5:]


class FakeLocator:
    """Places objects from a table of (column, row); counts its calls."""

    PLACES = {'the red mug': (0.2, 0.7), 'green domino': (0.8, 0.3), 'a cube': (0.8, 0.7)}

    def __init__(self):
        self.calls = 0

    def locate(self, image, question, phrases):
        self.calls += 1
        assert isinstance(image, np.ndarray) or image == 'img'
        assert all(p in question for p in phrases)
        return [self.PLACES.get(p) for p in phrases]


def test_position_comparisons_need_a_locator():
    questions = ['Is the red mug to the left of green domino?',  # columns 0.2 < 0.8: yes
                 'Which is closer to the camera, the red mug or green domino?',  # rows
                 'Is green domino to the left of a cube?',  # the same column: asked directly
                 'Is the red mug in front of an unknown thing?']  # not located: directly
    inner = FakeVLM()
    plain = DecomposingAnswerer(inner, ComparisonQuestions(BANK))
    assert plain.answer_batch(['img'] * 4, questions, 0, 0.7, 0) == \
        [[f'direct: {q}'] for q in questions]  # without a locator positions are asked
    locator = FakeLocator()
    answerer = DecomposingAnswerer(FakeVLM(), ComparisonQuestions(BANK), locator=locator)
    answers = answerer.answer_batch(['img'] * 4, questions, 0, 0.7, 0)
    found = ComparisonQuestions(BANK).parse(questions[1])
    assert found is not None and found.measures == ('y',)
    assert answers[0] == [BANK.get('left_predicate', 'true')[0]]
    # the mug is lower in the image (row 0.7 > 0.3): in front, i.e. closer to the camera
    assert 'the red mug' in answers[1][0].lower() and 'domino' not in answers[1][0].lower()
    assert answers[2:] == [[f'direct: {q}'] for q in questions[2:]]
    assert (answerer.decomposed, answerer.fallbacks, locator.calls) == (2, 2, 4)


class OffsetVLM:
    """Answers the horizontal distance and the offsets from tables; records every query."""

    SPANS = {('the red mug', 'green domino'): '0.5 m', ('green domino', 'a cube'): '30 cm',
             ('the red mug', 'a cube'): 'no idea'}
    DIRECT = {'How far to the left of green domino is the red mug?': 'About 0.32 m.',
              'How much closer to the camera is the red mug than green domino?': 'Far.',
              'By how much is green domino left of a cube?': '0.2 m.',
              'How far to the left of a cube is the red mug?': '0.1 m.'}

    def __init__(self):
        self.calls = []

    def answer_batch(self, images, questions, num_samples, temperature, seed):
        self.calls.append(list(questions))
        out = []
        for question in questions:
            text = self.DIRECT.get(question)
            if question.startswith('What is the horizontal distance between '):
                a, b = question[len('What is the horizontal distance between '):-1].split(' and ')
                text = self.SPANS[(a, b)]
            out.append([text or f'direct: {question}'] * max(1, num_samples))
        return out


def test_directed_offsets_split_the_horizontal_distance_along_the_located_places():
    image = np.zeros((240, 320, 3), np.uint8)  # 320 x 240: a column is 320 px, a row 240
    assert image_size(image) == (320, 240)
    questions = ['How far to the left of green domino is the red mug?',
                 'How much closer to the camera is the red mug than green domino?',
                 'By how much is green domino left of a cube?',  # one column: no split
                 'How far to the left of a cube is the red mug?']  # no distance: direct
    locator = FakeLocator()
    inner = OffsetVLM()
    answerer = DecomposingAnswerer(inner, ComparisonQuestions(BANK), locator=locator)
    answers = answerer.answer_batch([image] * 4, questions, 0, 0.7, 0)
    # mug (0.2, 0.7), domino (0.8, 0.3): 192 px across, 96 px up; the distance is 0.5 m
    du, dv = 0.6 * 320, 0.4 * 240
    across = 0.5 * du / math.hypot(du, dv)
    assert parse_distance(answers[0][0]).value_m == pytest.approx(math.sqrt(0.32 * across),
                                                                  rel=1e-2)
    # no number in the direct answer: the split alone
    assert parse_distance(answers[1][0]).value_m == pytest.approx(
        0.5 * dv / math.hypot(du, dv), rel=1e-2)
    # undecided offsets keep their direct answers, which were asked once, in the first batch
    assert answers[2:] == [['0.2 m.'], ['0.1 m.']]
    assert (answerer.decomposed, answerer.fallbacks) == (2, 2)
    assert len(inner.calls) == 1 and set(questions) <= set(inner.calls[0])
    graded = score_item(EvalItem('left_difference', 'quantitative', answers[0], across))
    assert graded.ratio == pytest.approx(math.sqrt(0.32 / across), rel=1e-2)
    # without a locator every offset is asked directly; a bad image is refused clearly
    plain = DecomposingAnswerer(OffsetVLM(), ComparisonQuestions(BANK))
    assert plain.answer_batch([image] * 2, questions[:2], 0, 0.7, 0) == [
        ['About 0.32 m.'], ['Far.']]
    with pytest.raises(TypeError, match='pixel size'):
        DecomposingAnswerer(OffsetVLM(), ComparisonQuestions(BANK),
                            locator=FakeLocator()).answer_batch(
            ['img'], questions[:1], 0, 0.7, 0)


def test_a_metric_answer_is_a_positive_number_in_metres(finder):
    offset = finder.parse('How far in front of a cube is green domino?')
    text = finder.answer_metres(offset, 0.1234)
    assert parse_distance(text).value_m == pytest.approx(0.123)
    assert finder.answer_metres(offset, 0.0) is None
    assert finder.answer_metres(offset, float('nan')) is None
    with pytest.raises(ValueError, match='answer_metres'):
        finder.answer(offset, 0.1, 0.2)
    with pytest.raises(ValueError, match='metres'):
        finder.answer_metres(finder.parse('Is a cube taller than green domino?'), 0.1)


def test_eval_config_names_the_reasoning():
    assert EvalConfig().reasoning == 'direct'
    assert EvalConfig(reasoning='decompose').reasoning == 'decompose'
    assert EvalConfig(reasoning='decompose_grounded').reasoning == 'decompose_grounded'
    with pytest.raises(ValueError, match='reasoning'):
        EvalConfig(reasoning='llm')
