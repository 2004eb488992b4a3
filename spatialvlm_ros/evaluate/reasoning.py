"""
Chain-of-thought answers to size comparisons: a rule-based coordinator (paper section 3.3).

SpatialVLM answers complex questions by having an LLM coordinator split them into simple spatial
queries to the VLM and combine the answers. The compact model answers metric questions about
one object far better than it compares two objects (session 22 in ``benchmarks/RESULTS.md``:
on the held-out scenes it says how tall a named object is within [50%, 200%] 91% of the time,
while it answers "Is A taller than B?" about as well as a coin). ``DecomposingAnswerer`` does
the coordinator's job for the 18 size comparisons of the template bank, by rule instead of an
LLM:

- the question is matched against the bank's question templates of the ``tall`` / ``short`` /
  ``wide`` / ``thin`` / ``big`` / ``small`` predicates and choices and the ``tall_short`` /
  ``wide_thin`` / ``big_small`` classifications, which gives the type and the two object
  phrases ``[A]`` and ``[B]``;
- the VLM is asked "How tall is [A]?" and "How tall is [B]?" (``height``), "How wide is ...?"
  (``width``), or both for ``big`` / ``small``, whose size is height times width (the engine
  compares volumes; depth is not asked: the image shows it worst);
- the two values are compared and the answer is written with the bank's first answer template
  of that outcome ('Yes.', '[X] is taller.', '[A] is [X] [B].').

Any other question, and a comparison whose values do not both parse or are equal, is asked
directly. Position comparisons (left, right, front, behind, above, below) are always asked
directly: the metric questions about them ("How far to the left of B is A?") were only ever
trained where the relation holds, so their values do not tell the side.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import re
from typing import Any, Sequence

# family -> (measures compared, +1: the larger value satisfies it, -1: the smaller)
_FAMILIES: dict[str, tuple[tuple[str, ...], int]] = {
    'tall': (('height',), 1), 'short': (('height',), -1),
    'wide': (('width',), 1), 'thin': (('width',), -1),
    'big': (('height', 'width'), 1), 'small': (('height', 'width'), -1),
    'tall_short': (('height',), 1), 'wide_thin': (('width',), 1),
    'big_small': (('height', 'width'), 1),
}
MEASURE_QUESTIONS = {'height': 'How tall is [A]?', 'width': 'How wide is [A]?'}
"""The simple query asked about one object for each measure."""
REASONINGS = ('direct', 'decompose')
"""How ``spatialvlm eval --reasoning`` answers: every question directly, or size comparisons
through :class:`DecomposingAnswerer`."""


@dataclass(frozen=True)
class Comparison:
    """
    A size comparison found in a question.

    :ivar qa_type: the template bank's type (``'tall_predicate'``, ``'big_small_classify'``...).
    :ivar kind: ``'predicate'``, ``'choice'`` or ``'classify'``.
    :ivar first: the ``[A]`` phrase as the question writes it.
    :ivar second: the ``[B]`` phrase.
    """

    qa_type: str
    kind: str
    first: str
    second: str

    @property
    def measures(self) -> tuple[str, ...]:
        """Return the measures asked about each object."""
        return _FAMILIES[_family(self.qa_type)][0]

    @property
    def sign(self) -> int:
        """Return +1 when the larger measure satisfies the relation, -1 for the smaller."""
        return _FAMILIES[_family(self.qa_type)][1]


def _family(qa_type: str) -> str:
    return qa_type.rsplit('_', 1)[0]


def _kind(qa_type: str) -> str:
    return qa_type.rsplit('_', 1)[1]


class SizeQuestions:
    """
    Find size comparisons in question texts with the template bank's own templates.

    :param bank: a ``synth.templates.TemplateBank`` (the package's when None).
    """

    def __init__(self, bank: Any = None) -> None:
        if bank is None:
            from spatialvlm_ros.synth.templates import TemplateBank

            bank = TemplateBank.load()
        self.bank = bank
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        for qa_type in sorted(bank.types):
            if _family(qa_type) not in _FAMILIES or _kind(qa_type) not in (
                    'predicate', 'choice', 'classify'):
                continue
            for template in bank.get(qa_type, 'questions'):
                if '[A]' not in template or '[B]' not in template:
                    continue
                pattern = re.escape(template)
                for slot in ('A', 'B'):  # the first mention captures, later ones repeat it
                    mark = re.escape(f'[{slot}]')
                    pattern = pattern.replace(mark, f'(?P<{slot}>.+?)', 1)
                    pattern = pattern.replace(mark, f'(?P={slot})')
                self._patterns.append((re.compile(pattern, re.IGNORECASE), qa_type))
        # longer templates first, so that a template contained in another does not win
        self._patterns.sort(key=lambda item: -len(item[0].pattern))

    def parse(self, question: str) -> Comparison | None:
        """Return the comparison ``question`` asks, or None when it is not one."""
        text = ' '.join(question.split())
        for pattern, qa_type in self._patterns:
            match = pattern.fullmatch(text)
            if match:
                return Comparison(qa_type, _kind(qa_type), match.group('A').strip(),
                                  match.group('B').strip())
        return None

    def answer(self, comparison: Comparison, first: float, second: float) -> str | None:
        """
        Return the answer text from the two objects' sizes, or None when they are equal.

        :param first: the ``[A]`` object's size (the product of its measures).
        :param second: the ``[B]`` object's size.
        """
        if not (math.isfinite(first) and math.isfinite(second)) or first == second:
            return None  # no side can be told
        holds = (first - second) * comparison.sign > 0  # [A] is the taller / shorter... one
        qa_type, a, b = comparison.qa_type, comparison.first, comparison.second
        if comparison.kind == 'predicate':
            text = self.bank.get(qa_type, 'true' if holds else 'false')[0]
        elif comparison.kind == 'choice':
            text = self.bank.get(qa_type, 'answers')[0].replace('[X]', a if holds else b)
        else:  # classify: the positive phrase ('taller than') when [A] is the larger
            text = self.bank.get(qa_type, 'answers')[0].replace(
                '[X]', self.bank.x_value(qa_type, first > second))
        text = text.replace('[A]', a).replace('[B]', b)
        return text[:1].upper() + text[1:]


class DecomposingAnswerer:
    """
    An evaluation answerer that splits size comparisons into metric queries (see the module).

    :param inner: the answerer asked every query (``answer_batch(images, questions,
        num_samples, temperature, seed)``).
    :param questions: the comparison finder (the package's template bank when None).
    :param parser: answer text -> metres or None; ``core.answers.parse_distance``'s value when
        None.
    """

    def __init__(self, inner: Any, questions: SizeQuestions | None = None,
                 parser: Any = None) -> None:
        self.inner = inner
        self.questions = questions or SizeQuestions()
        if parser is None:
            from spatialvlm_ros.core.answers import parse_distance

            def parser(text: str) -> float | None:
                return parse_distance(text).value_m
        self.parser = parser
        self.decomposed = 0
        """Questions answered from their metric queries so far."""
        self.fallbacks = 0
        """Comparisons asked directly because their values did not decide them."""

    def _value(self, texts: Sequence[str]) -> float | None:
        values = [v for v in (self.parser(t) for t in texts) if v is not None]
        return sum(values) / len(values) if values else None  # samples: their mean

    def answer_batch(self, images: Sequence[Any], questions: Sequence[str], num_samples: int,
                     temperature: float, seed: int) -> list[list[str]]:
        """Return ``max(1, num_samples)`` answers per question, as the inner answerer does."""
        count = max(1, num_samples)
        found = [self.questions.parse(q) for q in questions]
        # the same image object asked about the same object phrase gets one query
        first_of: dict[int, int] = {}
        same = [first_of.setdefault(id(image), i) for i, image in enumerate(images)]
        queries: dict[tuple[int, str], int] = {}  # (image index, query) -> position
        for i, comparison in enumerate(found):
            if comparison is None:
                continue
            for phrase in (comparison.first, comparison.second):
                for measure in comparison.measures:
                    key = (same[i], MEASURE_QUESTIONS[measure].replace('[A]', phrase))
                    queries.setdefault(key, len(queries))
        replies: list[list[str]] = []
        if queries:
            keys = list(queries)
            replies = self.inner.answer_batch([images[i] for i, _ in keys],
                                              [q for _, q in keys], num_samples, temperature,
                                              seed)
        out: list[list[str] | None] = [None] * len(questions)
        for i, comparison in enumerate(found):
            if comparison is None:
                continue
            sizes = []
            for phrase in (comparison.first, comparison.second):
                size: float | None = 1.0
                for measure in comparison.measures:
                    value = self._value(replies[queries[
                        (same[i], MEASURE_QUESTIONS[measure].replace('[A]', phrase))]])
                    size = None if value is None or size is None else size * value
                sizes.append(size)
            text = None if None in sizes else self.questions.answer(
                comparison, float(sizes[0]), float(sizes[1]))  # type: ignore[arg-type]
            if text is None:
                self.fallbacks += 1
            else:
                self.decomposed += 1
                out[i] = [text] * count
        direct = [i for i, answers in enumerate(out) if answers is None]
        if direct:
            answers = self.inner.answer_batch([images[i] for i in direct],
                                              [questions[i] for i in direct], num_samples,
                                              temperature, seed)
            for i, texts in zip(direct, answers, strict=True):
                out[i] = texts
        assert all(answers is not None for answers in out)
        return [answers for answers in out if answers is not None]
