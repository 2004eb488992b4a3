"""
Replay bags through the reward pipeline offline: the node's estimator, smoother and shaping.

For each bag every image of the image topic is scored in order with
:class:`~spatialvlm_ros.replay.pipeline.RewardPipeline` (deterministic: the oracles are seeded
per bag from ``seed`` and the bag's name), then compared with the bag's ground truth
(:mod:`spatialvlm_ros.replay.metrics`). Outputs per bag under ``out_dir``: ``<name>.csv``,
``<name>.png`` and, with ``write_bag``, the relabelled copy ``<name>_reward``; for the run:
``summary.json`` and ``summary.md``. All bags are opened and checked before any is scored, and
every output is written atomically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import math
from pathlib import Path
from typing import Any, Sequence
import zlib

import numpy as np

from spatialvlm_ros.bags.errors import BagError
from spatialvlm_ros.core.reward import RewardConfig
from spatialvlm_ros.model.estimator import (
    check_number_decoding,
    check_sampling,
    DEFAULT_NUMBER_DECODING,
    DEFAULT_QUESTION_TEMPLATE,
    DEFAULT_TEMPERATURE,
    normalize_template,
)
from spatialvlm_ros.replay import metrics as replay_metrics
from spatialvlm_ros.replay.estimators import (
    build_estimator,
    ESTIMATOR_KINDS,
    needs_truth,
    NoisyOracleConfig,
    TruthProbe,
)
from spatialvlm_ros.replay.pipeline import (
    DEFAULT_SUBJECT,
    FrameRecord,
    RewardPipeline,
    smoother_config,
    SMOOTHER_KINDS,
)
from spatialvlm_ros.replay.source import BagSource, DEFAULT_IMAGE_TOPIC, iter_frames, open_source


@dataclass
class ReplayConfig:
    """
    What a replay runs.

    :ivar estimator: one of ``ESTIMATOR_KINDS``.
    :ivar model_folder: the VLM's folder (None: the shipped default model).
    :ivar answer_prefix: text the VLM's answers are made to start with ('' for none; None: the
        estimator's default, as in the node).
    :ivar samples: VLM answers sampled per frame and averaged (the node's
        ``samples_per_frame``); 1 decodes one answer as ``number_decoding`` says.
    :ivar temperature: VLM sampling temperature when ``samples > 1`` (the node's
        ``sampling_temperature``).
    :ivar number_decoding: with one answer per frame, ``'median'`` or ``'greedy'`` (the node's
        ``number_decoding``; ``model.estimator.NUMBER_DECODINGS``).
    :ivar mirror_average: also ask about each frame's mirror image and average the two distances
        (the node's ``mirror_average``).
    :ivar question_template: the VLM's question, ``{subject}`` / ``{target}`` (or ``[A]`` /
        ``[B]``) slots; the node's default.
    :ivar subject: the moving part's phrase.
    :ivar target: the target phrase; None: from each bag's metadata (its target caption).
    :ivar smoother: one of ``SMOOTHER_KINDS``.
    :ivar reward_mode: ``RewardConfig.mode``.
    :ivar reward_scale: ``RewardConfig.scale`` (m).
    :ivar success_threshold_m: the shaper's success threshold on the *estimated* distance.
    :ivar truth: the true distance the estimates are compared with ('centre' or 'surface');
        also what the oracles answer.
    :ivar true_success_m: true success is a true distance (``truth``) at most this (m).
    :ivar image_topic: the topic scored.
    :ivar seed: seeds the noisy oracle (mixed with each bag's name).
    :ivar noise: the noisy oracle's settings.
    """

    estimator: str = 'vlm'
    model_folder: str | None = None
    answer_prefix: str | None = None
    samples: int = 1
    temperature: float = DEFAULT_TEMPERATURE
    number_decoding: str = DEFAULT_NUMBER_DECODING
    mirror_average: bool = False
    question_template: str = DEFAULT_QUESTION_TEMPLATE
    subject: str = DEFAULT_SUBJECT
    target: str | None = None
    smoother: str = 'median_ema'
    reward_mode: str = 'negative_distance'
    reward_scale: float = 1.0
    success_threshold_m: float = 0.05
    truth: str = 'centre'
    true_success_m: float = 0.05
    image_topic: str = DEFAULT_IMAGE_TOPIC
    seed: int = 0
    noise: NoisyOracleConfig = field(default_factory=NoisyOracleConfig)

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATOR_KINDS:
            raise ValueError(f'estimator must be one of {ESTIMATOR_KINDS}, '
                             f'got {self.estimator!r}')
        if self.smoother not in SMOOTHER_KINDS:
            raise ValueError(f'smoother must be one of {sorted(SMOOTHER_KINDS)}, '
                             f'got {self.smoother!r}')
        if self.truth not in replay_metrics.TRUTHS:
            raise ValueError(f'truth must be one of {replay_metrics.TRUTHS}, got {self.truth!r}')
        if not (math.isfinite(self.true_success_m) and self.true_success_m >= 0):
            raise ValueError(f'true_success_m must be >= 0, got {self.true_success_m}')
        if not self.subject.strip():
            raise ValueError('subject must be non-empty')
        if self.target is not None and not self.target.strip():
            raise ValueError('target must be non-empty when given (none: the target named in '
                             'the bag metadata)')
        normalize_template(self.question_template)  # both slots, or a clear ValueError
        check_sampling(self.samples, self.temperature)  # the node's ranges
        check_number_decoding(self.number_decoding)
        if not isinstance(self.mirror_average, bool):
            raise ValueError(f'mirror_average must be a bool, got {self.mirror_average!r}')
        self.reward_config()  # validates mode, scale and threshold

    def vlm_options(self) -> dict[str, Any]:
        """Return the VLM estimator's options that differ from its defaults."""
        options: dict[str, Any] = {}
        if self.answer_prefix is not None:
            options['answer_prefix'] = self.answer_prefix
        if self.question_template != DEFAULT_QUESTION_TEMPLATE:
            options['question_template'] = self.question_template
        if self.samples != 1:
            options.update(samples=self.samples, temperature=self.temperature)
        if self.number_decoding != DEFAULT_NUMBER_DECODING:
            options['number_decoding'] = self.number_decoding
        if self.mirror_average:
            options['mirror_average'] = True
        return options

    def reward_config(self) -> RewardConfig:
        """Return the shaping settings."""
        return RewardConfig(mode=self.reward_mode, scale=self.reward_scale,
                            success_threshold_m=self.success_threshold_m)


@dataclass
class BagReplay:
    """The result of replaying one bag: its records, truths, metrics and output files."""

    path: Path
    name: str
    subject: str
    target: str
    stamps_ns: list[int]
    records: list[FrameRecord]
    truth_centre: list[float | None]
    truth_surface: list[float | None]
    frame_ids: list[str]
    metrics: dict[str, Any]
    outputs: dict[str, str] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """Return the bag's line of the summary: metrics, name, target and outputs."""
        return {'bag': str(self.path), 'bag_name': self.name, 'target': self.target,
                **self.metrics, 'outputs': dict(self.outputs)}


def bag_name(path: Path) -> str:
    """Return the output stem of a bag (its folder name, or a storage file's stem)."""
    path = Path(path)
    return path.name if path.is_dir() else path.name.split('.')[0]


def bag_seed(seed: int, name: str) -> np.random.Generator:
    """Return the noisy oracle's generator for a bag: ``seed`` mixed with its name."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode('utf-8'))])


def _target_for(source: BagSource, config: ReplayConfig) -> str:
    target = config.target or source.default_target()
    if not target:
        raise BagError(f'{source.path}: no target phrase in the bag metadata; pass --target')
    return target


def check_sources(paths: Sequence[str | Path], config: ReplayConfig) -> list[BagSource]:
    """Open every bag and check it can be replayed with ``config`` (before scoring any)."""
    sources = []
    for path in paths:
        source = open_source(path, config.image_topic)
        if source.image_count == 0:
            raise BagError(f'{source.path}: topic {config.image_topic} holds no images')
        if needs_truth(config.estimator) and not source.has_truth:
            raise BagError(f'{source.path}: the {config.estimator} estimator needs ground-truth '
                           f'distances (an episode bag from `spatialvlm sim episode`)')
        _target_for(source, config)
        sources.append(source)
    return sources


def replay_source(source: BagSource, config: ReplayConfig, estimator: Any = None,
                  name: str | None = None, progress: bool = False) -> BagReplay:
    """
    Score every image of one bag and compute its metrics (no files written).

    :param estimator: an estimator to use (e.g. one loaded VLM shared by all bags; not closed
        here); None builds ``config.estimator`` for this bag.
    """
    from tqdm import tqdm

    name = name or bag_name(source.path)
    target = _target_for(source, config)
    probe = TruthProbe()
    owned = estimator is None
    if owned:
        estimator = build_estimator(config.estimator, lookup=probe,
                                    rng=bag_seed(config.seed, name), noise=config.noise,
                                    model_folder=config.model_folder,
                                    **config.vlm_options())
    pipeline = RewardPipeline(estimator, config.subject, target,
                              smoother_config(config.smoother), config.reward_config())
    stamps: list[int] = []
    records: list[FrameRecord] = []
    centre: list[float | None] = []
    surface: list[float | None] = []
    frame_ids: list[str] = []
    resets = 0  # image stamps that went back in time
    try:
        bar = tqdm(total=source.image_count, desc=name, unit='frame', disable=not progress,
                   leave=False)
        with bar:
            for frame in iter_frames(source):
                probe.set_value(frame.truth_centre_m if config.truth == 'centre'
                                else frame.truth_surface_m)
                t = frame.stamp_ns / 1e9
                if pipeline.last_stamp_s is not None and t < pipeline.last_stamp_s:
                    pipeline.reset()  # as the node does: a new episode starts
                    resets += 1
                try:
                    record = pipeline.step(t, frame.rgb)
                except ValueError as exc:
                    raise BagError(f'{source.path}: image at {frame.stamp_ns} ns: {exc}') \
                        from exc
                stamps.append(frame.stamp_ns)
                records.append(record)
                centre.append(frame.truth_centre_m)
                surface.append(frame.truth_surface_m)
                frame_ids.append(frame.frame_id)
                bar.update(1)
    finally:
        if owned:
            pipeline.close()
    if not records:
        raise BagError(f'{source.path}: no images on {config.image_topic}')
    metrics = replay_metrics.episode_metrics(records, centre, surface, config.truth,
                                             config.true_success_m, config.reward_mode)
    metrics['stamp_resets'] = resets
    return BagReplay(source.path, name, config.subject, target, stamps, records, centre, surface,
                     frame_ids, metrics)


def write_outputs(result: BagReplay, out_dir: Path, write_bag: bool = False,
                  plot: bool = True) -> dict[str, str]:
    """Write a bag's CSV, plot and (optionally) relabelled bag; return their paths."""
    from spatialvlm_ros.replay import outputs

    out_dir = Path(out_dir)
    files = {'csv': str(outputs.write_csv(out_dir / f'{result.name}.csv', result.stamps_ns,
                                          result.records, result.truth_centre,
                                          result.truth_surface))}
    if plot:
        m = result.metrics
        title = (f'{result.name}: "{result.target}"  Spearman {_short(m.get("spearman"))}  '
                 f'MAE {_short(m.get("mae_m"))} m')
        files['plot'] = str(outputs.write_plot(out_dir / f'{result.name}.png', title,
                                               result.stamps_ns, result.records,
                                               result.truth_centre, result.truth_surface))
    if write_bag:
        counts = outputs.write_relabelled_bag(
            result.path, out_dir / f'{result.name}_reward',
            list(zip(result.stamps_ns, result.frame_ids, strict=True)), result.records,
            result.subject, result.target, overwrite=True)
        files['bag'] = str(out_dir / f'{result.name}_reward')
        result.metrics['bag_messages'] = counts
    result.outputs.update(files)
    return files


def _short(value: Any) -> str:
    return '-' if value is None else f'{value:.3f}'


def replay_bags(paths: Sequence[str | Path], config: ReplayConfig, out_dir: str | Path,
                estimator: Any = None, write_bag: bool = False, plot: bool = True,
                progress: bool = False) -> dict[str, Any]:
    """
    Replay bags and write their outputs and the summary; return the summary.

    :param estimator: an injected estimator shared by all bags (not closed); None builds
        ``config.estimator`` (one VLM for all bags, a freshly seeded oracle per bag).
    """
    from spatialvlm_ros.replay import outputs

    if not paths:
        raise ValueError('no bags given')
    sources = check_sources(paths, config)
    out_dir = Path(out_dir)
    names = _unique_names([bag_name(s.path) for s in sources])
    shared, owned = estimator, False
    if shared is None and not needs_truth(config.estimator):
        shared = build_estimator(config.estimator, model_folder=config.model_folder,
                                 **config.vlm_options())
        owned = True
    rows = []
    try:
        for source, name in zip(sources, names, strict=True):
            result = replay_source(source, config, shared, name, progress)
            write_outputs(result, out_dir, write_bag, plot)
            rows.append(result.row())
    finally:
        if owned and shared is not None:
            shared.close()
    total = replay_metrics.summarize(rows)
    summary = {'config': _config_dict(config), 'bags': rows, 'total': total}
    from spatialvlm_ros.bags.writer import write_json_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / 'summary.json', summary)
    outputs.write_text(out_dir / 'summary.md', outputs.summary_markdown(rows, total))
    return summary


def _config_dict(config: ReplayConfig) -> dict[str, Any]:
    return asdict(config)


def _unique_names(names: list[str]) -> list[str]:
    """Return ``names`` with repeats suffixed ``_1``, ``_2``... unlike every name already used."""
    used: set[str] = set()
    out = []
    for name in names:
        unique, count = name, 0
        while unique in used:  # 'ep', 'ep', 'ep_1' -> 'ep', 'ep_1', 'ep_1_1'
            count += 1
            unique = f'{name}_{count}'
        used.add(unique)
        out.append(unique)
    return out
