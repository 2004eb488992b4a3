"""
The per-image data engine (the paper's Fig. 2), stage by stage.

Stages: filter -> context -> depth -> surfaces -> canonical frame -> lifting -> ambiguity -> QA.

:class:`Engine` runs one :class:`~spatialvlm_ros.synth.stages.SceneInput` through the stages
chosen by :class:`EngineConfig` (backend names looked up in the ``synth.stages`` registries) and
returns an :class:`ImageResult`: kept or rejected (with the reason), the QA pairs with their
metadata, per-stage wall times and counts. When canonicalization fails the image is kept but
the question types that need the canonical frame are not generated. When the scene carries the
simulator's ground truth, every QA's metadata also holds the exact answer from the true
geometry (``sim_truth``) so that the engine's errors can be measured.

Randomness: :func:`scene_generators` derives independent generators for scene ``i`` of a run
from ``(seed, i)`` (``np.random.SeedSequence`` spawn keys), so results do not depend on the
number of workers or the order in which scenes are processed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
import inspect
import time
from typing import Any

import numpy as np

from spatialvlm_ros.synth import stages
from spatialvlm_ros.synth.ambiguity import AmbiguityConfig, resolve_ambiguity
from spatialvlm_ros.synth.canonical import CanonicalizationConfig, Canonicalizer
from spatialvlm_ros.synth.lifting import LiftingConfig, ObjectLifter
from spatialvlm_ros.synth.noise import NoiseConfig
from spatialvlm_ros.synth.qa import (
    evaluate,
    generate_qa,
    QA,
    QAConfig,
    QUESTION_TYPES,
    SceneObject,
)
from spatialvlm_ros.synth.rounding import RoundingConfig

STAGES = ('filter', 'context', 'depth', 'surface', 'canonical', 'lifting', 'ambiguity', 'qa')
BACKEND_STAGES = ('filter', 'context', 'depth', 'surface', 'embedder')
# RANSAC scores its 1000 hypotheses on this many surface points: 1000 x 20000 (the
# canonicalizer's own cap) cost ~250 ms per 320x240 image, 1000 x 2000 ~25 ms, with the same
# plane (it is refitted on all inliers afterwards).
ENGINE_RANSAC_POINTS = 2000


def scene_generators(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """
    Return ``(source_rng, engine_rng)`` for scene ``index`` of a run seeded with ``seed``.

    Both come from ``SeedSequence(seed, spawn_key=(index,))``: the first draws the scene
    (simulator), the second drives the engine (captions, noise, RANSAC, QA sampling).
    """
    if seed < 0 or index < 0:
        raise ValueError(f'seed and index must be >= 0, got seed={seed} index={index}')
    children = np.random.SeedSequence(int(seed), spawn_key=(int(index),)).spawn(2)
    return np.random.default_rng(children[0]), np.random.default_rng(children[1])


@dataclass
class EngineConfig:
    """
    Everything the per-image engine needs; validated on creation.

    :ivar scene_filter: filter backend (``'sim'``, ``'none'``, or e.g. ``'clip'`` from
        ``synth.hf``).
    :ivar context: region/mask/caption backend.
    :ivar depth: metric depth backend.
    :ivar surface: horizontal-surface segmentation backend.
    :ivar embedder: caption embedder for ambiguity resolution (``'hashing'``: no model).
    :ivar backend_kwargs: stage (``'filter'``, ``'context'``, ``'depth'``, ``'surface'``,
        ``'embedder'``) -> keyword arguments for that backend's factory.
    :ivar noise: input noise; passed as ``noise=`` to the context and depth backends whose
        factory accepts it (the sim ones), unless ``backend_kwargs`` sets it.
    :ivar lifting: per-object point cloud cleaning (paper's Listing 2 defaults).
    :ivar canonical: canonicalization (paper's Listing 3 values: 0.05 m, 3 points, 1000
        iterations); RANSAC scores hypotheses on at most :data:`ENGINE_RANSAC_POINTS`
        candidate points (the final plane is refitted on all of them).
    :ivar ambiguity: caption ambiguity thresholds.
    :ivar qa: QA sampler settings; its ``num_questions`` is replaced by ``qa_per_image``.
    :ivar qa_per_image: QA pairs generated per image (fewer when the objects allow fewer).
    :ivar min_objects: images with fewer objects left after lifting and ambiguity are
        rejected (2 allows every pairwise type).
    :ivar seed: the run's seed (see :func:`scene_generators`).
    :ivar score_truth: attach the exact simulator answer to each QA when the scene has truth.
    :ivar use_up_hint: pass ``SceneInput.extras['up_hint']`` (gravity's up direction in the
        camera frame, known on a robot from TF or an IMU; the sim source provides it) to the
        canonicalizer as its up prior. Without it the prior is the optical frame's -y, which
        rejects the table of a camera pitched down by more than ``canonical.max_tilt_deg``
        (the simulated cameras look 30-65 deg down).
    """

    scene_filter: str = 'sim'
    context: str = 'sim'
    depth: str = 'sim'
    surface: str = 'sim'
    embedder: str = 'hashing'
    backend_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    lifting: LiftingConfig = field(default_factory=LiftingConfig)
    canonical: CanonicalizationConfig = field(
        default_factory=lambda: CanonicalizationConfig(max_points=ENGINE_RANSAC_POINTS))
    ambiguity: AmbiguityConfig = field(default_factory=AmbiguityConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    qa_per_image: int = 10
    min_objects: int = 2
    seed: int = 0
    score_truth: bool = True
    use_up_hint: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.noise, (str, dict)):
            self.noise = NoiseConfig.from_value(self.noise)
        if self.qa_per_image < 1:
            raise ValueError(f'qa_per_image must be >= 1, got {self.qa_per_image}')
        if self.min_objects < 1:
            raise ValueError(f'min_objects must be >= 1, got {self.min_objects}')
        if self.seed < 0:
            raise ValueError(f'seed must be >= 0, got {self.seed}')
        unknown = sorted(set(self.backend_kwargs) - set(BACKEND_STAGES))
        if unknown:
            raise ValueError(f'backend_kwargs has unknown stages {unknown}; '
                             f'stages: {list(BACKEND_STAGES)}')
        stages._load_builtin_backends()
        for stage, name in self.backend_names().items():
            if name not in stages.REGISTRIES[stage]:
                raise ValueError(f'unknown {stage} backend {name!r}; available: '
                                 f'{sorted(stages.REGISTRIES[stage])}')
        if self.qa.num_questions != self.qa_per_image:
            self.qa = QAConfig(**{**_shallow(self.qa), 'num_questions': self.qa_per_image})

    def backend_names(self) -> dict[str, str]:
        """Return stage -> backend name."""
        return {'filter': self.scene_filter, 'context': self.context, 'depth': self.depth,
                'surface': self.surface, 'embedder': self.embedder}

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (inverse of :meth:`from_dict`)."""
        out = asdict(self)
        out['ambiguity']['stuff_captions'] = list(self.ambiguity.stuff_captions)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        """Build from :meth:`to_dict` output (missing fields take their defaults)."""
        data = dict(data)
        nested = {'noise': NoiseConfig, 'lifting': LiftingConfig,
                  'canonical': CanonicalizationConfig, 'ambiguity': AmbiguityConfig}
        for name, kind in nested.items():
            if isinstance(data.get(name), dict):
                data[name] = kind(**data[name])
        if isinstance(data.get('qa'), dict):
            qa = dict(data['qa'])
            if isinstance(qa.get('rounding'), dict):
                qa['rounding'] = RoundingConfig(**qa['rounding'])
            data['qa'] = QAConfig(**qa)
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise ValueError(f'unknown EngineConfig fields {extra}')
        return cls(**data)


def _shallow(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in fields(config)}


@dataclass
class ImageResult:
    """
    What the engine made of one image.

    :ivar image_id: the scene's id.
    :ivar kept: whether the image yields training data (QA pairs).
    :ivar reason: why it was rejected ('' when kept): ``'filter: <label>'``, ``'no regions'``,
        ``'too few objects'`` or ``'no questions'``.
    :ivar qa: the QA pairs.
    :ivar qa_metadata: one JSON-ready dict per QA: ``QA.to_dict()`` (type, kind,
        needs_canonical, object ids and captions, exact ``value_m`` / ``truth``, stated value)
        plus ``sim_truth`` (the exact answer from the simulator's geometry) when known.
    :ivar objects: the final objects: id, caption, XYXY box, number of cleaned points.
    :ivar canonical_ok: whether a canonical frame was found.
    :ivar canonical_reason: why canonicalization failed ('' when ok).
    :ivar filter_label: the scene filter's winning label.
    :ivar filter_scores: the scene filter's label probabilities.
    :ivar timings: stage -> wall seconds (:data:`STAGES`; stages not reached are absent).
    :ivar counts: regions, lift failures, dropped captions, objects, QA by kind.
    """

    image_id: str
    kept: bool
    reason: str = ''
    qa: list[QA] = field(default_factory=list)
    qa_metadata: list[dict[str, Any]] = field(default_factory=list)
    objects: list[dict[str, Any]] = field(default_factory=list)
    canonical_ok: bool = False
    canonical_reason: str = ''
    filter_label: str = ''
    filter_scores: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """Return a JSON-ready per-image summary (no QA text): the ``metadata.jsonl`` line."""
        return {'image_id': self.image_id, 'kept': self.kept, 'reason': self.reason,
                'canonical_ok': self.canonical_ok, 'canonical_reason': self.canonical_reason,
                'filter_label': self.filter_label, 'objects': self.objects,
                'qa_types': [q.qa_type for q in self.qa],
                'qa_agreement': [agreement(m) for m in self.qa_metadata],
                'timings': self.timings, 'counts': self.counts}


def agreement(meta: dict[str, Any]) -> bool | None:
    """
    Return whether a QA's answer agrees with the simulator's exact answer (None if unknown).

    Qualitative: the same truth, unless either side is ambiguous (then None). Quantitative:
    the stated value lies within [50%, 200%] of the true value (the paper's criterion); a
    directed difference whose true value is not positive (the relation is reversed) disagrees.
    """
    truth = meta.get('sim_truth')
    if truth is None:
        return None
    if meta['kind'] != 'quantitative':
        if meta['ambiguous'] or truth['ambiguous']:
            return None
        return meta['truth'] == truth['truth']
    stated, exact = meta.get('stated_value_m'), truth['value_m']
    if stated is None:
        return None
    if not exact > 0:  # a directed difference whose relation does not hold, or no value
        return False
    return 0.5 <= stated / exact <= 2.0


def _accepts(factory: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())


class Engine:
    """Run the data engine's stages on one image at a time."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        """Build every stage's backend (models load here, not per image)."""
        self.config = config or EngineConfig()
        cfg = self.config
        backends = {}
        for stage, name in cfg.backend_names().items():
            kwargs = dict(cfg.backend_kwargs.get(stage, {}))
            if stage in ('context', 'depth') and 'noise' not in kwargs and (
                    not cfg.noise.perfect) and _accepts(stages.REGISTRIES[stage][name], 'noise'):
                kwargs['noise'] = cfg.noise
            backends[stage] = stages.build(stage, name, **kwargs)
        self.scene_filter = backends['filter']
        self.context = backends['context']
        self.depth = backends['depth']
        self.surface = backends['surface']
        self.embedder = backends['embedder']
        self.canonicalizer = Canonicalizer(cfg.canonical)
        self.lifter = ObjectLifter(cfg.lifting)

    def process(self, scene: stages.SceneInput, rng: np.random.Generator) -> ImageResult:
        """
        Run every stage on ``scene``; ``rng`` drives all randomness (see scene_generators).

        Never raises for data reasons: rejections and failures are reported in the result.
        """
        cfg = self.config
        rng_context, rng_depth, rng_canon, rng_ambiguity, rng_qa = rng.spawn(5)
        result = ImageResult(scene.image_id, False)
        timings = result.timings
        counts = result.counts

        start = time.perf_counter()
        verdict = self.scene_filter.run(scene)
        timings['filter'] = time.perf_counter() - start
        result.filter_label, result.filter_scores = verdict.label, dict(verdict.scores)
        if not verdict.keep:
            result.reason = f'filter: {verdict.label}'
            return result

        start = time.perf_counter()
        regions = self.context.run(scene, rng_context)
        timings['context'] = time.perf_counter() - start
        counts['regions'] = len(regions)
        if not regions:
            result.reason = 'no regions'
            return result

        start = time.perf_counter()
        depth = self.depth.run(scene, rng_depth)
        timings['depth'] = time.perf_counter() - start
        if scene.depth is None and 'depth' not in scene.extras:
            # surface backends that need depth (depth_normals) read the depth stage's result
            scene = replace(scene, extras={**scene.extras, 'depth': depth})

        start = time.perf_counter()
        surface = self.surface.run(scene)
        timings['surface'] = time.perf_counter() - start

        start = time.perf_counter()
        up_hint = scene.extras.get('up_hint') if cfg.use_up_hint else None
        frame = self.canonicalizer.run(depth.depth, depth.intrinsics, rng_canon, mask=surface,
                                       up_hint=up_hint)
        timings['canonical'] = time.perf_counter() - start
        result.canonical_ok, result.canonical_reason = frame.ok, frame.reason
        T_canon_cam = frame.T_canon_cam if frame.ok else None

        start = time.perf_counter()
        lifted, lifted_regions = [], []
        for region in regions:
            obj = self.lifter.run(depth.depth, region.mask, depth.intrinsics, T_canon_cam)
            if obj.ok:
                lifted.append(obj)
                lifted_regions.append(region)
        timings['lifting'] = time.perf_counter() - start
        counts['lift_failed'] = len(regions) - len(lifted)

        start = time.perf_counter()
        height, width = depth.depth.shape
        resolved = resolve_ambiguity(lifted_regions, self.embedder, (width, height),
                                     rng_ambiguity, cfg.ambiguity)
        timings['ambiguity'] = time.perf_counter() - start
        counts['dropped_stuff'] = resolved.dropped['stuff']
        counts['dropped_ambiguous'] = resolved.dropped['ambiguous']
        counts['disambiguated'] = resolved.disambiguated
        counts['objects'] = len(resolved.regions)

        objects, used_ids = [], set()
        pairs = zip(resolved.kept_indices, resolved.regions, strict=True)
        for k, (index, region) in enumerate(pairs):
            object_id = region.object_id or f'object_{index}'
            if object_id in used_ids:
                object_id = f'{object_id}_{k}'
            used_ids.add(object_id)
            objects.append(SceneObject.from_lifted(object_id, region.caption, lifted[index]))
            result.objects.append({'id': object_id, 'caption': region.caption,
                                   'box': [float(v) for v in region.box],
                                   'points': int(len(lifted[index].points))})
        if len(objects) < cfg.min_objects:
            result.reason = 'too few objects'
            return result

        start = time.perf_counter()
        result.qa = generate_qa(objects, frame.ok, rng_qa, cfg.qa)
        result.qa_metadata = [qa.to_dict() for qa in result.qa]
        if cfg.score_truth and scene.truth is not None:
            self._score(scene, objects, result)
        timings['qa'] = time.perf_counter() - start
        counts['qa'] = len(result.qa)
        counts['qa_qualitative'] = sum(q.kind != 'quantitative' for q in result.qa)
        counts['qa_quantitative'] = counts['qa'] - counts['qa_qualitative']
        result.kept = bool(result.qa)
        result.reason = '' if result.kept else 'no questions'
        return result

    def _score(self, scene: stages.SceneInput, objects: list[SceneObject],
               result: ImageResult) -> None:
        from spatialvlm_ros.synth.sim_backends import true_scene_objects

        cfg = self.config.qa
        truth = true_scene_objects(scene.truth, {o.object_id: o.caption for o in objects},
                                   scene.extras.get('table_height'),
                                   scene.extras.get('vertices_world'))
        for qa, meta in zip(result.qa, result.qa_metadata, strict=True):
            if not all(i in truth for i in qa.object_ids):
                continue
            pair = [truth[i] for i in qa.object_ids]
            exact = evaluate(qa.qa_type, pair[0], pair[1] if len(pair) > 1 else None,
                             cfg.position_margin, cfg.size_margin)
            meta['sim_truth'] = {'value_m': float(exact.value), 'truth': exact.truth,
                                 'ambiguous': bool(exact.ambiguous)}


def needs_canonical_types() -> list[str]:
    """Return the names of the question types that need the canonical frame."""
    return [name for name, t in QUESTION_TYPES.items() if t.needs_canonical]
