"""Training data: Parquet rows, the seeded spatial/general mix, label noise, assistant labels."""

import re

import numpy as np
import pytest

from spatialvlm_ros.train.config import TrainConfig
from spatialvlm_ros.train.data import (
    describe_example,
    format_significant,
    IGNORE_INDEX,
    MixedStream,
    perturb_answer,
    read_objects,
    read_rows,
    Row,
)
from spatialvlm_ros.train.testing import (
    png_bytes,
    qa_row,
    synthetic_rows,
    write_metadata_jsonl,
    write_qa_shard,
)

QUANT = {'type': 'distance', 'kind': 'quantitative', 'value_m': 0.95, 'stated_value_m': 1.0,
         'stated_text': '1 meter', 'stated_unit': 'm', 'captions': ['red mug', 'box']}
QUAL = {'type': 'left_predicate', 'kind': 'predicate', 'truth': True,
        'captions': ['red mug', 'box']}


@pytest.fixture(scope='module')
def shard_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp('data')
    write_qa_shard(folder / 'shard-00000.parquet', synthetic_rows(12, seed=1))
    write_qa_shard(folder / 'sub' / 'shard-00001.parquet', synthetic_rows(8, seed=2))
    return folder


def test_read_rows(shard_dir):
    rows = read_rows([shard_dir])
    assert len(rows) == 20
    row = rows[0]
    assert row.image.startswith(b'\x89PNG')
    assert len(row.turns) == 2 and len(row.metadata) == 2
    for (question, answer), meta in zip(row.turns, row.metadata, strict=True):
        assert question.endswith('?')
        if meta['kind'] == 'quantitative':
            assert meta['stated_text'] in answer
    with pytest.raises(FileNotFoundError):
        read_rows([shard_dir / 'missing'])


def _rows(n):
    return [Row(b'img', f'id{i}', [(f'q{i}', '1 m')], [dict(QUANT)]) for i in range(n)]


@pytest.mark.parametrize('ratio', [0.0, 0.05, 0.3, 1.0])
def test_mixing_ratio(ratio):
    stream = MixedStream(_rows(7), None, ratio, seed=3)
    sources = [stream.locate(k)[0] for k in range(4000)]
    share = sources.count('general') / len(sources)
    assert share == pytest.approx(ratio, abs=0.01)
    # any window of a block holds the ratio loosely too (mixed, not bunched)
    if 0 < ratio < 1:
        window = sources[1000:1200]
        assert 0 < window.count('general') < 200


def test_stream_is_deterministic_and_visits_every_row_per_epoch():
    a = MixedStream(_rows(7), None, 0.0, seed=5)
    b = MixedStream(_rows(7), None, 0.0, seed=5)
    c = MixedStream(_rows(7), None, 0.0, seed=6)
    order_a = [a.locate(k)[1] for k in range(21)]
    assert order_a == [b.locate(k)[1] for k in range(21)]
    assert order_a != [c.locate(k)[1] for k in range(21)]
    for epoch in range(3):
        assert sorted(order_a[7 * epoch:7 * epoch + 7]) == list(range(7))
    assert order_a[:7] != order_a[7:14]  # reshuffled each epoch
    # indexing out of order gives the same samples (what exact resume relies on)
    assert [a.locate(k) for k in (20, 3, 11)] == [b.locate(k) for k in (20, 3, 11)]


def test_general_examples_are_generated_from_captions():
    row = Row(b'img', 'x', [('How far?', '1 meter.')], [dict(QUANT)])
    example = describe_example(row, np.random.default_rng(0))
    assert example.source == 'general'
    answers = dict(example.turns)
    scene = [a for q, a in answers.items() if 'scene contains' in a][0]
    assert scene == 'The scene contains a red mug and a box.'
    assert describe_example(Row(b'i', 'y', [('q', 'a')], [{}]), np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match='no general data'):
        MixedStream([Row(b'i', 'y', [('q', 'a')], [{}])], None, 0.5, seed=0)


def test_format_significant():
    assert format_significant(1.0) == '1'
    assert format_significant(1.0834) == '1.08'
    assert format_significant(27.36) == '27.4'
    assert format_significant(0.04567) == '0.0457'
    assert format_significant(1234.5) == '1234'


