"""
Gripper-to-object distance QA from simulated robot episodes (the reward node's question).

The engine's object-centric pipeline (regions, lifting, canonical frame) asks about pairs of
objects; a robot also knows where its gripper is (kinematics and camera calibration), which is
how the paper labelled its robot data. This module renders episodes of the Panda approaching,
retreating from and lifting objects, and for sampled frames writes questions such as 'What is
the distance between the gripper and the red mug?' answered with the exact grasp-point to
object-centre distance, rounded the human way (``synth.rounding``) or, with
``answer_style='metric'``, stated as fixed-width metres to the centimetre ('The distance is
0.46 m.'). Rows use the engine's chat
format (``synth.dataset.parquet_bytes``), so training and evaluation read them unchanged; each
QA's metadata has type ``gripper_distance``, ``value_m`` (exact) and ``sim_truth``, and
``boxes``: for each of its ``captions`` (the gripper, the object) a box in XYXY pixels of the
image, or None where it is not in view. The object's box bounds its visible pixels; the
gripper's is a square of ``GRIPPER_HALF_SIZE_M`` around the projected grasp point.
Supervised grounding (``TrainConfig.grounding_weight``) reads them.

Shard ``k`` holds episodes ``[k * episodes_per_shard, (k + 1) * episodes_per_shard)``; files
are written atomically, and a shard whose file exists is skipped, so a killed run resumes.
Deterministic for a seed: a shard's bytes depend only on the configuration and its index, so
writing shards in parallel (``workers``) gives the same files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, MISSING
import json
from pathlib import Path
from typing import Any

import numpy as np

from spatialvlm_ros.synth.dataset import (
    atomic_write,
    dumps,
    encode_png,
    parquet_bytes,
    turn_messages,
)
from spatialvlm_ros.synth.rounding import humanize_distance

TEMPLATES = Path(__file__).resolve().parent / 'templates' / 'gripper_templates.json'
QA_TYPE = 'gripper_distance'
ANSWER_STYLES = ('human', 'metric')
# the 'metric' answer; it starts with the reward node's default answer prefix
METRIC_ANSWER = 'The distance is [X].'
# half the side of the square, centred on the grasp point, that stands for the gripper in the
# boxes of the metadata: the Panda's open fingers span about 8-10 cm around it
GRIPPER_HALF_SIZE_M = 0.05


def _clipped(box: list[float], width: int, height: int) -> list[float] | None:
    x0, y0 = max(box[0], 0.0), max(box[1], 0.0)
    x1, y1 = min(box[2], float(width)), min(box[3], float(height))
    return [x0, y0, x1, y1] if x1 > x0 and y1 > y0 else None


def segment_box(segmentation: np.ndarray, index: int) -> list[float] | None:
    """
    Return the XYXY pixel box of segment ``index``'s visible pixels, or None when it has none.

    :param segmentation: ``int`` ``(H, W)`` segment index per pixel.
    """
    rows, columns = np.nonzero(np.asarray(segmentation) == index)
    if columns.size == 0:
        return None
    return [float(columns.min()), float(rows.min()), float(columns.max() + 1),
            float(rows.max() + 1)]


def gripper_box(frame: Any) -> list[float] | None:
    """
    Return the gripper's XYXY pixel box: ``GRIPPER_HALF_SIZE_M`` around the grasp point.

    :param frame: a ``core.datatypes.Frame`` (``gripper_cam`` metres in the camera optical
        frame, ``intrinsics``, ``rgb`` for the image size).
    :return: the box clipped to the image, or None when the grasp point is behind the camera
        or the box falls outside the image.
    """
    grip = np.asarray(frame.gripper_cam, dtype=np.float64).reshape(3)
    if not np.all(np.isfinite(grip)) or grip[2] <= 1e-6:
        return None
    k = frame.intrinsics
    u, v = k.fx * grip[0] / grip[2] + k.cx, k.fy * grip[1] / grip[2] + k.cy
    half_u, half_v = k.fx * GRIPPER_HALF_SIZE_M / grip[2], k.fy * GRIPPER_HALF_SIZE_M / grip[2]
    height, width = np.asarray(frame.rgb).shape[:2]
    return _clipped([u - half_u, v - half_v, u + half_u, v + half_v], width, height)


@dataclass
class GripperDataConfig:
    """
    One gripper-distance dataset run.

    :ivar out: output folder.
    :ivar episodes: episodes to render.
    :ivar seed: base seed; episode ``i`` uses ``SeedSequence([seed, i])``.
    :ivar frames_per_episode: frames rendered per episode (10..200).
    :ivar samples_per_episode: frames of each episode turned into rows.
    :ivar qa_per_frame: questions per row (the target first, then other objects).
    :ivar width: image width in pixels.
    :ivar height: image height in pixels.
    :ivar episodes_per_shard: episodes per Parquet shard.
    :ivar answer_style: ``'human'``: the paper's human-like rounding in mixed units ('40 cm',
        '16 inches', '1 foot') and varied answer templates; ``'metric'``: always
        'The distance is 0.46 m.' (the exact distance to the centimetre, two decimals). With
        digits tokenized one by one, human-rounded answers make the first generated digit mix
        units and magnitudes (a model learns the commonest: '1 cm'); fixed-width metres make
        each digit one decimal place (``benchmarks/RESULTS.md``, vision experiments).
    :ivar n_objects: objects on the table per episode, ``(min, max)`` (the target is one of
        them). With fewer than two possible, ``distractor_first`` episodes (which need a
        second object) become ``approach`` ones; with one, no question needs the model to find
        the named object, which tells reading the distance apart from grounding
        (``benchmarks/RESULTS.md``, "finding the named target is the blocker").
    """

    out: str
    episodes: int = 100
    seed: int = 0
    frames_per_episode: int = 30
    samples_per_episode: int = 6
    qa_per_frame: int = 2
    width: int = 320
    height: int = 240
    episodes_per_shard: int = 20
    answer_style: str = 'human'
    n_objects: tuple[int, int] = (3, 8)

    def __post_init__(self) -> None:
        self.n_objects = tuple(int(n) for n in self.n_objects)  # type: ignore[assignment]
        if len(self.n_objects) != 2 or not 1 <= self.n_objects[0] <= self.n_objects[1] <= 8:
            raise ValueError(f'n_objects must be (min, max) with 1 <= min <= max <= 8, got '
                             f'{self.n_objects}')
        if self.answer_style not in ANSWER_STYLES:
            raise ValueError(f'answer_style must be one of {ANSWER_STYLES}, got '
                             f'{self.answer_style!r}')
        if self.episodes < 1:
            raise ValueError(f'episodes must be >= 1, got {self.episodes}')
        if not 10 <= self.frames_per_episode <= 200:
            raise ValueError(f'frames_per_episode must be in [10, 200], got '
                             f'{self.frames_per_episode}')
        if not 1 <= self.samples_per_episode <= self.frames_per_episode:
            raise ValueError('samples_per_episode must be in [1, frames_per_episode], got '
                             f'{self.samples_per_episode}')
        if self.qa_per_frame < 1:
            raise ValueError(f'qa_per_frame must be >= 1, got {self.qa_per_frame}')
        if self.episodes_per_shard < 1:
            raise ValueError(f'episodes_per_shard must be >= 1, got {self.episodes_per_shard}')

    @property
    def num_shards(self) -> int:
        """Return the number of shards."""
        return -(-self.episodes // self.episodes_per_shard)


def load_templates(path: str | Path = TEMPLATES) -> dict[str, list[str]]:
    """Return the subject phrases and question / answer templates."""
    data = json.loads(Path(path).read_text(encoding='utf-8'))
    for key in ('subjects', 'questions', 'answers'):
        if not data.get(key):
            raise ValueError(f'{path}: no {key!r} templates')
    return data


def _fill(template: str, a: str, b: str, x: str = '') -> str:
    text = template.replace('[A]', a).replace('[B]', b).replace('[X]', x)
    return text[0].upper() + text[1:]


def episode_rows(config: GripperDataConfig, index: int,
                 templates: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Render episode ``index`` and return its rows (image, messages, metadata)."""
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode, SCENARIOS

    rng = np.random.default_rng(np.random.SeedSequence([config.seed, index]))
    scenario = str(rng.choice(SCENARIOS))
    if scenario == 'distractor_first' and config.n_objects[0] < 2:
        scenario = 'approach'  # a scene may hold the target alone
    episode_config = EpisodeConfig(
        seed=int(rng.integers(2**31)), scenario=scenario, width=config.width,
        height=config.height, num_frames=config.frames_per_episode, n_objects=config.n_objects)
    frames = np.sort(rng.choice(config.frames_per_episode, config.samples_per_episode,
                                replace=False))
    # only the kept frames are rendered (with the full episode's poses and truth)
    episode = generate_episode(episode_config, frames=[int(k) for k in frames])
    rows = []
    for k, frame in zip(frames, episode.frames, strict=True):
        hand = gripper_box(frame)
        index_of = {o.object_id: i for i, o in enumerate(frame.objects)}
        others = [o.object_id for o in frame.objects if o.object_id != episode.target_id]
        rng.shuffle(others)
        ids = ([episode.target_id] + others)[:config.qa_per_frame]
        turns: list[tuple[str, str]] = []
        metadata = []
        for object_id in ids:
            obj = frame.get_object(object_id)
            subject = str(rng.choice(templates['subjects']))
            caption = str(rng.choice([c for c in obj.captions if len(c.split()) > 1]
                                     or list(obj.captions)))
            target = caption if caption.startswith('the ') else f'the {caption}'
            value = float(frame.distance_centre[object_id])
            metric = config.answer_style == 'metric'
            if metric:
                stated, unit = max(round(value, 2), 0.01), 'm'
                text = f'{stated:.2f} m'
            else:
                text, stated, unit = humanize_distance(max(value, 1e-3), rng)
            question = _fill(str(rng.choice(templates['questions'])), subject, target)
            template = METRIC_ANSWER if metric else str(rng.choice(templates['answers']))
            answer = _fill(template, subject, target, text)
            turns.append((question, answer))
            metadata.append({
                'type': QA_TYPE, 'kind': 'quantitative', 'needs_canonical': False,
                'object_ids': ['gripper', object_id], 'captions': [subject, target],
                'boxes': [hand, segment_box(frame.segmentation, index_of[object_id])],
                'value_m': value, 'stated_value_m': stated, 'stated_text': text, 'unit': unit,
                'surface_distance_m': float(frame.distance_surface[object_id]),
                'sim_truth': {'value_m': value, 'ambiguous': False},
                'episode': {'index': index, 'scenario': scenario, 'frame': int(k)}})
        rows.append({'image': {'bytes': encode_png(frame.rgb), 'path': None},
                     'image_id': f'gripper-{config.seed}-{index:06d}-{int(k):03d}',
                     'messages': turn_messages(turns), 'qa_metadata': dumps(metadata)})
    return rows


