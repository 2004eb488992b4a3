"""
Sharded, resumable, deterministic dataset writer in chat format (Parquet, HF ``datasets``).

Layout of an output folder::

    manifest.json              run configuration + finished shards (written after each shard)
    shard-00000.parquet        rows of scenes [0, shard_size)
    shard-00000.meta.json      per-image records of those scenes (timings, rejections, counts)
    ...
    metadata.jsonl             every image's record, in scene order (written at the end)
    summary.json               QA per type, rejections, canonicalization failures, stage times

Rows (one per image that produced QA): ``image`` (``{'bytes': PNG, 'path': None}``, an HF
``Image`` feature), ``image_id``, ``messages`` (LLaVA / Qwen style: alternating user/assistant
turns, each ``content`` a list of ``{'type': 'image' | 'text', 'text': ...}``; the first user
turn carries the image, one turn pair per QA) and ``qa_metadata`` (a JSON string: a list with
one dict per QA: type, kind, object ids and captions, exact value / truth, stated value,
needs_canonical, and the simulator's exact answer when known). Load with
``datasets.load_dataset('parquet', data_files=sorted(glob('DIR/shard-*.parquet')))``.

Shard ``k`` covers the fixed scene range ``[k * shard_size, (k + 1) * shard_size)`` and is
written by :func:`process_shard`, a pure function of ``(config, k)`` (Ray can call it): the
same seed gives byte-identical shards whatever the number of workers. Files are written to a
temporary file in the same folder, fsynced and renamed (``os.replace``); the manifest lists a
shard only after its files are complete, so a killed run resumes with the unfinished shards and
neither loses nor duplicates rows.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
import hashlib
import importlib
import json
import os
from pathlib import Path
import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from spatialvlm_ros.synth.pipeline import (
    Engine,
    EngineConfig,
    ImageResult,
    scene_generators,
    STAGES,
)

MANIFEST = 'manifest.json'
SUMMARY = 'summary.json'
METADATA = 'metadata.jsonl'
FORMAT_VERSION = 1

# source name -> 'module:function' yielding SceneInput for (seed, n, start=..., **kwargs)
SOURCES: dict[str, str] = {
    'sim': 'spatialvlm_ros.synth.sim_backends:sim_scenes',
}

# HF datasets feature description stored in the Parquet schema metadata (legacy list syntax,
# read by datasets 2.x to 5.x): makes ``image`` decode as an Image.
HF_FEATURES: dict[str, Any] = {
    'image': {'_type': 'Image'},
    'image_id': {'dtype': 'string', '_type': 'Value'},
    'messages': [{'role': {'dtype': 'string', '_type': 'Value'},
                  'content': [{'type': {'dtype': 'string', '_type': 'Value'},
                               'text': {'dtype': 'string', '_type': 'Value'}}]}],
    'qa_metadata': {'dtype': 'string', '_type': 'Value'},
}


class DatasetError(Exception):
    """A problem with an output folder (corrupt manifest, a different run's folder, ...)."""


@dataclass
class DatasetConfig:
    """
    One dataset run.

    :ivar out: output folder.
    :ivar num_scenes: scenes (images) to process; indices ``0 .. num_scenes - 1``.
    :ivar shard_size: scenes per shard.
    :ivar source: key of :data:`SOURCES`.
    :ivar source_kwargs: keyword arguments of the source (e.g. ``width``, ``height``).
    :ivar engine: the per-image engine configuration (its ``seed`` seeds the run).
    :ivar png_compression: zlib level of the PNG images (0-9).
    """

    out: str
    num_scenes: int
    shard_size: int = 100
    source: str = 'sim'
    source_kwargs: dict[str, Any] = field(default_factory=dict)
    engine: EngineConfig = field(default_factory=EngineConfig)
    png_compression: int = 3

    def __post_init__(self) -> None:
        self.out = str(self.out)
        if self.num_scenes < 1:
            raise ValueError(f'num_scenes must be >= 1, got {self.num_scenes}')
        if self.shard_size < 1:
            raise ValueError(f'shard_size must be >= 1, got {self.shard_size}')
        if self.source not in SOURCES:
            raise ValueError(f'unknown source {self.source!r}; sources: {sorted(SOURCES)}')
        if not 0 <= self.png_compression <= 9:
            raise ValueError(f'png_compression must be in 0..9, got {self.png_compression}')
        if isinstance(self.engine, dict):
            self.engine = EngineConfig.from_dict(self.engine)

    @property
    def num_shards(self) -> int:
        """Return the number of shards."""
        return -(-self.num_scenes // self.shard_size)

    def shard_range(self, shard_index: int) -> tuple[int, int]:
        """Return the scene index range ``[start, stop)`` of a shard."""
        if not 0 <= shard_index < self.num_shards:
            raise ValueError(f'shard {shard_index} out of range 0..{self.num_shards - 1}')
        start = shard_index * self.shard_size
        return start, min(start + self.shard_size, self.num_scenes)

    def run_dict(self) -> dict[str, Any]:
        """Return what defines the data (everything but the folder), JSON-ready."""
        return {'format': FORMAT_VERSION, 'num_scenes': self.num_scenes,
                'shard_size': self.shard_size, 'source': self.source,
                'source_kwargs': self.source_kwargs, 'engine': self.engine.to_dict(),
                'png_compression': self.png_compression}


def shard_name(shard_index: int) -> str:
    """Return the Parquet file name of a shard."""
    return f'shard-{shard_index:05d}.parquet'


def _meta_name(shard_index: int) -> str:
    return f'shard-{shard_index:05d}.meta.json'


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f'cannot serialise {type(value).__name__}')


def dumps(value: Any) -> str:
    """Return deterministic compact JSON (sorted keys) of ``value``."""
    return json.dumps(value, sort_keys=True, separators=(',', ':'), default=_json_default,
                      allow_nan=True)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, and rename it over."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    with open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def encode_png(image: np.ndarray, compression: int = 3) -> bytes:
    """Return PNG bytes of an RGB uint8 image ``(H, W, 3)`` (deterministic)."""
    import cv2

    ok, buffer = cv2.imencode('.png', np.ascontiguousarray(image[:, :, ::-1]),
                              [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:
        raise RuntimeError('PNG encoding failed')
    return buffer.tobytes()


def chat_messages(result: ImageResult) -> list[dict[str, Any]]:
    """Return the multi-turn conversation of an image's QA (image in the first user turn)."""
    return turn_messages([(qa.question, qa.answer) for qa in result.qa])


def turn_messages(turns: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """Return the chat rows' ``messages`` of ``(question, answer)`` turns, image first."""
    messages: list[dict[str, Any]] = []
    for k, (question, answer) in enumerate(turns):
        content: list[dict[str, Any]] = [{'type': 'image', 'text': None}] if k == 0 else []
        content.append({'type': 'text', 'text': question})
        messages.append({'role': 'user', 'content': content})
        messages.append({'role': 'assistant', 'content': [{'type': 'text', 'text': answer}]})
    return messages


def get_source(name: str) -> Callable[..., Iterator[Any]]:
    """Return the scene source function registered as ``name``."""
    module, _, function = SOURCES[name].partition(':')
    return getattr(importlib.import_module(module), function)


def check_source(config: DatasetConfig) -> None:
    """
    Raise a ValueError naming the problem when ``config``'s source options are not valid.

    Opens the source for no scenes: a source checks its options before its first scene (and
    renders nothing for none).
    """
    try:
        list(get_source(config.source)(config.engine.seed, 0, start=0, **config.source_kwargs))
    except TypeError as exc:  # an option the source does not take
        raise ValueError(f'source {config.source!r}: {exc}') from None


_ENGINES: dict[str, Engine] = {}


def _engine(config: EngineConfig) -> Engine:
    """Return an engine for ``config``, built once per process (backends may load models)."""
    key = dumps(config.to_dict())
    if key not in _ENGINES:
        _ENGINES.clear()
        _ENGINES[key] = Engine(config)
    return _ENGINES[key]


def process_shard(config: DatasetConfig, shard_index: int) -> Path:
    """
    Process the scenes of one shard and write its Parquet file and per-image records.

    Pure in ``(config, shard_index)``: the Parquet bytes depend on nothing else (not on other
    shards, workers or time). Writes are atomic; the manifest is not touched (the caller
    records finished shards). Returns the Parquet path.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    start, stop = config.shard_range(shard_index)
    seed = config.engine.seed
    engine = _engine(config.engine)
    source = get_source(config.source)(seed, stop - start, start=start, **config.source_kwargs)
    rows: dict[str, list[Any]] = {'image': [], 'image_id': [], 'messages': [], 'qa_metadata': []}
    records = []
    index = start
    while True:
        t0 = time.perf_counter()
        try:
            scene = next(source)
        except StopIteration:
            break
        source_time = time.perf_counter() - t0
        result = engine.process(scene, scene_generators(seed, index)[1])
        result.timings['source'] = source_time
        if result.kept:
            t0 = time.perf_counter()
            rows['image'].append({'bytes': encode_png(scene.image, config.png_compression),
                                  'path': None})
            rows['image_id'].append(result.image_id)
            rows['messages'].append(chat_messages(result))
            rows['qa_metadata'].append(dumps(result.qa_metadata))
            result.timings['encode'] = time.perf_counter() - t0
        records.append({'scene_index': index, **result.record()})
        index += 1
    if index != stop:
        raise RuntimeError(f'source {config.source!r} yielded {index - start} scenes for shard '
                           f'{shard_index}, expected {stop - start}')
    path = out / shard_name(shard_index)
    meta = {'shard': shard_index, 'scenes': [start, stop], 'rows': len(rows['image_id']),
            'images': records}
    atomic_write(out / _meta_name(shard_index), dumps(meta).encode('utf-8'))
    atomic_write(path, parquet_bytes(rows))
    return path


def parquet_bytes(rows: dict[str, list[Any]]) -> bytes:
    """
    Return the Parquet file (bytes) of chat-format rows, with the HF ``datasets`` features.

    :param rows: columns ``image`` (``{'bytes', 'path'}``), ``image_id``, ``messages`` and
        ``qa_metadata`` (JSON strings), of equal length.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ('image', pa.struct([('bytes', pa.binary()), ('path', pa.string())])),
        ('image_id', pa.string()),
        ('messages', pa.list_(pa.struct([
            ('role', pa.string()),
            ('content', pa.list_(pa.struct([('type', pa.string()), ('text', pa.string())])))]))),
        ('qa_metadata', pa.string()),
    ], metadata={'huggingface': json.dumps({'info': {'features': HF_FEATURES}})})
    table = pa.Table.from_pydict(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression='zstd', row_group_size=max(1, len(table) or 1))
    return sink.getvalue().to_pybytes()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(out: str | Path) -> dict[str, Any] | None:
    """Return the folder's manifest, None if there is none; ``DatasetError`` if corrupt."""
    path = Path(out) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f'{path} is corrupt ({exc}); delete the folder (or just the '
                           'manifest, to recompute every shard) and run again') from exc
    if (not isinstance(manifest, dict) or not isinstance(manifest.get('run'), dict)
            or not isinstance(manifest.get('shards'), dict)):
        raise DatasetError(f'{path} is corrupt (expected an object with "run" and "shards"); '
                           'delete the folder (or just the manifest) and run again')
    for key, entry in manifest['shards'].items():
        if (not key.isdigit() or not isinstance(entry, dict)
                or not {'file', 'rows', 'sha256'} <= set(entry)):
            raise DatasetError(f'{path} is corrupt (bad shard entry {key!r}); delete the '
                               'folder (or just the manifest) and run again')
    return manifest


def _write_manifest(out: Path, run: dict[str, Any], shards: dict[str, Any]) -> None:
    manifest = {'version': FORMAT_VERSION, 'run': run,
                'shards': {k: shards[k] for k in sorted(shards, key=int)}}
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())