def test_label_noise_perturbs_stated_value_as_specified():
    answer = 'The mug is about 1 meter away from the box.'
    rng_expected = np.random.default_rng(42)
    factor = 1.0 + rng_expected.normal(0.0, 0.2)
    noisy = perturb_answer(answer, QUANT, 0.2, np.random.default_rng(42))
    expected_number = format_significant(1.0 * factor)
    unit = 'meter' if float(expected_number) == 1 else 'meters'
    assert noisy == f'The mug is about {expected_number} {unit} away from the box.'
    # abbreviations keep their spelling; the stated number is found by parsing without meta
    meta = {'kind': 'quantitative', 'value_m': 0.3}
    noisy = perturb_answer('It is 30 cm wide.', meta, 0.1, np.random.default_rng(1))
    factor = 1.0 + np.random.default_rng(1).normal(0.0, 0.1)
    assert noisy == f'It is {format_significant(30 * factor)} cm wide.'
    # the relative perturbation has the requested spread
    values = []
    for seed in range(400):
        text = perturb_answer('2 m', {'kind': 'quantitative', 'stated_text': '2 m'}, 0.3,
                              np.random.default_rng(seed))
        values.append(float(re.match(r'([\d.]+) m', text).group(1)) / 2.0 - 1.0)
    assert np.std(values) == pytest.approx(0.3, rel=0.15)


def test_label_noise_leaves_qualitative_and_zero_std_untouched():
    rng = np.random.default_rng(0)
    assert perturb_answer('Yes, 1 meter to the left.', QUAL, 0.3, rng) == \
        'Yes, 1 meter to the left.'
    assert perturb_answer('About 1 meter.', QUANT, 0.0, rng) == 'About 1 meter.'
    rows = read_rows_from([('Is it left?', 'Yes.', QUAL),
                           ('How far?', 'It is 1 meter away.', QUANT)])
    stream = MixedStream(rows, None, 0.0, seed=0, label_noise_std=0.3)
    changed = 0
    for k in range(20):
        example = stream.example(k)
        assert example.turns[0] == ('Is it left?', 'Yes.')
        changed += example.turns[1][1] != 'It is 1 meter away.'
    assert changed >= 18


def read_rows_from(turns):
    return [Row(b'img', 'r0', [(q, a) for q, a, _ in turns], [m for _, _, m in turns])]


def test_encoder_labels_only_assistant_turns(shard_dir):
    pytest.importorskip('transformers')
    from spatialvlm_ros.train.data import ConversationEncoder, Example
    from spatialvlm_ros.train.testing import build_tiny_vlm

    _, processor = build_tiny_vlm()
    encoder = ConversationEncoder(processor, max_length=256)
    turns = [('How wide is it?', 'It is 30 cm wide.'), ('Is it left?', 'No.')]
    image = png_bytes(np.zeros((16, 16, 3), np.uint8))
    encoded = encoder.encode(Example(image, turns))
    ids, labels = encoded['input_ids'][0], encoded['labels'][0]
    tokenizer = processor.tokenizer
    assert int((ids == tokenizer.convert_tokens_to_ids('<image>')).sum()) == 16
    trained = tokenizer.decode([int(t) for t in labels if t != IGNORE_INDEX])
    assert trained == 'It is 30 cm wide.</s>No.</s>'
    kept = labels != IGNORE_INDEX
    assert bool((ids[kept] == labels[kept]).all())
    # max_length drops trailing turns
    short = ConversationEncoder(processor, max_length=60).encode(Example(image, turns))
    assert tokenizer.decode([int(t) for t in short['labels'][0] if t != IGNORE_INDEX]) == \
        'It is 30 cm wide.</s>'
    # a cut inside the one answer left would train a half answer ('It is 30'): refused
    need = len(encoder.encode(Example(image, turns[:1]))['input_ids'][0])
    labels_one = encoder.encode(Example(image, turns[:1]))['labels'][0]
    answer_start = int((labels_one != IGNORE_INDEX).nonzero()[0])
    with pytest.raises(ValueError, match='would cut the first answer'):
        ConversationEncoder(processor, max_length=answer_start + 3).encode(
            Example(image, turns[:1]))
    with pytest.raises(ValueError, match='too small for the image and the first question'):
        ConversationEncoder(processor, max_length=answer_start - 1).encode(
            Example(image, turns[:1]))
    assert need > answer_start + 3
    batch = encoder.batch([Example(image, turns), Example(image, turns[1:])])
    assert batch['input_ids'].shape == batch['labels'].shape
    assert batch['pixel_values'].shape[0] == 2
    assert int(batch['attention_mask'][1].sum()) < batch['input_ids'].shape[1]
    assert bool((batch['labels'][1][batch['attention_mask'][1] == 0] == IGNORE_INDEX).all())


