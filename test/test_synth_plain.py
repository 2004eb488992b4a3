"""Tests of synth.plain: the engine's qualitative turns restated in one template per type."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spatialvlm_ros.core.answers import parse_choice, parse_yes_no
from spatialvlm_ros.synth.dataset import chat_messages, dumps, encode_png, parquet_bytes
from spatialvlm_ros.synth.pipeline import ImageResult
from spatialvlm_ros.synth.plain import plain_turn, PlainConfig, write_plain_dataset
from spatialvlm_ros.synth.qa import AXES, generate_qa, QAConfig, QUESTION_TYPES, SceneObject
from spatialvlm_ros.synth.templates import render, TemplateBank

BANK = TemplateBank.load()


def _obj(object_id: str, centre, size, caption: str) -> SceneObject:
    """Build an object in a canonical frame equal to a level camera 1 m above the floor."""
    c = np.asarray(centre, dtype=np.float64)
    half = np.asarray(size, dtype=np.float64) / 2
    to_cam = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], dtype=np.float64)
    offset = np.array([0.0, 1.0, 0.0])
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    cam = (c + corners * half) @ to_cam.T + offset
    return SceneObject(object_id, caption, c @ to_cam.T + offset,
                       np.stack([cam.min(0), cam.max(0)]), c, np.stack([c - half, c + half]))


# A: left, higher, closer, taller, thinner, smaller than B; no relation is ambiguous
A = _obj('mug', [1.5, 0.6, 0.9], [0.1, 0.1, 0.5], 'the red mug')
B = _obj('box', [3.0, -0.8, 0.2], [0.6, 0.8, 0.4], 'large cardboard box')


def _engine_metas(seed: int, n: int = 40) -> list[dict]:
    qas = generate_qa([A, B], True, np.random.default_rng(seed), QAConfig(n))
    return [qa.to_dict() for qa in qas]


def _meta(qa_type: str, truth, captions=('the red mug', 'large cardboard box'),
          ids=('mug', 'box'), ambiguous=False) -> dict:
    return {'qa_type': qa_type, 'kind': QUESTION_TYPES[qa_type].kind, 'truth': truth,
            'captions': list(captions), 'object_ids': list(ids), 'ambiguous': ambiguous}


@pytest.mark.parametrize('meta, expected', [
    (_meta('tall_predicate', True), ('Is the red mug taller than large cardboard box?', 'Yes.')),
    (_meta('left_predicate', False),
     ('Is the red mug to the left of large cardboard box?', 'No.')),
    (_meta('big_choice', 'box'),
     ('Which is bigger, the red mug or large cardboard box?', 'Large cardboard box.')),
    (_meta('thin_choice', 'mug'),
     ('Which is thinner, the red mug or large cardboard box?', 'The red mug.')),
    (_meta('tall_short_classify', 'short'),
     ('Is the red mug taller than large cardboard box or shorter than it?',
      'Shorter than large cardboard box.')),
    (_meta('left_right_classify', 'left'),
     ('Is the red mug to the left of large cardboard box or to the right of it?',
      'To the left of large cardboard box.')),
])
def test_plain_turn_table(meta, expected):
    assert plain_turn(meta, BANK) == expected


@pytest.mark.parametrize('meta', [
    _meta('tall_predicate', True, ambiguous=True),  # the engine hedged: nothing to teach
    {**_meta('tall_predicate', True), 'kind': 'quantitative', 'qa_type': 'distance'},
    _meta('tall_predicate', None),  # no truth
    _meta('tall_predicate', 'yes'),  # not a bool
    _meta('big_choice', 'cup'),  # truth names neither object
    _meta('big_choice', 'mug', ids=('mug', 'mug')),  # the choice cannot be told apart
    _meta('big_small_classify', 'left'),  # another axis' word
    _meta('tall_predicate', True, captions=('the red mug',)),
    {'qa_type': 'no_such_type', 'truth': True},
    {},
])
def test_plain_turn_leaves_out_what_it_cannot_restate(meta):
    assert plain_turn(meta, BANK) is None


def test_plain_answers_grade_right_against_the_engine_truth():
    """Every restated engine turn is graded right by the evaluation's own parsers."""
    graded = 0
    for seed in range(5):
        for meta in _engine_metas(seed):
            pair = plain_turn(meta, BANK)
            if meta['kind'] == 'quantitative':
                assert pair is None
                continue
            assert pair is not None, meta
            question, answer = pair
            assert question == render(BANK.get(meta['qa_type'], 'questions')[0],
                                      *meta['captions'])
            if meta['kind'] == 'predicate':
                assert parse_yes_no(answer) is meta['truth']
            elif meta['kind'] == 'choice':
                options = meta['captions']
                assert parse_choice(answer, options) == meta['object_ids'].index(meta['truth'])
            else:
                values = BANK.types[meta['qa_type']]['x_values']
                options = [values['positive'], values['negative']]
                axis = AXES[QUESTION_TYPES[meta['qa_type']].source]
                expected = 0 if meta['truth'] == axis.positive else 1
                assert parse_choice(answer, options) == expected, (answer, options)
            graded += 1
    assert graded > 50


