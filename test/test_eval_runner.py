"""Evaluation runner: fixed answers through a patched ``generate`` give hand-computed metrics."""

import argparse
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from spatialvlm_ros.cli import CommandError  # noqa: E402
from spatialvlm_ros.evaluate.plots import plot_predicted_vs_true  # noqa: E402
from spatialvlm_ros.evaluate.runner import (  # noqa: E402
    EvalConfig,
    evaluate_model,
    GenerateAnswerer,
    load_questions,
)
from spatialvlm_ros.train.testing import (  # noqa: E402
    build_tiny_vlm,
    png_bytes,
    qa_row,
    write_qa_shard,
)

IDS, CAPS = ['o1', 'o2'], ['red mug', 'blue box']


def _quant(qa_type, value):
    return {'qa_type': qa_type, 'kind': 'quantitative', 'value_m': value, 'object_ids': IDS,
            'captions': CAPS, 'stated_text': f'{value} m', 'stated_unit': 'm'}


def _qual(qa_type, kind, truth, ambiguous=False):
    return {'qa_type': qa_type, 'kind': kind, 'truth': truth, 'object_ids': IDS,
            'captions': CAPS, 'ambiguous': ambiguous}


# question -> (truth metadata, greedy answer, three sampled answers)
CASES = {
    'How far is A from B?': (_quant('distance', 1.0), '1.2 m', ['1 m', '1 m', '1 m']),
    'How wide is A?': (_quant('width', 2.0), 'It is 2 meters wide.', ['2 m', '3 m', 'no']),
    'How tall is A?': (_quant('height', 0.5), 'I am not sure.', ['50 cm', 'hm', 'hm']),
    'How far apart?': (_quant('gap', 3.0), '9 m', ['2 m', '4 m', 'no idea']),
    'Is A left of B?': (_qual('left_predicate', 'predicate', True), 'Yes.',
                        ['Yes.', 'No.', 'Yes.']),
    'Is A above B?': (_qual('above_predicate', 'predicate', False), 'Yes, it is.',
                      ['No.', 'No.', 'Yes.']),
    'Which is bigger?': (_qual('big_choice', 'choice', 'o2'), 'The blue box is bigger.',
                         ['The red mug.', 'The red mug.', 'The blue box.']),
    'Is A left or right of B?': (_qual('left_right_classify', 'classify', 'left'),
                                 'It is to the right of the blue box.',
                                 ['to the left of it', 'to the left of it', 'right']),
    'Is A behind B?': (_qual('behind_predicate', 'predicate', True, ambiguous=True), 'No.',
                       ['No.', 'No.', 'No.']),
}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp('eval_data')
    image = png_bytes(np.full((16, 16, 3), 128, np.uint8))
    items = list(CASES.items())
    rows = [qa_row(image, f'img{i}', [(q, 'reference') for q, _ in items[i::3]],
                   [c[0] for _, c in items[i::3]]) for i in range(3)]
    write_qa_shard(folder / 'shard-00000.parquet', rows)
    return folder


def _patch_generate(model, processor):
    tokenizer = processor.tokenizer

    def generate(input_ids=None, attention_mask=None, num_return_sequences=1, do_sample=False,
                 **kwargs):
        rows = []
        for ids in input_ids:
            prompt = tokenizer.decode(ids, skip_special_tokens=True)
            # the coordinator's simpler queries ('How high above the floor is A?') get no number
            question = next((q for q in CASES if prompt.endswith(q)), None)
            greedy, samples = CASES[question][1:] if question else ('No idea.', ['No idea.'] * 3)
            for n in range(num_return_sequences):
                text = samples[n] if do_sample else greedy
                answer = tokenizer(text, add_special_tokens=False)['input_ids']
                rows.append(torch.cat([ids, torch.tensor(answer + [tokenizer.eos_token_id])]))
        width = max(len(r) for r in rows)
        return torch.stack([torch.nn.functional.pad(r, (0, width - len(r)),
                                                    value=tokenizer.pad_token_id) for r in rows])

    model.generate = generate
    return model


