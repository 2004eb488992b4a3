"""
Numbers decoded at a quantile of the model's answer distribution ('median decoding').

Greedy decoding takes the likeliest token at each step. For a number spelled digit by digit
that is the likeliest first digit, then the likeliest second digit given the first: the
distribution's mode along one path, not its middle. A model unsure between 0.2 m and 0.5 m
says '0.2' whenever '2' is the single likeliest tens digit, even when most of the mass lies
above it, and its answer then stays put while the truth moves. Averaging sampled answers (the
paper's multi-sample averaging) estimates the middle at k times the cost.

:class:`DigitQuantile` reads it off the distribution directly. Where the likeliest next token is
a digit, it takes the digit at which the cumulative probability over '0' .. '9' reaches ``q``
(starting at the configured quantile, 0.5 for the median), and carries on with ``q`` rescaled
to within that digit: ``q' = (q - P(digits below)) / P(digit)``. Carried through every digit and
decimal point of one number, this descends the tree of digit strings to the string at the
``q``-quantile of the model's distribution over them. That string is the quantile of the
numbers themselves when the numbers are written at a fixed width ('0.46 m', '1.20 m'), where
the order of the strings is the order of the values; the shipped default's gripper answers
are ('The distance is 0.46 m.'). With variable-width numbers ('8 cm' against '12 cm') it is
still a number the model finds likely, but not a quantile. Steps whose likeliest token is not a
digit stay greedy, and one greedy pass costs the same as greedy decoding.

Pure Python + numpy (no torch): ``model.inference`` applies it to logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from typing import Sequence

import numpy as np

NUMBER_DECODINGS = ('median', 'greedy')
"""
How one answer is decoded: ``'median'`` (greedy, with each number's digits read by
:class:`DigitQuantile` at the median) or ``'greedy'`` (the likeliest token throughout). Both cost
one greedy pass.
"""


def check_number_decoding(value: str, name: str = 'number_decoding') -> None:
    """Raise a clear ValueError naming ``name`` unless ``value`` is in :data:`NUMBER_DECODINGS`."""
    if value not in NUMBER_DECODINGS:
        raise ValueError(f'{name} must be one of {NUMBER_DECODINGS}, got {value!r}')


def quantile_index(probs: Sequence[float] | np.ndarray, q: float) -> tuple[int, float]:
    """
    Return where the cumulative distribution of ``probs`` reaches ``q``, and ``q`` within it.

    :param probs: non-negative weights of the ordered outcomes (normalised here); at least one
        must be positive and all finite.
    :param q: quantile in [0, 1].
    :return: ``(index, q_within)``: the first index whose cumulative share is >= ``q`` (the
        first with positive weight when ``q`` is 0), and ``(q - share below) / share of the
        index`` clipped to [0, 1].
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.size == 0 or not np.all(np.isfinite(p)) or np.any(p < 0) or not p.sum() > 0:
        raise ValueError(f'probs must be finite, non-negative and not all zero, got {p}')
    if not (0.0 <= q <= 1.0):
        raise ValueError(f'q must be in [0, 1], got {q}')
    p = p / p.sum()
    cdf = np.cumsum(p)
    positive = np.flatnonzero(p > 0)
    index = int(np.searchsorted(cdf, q, side='left'))
    index = min(max(index, int(positive[0])), int(positive[-1]))  # never an empty outcome
    below = float(cdf[index] - p[index])
    within = (q - below) / float(p[index])
    return index, min(max(within, 0.0), 1.0)


@dataclass
class DigitQuantile:
    """
    Choose digit tokens at a running quantile, per row of a batch (see the module docstring).

    :ivar digit_ids: the token ids of '0' .. '9', in that order.
    :ivar carry_ids: tokens that continue a number without ending it (the decimal point).
    :ivar quantile: where each number starts (0.5: the median).
    """

    digit_ids: tuple[int, ...]
    carry_ids: tuple[int, ...] = ()
    quantile: float = 0.5
    _q: dict[int, float | None] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.digit_ids = tuple(int(i) for i in self.digit_ids)
        self.carry_ids = tuple(int(i) for i in self.carry_ids)
        if len(self.digit_ids) != 10 or len(set(self.digit_ids)) != 10:
            raise ValueError(f'digit_ids must be 10 distinct ids (0 .. 9), got {self.digit_ids}')
        if set(self.carry_ids) & set(self.digit_ids):
            raise ValueError('carry_ids must not contain digit ids')
        if not (0.0 < self.quantile < 1.0) or not math.isfinite(self.quantile):
            raise ValueError(f'quantile must be in (0, 1), got {self.quantile}')

    def reset(self) -> None:
        """Forget every row's number (call before a new batch)."""
        self._q.clear()

    def choose(self, row: int, logits: np.ndarray) -> int | None:
        """
        Return the token row ``row`` must take at this step, or None to leave it greedy.

        :param row: the row of the batch (each row keeps its own number).
        :param logits: the row's next-token logits ``(vocab,)`` (after any masking; ``-inf``
            allowed, NaN not).
        """
        scores = np.asarray(logits, dtype=np.float64).reshape(-1)
        if np.isnan(scores).any():
            raise ValueError('logits hold NaN')
        top = int(np.argmax(scores))
        if top not in self.digit_ids:
            if top not in self.carry_ids:
                self._q[row] = None  # the number (if any) has ended
            return None
        digits = scores[list(self.digit_ids)]
        probs = np.exp(digits - np.max(digits))  # softmax over the ten digits only
        q = self._q.get(row)
        index, within = quantile_index(probs, self.quantile if q is None else q)
        self._q[row] = within
        return self.digit_ids[index]
