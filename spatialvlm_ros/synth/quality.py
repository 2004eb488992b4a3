"""
Data quality against ground truth: how often the engine's answers match the simulator's truth.

Held-out simulated scenes (seeds never used for training or tests, by default 1000) are run
through the full engine (:class:`~spatialvlm_ros.synth.pipeline.Engine`, with truth scoring)
under several input conditions (perfect inputs and the noise presets of
:mod:`spatialvlm_ros.synth.noise`). Each generated QA carries the engine's answer and, in
``sim_truth``, the exact answer computed from the true geometry
(:func:`~spatialvlm_ros.synth.sim_backends.true_scene_objects`: oriented boxes in the true
canonical frame), so for each of the 43 question types we count:

- qualitative: the engine's answer equals the true one. QAs where either side is *ambiguous*
  (the engine answered with uncertainty, or the true difference is within the margin) are not
  scored; they are counted separately (``ambiguous``);
- quantitative: the engine's exact value (before rounding, from the lifted point clouds in the
  estimated canonical frame) within 10% of the true value (``exact_10``); the value stated in
  the answer after human-like rounding within 10% (``stated_10``) and within [50%, 200%] of it
  (``stated_2x``, the paper's criterion). A directed difference whose true value is not positive
  (the engine got the relation backwards) fails all three.

Per image it also records canonicalization failures and the angle between the estimated table
normal and the true up direction. :func:`markdown` renders the result as tables.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
import time
from typing import Any

import numpy as np

from spatialvlm_ros.synth.noise import NoiseConfig, PRESETS
from spatialvlm_ros.synth.pipeline import Engine, EngineConfig, scene_generators
from spatialvlm_ros.synth.qa import QUESTION_TYPES

CONDITIONS = ('none', 'mild', 'monocular', 'harsh')
HELD_OUT_SEED = 1000
FAMILIES = ('predicate', 'choice', 'classify', 'quantitative')


@dataclass
class QualityConfig:
    """
    One quality measurement.

    :ivar num_scenes: held-out scenes per condition.
    :ivar seed: the scenes' seed (keep it away from training and test seeds).
    :ivar conditions: noise presets (keys of ``noise.PRESETS``); ``'none'`` = perfect inputs.
    :ivar width: image width in pixels.
    :ivar height: image height in pixels.
    :ivar qa_per_image: QA pairs sampled per image (more gives more QAs per type per scene).
    :ivar tolerance: relative tolerance of the quantitative ``*_10`` criteria.
    :ivar engine: other ``EngineConfig`` fields (seed, noise, qa_per_image are set here).
    """

    num_scenes: int = 100
    seed: int = HELD_OUT_SEED
    conditions: tuple[str, ...] = CONDITIONS
    width: int = 320
    height: int = 240
    qa_per_image: int = 40
    tolerance: float = 0.1
    engine: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_scenes < 1:
            raise ValueError(f'num_scenes must be >= 1, got {self.num_scenes}')
        unknown = sorted(set(self.conditions) - set(PRESETS))
        if unknown:
            raise ValueError(f'unknown noise presets {unknown}; presets: {sorted(PRESETS)}')
        if not 0.0 < self.tolerance < 1.0:
            raise ValueError(f'tolerance must be in (0, 1), got {self.tolerance}')
        self.conditions = tuple(self.conditions)


class _RecordingCanonicalizer:
    """Wrap a canonicalizer and keep the last frame it returned (for the normal's error)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last = None

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.last = self.inner.run(*args, **kwargs)
        return self.last


def score_qa(meta: dict[str, Any], tolerance: float = 0.1) -> dict[str, bool] | None:
    """
    Return the criteria one QA's metadata meets against its ``sim_truth`` (None if unknown).

    Qualitative: ``{'ambiguous': bool, 'agree': bool}`` (``agree`` is False when ambiguous).
    Quantitative: ``{'exact_10', 'stated_10', 'stated_2x'}``.
    """
    truth = meta.get('sim_truth')
    if truth is None:
        return None
    if meta['kind'] != 'quantitative':
        ambiguous = bool(meta['ambiguous'] or truth['ambiguous'])
        return {'ambiguous': ambiguous,
                'agree': not ambiguous and meta['truth'] == truth['truth']}
    exact, value, stated = truth['value_m'], meta['value_m'], meta['stated_value_m']
    if not exact > 0 or stated is None:
        return {'exact_10': False, 'stated_10': False, 'stated_2x': False}
    return {'exact_10': abs(value - exact) <= tolerance * exact,
            'stated_10': abs(stated - exact) <= tolerance * exact,
            'stated_2x': 0.5 <= stated / exact <= 2.0}


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def measure_condition(config: QualityConfig, condition: str,
                      progress: bool = False) -> dict[str, Any]:
    """
    Run the held-out scenes under one noise condition; return counts per type and per image.

    The result holds ``per_type`` (type -> Counter of criteria), ``images``, ``kept``,
    ``canonical_failures``, ``normal_error_deg`` (one angle per successful canonicalization)
    and ``seconds``.
    """
    from spatialvlm_ros.synth.sim_backends import sim_scenes

    engine_config = EngineConfig(**{**config.engine, 'seed': config.seed,
                                    'noise': NoiseConfig.from_value(condition),
                                    'qa_per_image': config.qa_per_image})
    engine = Engine(engine_config)
    recorder = _RecordingCanonicalizer(engine.canonicalizer)
    engine.canonicalizer = recorder
    per_type: dict[str, Counter] = defaultdict(Counter)
    images = kept = reached = failures = 0
    normal_errors: list[float] = []
    started = time.perf_counter()
    scenes = sim_scenes(config.seed, config.num_scenes, width=config.width,
                        height=config.height)
    for index, scene in enumerate(scenes):
        recorder.last = None
        result = engine.process(scene, scene_generators(config.seed, index)[1])
        images += 1
        kept += result.kept
        if recorder.last is not None:
            reached += 1
            if recorder.last.ok:
                normal_errors.append(_angle_deg(recorder.last.plane_normal,
                                                scene.extras['up_hint']))
            else:
                failures += 1
        for meta in result.qa_metadata:
            scored = score_qa(meta, config.tolerance)
            counts = per_type[meta['qa_type']]
            counts['n'] += 1
            if scored is None:
                counts['unknown'] += 1
                continue
            counts['scored'] += 1
            counts.update(k for k, v in scored.items() if v)
        if progress and (index + 1) % 25 == 0:
            print(f'  {condition}: {index + 1}/{config.num_scenes} scenes', flush=True)
    return {'condition': condition, 'images': images, 'kept': kept,
            'canonical_attempts': reached, 'canonical_failures': failures,
            'normal_error_deg': normal_errors,
            'per_type': {k: dict(v) for k, v in per_type.items()},
            'seconds': time.perf_counter() - started}


def _share(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def type_rates(counts: dict[str, int], qualitative: bool) -> dict[str, Any]:
    """Return the rates of one type's (or family's) counts: agreement shares and sample sizes."""
    scored = counts.get('scored', 0)
    if qualitative:
        ambiguous = counts.get('ambiguous', 0)
        return {'n': counts.get('n', 0), 'scored': scored, 'ambiguous': ambiguous,
                'ambiguous_share': _share(ambiguous, scored),
                'agree': _share(counts.get('agree', 0), scored - ambiguous)}
    return {'n': counts.get('n', 0), 'scored': scored,
            **{k: _share(counts.get(k, 0), scored)
               for k in ('exact_10', 'stated_10', 'stated_2x')}}


def summarize_condition(raw: dict[str, Any]) -> dict[str, Any]:
    """Return the rates per type, per family and overall of :func:`measure_condition` output."""
    per_type = raw['per_type']
    families: dict[str, Counter] = defaultdict(Counter)
    for name, counts in per_type.items():
        qtype = QUESTION_TYPES[name]
        families[qtype.kind].update(counts)
        families['qualitative' if qtype.qualitative else 'quantitative_all'].update(counts)
    errors = np.asarray(raw['normal_error_deg'], dtype=np.float64)
    return {
        'condition': raw['condition'], 'images': raw['images'], 'kept': raw['kept'],
        'seconds': raw['seconds'],
        'canonical_failure_rate': _share(raw['canonical_failures'], raw['canonical_attempts']),
        'normal_error_deg': ({'mean': float(errors.mean()), 'median': float(np.median(errors)),
                              'p95': float(np.percentile(errors, 95)),
                              'max': float(errors.max())} if len(errors) else None),
        'per_type': {name: type_rates(per_type.get(name, {}), QUESTION_TYPES[name].qualitative)
                     for name in QUESTION_TYPES},
        'families': {name: type_rates(families.get(name, Counter()),
                                      name in ('predicate', 'choice', 'classify',
                                               'qualitative'))
                     for name in (*FAMILIES[:3], 'qualitative', 'quantitative_all')},
    }


def measure(config: QualityConfig, progress: bool = False) -> dict[str, Any]:
    """Return the quality report: config and :func:`summarize_condition` per condition."""
    report = {'config': {'num_scenes': config.num_scenes, 'seed': config.seed,
                         'width': config.width, 'height': config.height,
                         'qa_per_image': config.qa_per_image, 'tolerance': config.tolerance,
                         'engine': config.engine},
              'conditions': {}}
    for condition in config.conditions:
        raw = measure_condition(config, condition, progress)
        report['conditions'][condition] = summarize_condition(raw)
    return report


def _pct(value: float | None) -> str:
    return '-' if value is None else f'{100 * value:.0f}'


def markdown(report: dict[str, Any]) -> str:
    """Return the report as markdown: one row per type, totals by family, frame quality."""
    conditions = list(report['conditions'])
    lines = ['Qualitative types: % agreeing with the truth among unambiguous QAs (n scored, '
             '% ambiguous = engine uncertain or true difference within the margin).', '',
             '| type | kind | canonical | ' + ' | '.join(
                 f'{c} agree % | {c} n | {c} ambiguous %' for c in conditions) + ' |',
             '|---|---|---|' + '---|---|---|' * len(conditions)]
    for name, qtype in QUESTION_TYPES.items():
        if not qtype.qualitative:
            continue
        cells = []
        for c in conditions:
            r = report['conditions'][c]['per_type'][name]
            cells += [_pct(r['agree']), str(r['scored'] - r['ambiguous']),
                      _pct(r['ambiguous_share'])]
        lines.append(f'| {name} | {qtype.kind} | {"yes" if qtype.needs_canonical else ""} | '
                     + ' | '.join(cells) + ' |')
    lines += ['', 'Quantitative types: % within 10% of the true value: the exact value before '
              'rounding (exact), the stated value after rounding (stated); and % of stated '
              'values within [50%, 200%] (2x).', '',
              '| type | canonical | ' + ' | '.join(
                  f'{c} exact | {c} stated | {c} 2x | {c} n' for c in conditions) + ' |',
              '|---|---|' + '---|---|---|---|' * len(conditions)]
    for name, qtype in QUESTION_TYPES.items():
        if qtype.qualitative:
            continue
        cells = []
        for c in conditions:
            r = report['conditions'][c]['per_type'][name]
            cells += [_pct(r['exact_10']), _pct(r['stated_10']), _pct(r['stated_2x']),
                      str(r['scored'])]
        lines.append(f'| {name} | {"yes" if qtype.needs_canonical else ""} | '
                     + ' | '.join(cells) + ' |')
    lines += ['', '| family | ' + ' | '.join(conditions) + ' |',
              '|---|' + '---|' * len(conditions)]
    for family in ('predicate', 'choice', 'classify', 'qualitative'):
        cells = []
        for c in conditions:
            r = report['conditions'][c]['families'][family]
            cells.append(f'{_pct(r["agree"])}% agree (n {r["scored"] - r["ambiguous"]}, '
                         f'{_pct(r["ambiguous_share"])}% ambiguous)')
        lines.append(f'| {family} | ' + ' | '.join(cells) + ' |')
    cells = []
    for c in conditions:
        r = report['conditions'][c]['families']['quantitative_all']
        cells.append(f'exact {_pct(r["exact_10"])}% / stated {_pct(r["stated_10"])}% within '
                     f'10%, {_pct(r["stated_2x"])}% within 2x (n {r["scored"]})')
    lines.append('| quantitative | ' + ' | '.join(cells) + ' |')
    cells = []
    for c in conditions:
        r = report['conditions'][c]
        cells.append(f'{_pct(r["canonical_failure_rate"])}%')
    lines.append('| canonicalization failures | ' + ' | '.join(cells) + ' |')
    cells = []
    for c in conditions:
        e = report['conditions'][c]['normal_error_deg']
        cells.append('-' if e is None else
                     f'{e["mean"]:.2f} mean, {e["median"]:.2f} median, {e["p95"]:.2f} p95')
    lines.append('| table normal error (deg) | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def overall(report: dict[str, Any], condition: str, family: str,
            key: str) -> float | None:
    """Return one family's rate under one condition (e.g. 'none', 'qualitative', 'agree')."""
    return report['conditions'][condition]['families'][family][key]