def _shard_task(args: tuple[DatasetConfig, int]) -> tuple[int, str]:
    config, shard_index = args
    return shard_index, str(process_shard(config, shard_index))


def prepare_run(config: DatasetConfig) -> tuple[dict[str, Any], dict[str, Any], list[int]]:
    """
    Check the output folder of ``config`` and return ``(run, shards, pending)``.

    ``run`` is the manifest's run description, ``shards`` the finished shards kept from an
    earlier run (listed in the manifest, with both files present and the Parquet hash intact)
    and ``pending`` the shard indices still to compute. Writes the manifest (so the folder is
    claimed for this run); ``DatasetError`` if the folder holds a different run. Shared by
    :func:`run_dataset` and ``synth.ray_runner.run_dataset_ray``.
    """
    out = Path(config.out)
    check_source(config)  # a bad source option must not claim the folder for its run
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob('.*.tmp'):  # half-written files of a killed run (atomic_write)
        leftover.unlink(missing_ok=True)
    run = json.loads(dumps(config.run_dict()))
    manifest = load_manifest(out)
    shards: dict[str, Any] = {}
    if manifest is not None:
        if manifest['run'] != run:
            raise DatasetError(f'{out} holds a different run (its manifest records another '
                               'configuration); use a new folder or delete this one')
        for key, entry in manifest['shards'].items():
            path = out / entry['file']
            if path.exists() and (out / _meta_name(int(key))).exists() and (
                    _sha256(path) == entry['sha256']):
                shards[key] = entry  # else: missing or changed -> recompute
    _write_manifest(out, run, shards)
    pending = [k for k in range(config.num_shards) if str(k) not in shards]
    return run, shards, pending


