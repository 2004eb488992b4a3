"""
Chain-of-thought answers to comparisons: a rule-based coordinator (paper section 3.3).

SpatialVLM answers complex questions by having an LLM coordinator split them into simple spatial
queries to the VLM and combine the answers. The compact model answers metric questions about
one object far better than it compares two objects (session 22 in ``benchmarks/RESULTS.md``:
on the held-out scenes it says how tall a named object is within [50%, 200%] 91% of the time,
while it answers "Is A taller than B?" about as well as a coin). ``DecomposingAnswerer`` does
the coordinator's job by rule instead of an LLM:

- the question is matched against the template bank's question templates of the comparisons
  (``ComparisonQuestions``), which gives the type and the two object phrases ``[A]`` and
  ``[B]``;
- size comparisons (``tall`` / ``short`` / ``wide`` / ``thin`` / ``big`` / ``small``
  predicates and choices, ``tall_short`` / ``wide_thin`` / ``big_small`` classifications):
  the VLM is asked "How tall is [A]?" and "How tall is [B]?" (``height``), "How wide is
  ...?" (``width``), or both for ``big`` / ``small``, whose size is height times width (the
  engine compares volumes; depth is not asked: the image shows it worst);
- height comparisons (``above`` / ``below`` predicates and choices, the ``above_below``
  classification): each object's centre height is "How high above the floor is [A]?" plus half
  of "How tall is [A]?" (the engine compares the centres' heights in the floor's frame);
- position comparisons (``left`` / ``right`` / ``front`` / ``behind`` and the ``left_right`` /
  ``behind_front`` classifications), only with a ``GroundingLocator``: a model trained with
  supervised grounding (``TrainConfig.grounding_weight``, the shipped default) has a head that
  points from each object's name to that object's patches; the attention-weighted centre of
  the patches each name points at places the object in the image (left is a smaller column,
  in front of is lower in the image, for a camera looking down at a table). The metric
  questions about positions cannot stand in: "How far to the left of B is A?" was only ever
  trained where the relation holds, so its values do not tell the side;
- the two values are compared and the answer is written with the bank's first answer template
  of that outcome ('Yes.', '[X] is taller.', '[A] is [X] [B].');
- directed offsets ("How far to the left of [B] is [A]?": ``left`` / ``right`` / ``front`` /
  ``behind`` ``_difference``), also only with a locator: the VLM is asked the question itself
  and "What is the horizontal distance between [A] and [B]?", which it answers far better (on
  the held-out scenes within [50%, 200%] 97% of the time against 41-76% for the offsets). The
  located places split that distance: the offset's share is the horizontal pixel offset
  between the two places (left / right; the vertical one for front / behind) over their whole
  pixel offset. The answer is the geometric mean of the direct answer and that share of the
  horizontal distance (the share alone when the direct answer has no number), in metres with
  the bank's first answer template ('[X].');
- the vertical distance between two objects ("How far apart are [A] and [B] vertically?") is
  the difference of their centre heights, asked as above; the answer is again the geometric
  mean with the direct answer.

Any other question, a comparison whose values do not both exist or are equal, and a metric
question whose estimate is zero or cannot be made (objects not located apart, no number in the
simpler answers) is asked directly.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import re
from typing import Any, Sequence

# family -> (measures compared, +1: the larger value satisfies it (the classifications:
# their positive word), -1: the smaller); 'x' / 'y' are the image column / row of the object;
# ('elevation', 'height') is the centre's height above the floor
_CENTRE = ('elevation', 'height')
_FAMILIES: dict[str, tuple[tuple[str, ...], int]] = {
    'tall': (('height',), 1), 'short': (('height',), -1),
    'wide': (('width',), 1), 'thin': (('width',), -1),
    'big': (('height', 'width'), 1), 'small': (('height', 'width'), -1),
    'tall_short': (('height',), 1), 'wide_thin': (('width',), 1),
    'big_small': (('height', 'width'), 1),
    'left': (('x',), -1), 'right': (('x',), 1), 'left_right': (('x',), -1),
    'front': (('y',), 1), 'behind': (('y',), -1), 'behind_front': (('y',), -1),
    'above': (_CENTRE, 1), 'below': (_CENTRE, -1), 'above_below': (_CENTRE, 1),
    'vertical': (_CENTRE, 1),
}
POSITION_MEASURES = ('x', 'y')
MEASURE_QUESTIONS = {'height': 'How tall is [A]?', 'width': 'How wide is [A]?',
                     'elevation': 'How high above the floor is [A]?'}
"""The simple query asked about one object for each measure."""
SPAN_QUESTION = 'What is the horizontal distance between [A] and [B]?'
"""The pair query that a directed offset ('How far to the left of [B] is [A]?') splits."""
_KINDS = ('predicate', 'choice', 'classify', 'difference', 'distance')
# the metric types it answers: '<family>_difference' (located) and 'vertical_distance' (asked)
_METRIC_FAMILIES = {'difference': ('left', 'right', 'front', 'behind'), 'distance': ('vertical',)}
REASONINGS = ('direct', 'decompose', 'decompose_grounded')
"""How ``spatialvlm eval --reasoning`` answers: every question directly; size and height
comparisons and the vertical distance through :class:`DecomposingAnswerer`; or also position
comparisons and directed offsets, from the model's grounding head (:class:`GroundingLocator`;
for models trained with supervised grounding)."""


@dataclass(frozen=True)
class Comparison:
    """
    A comparison (size, height, position) or a metric question it answers, found in a question.

    :ivar qa_type: the template bank's type (``'tall_predicate'``, ``'big_small_classify'``,
        ``'left_difference'``...).
    :ivar kind: ``'predicate'``, ``'choice'``, ``'classify'``, ``'difference'`` (a directed
        offset in metres: "How far to the left of [B] is [A]?") or ``'distance'`` (the
        vertical distance in metres).
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
    def position(self) -> bool:
        """Return whether the comparison is about positions (located, not asked)."""
        return self.measures[0] in POSITION_MEASURES

    @property
    def metric(self) -> bool:
        """Return whether the question asks for metres (an offset or a distance)."""
        return self.kind in _METRIC_FAMILIES

    @property
    def sign(self) -> int:
        """Return +1 when the larger measure satisfies the relation, -1 for the smaller."""
        return _FAMILIES[_family(self.qa_type)][1]