def shard_path(config: GripperDataConfig, shard: int) -> Path:
    """Return the Parquet path of ``shard``."""
    return Path(config.out) / f'gripper-{shard:05d}.parquet'


def _write_shard(config: GripperDataConfig, shard: int) -> int:
    """Render and write ``shard`` (atomically); return its index."""
    templates = load_templates()
    first = shard * config.episodes_per_shard
    last = min(config.episodes, first + config.episodes_per_shard)
    rows = [r for i in range(first, last) for r in episode_rows(config, i, templates)]
    columns = {key: [r[key] for r in rows] for key in
               ('image', 'image_id', 'messages', 'qa_metadata')}
    atomic_write(shard_path(config, shard), parquet_bytes(columns))
    return shard


def _same_run(recorded: dict[str, Any], config: GripperDataConfig) -> bool:
    """
    Return whether a recorded run is ``config`` (fields added since count as defaults).

    The folder itself (``out``) is not compared: a run moved or linked elsewhere is the same.
    """
    names = {f.name for f in fields(GripperDataConfig)}
    defaults = json.loads(dumps({f.name: f.default for f in fields(GripperDataConfig)
                                 if f.default is not MISSING}))
    current = json.loads(dumps(asdict(config)))  # as recorded: tuples become lists
    return all(recorded.get(key, defaults.get(key)) == value
               for key, value in current.items() if key != 'out') and set(recorded) <= names


