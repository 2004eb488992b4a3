"""The experiment scripts' pure parts: the toy image tasks and the text-only prior."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / 'benchmarks'


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def learn():
    return _load('exp_learnability')


def _red_cells(learn, image):
    red = np.all(image == learn.COLOURS['red'], axis=-1)
    cells = red.reshape(learn.SIZE // learn.PATCH, learn.PATCH,
                        learn.SIZE // learn.PATCH, learn.PATCH).any(axis=(1, 3))
    return np.argwhere(cells)


def test_column_answer_names_the_square_column(learn):
    rng = np.random.default_rng(0)
    columns = set()
    for _ in range(50):
        image, question, answer, classes = learn.toy_example('column', rng)
        assert image.dtype == np.uint8 and image.shape == (96, 96, 3)
        cells = _red_cells(learn, image)
        assert len(cells) == 1, 'exactly one patch-aligned square'
        assert answer == f'Column {cells[0][1]}.'
        assert classes == 6 and 'column' in question
        columns.add(int(cells[0][1]))
    assert columns == set(range(6))


def test_detect_answers_match_presence_and_are_balanced(learn):
    rng = np.random.default_rng(1)
    answers = []
    for _ in range(200):
        image, _, answer, classes = learn.toy_example('detect', rng)
        assert answer == ('Yes.' if len(_red_cells(learn, image)) else 'No.')
        answers.append(answer)
        assert classes == 2
    assert 70 < answers.count('Yes.') < 130


def test_global_colour_fills_the_image(learn):
    image, _, answer, classes = learn.toy_example('global', np.random.default_rng(2))
    name = answer[:-1].lower()
    assert np.all(image == learn.COLOURS[name]) and classes == len(learn.COLOURS)


def _shard(folder, metas):
    pa = pytest.importorskip('pyarrow')
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    pq.write_table(pa.table({'qa_metadata': [json.dumps([m]) for m in metas]}),
                   folder / 'shard-00000.parquet')


def test_text_prior_answers_from_the_pair_then_the_type(tmp_path, capsys, monkeypatch):
    prior = _load('text_prior')

    def q(qa_type, ids, truth, sim=None):
        meta = {'kind': 'predicate', 'qa_type': qa_type, 'object_ids': ids, 'truth': truth}
        if sim is not None:
            meta['sim_truth'] = sim
        return meta

    _shard(tmp_path / 'train', [q('tall_predicate', ['a', 'b'], True)] * 2
           + [q('tall_predicate', ['c', 'd'], False)] * 3
           + [{'kind': 'quantitative', 'qa_type': 'distance', 'object_ids': ['a', 'b']}])
    _shard(tmp_path / 'heldout', [
        q('tall_predicate', ['a', 'b'], True),      # pair prior: True -> right
        q('tall_predicate', ['x', 'y'], True),      # type prior: False -> wrong
        q('tall_predicate', ['a', 'b'], False, {'ambiguous': True}),  # skipped
        q('left_predicate', ['a', 'b'], True),      # type never trained: skipped
    ])
    monkeypatch.setattr('sys.argv', ['text_prior.py', '--data', str(tmp_path)])
    prior.main()
    out = capsys.readouterr().out
    assert '| tall | 2 | 50.0% |' in out and '| all | 2 | 50.0% |' in out
    assert 'left' not in out