def test_encoder_segments_reuse_one_rendering_per_turn_count():
    pytest.importorskip('transformers')
    from spatialvlm_ros.train.data import ConversationEncoder
    from spatialvlm_ros.train.testing import build_tiny_vlm

    _, processor = build_tiny_vlm()
    encoder = ConversationEncoder(processor, max_length=256)
    conversations = [
        [('How wide is it?', 'It is 30 cm wide.'), ('Is it left?', 'No.')],
        [('How far is the duck from the mug?', '1.5 m'), ('Tall?', 'Yes.')],
        [('Q1?', 'A1.'), ('Q2?', 'A2.'), ('Q3?', 'A3.')],
        [('What is it?', 'The red mug')],
        [(' padded question ', 'x'), ('Is <it> left?', '{No}')],  # always rendered in full
    ]
    for turns in conversations * 2:
        assert encoder.segments(turns) == encoder._render_segments(turns)
    assert sorted(encoder._skeletons) == [1, 2, 3]
    assert all(v is not None for v in encoder._skeletons.values())
    # the texts reach the pieces (the placeholders are gone) and the answers are the trained
    pieces = encoder.segments(conversations[1])
    assert [text for text, trained in pieces if trained] == ['1.5 m</s>', 'Yes.</s>']
    assert '\ue000' not in ''.join(text for text, _ in pieces)

    # a template that changes the texts (upper case) cannot take the shortcut
    processor.chat_template = processor.chat_template.replace(
        "{{ c['text'] }}", "{{ c['text'] | upper }}")
    changed = ConversationEncoder(processor, max_length=256)
    for turns in conversations[:3] * 2:
        pieces = changed.segments(turns)
        assert pieces == changed._render_segments(turns)
        assert [text for text, trained in pieces if trained][0] == turns[0][1].upper() + '</s>'
    assert all(v is None for v in changed._skeletons.values())


def test_train_config_validation():
    with pytest.raises(ValueError, match='general_ratio'):
        TrainConfig(data=('d',), general_ratio=1.5)
    with pytest.raises(ValueError, match='data'):
        TrainConfig(data=())
    with pytest.raises(ValueError, match='bf16'):
        TrainConfig(data=('d',), bf16='maybe')
    with pytest.raises(ValueError, match='min_lr'):
        TrainConfig(data=('d',), lr=1e-4, min_lr=1e-3)
    config = TrainConfig(data='d', general_ratio=1.0, bf16=True)
    assert config.data == ('d',) and config.bf16 == 'yes'
    assert TrainConfig(general_ratio=1.0, general_data=('g',)).data == ()


def test_qa_row_format_matches_engine():
    row = qa_row(b'png', 'a', [('q?', 'a.')], [QUANT])
    assert row['messages'][0]['content'][0]['type'] == 'image'
    assert row['messages'][1]['role'] == 'assistant'
    assert row['image'] == {'bytes': b'png', 'path': None}


def test_rows_carry_their_objects_from_the_engine_metadata(tmp_path):
    records = []
    write_qa_shard(tmp_path / 'shard-00000.parquet', synthetic_rows(3, seed=4, records=records))
    assert all(not r.objects for r in read_rows([tmp_path]))  # no metadata.jsonl yet
    records[1]['kept'] = False
    write_metadata_jsonl(tmp_path, records)
    rows = read_rows([tmp_path])
    assert [len(r.objects) for r in rows] == [1, 0, 1]
    assert rows[0].objects[0]['caption'] in rows[0].metadata[0]['captions']
    assert rows[0].objects[0]['box'] == records[0]['objects'][0]['box']
    example = MixedStream(rows, None, 0.0, seed=0).example(0)
    assert example.objects and len(example.metadata) == len(example.turns)


def test_malformed_engine_metadata_is_an_error_naming_the_line(tmp_path):
    (tmp_path / 'metadata.jsonl').write_text('{"image_id": "a", "objects": []}\n{oops\n')
    with pytest.raises(ValueError, match=r'metadata.jsonl:2: not JSON'):
        read_objects(tmp_path)
    (tmp_path / 'metadata.jsonl').write_text('{"image_id": "a", "objects": [{"box": [1]}]}\n')
    with pytest.raises(ValueError, match='caption and a 4-number box'):
        read_objects(tmp_path)
    assert read_objects(tmp_path / 'nowhere') == {}