@pytest.mark.parametrize('families, kept, dropped', [
    (('tall',), ['tall_predicate', 'tall_choice', 'tall_short_classify'],
     ['short_predicate', 'left_predicate', 'big_small_classify']),
    (('left', 'small'), ['left_predicate', 'left_right_classify', 'small_choice',
                         'big_small_classify'], ['right_choice', 'big_predicate']),
    ((), [t for t, q in QUESTION_TYPES.items() if q.kind != 'quantitative'], ['distance']),
])
def test_families_filter(families, kept, dropped):
    config = PlainConfig(families=families)
    assert all(config.keeps(t) for t in kept)
    assert not any(config.keeps(t) for t in dropped)


def test_kinds_filter():
    config = PlainConfig(kinds=('predicate',))
    assert config.keeps('tall_predicate') and not config.keeps('tall_choice')
    assert plain_turn(_meta('tall_choice', 'mug'), BANK, config) is None


@pytest.mark.parametrize('kwargs, message', [
    ({'families': ('taller',)}, 'unknown families'),
    ({'kinds': ('quantitative',)}, 'kinds must be'),
    ({'kinds': ()}, 'kinds must be'),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlainConfig(**kwargs)


def _engine_shard(path, n_rows: int = 3) -> list[bytes]:
    """Write an engine-format shard: rows of real QA; the last row has only ambiguous turns."""
    rng = np.random.default_rng(0)
    images, columns = [], {'image': [], 'image_id': [], 'messages': [], 'qa_metadata': []}
    for i in range(n_rows):
        image = rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)
        png = encode_png(image)
        qas = generate_qa([A, B], True, np.random.default_rng(i), QAConfig(10))
        if i == n_rows - 1:  # a row whose qualitative turns are all ambiguous
            for qa in qas:
                qa.ambiguous = qa.kind != 'quantitative'
        result = ImageResult(f'img-{i}', True, qa=qas, qa_metadata=[q.to_dict() for q in qas])
        columns['image'].append({'bytes': png, 'path': None})
        columns['image_id'].append(f'img-{i}')
        columns['messages'].append(chat_messages(result))
        columns['qa_metadata'].append(dumps(result.qa_metadata))
        images.append(png)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(parquet_bytes(columns))
    return images


def test_write_plain_dataset_reads_back_and_resumes(tmp_path):
    from spatialvlm_ros.train.data import read_rows

    images = _engine_shard(tmp_path / 'engine' / 'shard-00000.parquet')
    out = tmp_path / 'plain'
    summary = write_plain_dataset([tmp_path / 'engine'], out, progress=False)
    rows = read_rows([out])
    assert [r.image_id for r in rows] == ['img-0', 'img-1']  # the all-ambiguous row is gone
    assert [r.image for r in rows] == images[:2]  # the same image bytes
    assert summary['rows'] == 2 and summary['shards_written'] == 1
    assert sum(summary['turns'].values()) == sum(len(r.turns) for r in rows) > 0
    for row in rows:
        for (question, answer), meta in zip(row.turns, row.metadata, strict=True):
            assert meta['phrasing'] == 'plain'
            assert (meta['question'], meta['answer']) == (question, answer)
            assert plain_turn(meta, BANK) == (question, answer)
    again = write_plain_dataset([tmp_path / 'engine'], out, progress=False)
    assert again['shards_skipped'] == 1 and again['shards_written'] == 0
    assert again['rows'] == summary['rows'] and again['turns'] == summary['turns']
    on_disk = json.loads((out / 'plain_summary.json').read_text())
    assert on_disk['turns'] == summary['turns']


def test_same_shard_names_in_two_sources_are_both_kept(tmp_path):
    from spatialvlm_ros.train.data import read_rows

    _engine_shard(tmp_path / 'a' / 'train' / 'shard-00000.parquet')
    _engine_shard(tmp_path / 'b' / 'train' / 'shard-00000.parquet', n_rows=2)
    summary = write_plain_dataset([tmp_path / 'a' / 'train', tmp_path / 'b' / 'train'],
                                  tmp_path / 'plain', progress=False)
    assert summary['shards_written'] == 2 and summary['rows'] == 3
    assert len(read_rows([tmp_path / 'plain'])) == 3


def test_output_inside_the_source_is_not_read_back(tmp_path):
    _engine_shard(tmp_path / 'engine' / 'shard-00000.parquet')
    first = write_plain_dataset([tmp_path / 'engine'], tmp_path / 'engine' / 'plain',
                                progress=False)
    again = write_plain_dataset([tmp_path / 'engine'], tmp_path / 'engine' / 'plain',
                                progress=False)
    assert again['shards'] == first['shards'] == [str(tmp_path / 'engine' / 'shard-00000.parquet')]
    assert again['rows'] == first['rows'] and again['shards_skipped'] == 1


def test_an_interrupted_run_resumes_only_with_its_own_config(tmp_path):
    _engine_shard(tmp_path / 'engine' / 'shard-00000.parquet')
    out = tmp_path / 'plain'
    write_plain_dataset([tmp_path / 'engine'], out, PlainConfig(kinds=('predicate',)),
                        progress=False)
    (out / 'plain_summary.json').unlink()  # as if interrupted before the summary
    with pytest.raises(ValueError, match='another config'):
        write_plain_dataset([tmp_path / 'engine'], out, PlainConfig(kinds=('choice',)),
                            progress=False)
    again = write_plain_dataset([tmp_path / 'engine'], out, PlainConfig(kinds=('predicate',)),
                                progress=False)
    assert again['shards_skipped'] == 1 and again['turns']['predicate'] > 0
    (out / 'plain_run.json').unlink()  # shards whose config nothing records
    (out / 'plain_summary.json').unlink()
    with pytest.raises(ValueError, match='without a record of their config'):
        write_plain_dataset([tmp_path / 'engine'], out, PlainConfig(kinds=('predicate',)),
                            progress=False)


def test_write_plain_dataset_errors(tmp_path):
    _engine_shard(tmp_path / 'engine' / 'shard-00000.parquet')
    out = tmp_path / 'plain'
    write_plain_dataset([tmp_path / 'engine'], out, PlainConfig(families=('tall',)),
                        progress=False)
    with pytest.raises(ValueError, match='another config'):
        write_plain_dataset([tmp_path / 'engine'], out, PlainConfig(), progress=False)
    _engine_shard(tmp_path / 'other' / 'shard-00000.parquet')
    with pytest.raises(ValueError, match='other sources'):
        write_plain_dataset([tmp_path / 'other'], out, PlainConfig(families=('tall',)),
                            progress=False)
    with pytest.raises(FileNotFoundError, match='no \\*.parquet'):
        write_plain_dataset([tmp_path / 'missing'], tmp_path / 'p2', progress=False)
    bad = tmp_path / 'bad' / 'x.parquet'
    bad.parent.mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({'image_id': ['a']}), bad)
    with pytest.raises(ValueError, match='missing column'):
        write_plain_dataset([bad], tmp_path / 'p3', progress=False)


def test_cli_plain(tmp_path, capsys):
    from spatialvlm_ros.cli import main

    _engine_shard(tmp_path / 'engine' / 'shard-00000.parquet')
    code = main(['synth', 'plain', str(tmp_path / 'engine'), '--out', str(tmp_path / 'plain'),
                 '--families', 'tall', 'short', '--no-progress', '--json'])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary['config']['families'] == ['tall', 'short'] and summary['rows'] >= 1
    assert main(['synth', 'plain', str(tmp_path / 'engine'), '--out', str(tmp_path / 'x'),
                 '--families', 'nonsense', '--no-progress']) != 0
