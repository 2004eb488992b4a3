"""
QA synthesis: the truth of the 43 question types (appendix A.3) and a seeded QA sampler.

One table drives everything. Six *axes* (left-right, above-below, behind-front, tall-short,
wide-thin, big-small) each give a signed score ``s(A, B)`` (> 0 means A is left of / above /
behind / taller / wider / bigger than B); from them come 12 predicates ("Is A left of B?"), 12
choices ("Which is more to the left?") and 6 classify types ("Is A left or right of B?"). Thirteen
*quantities* give metric values. Entries marked ``needs_canonical`` (the paper's starred types)
use the canonical frame (z up, from ``synth.canonical``) and are skipped when canonicalization
failed; the others use the camera optical frame (x right, y down, z forward).

Definitions (metres): left/right use the centroids' camera x; behind/front and the behind/front
differences use the centroids' distance from the camera (along the camera ray); width is the
camera-frame box extent along x; height the canonical box extent along z; size the canonical box
volume; above/below compare canonical centroid heights; elevation is the canonical box bottom's
height above the plane; above/below differences compare box bottoms; vertical / horizontal
distances split the centroid offset along / across canonical z; gap is the distance between the
two axis-aligned boxes (canonical frame when known, else camera frame), 0 if they overlap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from spatialvlm_ros.synth.rounding import humanize_distance, RoundingConfig
from spatialvlm_ros.synth.templates import render, TemplateBank

QUALITATIVE_KINDS = ('predicate', 'choice', 'classify')


@dataclass(frozen=True)
class SceneObject:
    """
    Geometry of one object for QA: camera-frame and (optional) canonical-frame centroid/box.

    :ivar object_id: unique id within the image.
    :ivar caption: the phrase used for ``[A]`` / ``[B]``.
    :ivar centroid_cam: (3,) metres, camera optical frame.
    :ivar aabb_cam: (2, 3) ``[min, max]``, camera optical frame.
    :ivar centroid_canon: (3,) canonical frame (z up), or None without a canonical frame.
    :ivar aabb_canon: (2, 3) canonical frame, or None.
    """

    object_id: str
    caption: str
    centroid_cam: np.ndarray
    aabb_cam: np.ndarray
    centroid_canon: np.ndarray | None = None
    aabb_canon: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name, shape in (('centroid_cam', (3,)), ('aabb_cam', (2, 3)),
                            ('centroid_canon', (3,)), ('aabb_canon', (2, 3))):
            value = getattr(self, name)
            if value is None and name.endswith('_canon'):
                continue
            array = np.asarray(value, dtype=np.float64)
            if array.shape != shape or not np.all(np.isfinite(array)):
                raise ValueError(f'{self.object_id}: {name} must be finite {shape}, '
                                 f'got {array.shape}')
            object.__setattr__(self, name, array)
        if (self.centroid_canon is None) != (self.aabb_canon is None):
            raise ValueError(f'{self.object_id}: give both centroid_canon and aabb_canon or '
                             'neither')

    @property
    def has_canonical(self) -> bool:
        """Whether canonical-frame geometry is present."""
        return self.centroid_canon is not None

    @classmethod
    def from_lifted(cls, object_id: str, caption: str, lifted: Any) -> SceneObject:
        """
        Build from a ``synth.lifting.LiftedObject`` (which must be ``ok``).

        The object's centre is the centre of its axis-aligned box in each frame, not the mean
        of its points: the mean of the visible surface lies toward the camera and the top
        (about half the object's depth off), while the truth and the paper's "distance between
        centres" mean the object's centre; the box of the visible points spans most of the
        object (the top face reaches the far edge), so its centre is the closer estimate.
        """
        if not lifted.ok:
            raise ValueError(f'{object_id}: lifting failed ({lifted.reason})')
        box = np.asarray(lifted.aabb, dtype=np.float64)
        canon = None if lifted.aabb_canon is None else np.asarray(lifted.aabb_canon,
                                                                  dtype=np.float64)
        return cls(object_id, caption, box.mean(axis=0), box,
                   None if canon is None else canon.mean(axis=0), canon)


def _extent(box: np.ndarray, axis: int) -> float:
    return float(box[1, axis] - box[0, axis])


def _relative(a: float, b: float) -> float:
    return (a - b) / max(abs(a), abs(b), 1e-9)


def _range(o: SceneObject) -> float:
    return float(np.linalg.norm(o.centroid_cam))


def _volume(o: SceneObject) -> float:
    return float(np.prod(o.aabb_canon[1] - o.aabb_canon[0]))


def _box_gap(a: np.ndarray, b: np.ndarray) -> float:
    separation = np.maximum(0.0, np.maximum(a[0] - b[1], b[0] - a[1]))  # (3,) per axis
    return float(np.linalg.norm(separation))


def _gap(a: SceneObject, b: SceneObject) -> float:
    if a.has_canonical and b.has_canonical:
        return _box_gap(a.aabb_canon, b.aabb_canon)
    return _box_gap(a.aabb_cam, b.aabb_cam)


@dataclass(frozen=True)
class Axis:
    """A qualitative axis: words, frame need, signed score and which ambiguity margin applies."""

    positive: str
    negative: str
    needs_canonical: bool
    score: Callable[[SceneObject, SceneObject], float]
    margin: str  # 'position' (metres) or 'size' (relative difference)


AXES: dict[str, Axis] = {
    'left_right': Axis('left', 'right', False,
                       lambda a, b: float(b.centroid_cam[0] - a.centroid_cam[0]), 'position'),
    'above_below': Axis('above', 'below', True,
                        lambda a, b: float(a.centroid_canon[2] - b.centroid_canon[2]),
                        'position'),
    'behind_front': Axis('behind', 'front', False, lambda a, b: _range(a) - _range(b),
                         'position'),
    'tall_short': Axis('tall', 'short', True,
                       lambda a, b: _relative(_extent(a.aabb_canon, 2),
                                              _extent(b.aabb_canon, 2)), 'size'),
    'wide_thin': Axis('wide', 'thin', False,
                      lambda a, b: _relative(_extent(a.aabb_cam, 0), _extent(b.aabb_cam, 0)),
                      'size'),
    'big_small': Axis('big', 'small', True, lambda a, b: _relative(_volume(a), _volume(b)),
                      'size'),
}


@dataclass(frozen=True)
class Quantity:
    """A quantitative type: value in metres; ``directed`` ones are signed (swap A/B if < 0)."""

    needs_canonical: bool
    value: Callable[[SceneObject, SceneObject], float]
    unary: bool = False
    directed: bool = False


def _bottom(o: SceneObject) -> float:
    return float(o.aabb_canon[0, 2])


QUANTITIES: dict[str, Quantity] = {
    'distance': Quantity(False, lambda a, b: float(np.linalg.norm(a.centroid_cam
                                                                  - b.centroid_cam))),
    'gap': Quantity(False, _gap),
    'height': Quantity(True, lambda a, b: _extent(a.aabb_canon, 2), unary=True),
    'width': Quantity(False, lambda a, b: _extent(a.aabb_cam, 0), unary=True),
    'elevation': Quantity(True, lambda a, b: _bottom(a), unary=True),
    'vertical_distance': Quantity(True, lambda a, b: abs(float(a.centroid_canon[2]
                                                               - b.centroid_canon[2]))),
    'horizontal_distance': Quantity(True, lambda a, b: float(np.linalg.norm(
        a.centroid_canon[:2] - b.centroid_canon[:2]))),
    'above_difference': Quantity(True, lambda a, b: _bottom(a) - _bottom(b), directed=True),
    'below_difference': Quantity(True, lambda a, b: _bottom(b) - _bottom(a), directed=True),
    'behind_difference': Quantity(False, lambda a, b: _range(a) - _range(b), directed=True),
    'front_difference': Quantity(False, lambda a, b: _range(b) - _range(a), directed=True),
    'left_difference': Quantity(False, lambda a, b: float(b.centroid_cam[0] - a.centroid_cam[0]),
                                directed=True),
    'right_difference': Quantity(False, lambda a, b: float(a.centroid_cam[0]
                                                           - b.centroid_cam[0]), directed=True),
}


@dataclass(frozen=True)
class QuestionType:
    """One of the 43 types: kind, frame need, and the axis or quantity it is built on."""

    name: str
    kind: str  # 'predicate', 'choice', 'classify' or 'quantitative'
    needs_canonical: bool
    source: str  # key of AXES or QUANTITIES
    positive: bool = True  # predicates/choices: the axis' positive word (left) or negative

    @property
    def qualitative(self) -> bool:
        """Whether the answer is a truth/choice rather than a number."""
        return self.kind in QUALITATIVE_KINDS

    @property
    def unary(self) -> bool:
        """Whether only ``[A]`` is involved (height, width, elevation)."""
        return self.kind == 'quantitative' and QUANTITIES[self.source].unary


def _build_types() -> dict[str, QuestionType]:
    types: dict[str, QuestionType] = {}
    for kind in ('predicate', 'choice'):
        for axis_name, axis in AXES.items():
            for positive, word in ((True, axis.positive), (False, axis.negative)):
                types[f'{word}_{kind}'] = QuestionType(f'{word}_{kind}', kind,
                                                       axis.needs_canonical, axis_name, positive)
    for axis_name, axis in AXES.items():
        types[f'{axis_name}_classify'] = QuestionType(f'{axis_name}_classify', 'classify',
                                                      axis.needs_canonical, axis_name)
    for name, quantity in QUANTITIES.items():
        types[name] = QuestionType(name, 'quantitative', quantity.needs_canonical, name)
    return types


QUESTION_TYPES: dict[str, QuestionType] = _build_types()


@dataclass
class Evaluation:
    """
    The truth of one question type for an ordered pair (A, B).

    ``value``: the signed axis score (qualitative) or the metric value in metres (quantitative,
    signed for directed differences). ``truth``: predicates True/False; choices the chosen
    object's id; classify the axis word ('left' / 'right', ...); None for quantitative.
    ``ambiguous``: the qualitative difference is within the margin (tiny).
    """

    value: float
    truth: bool | str | None
    ambiguous: bool = False


def evaluate(qa_type: str, a: SceneObject, b: SceneObject | None = None,
             position_margin: float = 0.05, size_margin: float = 0.1) -> Evaluation:
    """
    Compute the truth of ``qa_type`` for objects A and B (B unused for unary types).

    Raises ``ValueError`` when the type needs the canonical frame and an object lacks it.
    """
    qtype = QUESTION_TYPES[qa_type]
    needed = [a] if qtype.unary else [a, b]
    if any(o is None for o in needed):
        raise ValueError(f'{qa_type} needs two objects')
    if qtype.needs_canonical and not all(o.has_canonical for o in needed):
        raise ValueError(f'{qa_type} needs canonical-frame geometry')
    if not qtype.qualitative:
        return Evaluation(QUANTITIES[qtype.source].value(a, b), None)
    axis = AXES[qtype.source]
    score = axis.score(a, b)
    ambiguous = abs(score) < (position_margin if axis.margin == 'position' else size_margin)
    if qtype.kind == 'predicate':
        truth: bool | str = (score > 0) == qtype.positive
    elif qtype.kind == 'choice':
        truth = a.object_id if (score > 0) == qtype.positive else b.object_id
    else:
        truth = axis.positive if score > 0 else axis.negative
    return Evaluation(score, truth, ambiguous)


@dataclass
class QAConfig:
    """
    Settings of the QA sampler.

    :ivar num_questions: QA pairs per image (fewer if the objects allow fewer types).
    :ivar qualitative_share: probability of a qualitative type (paper: 50%).
    :ivar concise_bias: answer templates are weighted ``exp(-concise_bias * extra words)``.
    :ivar position_margin: metres; smaller position differences are answered with uncertainty.
    :ivar size_margin: relative size difference below which the answer is uncertain.
    :ivar min_value: metres; quantitative values below this are not asked (nothing to round).
    :ivar rounding: the human-like rounding tree's settings.
    :ivar templates: a template JSON path; None uses the packaged one.
    :ivar max_attempts: draws per question before giving up (degenerate scenes).
    """

    num_questions: int = 10
    qualitative_share: float = 0.5
    concise_bias: float = 0.3
    position_margin: float = 0.05
    size_margin: float = 0.1
    min_value: float = 0.01
    rounding: RoundingConfig = field(default_factory=RoundingConfig)
    templates: str | None = None
    max_attempts: int = 20

    def __post_init__(self) -> None:
        if self.num_questions < 0:
            raise ValueError(f'num_questions must be >= 0, got {self.num_questions}')
        if not 0.0 <= self.qualitative_share <= 1.0:
            raise ValueError(f'qualitative_share must be in [0, 1], got {self.qualitative_share}')
        for name in ('concise_bias', 'position_margin', 'size_margin', 'min_value'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        if self.max_attempts < 1:
            raise ValueError(f'max_attempts must be >= 1, got {self.max_attempts}')


@dataclass
class QA:
    """
    One question-answer pair with the metadata needed to score answers exactly.

    :ivar question: the rendered question.
    :ivar answer: the rendered answer.
    :ivar qa_type: key of ``QUESTION_TYPES``.
    :ivar kind: 'predicate', 'choice', 'classify' or 'quantitative'.
    :ivar needs_canonical: whether the type uses the canonical frame.
    :ivar object_ids: ids of A (and B), in slot order.
    :ivar captions: captions of A (and B), in slot order.
    :ivar truth: predicates True/False; choices the chosen object id; classify the axis word;
        None for quantitative.
    :ivar value_m: quantitative: the exact value in metres; qualitative: the signed axis score.
    :ivar stated_value_m: quantitative: the rounded value as stated in the answer, in metres.
    :ivar stated_text: quantitative: the stated quantity text ('1 meter').
    :ivar stated_unit: quantitative: 'm', 'cm', 'mm', 'km', 'in', 'ft' or 'yd'.
    :ivar ambiguous: qualitative: the difference was tiny and the answer expresses uncertainty.
    """

    question: str
    answer: str
    qa_type: str
    kind: str
    needs_canonical: bool
    object_ids: tuple[str, ...]
    captions: tuple[str, ...]
    truth: bool | str | None = None
    value_m: float = float('nan')
    stated_value_m: float | None = None
    stated_text: str | None = None
    stated_unit: str | None = None
    ambiguous: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def _allowed_types(num_objects: int, canonical_ok: bool) -> dict[bool, list[str]]:
    allowed: dict[bool, list[str]] = {True: [], False: []}
    for name, qtype in QUESTION_TYPES.items():
        if qtype.needs_canonical and not canonical_ok:
            continue
        if num_objects < (1 if qtype.unary else 2):
            continue
        allowed[qtype.qualitative].append(name)
    return allowed


def _make_qa(qtype: QuestionType, a: SceneObject, b: SceneObject, bank: TemplateBank,
             rng: np.random.Generator, cfg: QAConfig) -> QA | None:
    result = evaluate(qtype.name, a, b, cfg.position_margin, cfg.size_margin)
    if qtype.kind == 'quantitative':
        if QUANTITIES[qtype.source].directed and result.value < 0:
            a, b = b, a  # ask about the relation that holds
            result = Evaluation(-result.value, None)
        if result.value < cfg.min_value:
            return None
    pair = (a,) if qtype.unary else (a, b)
    question = render(bank.sample(qtype.name, 'questions', rng), a.caption, b.caption)
    stated = None
    if qtype.kind == 'quantitative':
        stated = humanize_distance(result.value, rng, cfg.rounding)
        x = stated[0]
        key = 'answers'
    elif result.ambiguous:
        x, key = '', 'uncertain'
    elif qtype.kind == 'predicate':
        x, key = '', 'true' if result.truth else 'false'
    elif qtype.kind == 'choice':
        x, key = (a.caption if result.truth == a.object_id else b.caption), 'answers'
    else:
        x, key = bank.x_value(qtype.name, result.truth == AXES[qtype.source].positive), 'answers'
    answer = render(bank.sample(qtype.name, key, rng, cfg.concise_bias), a.caption, b.caption, x)
    return QA(question, answer, qtype.name, qtype.kind, qtype.needs_canonical,
              tuple(o.object_id for o in pair), tuple(o.caption for o in pair), result.truth,
              result.value, stated[1] if stated else None, stated[0] if stated else None,
              stated[2] if stated else None, result.ambiguous)


def generate_qa(objects: list[SceneObject], canonical_ok: bool, rng: np.random.Generator,
                config: QAConfig | None = None) -> list[QA]:
    """
    Sample QA pairs about ``objects`` (half qualitative, half quantitative by default).

    Types needing the canonical frame are skipped unless ``canonical_ok``; then every object
    must carry canonical geometry. Returns up to ``config.num_questions`` pairs; the same seed
    gives the same list.
    """
    cfg = config or QAConfig()
    if len({o.object_id for o in objects}) != len(objects):
        raise ValueError('object ids must be unique')
    if canonical_ok and not all(o.has_canonical for o in objects):
        missing = [o.object_id for o in objects if not o.has_canonical]
        raise ValueError(f'canonical_ok but objects lack canonical geometry: {missing}')
    bank = TemplateBank.load(cfg.templates)
    allowed = _allowed_types(len(objects), canonical_ok)
    out: list[QA] = []
    for _ in range(cfg.num_questions):
        for _ in range(cfg.max_attempts):
            qualitative = rng.random() < cfg.qualitative_share
            if not allowed[qualitative]:
                qualitative = not qualitative
            if not allowed[qualitative]:
                return out
            qtype = QUESTION_TYPES[allowed[qualitative][rng.integers(len(allowed[qualitative]))]]
            i, j = rng.choice(len(objects), size=2, replace=False) if len(objects) > 1 else (0, 0)
            qa = _make_qa(qtype, objects[i], objects[j], bank, rng, cfg)
            if qa is not None:
                out.append(qa)
                break
    return out
