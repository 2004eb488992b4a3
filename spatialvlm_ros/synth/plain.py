"""
Plain phrasing: an engine dataset's qualitative turns restated in one template per type.

The engine asks each of its 30 qualitative types in about 20 phrasings and answers in about 10
(``templates/qa_templates.json``), as the paper does, so that a model sees varied language. A
model trained from scratch on a small budget learns those templates first and the relations
they carry late: the compact default's language model did not learn the engine's size
relations in 1,000 text-only steps, but learnt them in one template per family
(``benchmarks/exp_text_relations.py``, RESULTS "The language side and the gripper signal").
This module writes that curriculum as a dataset of its own: the same images, each unambiguous
qualitative turn asked with its type's first (plainest) question template and answered in the
shortest form:

- predicate: ``'Is the blue dice taller than soccer ball?'`` -> ``'Yes.'`` / ``'No.'``;
- choice: ``'Which is taller, the blue dice or soccer ball?'`` -> ``'Soccer ball.'``;
- classify: ``'Is the blue dice taller than soccer ball or shorter than it?'`` ->
  ``'Shorter than soccer ball.'``.

The truth is the engine's own label of the turn (what the engine perceived, the simulator's
truth with the ``sim`` backend); turns the engine marked ambiguous and quantitative turns are
left out. Output: the engine's Parquet schema (``image``, ``image_id``, ``messages``,
``qa_metadata``; each turn's metadata is the source turn's with the new question and answer
and ``phrasing: 'plain'``), one shard per source shard, written atomically and skipped when
present, so an interrupted run resumes; ``plain_summary.json`` counts what was written.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
from pathlib import Path
from typing import Any, Iterable

from spatialvlm_ros.synth.qa import AXES, QUALITATIVE_KINDS, QUESTION_TYPES
from spatialvlm_ros.synth.templates import render, TemplateBank

SIZE_FAMILIES = ('tall', 'short', 'wide', 'thin', 'big', 'small')
SUMMARY = 'plain_summary.json'
RUN = 'plain_run.json'
"""The config of a plain restatement, written before its first shard."""


@dataclass
class PlainConfig:
    """
    What the plain restatement keeps.

    :ivar families: predicate / choice families to keep, by the word their type starts with
        (``'tall'`` keeps ``tall_predicate`` and ``tall_choice``; a classify type is kept when
        either of its words is, e.g. ``tall_short_classify``); empty: every qualitative type.
    :ivar kinds: answer kinds to keep, of ``predicate``, ``choice``, ``classify``.
    """

    families: tuple[str, ...] = ()
    kinds: tuple[str, ...] = QUALITATIVE_KINDS

    def __post_init__(self) -> None:
        self.families = tuple(self.families)
        self.kinds = tuple(self.kinds)
        words = {w for a in AXES.values() for w in (a.positive, a.negative)}
        unknown = sorted(set(self.families) - words)
        if unknown:
            raise ValueError(f'unknown families {unknown}; choose from {sorted(words)}')
        bad = sorted(set(self.kinds) - set(QUALITATIVE_KINDS))
        if bad or not self.kinds:
            raise ValueError(f'kinds must be a non-empty subset of {QUALITATIVE_KINDS}, got '
                             f'{list(self.kinds)}')

    def keeps(self, qa_type: str) -> bool:
        """Return whether turns of ``qa_type`` are restated."""
        qtype = QUESTION_TYPES.get(qa_type)
        if qtype is None or qtype.kind not in self.kinds:
            return False
        if not self.families:
            return True
        axis = AXES[qtype.source]
        if qtype.kind == 'classify':
            return bool({axis.positive, axis.negative} & set(self.families))
        return (axis.positive if qtype.positive else axis.negative) in self.families


def plain_turn(meta: dict[str, Any], bank: TemplateBank,
               config: PlainConfig | None = None) -> tuple[str, str] | None:
    """
    Return ``(question, answer)`` of one engine turn in plain phrasing, or None.

    None for quantitative and ambiguous turns, types ``config`` does not keep, and metadata
    that does not name the objects or hold a truth of the right form.
    """
    config = config or PlainConfig()
    qa_type = str(meta.get('qa_type', ''))
    if meta.get('ambiguous') or not config.keeps(qa_type):
        return None
    qtype = QUESTION_TYPES[qa_type]
    captions = list(meta.get('captions') or ())
    ids = list(meta.get('object_ids') or ())
    truth = meta.get('truth')
    if len(captions) != 2 or not all(isinstance(c, str) and c for c in captions):
        return None
    a, b = captions
    question = render(bank.get(qa_type, 'questions')[0], a, b)
    if qtype.kind == 'predicate':
        if not isinstance(truth, bool):
            return None
        return question, 'Yes.' if truth else 'No.'
    if qtype.kind == 'choice':
        if len(ids) != 2 or truth not in ids or ids[0] == ids[1]:
            return None
        return question, render('[X].', x=captions[ids.index(truth)])
    axis = AXES[qtype.source]
    if truth not in (axis.positive, axis.negative):
        return None
    return question, render('[X] [B].', a, b, bank.x_value(qa_type, truth == axis.positive))


def plain_row(metadata: list[dict[str, Any]], bank: TemplateBank,
              config: PlainConfig) -> tuple[list[tuple[str, str]], list[dict[str, Any]]] | None:
    """Return the kept ``(question, answer)`` turns of one row and their metadata (or None)."""
    turns, metas = [], []
    for meta in metadata:
        pair = plain_turn(meta, bank, config)
        if pair is not None:
            turns.append(pair)
            metas.append({**meta, 'question': pair[0], 'answer': pair[1], 'phrasing': 'plain'})
    return (turns, metas) if turns else None


def _shards(sources: Iterable[str | Path], out: Path) -> list[tuple[Path, str]]:
    """Return ``(source shard, output name)`` pairs; names are unique and stable per sources."""
    pairs: list[tuple[Path, str]] = []
    for k, source in enumerate(sources):
        source = Path(source)
        if source.is_dir():  # never read back what this run writes
            found = [f for f in sorted(source.rglob('*.parquet'))
                     if out.resolve() not in f.resolve().parents]
        else:
            found = [source] if source.is_file() else []
        if not found:
            raise FileNotFoundError(f'no *.parquet files under {source}')
        for file in found:
            relative = file.relative_to(source).with_suffix('') if source.is_dir() \
                else Path(file.stem)
            pairs.append((file, f"{k:02d}-{relative.as_posix().replace('/', '_')}.parquet"))
    return pairs


def write_plain_dataset(sources: Iterable[str | Path], out: str | Path,
                        config: PlainConfig | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """
    Restate the engine shards under ``sources`` into ``out`` (resumable); return the summary.

    Output shards are named after their source (``<source index>-<shard path>.parquet``);
    a source shard without kept turns gives no output shard. Shards under ``out`` itself are
    never read as sources. The summary counts rows and turns per kind over all shards,
    including those written by an earlier run.

    :raises FileNotFoundError: a source holds no Parquet shard.
    :raises ValueError: ``out`` holds a run with another config or other sources, or a shard
        lacks one of the engine's columns.
    """
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from spatialvlm_ros.synth.dataset import atomic_write, dumps, parquet_bytes, turn_messages

    config = config or PlainConfig()
    out = Path(out)
    sources = [Path(source) for source in sources]
    pairs = _shards(sources, out)
    out.mkdir(parents=True, exist_ok=True)
    bank = TemplateBank.load()
    run = {'families': list(config.families), 'kinds': list(config.kinds),
           'sources': [str(source.resolve()) for source in sources]}
    summary_path, run_path = out / SUMMARY, out / RUN
    # the config is recorded before the first shard, so an interrupted run resumes only with
    # the same config and sources, never mixing two
    for path in (run_path, summary_path):
        if path.is_file():
            recorded = json.loads(path.read_text(encoding='utf-8')).get('config')
            if recorded != run:
                raise ValueError(f'{out} holds a plain restatement with another config or '
                                 f'other sources ({recorded}); use another --out')
            break
    else:
        if any((out / name).is_file() for _, name in pairs):
            raise ValueError(f'{out} holds plain shards without a record of their config; '
                             'use another --out')
        atomic_write(run_path, json.dumps({'config': run}, indent=1).encode('utf-8'))
    counts: dict[str, Any] = {'rows': 0, 'turns': dict.fromkeys(config.kinds, 0),
                              'shards_written': 0, 'shards_skipped': 0}
    for file, name in tqdm(pairs, desc='plain shards', disable=not progress):
        target = out / name
        if target.is_file():
            table = pq.read_table(target, columns=['qa_metadata'])
            _count(counts, [json.loads(m) for m in table.column('qa_metadata').to_pylist()])
            counts['shards_skipped'] += 1
            continue
        table = pq.read_table(file)
        missing = {'image', 'image_id', 'messages', 'qa_metadata'} - set(table.column_names)
        if missing:
            raise ValueError(f'{file}: missing column(s) {sorted(missing)}')
        columns: dict[str, list[Any]] = {'image': [], 'image_id': [], 'messages': [],
                                         'qa_metadata': []}
        metas_written = []
        for image, image_id, raw in zip(
                table.column('image').to_pylist(), table.column('image_id').to_pylist(),
                table.column('qa_metadata').to_pylist(), strict=True):
            metadata = json.loads(raw) if isinstance(raw, str) else list(raw or [])
            restated = plain_row(metadata, bank, config)
            if restated is None:
                continue
            columns['image'].append(image)
            columns['image_id'].append(image_id)
            columns['messages'].append(turn_messages(restated[0]))
            columns['qa_metadata'].append(dumps(restated[1]))
            metas_written.append(restated[1])
        if metas_written:
            atomic_write(target, parquet_bytes(columns))
            counts['shards_written'] += 1
            _count(counts, metas_written)
    summary = {'config': run, 'shards': [str(f) for f, _ in pairs], **counts}
    atomic_write(summary_path, json.dumps(summary, indent=1).encode('utf-8'))
    return summary


def _count(counts: dict[str, Any], rows: list[list[dict[str, Any]]]) -> None:
    counts['rows'] += len(rows)
    for metas in rows:
        for meta in metas:
            kind = meta.get('kind')
            if kind in counts['turns']:
                counts['turns'][kind] += 1