def test_questions_from_metadata(data_dir):
    questions = {q.question: q for q in load_questions([data_dir])}
    assert len(questions) == len(CASES)
    assert questions['Which is bigger?'].truth == 1
    assert questions['Which is bigger?'].options == tuple(CAPS)
    assert questions['Is A left or right of B?'].truth == 0
    assert questions['Is A left or right of B?'].options == ('to the left of', 'to the right of')
    assert questions['Is A behind B?'].truth is None
    assert questions['How far apart?'].truth == 3.0


def test_metrics_with_fixed_answers(data_dir):
    model, processor = build_tiny_vlm()
    answerer = GenerateAnswerer(_patch_generate(model, processor), processor)
    result = evaluate_model('', [data_dir], EvalConfig(samples=3, batch_size=4),
                            answerer=answerer)
    greedy = result.greedy.overall
    # qualitative: left yes (right), above 'yes' (wrong), choice blue box (right),
    # classify 'right of' (wrong); the ambiguous one is not graded
    assert greedy['n_qualitative'] == 5 and greedy['n_graded'] == 4
    assert greedy['qualitative_accuracy'] == pytest.approx(0.5)
    # quantitative: ratios 1.2, 1.0, none, 3.0
    assert greedy['n_quantitative'] == 4
    assert greedy['numeric_share'] == pytest.approx(0.75)
    assert greedy['within_50_200'] == pytest.approx(0.5)
    assert greedy['within_66_150'] == pytest.approx(0.5)
    assert greedy['within_90_110'] == pytest.approx(0.25)
    assert greedy['mse_m2'] == pytest.approx((0.2 ** 2 + 0 + 6.0 ** 2) / 3)
    assert result.greedy.by_type['distance']['within_66_150'] == pytest.approx(1.0)
    assert result.greedy.by_type['distance']['within_90_110'] == pytest.approx(0.0)
    assert result.greedy.by_kind['predicate']['qualitative_accuracy'] == pytest.approx(0.5)
    sampled = result.sampled.overall
    # averaged: 1.0 (1.0), 2.5 (2.0), 0.5 (0.5), 3.0 (3.0): all numeric, all within 50-200
    assert sampled['numeric_share'] == pytest.approx(1.0)
    assert sampled['within_50_200'] == pytest.approx(1.0)
    assert sampled['within_90_110'] == pytest.approx(0.75)
    assert sampled['mse_m2'] == pytest.approx(0.25 / 4)
    # majority votes: yes (right), no (right), red mug (wrong), left of (right)
    assert sampled['qualitative_accuracy'] == pytest.approx(0.75)
    report = json.loads(json.dumps(result.to_dict(include_items=True)))
    assert report['n_questions'] == 9 and report['n_images'] == 3 and report['samples'] == 3
    assert {i['question']: i['greedy'] for i in report['items']}['How far apart?'] == ['9 m']


def test_plot_is_written(tmp_path):
    path = plot_predicted_vs_true([1.0, 2.0, 0.5, 3.0], [1.2, 2.0, None, 9.0],
                                  tmp_path / 'sub' / 'plot.png',
                                  ['distance', 'width', 'height', 'gap'])
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    empty = plot_predicted_vs_true([], [], tmp_path / 'empty.png')
    assert empty.stat().st_size > 0