def _family(qa_type: str) -> str:
    return qa_type.rsplit('_', 1)[0]


def _kind(qa_type: str) -> str:
    return qa_type.rpartition('_')[2] if '_' in qa_type else ''


class ComparisonQuestions:
    """
    Find size and position comparisons in question texts with the template bank's templates.

    :param bank: a ``synth.templates.TemplateBank`` (the package's when None).
    """

    def __init__(self, bank: Any = None) -> None:
        if bank is None:
            from spatialvlm_ros.synth.templates import TemplateBank

            bank = TemplateBank.load()
        self.bank = bank
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        for qa_type in sorted(bank.types):
            family, kind = _family(qa_type), _kind(qa_type)
            if family not in _FAMILIES or kind not in _KINDS or (
                    kind in _METRIC_FAMILIES and family not in _METRIC_FAMILIES[kind]):
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

    def answer_metres(self, comparison: Comparison, metres: float) -> str | None:
        """Return the answer text of a metric question's ``metres`` (None unless positive)."""
        if not comparison.metric:
            raise ValueError(f'{comparison.qa_type} does not ask for metres')
        if not (math.isfinite(metres) and metres > 0):
            return None
        text = self.bank.get(comparison.qa_type, 'answers')[0].replace('[X]', f'{metres:.3g} m')
        text = text.replace('[A]', comparison.first).replace('[B]', comparison.second)
        return text[:1].upper() + text[1:]

    def answer(self, comparison: Comparison, first: float, second: float) -> str | None:
        """
        Return the answer text from the two objects' values, or None when they are equal.

        :param first: the ``[A]`` object's value: its size (the product of its measures), its
            centre height, or its image column / row.
        :param second: the ``[B]`` object's value.
        """
        if comparison.metric:
            raise ValueError(f'{comparison.qa_type} asks for metres: use answer_metres')
        if not (math.isfinite(first) and math.isfinite(second)) or first == second:
            return None  # no side can be told
        holds = (first - second) * comparison.sign > 0  # [A] is the taller (left...) one
        qa_type, a, b = comparison.qa_type, comparison.first, comparison.second
        if comparison.kind == 'predicate':
            text = self.bank.get(qa_type, 'true' if holds else 'false')[0]
        elif comparison.kind == 'choice':
            text = self.bank.get(qa_type, 'answers')[0].replace('[X]', a if holds else b)
        else:  # classify: the positive phrase ('taller than', 'to the left of') when it holds
            text = self.bank.get(qa_type, 'answers')[0].replace(
                '[X]', self.bank.x_value(qa_type, holds))
        text = text.replace('[A]', a).replace('[B]', b)
        return text[:1].upper() + text[1:]