def record_shard(config: DatasetConfig, run: dict[str, Any], shards: dict[str, Any],
                 shard_index: int, path: str | Path) -> int:
    """
    Add a finished shard (files written by :func:`process_shard`) to ``shards`` and the manifest.

    Returns the number of scenes the shard covers.
    """
    out = Path(config.out)
    p = Path(path)
    meta = json.loads((out / _meta_name(shard_index)).read_text(encoding='utf-8'))
    shards[str(shard_index)] = {'file': p.name, 'rows': meta['rows'],
                                'scenes': meta['scenes'], 'sha256': _sha256(p)}
    _write_manifest(out, run, shards)
    return meta['scenes'][1] - meta['scenes'][0]


def finish_run(config: DatasetConfig, pending: list[int], elapsed: float,
               **runner: Any) -> dict[str, Any]:
    """
    Write ``metadata.jsonl`` and ``summary.json`` after a run; return the summary.

    ``summary['last_run']`` holds the run's wall time, scenes processed and rate, plus
    ``runner`` (e.g. ``workers=2`` or ``runner='ray', num_cpus=2``).
    """
    out = Path(config.out)
    summary = write_summary(out)
    processed = int(sum(np.diff(config.shard_range(k))[0] for k in pending))
    summary['last_run'] = {'seconds': elapsed, 'scenes': processed, **runner,
                           'scenes_per_s': processed / elapsed if elapsed > 0 else None}
    atomic_write(out / SUMMARY, json.dumps(summary, indent=1, sort_keys=True).encode())
    return summary


