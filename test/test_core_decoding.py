"""Median decoding of numbers (spatialvlm_ros.core.decoding): quantiles read off a digit tree."""

import itertools

import numpy as np
import pytest

from spatialvlm_ros.core.decoding import DigitQuantile, quantile_index

DIGITS = tuple(range(100, 110))  # token ids of '0' .. '9' in a fake vocabulary
POINT, SPACE, UNIT, VOCAB = 5, 6, 7, 120


@pytest.mark.parametrize('probs, q, index, within', [
    ([0.25, 0.25, 0.5], 0.5, 1, 1.0),          # the cumulative share reaches 0.5 at index 1
    ([0.25, 0.25, 0.5], 0.6, 2, 0.2),          # (0.6 - 0.5) / 0.5
    ([0.1, 0.0, 0.9], 0.1, 0, 1.0),
    ([0.0, 0.0, 1.0], 0.0, 2, 0.0),            # q = 0: the first outcome with weight
    ([1.0, 0.0, 0.0], 1.0, 0, 1.0),            # q = 1: never an empty outcome
    ([2.0, 6.0], 0.5, 1, 1 / 3),               # weights are normalised
])
def test_quantile_index_table(probs, q, index, within):
    got_index, got_within = quantile_index(probs, q)
    assert got_index == index
    assert got_within == pytest.approx(within)


@pytest.mark.parametrize('probs, q, match', [
    ([], 0.5, 'probs'), ([0.0, 0.0], 0.5, 'probs'), ([0.5, np.nan], 0.5, 'probs'),
    ([-0.1, 1.0], 0.5, 'probs'), ([0.5, 0.5], 1.5, 'q must be'), ([0.5, 0.5], -0.1, 'q must be'),
])
def test_quantile_index_rejects_bad_input(probs, q, match):
    with pytest.raises(ValueError, match=match):
        quantile_index(probs, q)


def _tree_model(weights: dict[str, float]):
    """Return next-token logits of a fake model whose answers are the keys of ``weights``."""
    total = sum(weights.values())

    def logits(prefix: str) -> np.ndarray:
        out = np.full(VOCAB, -np.inf)
        following: dict[str, float] = {}
        for text, weight in weights.items():
            if text.startswith(prefix) and len(text) > len(prefix):
                char = text[len(prefix)]
                following[char] = following.get(char, 0.0) + weight / total
        for char, mass in following.items():
            token = DIGITS[int(char)] if char.isdigit() else {'.': POINT, ' ': SPACE}[char]
            out[token] = np.log(mass)
        if not following:
            out[UNIT] = 0.0
        return out

    return logits


def _decode(logits, chooser: DigitQuantile | None) -> str:
    text = ''
    for _ in range(8):
        scores = logits(text)
        forced = chooser.choose(0, scores) if chooser is not None else None
        token = int(np.argmax(scores)) if forced is None else forced
        if token == UNIT:
            return text
        text += str(DIGITS.index(token)) if token in DIGITS else {POINT: '.', SPACE: ' '}[token]
    raise AssertionError('no end')


def test_median_decoding_reads_the_median_of_fixed_width_numbers():
    # answers '0.XY' with a skewed distribution: greedy takes the likeliest digits one by one
    rng = np.random.default_rng(0)
    values = [f'0.{a}{b}' for a, b in itertools.product(range(1, 6), range(10))]
    weights = dict(zip(values, rng.random(len(values)) ** 3, strict=True))
    weights['0.20'] = 3.0  # a sharp mode low in the range; most of the mass lies above it
    logits = _tree_model(weights)
    total = sum(weights.values())
    cumulative = np.cumsum([weights[v] / total for v in values])
    median = values[int(np.searchsorted(cumulative, 0.5))]
    assert _decode(logits, DigitQuantile(DIGITS, (POINT,))) == median
    greedy = _decode(logits, None)
    assert greedy == '0.20' != median
    # other quantiles too
    for q in (0.1, 0.9):
        expected = values[int(np.searchsorted(cumulative, q))]
        assert _decode(logits, DigitQuantile(DIGITS, (POINT,), quantile=q)) == expected


def test_each_number_and_row_starts_again_at_the_quantile():
    chooser = DigitQuantile(DIGITS, (POINT,))
    digit_logits = np.full(VOCAB, -np.inf)
    digit_logits[[DIGITS[1], DIGITS[2]]] = np.log([0.3, 0.7])
    assert chooser.choose(0, digit_logits) == DIGITS[2]   # the median digit; q within is 2/7

    def zero_or_nine(p_zero):
        scores = np.full(VOCAB, -np.inf)
        scores[[DIGITS[0], DIGITS[9]]] = np.log([p_zero, 1 - p_zero])
        return scores

    assert chooser.choose(1, zero_or_nine(0.4)) == DIGITS[9]  # row 1 starts at 0.5, not 2/7
    assert chooser.choose(0, zero_or_nine(0.4)) == DIGITS[0]  # row 0 goes on at 2/7 < 0.4
    point = np.full(VOCAB, -np.inf)
    point[POINT] = 0.0
    assert chooser.choose(0, point) is None  # the decimal point carries q (now 5/7) on
    assert chooser.choose(0, zero_or_nine(0.7)) == DIGITS[9]  # 5/7 > 0.7; q 1/21 within
    space = np.full(VOCAB, -np.inf)
    space[SPACE] = 0.0
    assert chooser.choose(0, space) is None  # the number ended
    assert chooser.choose(0, zero_or_nine(0.3)) == DIGITS[9]  # a new number: 0.5, not 1/21
    chooser.reset()
    assert chooser.choose(0, digit_logits) == DIGITS[2]


def test_greedy_steps_are_left_alone_and_bad_input_is_refused():
    chooser = DigitQuantile(DIGITS)
    word = np.zeros(VOCAB)
    word[3] = 5.0  # a word is the likeliest token, even though digits have mass
    assert chooser.choose(0, word) is None
    with pytest.raises(ValueError, match='NaN'):
        chooser.choose(0, np.full(VOCAB, np.nan))
    with pytest.raises(ValueError, match='10 distinct'):
        DigitQuantile(DIGITS[:9])
    with pytest.raises(ValueError, match='10 distinct'):
        DigitQuantile(DIGITS[:9] + DIGITS[:1])
    with pytest.raises(ValueError, match='carry_ids'):
        DigitQuantile(DIGITS, (DIGITS[0],))
    for q in (0.0, 1.0, float('nan')):
        with pytest.raises(ValueError, match='quantile'):
            DigitQuantile(DIGITS, quantile=q)
