"""
The paper's metrics over model answers (SpatialVLM section 4, appendix A.1, Tables 1, 4, 5).

Each question is an ``EvalItem``: its type and kind, one or more sampled answers, and the truth.

- **Qualitative** (``predicate``, ``choice``, ``classify``): an answer is read with
  ``parse_yes_no`` (truth: bool) or ``parse_choice`` over ``options`` (truth: the index of the
  right option). With several samples the majority of the readable ones decides; a tie or no
  readable answer counts as wrong. Items whose truth is None (ambiguous pairs) are skipped.
  Accuracy = correct / graded items.
- **Quantitative**: every sample is read with ``parse_distance``; the prediction is the mean of
  the readable values (the paper averages samples), and an item with none is *not numeric*.
  ``numeric_share`` = numeric items / all quantitative items. The band shares count an item
  when ``low <= prediction / truth <= high`` (closed interval) and use **all** quantitative
  items with a positive truth as the denominator, so non-numeric answers count as misses
  (Table 1: GPT-4V answers 1% numerically and scores 0%). The bands are [0.5, 2], [2/3, 1.5]
  (the paper's "66.7%" is the reciprocal of 150%, so a ratio of exactly 2/3 is inside) and
  [0.9, 1.1]; a relative tolerance of ``ratio_tolerance`` (1e-9) absorbs float rounding at
  the edges. MSE (m^2), RMSE, MAE (m) use the numeric items; the median relative error
  ``|pred - truth| / truth`` uses the numeric items with a positive truth.
- **Zero truth**: a ratio is undefined, so such items are left out of the band shares and the
  relative error (counted in ``n_zero_truth``) but kept in ``numeric_share`` and MSE / MAE. A
  truth of at most ``zero_truth_m`` (1 micrometre) is zero: geometry leaves float residues such
  as 6e-17 m for the height difference of two objects on one table, and a relative error
  against those would read 1e14.

- **Tracking** (:func:`tracking_metrics`): quantitative items may carry a ``series`` key, the
  same question asked about the same objects over the frames of one robot episode (the reward
  node's question, frame after frame). Per series of at least 3 items, the Spearman correlation
  of the numeric predictions with the truth says whether the answers follow the distance as it
  changes, which the band shares cannot (a model that gives the typical distance every frame
  scores in the bands and tracks nothing). A series whose predictions are all equal, or with
  fewer than 3 numeric ones, has no correlation: ``spearman_defined`` averages the others,
  ``spearman_all`` counts those as 0, and ``n_defined`` says how many there were.

Shares are fractions in [0, 1]. A metric with nothing to average over is None, so every output
is plain JSON (``json.dumps`` works without ``allow_nan``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
import math
from typing import Any, Iterable, Sequence

import numpy as np

from spatialvlm_ros.core.answers import parse_choice, parse_distance, parse_yes_no, ParseConfig

QUALITATIVE_KINDS = ('predicate', 'choice', 'classify')
KINDS = QUALITATIVE_KINDS + ('quantitative',)
# name -> (low, high) ratio prediction / truth, closed interval
BANDS: dict[str, tuple[float, float]] = {
    'within_50_200': (0.5, 2.0),
    'within_66_150': (1.0 / 1.5, 1.5),
    'within_90_110': (0.9, 1.1),
}


@dataclass
class EvalItem:
    """
    One question, the model's sampled answer(s) and the truth.

    :ivar qa_type: the question type ('distance', 'left_predicate', ...).
    :ivar kind: 'predicate', 'choice', 'classify' or 'quantitative'.
    :ivar answers: the sampled answers (a single string is accepted).
    :ivar truth: predicate: bool; choice / classify: index into ``options``; quantitative:
        metres (>= 0); None: ambiguous, not graded (qualitative only).
    :ivar options: choice: the two captions; classify: the two relation phrases (e.g.
        'to the left of', 'to the right of').
    :ivar series: quantitative only: a key shared by the items that ask the same question
        about the same objects over the frames of one episode (None: not part of a series).
    """

    qa_type: str
    kind: str
    answers: list[str]
    truth: bool | int | float | None
    options: tuple[str, ...] = ()
    series: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f'{self.qa_type}: kind must be one of {KINDS}, got {self.kind!r}')
        if isinstance(self.answers, str):
            self.answers = [self.answers]
        self.answers = list(self.answers)
        self.options = tuple(self.options)
        if self.series is not None and (self.kind != 'quantitative'
                                        or not isinstance(self.series, str)):
            raise ValueError(f'{self.qa_type}: only a quantitative item belongs to a series '
                             f'(a str key), got {self.series!r} on a {self.kind} item')
        if self.kind == 'quantitative':
            if isinstance(self.truth, bool) or self.truth is None or not (
                    math.isfinite(float(self.truth)) and float(self.truth) >= 0):
                raise ValueError(f'{self.qa_type}: quantitative truth must be finite metres '
                                 f'>= 0, got {self.truth!r}')
        elif self.kind == 'predicate':
            if self.truth is not None and not isinstance(self.truth, bool):
                raise ValueError(f'{self.qa_type}: predicate truth must be bool or None, '
                                 f'got {self.truth!r}')
        elif self.truth is not None:
            if isinstance(self.truth, bool) or not isinstance(self.truth, int) or \
                    not 0 <= self.truth < len(self.options):
                raise ValueError(f'{self.qa_type}: {self.kind} truth must be an index into '
                                 f'{len(self.options)} options, got {self.truth!r}')


@dataclass
class MetricsConfig:
    """
    Settings of the metrics.

    :ivar parse: how quantitative answers are read (e.g. a default unit for bare numbers).
    :ivar ratio_tolerance: relative slack at the band edges for float rounding.
    :ivar zero_truth_m: truths at or below this many metres count as zero (no ratio).
    """

    parse: ParseConfig = field(default_factory=ParseConfig)
    ratio_tolerance: float = 1e-9
    zero_truth_m: float = 1e-6

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ratio_tolerance) and 0 <= self.ratio_tolerance < 0.01):
            raise ValueError(f'ratio_tolerance must be in [0, 0.01), got {self.ratio_tolerance}')
        if not (math.isfinite(self.zero_truth_m) and 0 <= self.zero_truth_m < 0.001):
            raise ValueError(f'zero_truth_m must be in [0, 0.001), got {self.zero_truth_m}')


@dataclass
class ItemScore:
    """
    The grading of one ``EvalItem``.

    :ivar qa_type: as in the item.
    :ivar kind: as in the item.
    :ivar n_samples: answers given.
    :ivar n_parsed: answers that could be read.
    :ivar prediction: quantitative: mean metres of the readable samples; qualitative: the
        majority reading (bool or option index); None when nothing could be read.
    :ivar truth: as in the item.
    :ivar correct: qualitative: whether the prediction is right (None when not graded).
    :ivar ratio: quantitative: prediction / truth (None if not numeric or truth is 0).
    :ivar series: as in the item.
    """

    qa_type: str
    kind: str
    n_samples: int
    n_parsed: int
    prediction: float | bool | int | None
    truth: bool | int | float | None
    correct: bool | None = None
    ratio: float | None = None
    series: str | None = None

    @property
    def numeric(self) -> bool:
        """Return whether a quantitative item was answered with a readable number."""
        return self.kind == 'quantitative' and self.prediction is not None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def mean_of_samples(answers: Sequence[str], config: ParseConfig | None = None
                    ) -> tuple[float | None, int]:
    """
    Return the mean length in metres of the readable answers (None if none) and their count.

    Unreadable samples are ignored, as the paper averages sampled answers.
    """
    values = [p.value_m for p in (parse_distance(a, config) for a in answers)
              if p.value_m is not None]
    if not values:
        return None, 0
    return float(np.mean(values)), len(values)


def _majority(readings: list[Any]) -> Any:
    """Return the most common non-None reading; None on a tie or when there is none."""
    counts = Counter(r for r in readings if r is not None).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def score_item(item: EvalItem, config: MetricsConfig | None = None) -> ItemScore:
    """Grade one item (see the module docstring for the rules)."""
    cfg = config or MetricsConfig()
    if item.kind == 'quantitative':
        prediction, n_parsed = mean_of_samples(item.answers, cfg.parse)
        truth = float(item.truth or 0.0)  # validated: finite, >= 0
        ratio = (prediction / truth if prediction is not None and truth > cfg.zero_truth_m
                 else None)
        return ItemScore(item.qa_type, item.kind, len(item.answers), n_parsed, prediction,
                         truth, None, ratio, item.series)
    if item.kind == 'predicate':
        readings: list[Any] = [parse_yes_no(a) for a in item.answers]
    else:
        readings = [parse_choice(a, item.options) for a in item.answers]
    reading = _majority(readings)
    correct = None if item.truth is None else (reading is not None and reading == item.truth)
    return ItemScore(item.qa_type, item.kind, len(item.answers),
                     sum(r is not None for r in readings), reading, item.truth, correct)


def _share(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def quantitative_metrics(predictions: Any, truths: Any, ratio_tolerance: float = 1e-9,
                         zero_truth_m: float = 1e-6) -> dict[str, Any]:
    """
    Return the quantitative metrics of arrays of predictions and truths (metres).

    :param predictions: (N,) metres; ``nan`` (or None) where the answer held no number.
    :param truths: (N,) metres, finite and >= 0.
    :param ratio_tolerance: relative slack at the band edges.
    :param zero_truth_m: truths at or below this count as zero.
    :return: ``n``, ``n_numeric``, ``n_zero_truth``, ``numeric_share``, the ``BANDS`` shares,
        ``mse_m2``, ``rmse_m``, ``mae_m``, ``median_relative_error`` (None when undefined).
    """
    pred = np.array([math.nan if p is None else p for p in np.ravel(np.asarray(
        predictions, dtype=object))], dtype=np.float64)
    true = np.asarray(truths, dtype=np.float64).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f'predictions and truths differ in length: {pred.size} vs {true.size}')
    if not np.all(np.isfinite(true)) or np.any(true < 0):
        raise ValueError('truths must be finite and >= 0')
    numeric = np.isfinite(pred)
    positive = true > zero_truth_m
    out: dict[str, Any] = {'n': int(pred.size), 'n_numeric': int(numeric.sum()),
                           'n_zero_truth': int((~positive).sum()),
                           'numeric_share': _share(int(numeric.sum()), pred.size)}
    rated = numeric & positive
    ratio = np.full(pred.shape, np.nan)
    ratio[rated] = pred[rated] / true[rated]
    for name, (low, high) in BANDS.items():
        inside = rated & (ratio >= low * (1 - ratio_tolerance)) & \
            (ratio <= high * (1 + ratio_tolerance))
        out[name] = _share(int(inside.sum()), int(positive.sum()))
    error = pred[numeric] - true[numeric]
    if error.size:
        mse = float(np.mean(error ** 2))
        out.update(mse_m2=mse, rmse_m=math.sqrt(mse), mae_m=float(np.mean(np.abs(error))))
    else:
        out.update(mse_m2=None, rmse_m=None, mae_m=None)
    relative = np.abs(pred[rated] - true[rated]) / true[rated]
    out['median_relative_error'] = float(np.median(relative)) if relative.size else None
    return out


def aggregate(scores: Iterable[ItemScore], ratio_tolerance: float = 1e-9,
              zero_truth_m: float = 1e-6) -> dict[str, Any]:
    """
    Return the metrics of a set of graded items (all keys always present).

    Qualitative: ``n_qualitative``, ``n_graded`` (truth not None), ``qualitative_accuracy``,
    ``qualitative_answered_share`` (graded items with a readable answer). Quantitative:
    ``n_quantitative`` and the keys of ``quantitative_metrics``.
    """
    scores = list(scores)
    qualitative = [s for s in scores if s.kind in QUALITATIVE_KINDS]
    graded = [s for s in qualitative if s.correct is not None]
    quantitative = [s for s in scores if s.kind == 'quantitative']
    out: dict[str, Any] = {
        'n': len(scores),
        'n_qualitative': len(qualitative),
        'n_graded': len(graded),
        'qualitative_accuracy': _share(sum(bool(s.correct) for s in graded), len(graded)),
        'qualitative_answered_share': _share(sum(s.prediction is not None for s in graded),
                                             len(graded)),
        'n_quantitative': len(quantitative),
    }
    quant = quantitative_metrics([s.prediction for s in quantitative],
                                 [float(s.truth or 0.0) for s in quantitative], ratio_tolerance,
                                 zero_truth_m)
    quant.pop('n')
    out.update(quant)
    return out


MIN_SERIES = 3


def tracking_metrics(scores: Iterable[ItemScore]) -> dict[str, Any] | None:
    """
    Return how well quantitative answers follow the truth within each series (None: no series).

    Keys: ``n_series`` (series of at least ``MIN_SERIES`` items), ``n_defined`` (those with a
    Spearman correlation), ``spearman_defined`` (its mean over them), ``spearman_all`` (the
    mean over all series, undefined counted as 0), ``median_distinct`` (median number of
    different predictions per series; 1 means one answer for every frame).
    """
    from spatialvlm_ros.replay.metrics import rank_correlations

    groups: dict[str, list[ItemScore]] = {}
    for s in scores:
        if s.kind == 'quantitative' and s.series is not None:
            groups.setdefault(s.series, []).append(s)
    groups = {k: v for k, v in groups.items() if len(v) >= MIN_SERIES}
    if not groups:
        return None
    rhos, distinct = [], []
    for members in groups.values():
        numeric = [s for s in members if s.prediction is not None]
        distinct.append(len({round(float(s.prediction), 6) for s in numeric}))
        # rank_correlations(r, t) correlates r with -t; negating both gives predictions vs truth
        rho, _ = rank_correlations([-float(s.prediction) for s in numeric],
                                   [float(s.truth or 0.0) for s in numeric])
        rhos.append(rho)
    defined = [r for r in rhos if r is not None]
    return {'n_series': len(groups), 'n_defined': len(defined),
            'spearman_defined': float(np.mean(defined)) if defined else None,
            'spearman_all': float(np.sum(defined) / len(groups)),
            'median_distinct': float(np.median(distinct))}


@dataclass
class EvalReport:
    """
    Metrics overall, per kind and per question type, and the per-item grading.

    :ivar overall: ``aggregate`` over all items.
    :ivar by_kind: kind -> ``aggregate`` of its items.
    :ivar by_type: question type -> ``aggregate`` of its items.
    :ivar items: the per-item grading.
    :ivar tracking: :func:`tracking_metrics` of the items (None when none is in a series).
    """

    overall: dict[str, Any]
    by_kind: dict[str, dict[str, Any]]
    by_type: dict[str, dict[str, Any]]
    items: list[ItemScore]
    tracking: dict[str, Any] | None = None

    def to_dict(self, include_items: bool = False) -> dict[str, Any]:
        """Return a JSON-ready dict (per-item grading only if asked)."""
        out: dict[str, Any] = {'overall': self.overall, 'by_kind': self.by_kind,
                               'by_type': self.by_type, 'tracking': self.tracking}
        if include_items:
            out['items'] = [s.to_dict() for s in self.items]
        return out


def evaluate_items(items: Iterable[EvalItem], config: MetricsConfig | None = None) -> EvalReport:
    """Grade every item and aggregate overall, per kind and per question type."""
    cfg = config or MetricsConfig()
    scores = [score_item(item, cfg) for item in items]
    tolerances = (cfg.ratio_tolerance, cfg.zero_truth_m)
    by_kind = {kind: aggregate([s for s in scores if s.kind == kind], *tolerances)
               for kind in KINDS if any(s.kind == kind for s in scores)}
    by_type = {name: aggregate([s for s in scores if s.qa_type == name], *tolerances)
               for name in sorted({s.qa_type for s in scores})}
    return EvalReport(aggregate(scores, *tolerances), by_kind, by_type, scores,
                      tracking_metrics(scores))