def run_dataset(config: DatasetConfig, workers: int = 1, progress: bool = True,
                start_method: str = 'spawn') -> dict[str, Any]:
    """
    Write (or finish) the dataset of ``config``; return the summary.

    Shards already listed in the manifest (with an intact file) are skipped; a folder that
    holds a different run raises ``DatasetError``. ``workers > 1`` processes shards in a
    ``multiprocessing`` pool (results do not depend on it).
    """
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}')
    run, shards, pending = prepare_run(config)
    started = time.perf_counter()
    bar = tqdm(total=config.num_scenes, desc='scenes', unit='scene', disable=not progress)
    bar.update(config.num_scenes - sum(np.diff(config.shard_range(k))[0] for k in pending))
    try:
        if workers == 1 or len(pending) <= 1:
            for k in pending:
                bar.update(record_shard(config, run, shards, k, process_shard(config, k)))
        else:
            import multiprocessing

            ctx = multiprocessing.get_context(start_method)
            with ctx.Pool(min(workers, len(pending))) as pool:
                for k, path in pool.imap_unordered(_shard_task, [(config, k) for k in pending]):
                    bar.update(record_shard(config, run, shards, k, path))
    finally:
        bar.close()
    return finish_run(config, pending, time.perf_counter() - started, workers=workers)