def test_eval_command(data_dir, tmp_path, capsys, monkeypatch):
    from transformers import LlavaForConditionalGeneration

    from spatialvlm_ros.evaluate import commands

    model, processor = build_tiny_vlm()
    model.save_pretrained(tmp_path / 'model')
    processor.save_pretrained(tmp_path / 'model')
    _, fresh = build_tiny_vlm()
    patched = _patch_generate(torch.nn.Module(), fresh)
    monkeypatch.setattr(LlavaForConditionalGeneration, 'generate',
                        lambda self, **kwargs: patched.generate(**kwargs))
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest='command'))
    plot = tmp_path / 'plot.png'
    args = parser.parse_args(['eval', str(tmp_path / 'model'), str(data_dir), '--samples', '3',
                              '--json', '--plot', str(plot)])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['greedy']['overall']['qualitative_accuracy'] == pytest.approx(0.5)
    assert report['sampled']['overall']['within_50_200'] == pytest.approx(1.0)
    assert set(report['greedy']['by_type']) >= {'distance', 'width', 'big_choice'}
    assert plot.read_bytes()[:4] == b'\x89PNG'
    assert report['reasoning'] == 'direct' and report['decomposed'] is None
    # --reasoning decompose: of these questions only 'Is A above B?' is a template comparison,
    # and its centre heights get no number ('How tall is A?': 'I am not sure.'), so it is asked
    # directly: the answers and the metrics stay those of the direct pass
    args = parser.parse_args(['eval', str(tmp_path / 'model'), str(data_dir), '--json',
                              '--reasoning', 'decompose'])
    assert args.func(args) == 0
    decomposed = json.loads(capsys.readouterr().out)
    assert decomposed['reasoning'] == 'decompose'
    assert decomposed['decomposed'] == {'answered': 0, 'asked_directly': 1}
    assert decomposed['greedy']['overall'] == report['greedy']['overall']
    # a bad --out or --plot is refused before the evaluation, not after it
    (tmp_path / 'a_file').write_text('x')
    for flag, path, reason in (('--out', tmp_path, 'is a folder, not a file'),
                               ('--plot', tmp_path / 'a_file' / 'p.png', 'is a file, not a')):
        args = parser.parse_args(['eval', str(tmp_path / 'missing_model'), str(data_dir),
                                  flag, str(path)])
        with pytest.raises(CommandError, match=reason):
            args.func(args)
    with pytest.raises(ValueError, match='temperature must be a finite number'):
        EvalConfig(temperature=math.inf)


def test_series_key_names_the_episode_and_the_objects():
    from spatialvlm_ros.evaluate.runner import series_of

    meta = {'object_ids': ['gripper', 'mug'], 'episode': {'index': 5, 'frame': 3}}
    assert series_of('gripper-2-000005-003', meta) == 'gripper-2-000005: gripper / mug'
    # another dataset (seed) with the same episode index is another series
    assert series_of('gripper-9-000005-003', meta) != series_of('gripper-2-000005-003', meta)
    assert series_of('frame-a', meta) == 'episode 5: gripper / mug'
    assert series_of('sim-1-00000003', {'object_ids': ['a', 'b']}) is None


def test_gripper_questions_carry_their_series(tmp_path):
    meta = {'qa_type': 'gripper_distance', 'kind': 'quantitative', 'value_m': 0.3,
            'object_ids': ['gripper', 'mug'], 'captions': ['the gripper', 'the mug'],
            'episode': {'index': 7, 'frame': 2, 'scenario': 'approach'}}
    rows = [qa_row(png_bytes(np.zeros((8, 8, 3), np.uint8)), f'gripper-1-000007-00{k}',
                   [('How far is the gripper from the mug?', '0.30 m')],
                   [dict(meta, episode=dict(meta['episode'], frame=k))]) for k in (1, 2)]
    write_qa_shard(tmp_path / 'data' / 'gripper-00000.parquet', rows)
    questions = load_questions([tmp_path / 'data'])
    assert [q.series for q in questions] == ['gripper-1-000007: gripper / mug'] * 2


def test_median_decoding_is_the_one_answer_pass(data_dir, tmp_path):
    from spatialvlm_ros.evaluate.runner import load_answerer, summary_lines
    from spatialvlm_ros.model.inference import InferenceConfig, SpatialVLM
    from spatialvlm_ros.model.loading import load_vlm
    from spatialvlm_ros.train.data import decode_image

    model, processor = build_tiny_vlm()
    model.save_pretrained(tmp_path / 'model')
    processor.save_pretrained(tmp_path / 'model')
    config = EvalConfig(decoding='median', max_new_tokens=6, batch_size=2, limit=4)
    result = evaluate_model(tmp_path / 'model', [data_dir], config)
    assert result.to_dict()['decoding'] == 'median'
    assert any(line.startswith('median-decoded:') for line in summary_lines(result))
    direct = SpatialVLM(load_vlm(tmp_path / 'model'), InferenceConfig(
        decoding='median', max_new_tokens=6, batch_size=2))
    images = [decode_image(q.image) for q in result.questions[:2]]
    texts = direct.generate(images, [q.question for q in result.questions[:2]])
    assert [a[0] for a in result.answers['greedy'][:2]] == [t[0].strip() for t in texts]
    assert load_answerer(tmp_path / 'model', decoding='median').decoding == 'median'
    with pytest.raises(ValueError, match='decoding must be one of'):
        EvalConfig(decoding='beam')