def write_gripper_dataset(config: GripperDataConfig, progress: bool = True,
                          workers: int = 1) -> dict[str, Any]:
    """
    Write (or finish) the dataset; return a summary (rows, QA, shards written/skipped).

    :param workers: processes rendering shards in parallel (1: in this process). Each worker
        owns its own simulator; the files are the same for any number of workers.
    """
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}')
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / 'gripper_run.json'
    run = dumps(asdict(config))
    if run_file.exists() and not _same_run(json.loads(run_file.read_text(encoding='utf-8')),
                                           config):
        raise ValueError(f'{out} holds a different gripper run ({run_file}); use another --out')
    atomic_write(run_file, run.encode('utf-8'))
    todo = [k for k in range(config.num_shards) if not shard_path(config, k).exists()]
    skipped = config.num_shards - len(todo)
    bar = tqdm(total=config.num_shards, initial=skipped, desc='gripper shards',
               disable=not progress)
    if workers == 1 or len(todo) <= 1:
        for shard in todo:
            _write_shard(config, shard)
            bar.update()
    else:
        # processes, not threads: the simulator and PNG encoding hold the GIL; 'spawn' because
        # a forked PyBullet client is not safe
        from concurrent.futures import as_completed, ProcessPoolExecutor
        import multiprocessing

        context = multiprocessing.get_context('spawn')
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context) as pool:
            for future in as_completed([pool.submit(_write_shard, config, k) for k in todo]):
                future.result()
                bar.update()
    bar.close()
    import pyarrow.parquet as pq

    # counted, not computed: a frame has fewer questions when fewer objects are on the table
    metas = [m for k in range(config.num_shards)
             for m in pq.read_table(shard_path(config, k), columns=['qa_metadata'])
             .column('qa_metadata').to_pylist()]
    return {'out': str(out), 'shards': config.num_shards, 'written': len(todo),
            'skipped': skipped, 'rows': len(metas),
            'qa': sum(len(json.loads(m)) for m in metas)}