def iter_records(out: str | Path) -> Iterator[dict[str, Any]]:
    """Yield every image's record of the finished shards, in scene order."""
    out = Path(out)
    manifest = load_manifest(out)
    if manifest is None:
        raise DatasetError(f'{out} has no {MANIFEST}; is it a dataset folder?')
    for key in sorted(manifest['shards'], key=int):
        meta = json.loads((out / _meta_name(int(key))).read_text(encoding='utf-8'))
        yield from meta['images']


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the summary of per-image records (see ``ImageResult.record``)."""
    qa_types: Counter = Counter()
    rejected: Counter = Counter()
    canonical_failures: Counter = Counter()
    stage_times: dict[str, list[float]] = defaultdict(list)
    counts: Counter = Counter()
    agree: dict[str, Counter] = {'qualitative': Counter(), 'quantitative': Counter()}
    from spatialvlm_ros.synth.qa import QUESTION_TYPES

    for r in records:
        if r['kept']:
            counts['kept'] += 1
        else:
            rejected[r['reason']] += 1
        if r['reason'] == '' or not r['reason'].startswith('filter'):
            if not r['canonical_ok'] and r['reason'] != 'no regions':
                canonical_failures[r['canonical_reason'].split(' (')[0]] += 1
        qa_types.update(r['qa_types'])
        for name, ok in zip(r['qa_types'], r['qa_agreement'], strict=True):
            kind = 'qualitative' if QUESTION_TYPES[name].qualitative else 'quantitative'
            agree[kind]['unknown' if ok is None else ('agree' if ok else 'disagree')] += 1
        for stage, seconds in r['timings'].items():
            stage_times[stage].append(seconds)
        for key, value in r['counts'].items():
            counts[key] += value
    total_qa = sum(qa_types.values())
    order = [*STAGES, 'source', 'encode']
    return {
        'images': len(records), 'images_kept': counts.pop('kept', 0),
        'images_rejected': dict(sorted(rejected.items())),
        'canonical_failures': sum(canonical_failures.values()),
        'canonical_failure_reasons': dict(sorted(canonical_failures.items())),
        'total_qa': total_qa, 'qa_per_type': dict(sorted(qa_types.items())),
        'qa_qualitative': sum(v for k, v in qa_types.items()
                              if QUESTION_TYPES[k].qualitative),
        'counts': dict(sorted(counts.items())),
        'stage_mean_ms': {s: 1000.0 * float(np.mean(stage_times[s]))
                          for s in order if stage_times.get(s)},
        'sim_agreement': {k: dict(sorted(v.items())) for k, v in agree.items()},
    }


def write_summary(out: str | Path) -> dict[str, Any]:
    """Write ``metadata.jsonl`` and ``summary.json`` from the finished shards; return it."""
    out = Path(out)
    records = list(iter_records(out))
    lines = ''.join(dumps(r) + '\n' for r in records)
    atomic_write(out / METADATA, lines.encode('utf-8'))
    manifest = load_manifest(out)
    summary = summarize(records)
    summary['shards'] = len(manifest['shards']) if manifest else 0
    summary['rows'] = sum(e['rows'] for e in manifest['shards'].values()) if manifest else 0
    atomic_write(out / SUMMARY, json.dumps(summary, indent=1, sort_keys=True).encode())
    return summary


def read_summary(out: str | Path) -> dict[str, Any]:
    """Return ``summary.json`` of a folder (recomputed from the shards if it is missing)."""
    path = Path(out) / SUMMARY
    if path.exists():
        try:
            return json.loads(path.read_text(encoding='utf-8'))
        except json.JSONDecodeError:
            pass
    return write_summary(out)