class GroundingLocator:
    """
    Place the objects a question names where the model's grounding head points.

    For a LLaVA whose decoder was trained with supervised grounding
    (``TrainConfig.grounding_weight``; the name rows go to head 0 of
    ``grounding_layers[0]``): one pass over the question's prompt, then, for each object
    phrase, the attention of that head from the phrase's tokens (found as the training finds
    them: ``train.grounding.find_name``) over the image tokens, averaged over the tokens; its
    weighted centre over the patch grid is the object's place. A model never trained so has
    such a head too, but it points nowhere in particular: use this only with grounded models.

    :param loaded: a ``model.loading.LoadedVLM`` of the LLaVA family whose text model the lean
        decoder can run (``model.fastpath.lean_blocker``).
    :param layer: the decoder layer of the name rows.
    :param head: its head.
    :raises ValueError: for another family or a model the lean decoder cannot run.
    """

    def __init__(self, loaded: Any, layer: int = 0, head: int = 0) -> None:
        from spatialvlm_ros.model.fastpath import LeanGreedyDecoder, model_blocker

        if loaded.family != 'llava':
            raise ValueError(f'locating objects by attention needs a LLaVA model, not '
                             f'{loaded.family!r}')
        reason = model_blocker(loaded.model)
        if reason is not None:
            raise ValueError(f'locating objects by attention cannot run this model: {reason}')
        self.loaded = loaded
        self.layer = layer
        self.head = head
        self._decoder = LeanGreedyDecoder(loaded.model)

    def locate(self, image: Any, question: str,
               phrases: Sequence[str]) -> list[tuple[float, float] | None]:
        """
        Return each phrase's place as ``(column, row)`` in [0, 1] of the image, or None.

        :param image: RGB uint8 HxWx3 (or PIL).
        :param question: the question that names the objects (its prompt is what is read).
        :param phrases: object phrases as the question writes them; a phrase whose tokens are
            not found in the prompt gets None.
        """
        import numpy as np

        from spatialvlm_ros.model.loading import build_inputs
        from spatialvlm_ros.train.grounding import find_name

        loaded = self.loaded
        inputs = build_inputs(loaded, [image], [question], '')
        probs = self._decoder.attention_probs(inputs['input_ids'], inputs['pixel_values'],
                                              self.layer, self.head).cpu().numpy()
        ids = [int(v) for v in inputs['input_ids'][0].tolist()]
        image_token = loaded.model.config.image_token_id
        patches = [p for p, token in enumerate(ids) if token == image_token]
        grid = int(round(len(patches) ** 0.5))
        if not patches or grid * grid != len(patches):
            raise ValueError(f'{len(patches)} image tokens are not a square patch grid')
        cells = np.arange(grid * grid)
        centres = ((cells % grid + 0.5) / grid, (cells // grid + 0.5) / grid)
        out: list[tuple[float, float] | None] = []
        for phrase in phrases:
            found = find_name(ids, phrase, loaded.tokenizer, patches[-1] + 1)
            if found is None:
                out.append(None)
                continue
            weights = probs[found[0]:found[1]][:, patches].mean(axis=0)
            total = float(weights.sum())
            if not total > 0:
                out.append(None)
                continue
            out.append((float((weights * centres[0]).sum() / total),
                        float((weights * centres[1]).sum() / total)))
        return out


class DecomposingAnswerer:
    """
    An evaluation answerer that splits comparisons into simpler queries (see the module).

    :param inner: the answerer asked every query (``answer_batch(images, questions,
        num_samples, temperature, seed)``).
    :param questions: the comparison finder (the package's template bank when None).
    :param parser: answer text -> metres or None; ``core.answers.parse_distance``'s value when
        None.
    :param locator: places objects for position comparisons and directed offsets
        (``locate(image, question, phrases)``, as :class:`GroundingLocator`); without one they
        are asked directly. Offsets need images whose pixel size can be told (PIL images or
        RGB uint8 HxWx3 arrays).
    """

    def __init__(self, inner: Any, questions: ComparisonQuestions | None = None,
                 parser: Any = None, locator: Any = None) -> None:
        self.inner = inner
        self.questions = questions or ComparisonQuestions()
        if parser is None:
            from spatialvlm_ros.core.answers import parse_distance

            def parser(text: str) -> float | None:
                return parse_distance(text).value_m
        self.parser = parser
        self.locator = locator
        self.decomposed = 0
        """Questions answered from their simpler queries so far."""
        self.fallbacks = 0
        """Comparisons asked directly because their values did not decide them (a metric
        question whose estimate could not be made keeps its direct answer)."""

    def _value(self, texts: Sequence[str]) -> float | None:
        values = [v for v in (self.parser(t) for t in texts) if v is not None]
        return sum(values) / len(values) if values else None  # samples: their mean

    def _ask_queries(self, images: Sequence[Any], questions: Sequence[str],
                     found: list[Comparison | None], num_samples: int, temperature: float,
                     seed: int) -> tuple[list[int], dict[tuple[int, str], list[str]]]:
        """Ask every simpler query the comparisons need in one batch; return the replies."""
        # the same image object asked the same query gets one answer
        first_of: dict[int, int] = {}
        same = [first_of.setdefault(id(image), i) for i, image in enumerate(images)]
        queries: dict[tuple[int, str], int] = {}  # (image index, query) -> position
        for i, comparison in enumerate(found):
            if comparison is None:
                continue
            wanted = [questions[i]] if comparison.metric else []  # combined with its estimate
            if comparison.position:
                wanted += [_pair_query(comparison)] if comparison.metric else []
            else:
                wanted += [MEASURE_QUESTIONS[measure].replace('[A]', phrase)
                           for phrase in (comparison.first, comparison.second)
                           for measure in comparison.measures]
            for query in wanted:
                queries.setdefault((same[i], query), len(queries))
        if not queries:
            return same, {}
        keys = list(queries)
        replies = self.inner.answer_batch([images[i] for i, _ in keys], [q for _, q in keys],
                                          num_samples, temperature, seed)
        return same, dict(zip(keys, replies, strict=True))

    def _object_values(self, comparison: Comparison,
                       replies: dict[str, list[str]]) -> list[float | None]:
        """Return each object's size (measures' product) or centre height from the answers."""
        out = []
        for phrase in (comparison.first, comparison.second):
            values = [self._value(replies[MEASURE_QUESTIONS[measure].replace('[A]', phrase)])
                      for measure in comparison.measures]
            if None in values:
                out.append(None)
            elif comparison.measures == _CENTRE:
                out.append(values[0] + values[1] / 2)
            else:
                out.append(math.prod(values))  # type: ignore[arg-type]
        return out

    def _offset(self, image: Any, question: str, comparison: Comparison,
                span: list[str]) -> float | None:
        """Return a directed offset's estimate from the located places (None: cannot split)."""
        distance = self._value(span)
        places = self.locator.locate(image, question, [comparison.first, comparison.second])
        if distance is None or None in places:
            return None
        width, height = image_size(image)
        # pixel offsets between the two places (isotropic: the image's own geometry)
        du = (places[1][0] - places[0][0]) * width
        dv = (places[1][1] - places[0][1]) * height
        whole = math.hypot(du, dv)
        if not whole > 0:
            return None  # one place for both: no direction to split the distance along
        return distance * abs(du if comparison.measures[0] == 'x' else dv) / whole

    def _metres(self, image: Any, question: str, comparison: Comparison,
                replies: dict[str, list[str]]) -> float | None:
        """Return a metric question's answer in metres, or None when it cannot be made."""
        if comparison.position:
            estimate = self._offset(image, question, comparison,
                                    replies[_pair_query(comparison)])
        else:
            centres = self._object_values(comparison, replies)
            estimate = None if None in centres else abs(centres[0] - centres[1])  # type: ignore
        if estimate is None or not estimate > 0:
            return None
        asked = self._value(replies[question])
        if asked is not None and asked > 0:
            return math.sqrt(asked * estimate)  # two estimates, combined on a log scale
        return estimate

    def answer_batch(self, images: Sequence[Any], questions: Sequence[str], num_samples: int,
                     temperature: float, seed: int) -> list[list[str]]:
        """Return ``max(1, num_samples)`` answers per question, as the inner answerer does."""
        count = max(1, num_samples)
        found = [self.questions.parse(q) for q in questions]
        if self.locator is None:  # positions and offsets are read from a locator
            found = [None if c is not None and c.position else c for c in found]
        same, replies = self._ask_queries(images, questions, found, num_samples, temperature,
                                          seed)
        by_image: dict[int, dict[str, list[str]]] = {}
        for (index, query), texts in replies.items():
            by_image.setdefault(index, {})[query] = texts
        out: list[list[str] | None] = [None] * len(questions)
        for i, comparison in enumerate(found):
            if comparison is None:
                continue
            mine = by_image.get(same[i], {})
            text = None
            if comparison.metric:
                metres = self._metres(images[i], questions[i], comparison, mine)
                text = None if metres is None else self.questions.answer_metres(comparison,
                                                                                metres)
                if text is None:  # its direct answers are already there
                    self.fallbacks += 1
                    out[i] = list(mine[questions[i]])
                    continue
            else:
                if comparison.position:
                    axis = POSITION_MEASURES.index(comparison.measures[0])
                    places = self.locator.locate(images[i], questions[i],
                                                 [comparison.first, comparison.second])
                    pair = [None if place is None else place[axis] for place in places]
                else:
                    pair = self._object_values(comparison, mine)
                if None not in pair:
                    text = self.questions.answer(comparison, float(pair[0]), float(pair[1]))
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


def coordinator_for(answerer: Any, reasoning: str) -> DecomposingAnswerer:
    """
    Return ``answerer`` behind the coordinator that ``reasoning`` names.

    :param answerer: as ``DecomposingAnswerer``'s ``inner``; ``'decompose_grounded'`` also
        needs its ``loaded`` model (``evaluate.runner.SpatialVLMAnswerer``).
    :param reasoning: ``'decompose'`` or ``'decompose_grounded'`` (see ``REASONINGS``).
    :raises ValueError: for another reasoning, or a grounded one without a loaded model that
        the locator can read.
    """
    if reasoning not in REASONINGS[1:]:
        raise ValueError(f'a coordinator reasons by one of {REASONINGS[1:]}, not {reasoning!r}')
    locator = None
    if reasoning == 'decompose_grounded':
        loaded = getattr(answerer, 'loaded', None)
        if loaded is None:
            raise ValueError("reasoning 'decompose_grounded' reads the model's attention: it "
                             'needs a model loaded through the inference API')
        locator = GroundingLocator(loaded)
    return DecomposingAnswerer(answerer, locator=locator)


def _pair_query(comparison: Comparison) -> str:
    return SPAN_QUESTION.replace('[A]', comparison.first).replace('[B]', comparison.second)


def image_size(image: Any) -> tuple[int, int]:
    """
    Return ``(width, height)`` in pixels of a PIL image or an HxW(xC) array.

    :raises TypeError: for anything else.
    """
    shape = getattr(image, 'shape', None)
    if shape is not None and len(shape) >= 2:
        return int(shape[1]), int(shape[0])
    size = getattr(image, 'size', None)
    if isinstance(size, tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise TypeError(f'cannot tell the pixel size of a {type(image).__name__}')
