"""The training loop on a tiny random LLaVA: learning, schedule, freezing, LoRA, outputs, CLI."""

import argparse
import dataclasses
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')
pytest.importorskip('accelerate')

from spatialvlm_ros.train.config import TrainConfig  # noqa: E402
from spatialvlm_ros.train.data import ConversationEncoder, IGNORE_INDEX, read_rows  # noqa: E402
from spatialvlm_ros.train.testing import (  # noqa: E402
    build_tiny_vlm,
    synthetic_rows,
    write_metadata_jsonl,
    write_qa_shard,
)
from spatialvlm_ros.train.trainer import lr_at, part_of, Trainer  # noqa: E402


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp('loop_data')
    write_qa_shard(folder / 'shard-00000.parquet', synthetic_rows(4, seed=0))
    return folder


def _config(data_dir, out, **kwargs):
    values = {'data': (str(data_dir),), 'out_dir': str(out), 'max_steps': 4, 'batch_size': 4,
              'lr': 3e-3, 'warmup_steps': 1, 'progress': False, 'save_final': False,
              'log_every': 1}
    values.update(kwargs)
    return TrainConfig(**values)


def _parts(model, config):
    out = {'vision': {}, 'projector': {}, 'language': {}}
    for name, param in model.named_parameters():
        out[part_of(name, config)][name] = param
    return out


def test_lr_schedule():
    config = TrainConfig(data=('d',), max_steps=110, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(0, config) == pytest.approx(1e-4)
    assert lr_at(9, config) == pytest.approx(1e-3)
    assert lr_at(10, config) == pytest.approx(1e-3)
    assert lr_at(60, config) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert lr_at(110, config) == pytest.approx(1e-4)
    values = [lr_at(s, config) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_loss_decreases_on_tiny_overfit_set(data_dir, tmp_path):
    config = _config(data_dir, tmp_path / 'run', max_steps=20, freeze_vision=False, lr=1e-2,
                     min_lr=1e-3, warmup_steps=2, save_final=True)
    model, processor = build_tiny_vlm()
    result = Trainer(config, model, processor).train()
    assert result.step == 20
    assert all(math.isfinite(x) for x in result.losses)
    assert sum(result.losses[-3:]) / 3 < 0.6 * result.losses[0]
    assert list((tmp_path / 'run' / 'tb').glob('events.out.tfevents.*'))
    final = tmp_path / 'run' / 'final'
    assert (final / 'model.safetensors').is_file() and (final / 'config.json').is_file()
    assert not list(final.glob('*.bin')) and not list(final.glob('*.pt'))
    from transformers import AutoModelForImageTextToText

    reloaded = AutoModelForImageTextToText.from_pretrained(final, local_files_only=True)
    encoder = ConversationEncoder(processor, 256)
    rows = read_rows([data_dir])
    from spatialvlm_ros.train.data import Example

    batch = encoder.batch([Example(r.image, r.turns) for r in rows])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).loss, model(**batch).loss, atol=1e-5)


def test_a_non_finite_loss_stops_training_before_the_update(data_dir, tmp_path):
    from spatialvlm_ros.train.trainer import list_checkpoints, NonFiniteLossError

    def poisoned(save_every):
        model, processor = build_tiny_vlm()
        config = _config(data_dir, tmp_path / f'run{save_every}', max_steps=4,
                         save_every=save_every)

        def poison(step, loss):
            if step == 2:  # as a diverged update would leave a weight
                with torch.no_grad():
                    model.lm_head.weight[0, 0] = math.nan

        return Trainer(config, model, processor), poison

    trainer, poison = poisoned(0)
    with pytest.raises(NonFiniteLossError, match='step 3: loss nan'):
        trainer.train(on_step=poison)
    trainer, poison = poisoned(1)  # the checkpoint of step 2 would hold the NaN
    with pytest.raises(NonFiniteLossError, match='step 2: 1 trained weights hold NaN'):
        trainer.train(on_step=poison)
    checkpoints = list_checkpoints(tmp_path / 'run1')
    assert [p.name for p in checkpoints] == ['step-00000001']
    from safetensors.numpy import load_file

    saved = load_file(str(checkpoints[0] / 'trainable.safetensors'))
    assert saved and all(np.isfinite(v).all() for v in saved.values())
    with pytest.raises(ValueError, match='lr must be a finite number > 0'):
        _config(data_dir, tmp_path / 'x', lr=math.nan)
    with pytest.raises(ValueError, match='label_noise_std must be a finite number >= 0'):
        _config(data_dir, tmp_path / 'x', label_noise_std=math.inf)
    with pytest.raises(ValueError, match='lora_dropout must be < 1'):
        _config(data_dir, tmp_path / 'x', lora_dropout=1.5)


@pytest.mark.parametrize('freeze_projector', [False, True])
def test_freeze_policy(data_dir, tmp_path, freeze_projector):
    config = _config(data_dir, tmp_path / 'run', max_steps=2, freeze_vision=True,
                     freeze_projector=freeze_projector)
    model, processor = build_tiny_vlm()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    Trainer(config, model, processor).train()
    parts = _parts(model, config)
    assert parts['vision'] and parts['projector'] and parts['language']
    for name, param in parts['vision'].items():
        assert not param.requires_grad
        assert torch.equal(param, before[name]), name
    for name, param in parts['projector'].items():
        assert param.requires_grad != freeze_projector
        assert torch.equal(param, before[name]) == freeze_projector, name
    changed = [n for n, p in parts['language'].items() if not torch.equal(p, before[n])]
    assert len(changed) == len(parts['language'])


def test_lora_trains_only_adapters_and_merges(data_dir, tmp_path):
    pytest.importorskip('peft')
    config = _config(data_dir, tmp_path / 'run', max_steps=3, lora_r=4, lora_alpha=8,
                     freeze_vision=True, freeze_projector=True, lr=1e-2, save_final=True)
    model, processor = build_tiny_vlm()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(config, model, processor)
    result = trainer.train()
    peft_model = trainer.accelerator.unwrap_model(trainer.model) if trainer.is_peft else None
    trained = [n for n, _ in trainer.params]
    assert trained and all('lora_' in n for n in trained)
    assert all('language_model' in n for n in trained)  # none in the frozen vision tower
    assert result.trainable_parameters < sum(p.numel() for p in before.values()) / 4
    # base weights untouched, adapters moved
    final = trainer.final_model()
    assert peft_model is None or final is not peft_model
    merged = dict(final.named_parameters())
    assert not [n for n in merged if 'lora_' in n]
    assert merged.keys() == before.keys()
    changed = [n for n in merged if not torch.equal(merged[n], before[n])]
    assert changed and all('language_model' in n and n.split('.')[-2] in config.lora_targets
                           for n in changed)
    saved = (tmp_path / 'run' / 'final' / 'model.safetensors')
    from safetensors.torch import load_file

    assert not [k for k in load_file(str(saved)) if 'lora' in k]


def test_lora_merge_preserves_outputs(data_dir, tmp_path):
    pytest.importorskip('peft')
    config = _config(data_dir, tmp_path / 'run', max_steps=2, lora_r=4, lora_alpha=8, lr=1e-2)
    model, processor = build_tiny_vlm()
    trainer = Trainer(config, model, processor)
    trainer.train()
    rows = read_rows([data_dir])
    from spatialvlm_ros.train.data import Example

    batch = ConversationEncoder(processor, 256).batch([Example(r.image, r.turns) for r in rows])
    adapted = trainer.accelerator.unwrap_model(trainer.model)
    adapted.eval()
    with torch.no_grad():
        expected = adapted(**batch).logits
        merged = trainer.final_model()
        merged.eval()
        assert torch.allclose(merged(**batch).logits, expected, atol=1e-5)


def test_train_command(data_dir, tmp_path, capsys):
    from spatialvlm_ros.train import commands
    from spatialvlm_ros.train.testing import build_tiny_vlm as build

    model, processor = build()
    model.save_pretrained(tmp_path / 'model')
    processor.save_pretrained(tmp_path / 'model')
    config = tmp_path / 'train.yaml'
    config.write_text(f'train:\n  data: [{data_dir}]\n  max_steps: 5\n  batch_size: 2\n'
                      '  lr: 0.003\n  warmup_steps: 1\n', encoding='utf-8')
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest='command'))
    args = parser.parse_args(['train', '--config', str(config), '--model', str(tmp_path / 'model'),
                              '--out', str(tmp_path / 'run'), '--max-steps', '2', '--set',
                              'save_every=1', 'keep_last=1', '--no-progress', '--json'])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary['step'] == 2 and summary['final_dir'].endswith('final')
    assert [p.rsplit('/', 1)[-1] for p in summary['checkpoints']] == ['step-00000002']
    args = parser.parse_args(['train', '--config', str(config), '--model', str(tmp_path / 'model'),
                              '--out', str(tmp_path / 'run'), '--max-steps', '3', '--resume',
                              '--no-progress', '--json'])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary['resumed_from'] == 2 and summary['step'] == 3


def test_ablation_suite(data_dir, tmp_path):
    from spatialvlm_ros.evaluate.runner import EvalConfig
    from spatialvlm_ros.train.ablations import ABLATIONS, run_ablations

    assert set(ABLATIONS) == {'baseline', 'no_spatial', 'unfrozen_vision', 'noise_0.1',
                              'noise_0.2', 'noise_0.3'}
    base = _config(data_dir, tmp_path / 'unused', max_steps=2, batch_size=2, general_ratio=0.25)
    names = ['baseline', 'no_spatial', 'noise_0.2']
    eval_config = EvalConfig(max_new_tokens=6, batch_size=4)
    rows = run_ablations(base, [data_dir], tmp_path / 'suite', names, eval_config,
                         model_factory=build_tiny_vlm)
    assert [r['name'] for r in rows] == names
    for row in rows:
        assert math.isfinite(row['final_loss'])
        assert 'qualitative_accuracy' in row and 'within_50_200' in row
    table = (tmp_path / 'suite' / 'results.md').read_text()
    assert table.count('\n') == 2 + len(names) and '| no_spatial |' in table
    stored = json.loads((tmp_path / 'suite' / 'no_spatial' / 'eval.json').read_text())
    assert stored['changes'] == {'general_ratio': 1.0}
    # a second call reuses the finished variants instead of training again
    again = run_ablations(base, [data_dir], tmp_path / 'suite', names, eval_config,
                          model_factory=lambda: pytest.fail('retrained'))
    assert again == rows


def test_ablation_suite_decodes_as_asked_and_refuses_a_mixed_folder(data_dir, tmp_path, capsys):
    from spatialvlm_ros.evaluate.runner import EvalConfig
    from spatialvlm_ros.train import commands
    from spatialvlm_ros.train.ablations import run_ablations

    base = _config(data_dir, tmp_path / 'unused', max_steps=1, batch_size=2, general_ratio=0.25)
    median = EvalConfig(max_new_tokens=6, batch_size=4, limit=8, decoding='median')
    run_ablations(base, [data_dir], tmp_path / 'suite', ['baseline'], median,
                  model_factory=build_tiny_vlm)
    stored = json.loads((tmp_path / 'suite' / 'baseline' / 'eval.json').read_text())
    assert stored['eval']['decoding'] == 'median'
    # a finished variant evaluated otherwise is not mixed into a greedy table
    with pytest.raises(ValueError, match='evaluated with median decoding, not greedy'):
        run_ablations(base, [data_dir], tmp_path / 'suite', ['baseline'],
                      dataclasses.replace(median, decoding='greedy'),
                      model_factory=lambda: pytest.fail('retrained'))
    # nor one trained or evaluated with other settings (the CLI's defaults differ from base)
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest='command'))
    args = parser.parse_args(['train', '--model', 'unused', '--data', str(data_dir),
                              '--eval-data', str(data_dir), '--out', str(tmp_path / 'suite'),
                              '--ablations', 'baseline', '--eval-decoding', 'median',
                              '--eval-limit', '8', '--no-progress', '--json'])
    from spatialvlm_ros.cli import CommandError

    with pytest.raises(CommandError, match='made with other settings'):
        args.func(args)
    # an unknown variant is refused before any trains
    with pytest.raises(ValueError, match=r"unknown ablation\(s\) \['nosuch'\]"):
        run_ablations(base, [data_dir], tmp_path / 'fresh', ['baseline', 'nosuch'], median,
                      model_factory=lambda: pytest.fail('trained'))
    assert not (tmp_path / 'fresh' / 'baseline').exists()
    with pytest.raises(SystemExit):
        parser.parse_args(['train', '--ablations', '--eval-decoding', 'beam'])
    # --eval-reasoning reaches the evaluation too: the direct suite is not reused for it
    args = parser.parse_args(['train', '--model', 'unused', '--data', str(data_dir),
                              '--eval-data', str(data_dir), '--out', str(tmp_path / 'suite'),
                              '--ablations', 'baseline', '--eval-decoding', 'median',
                              '--eval-reasoning', 'decompose', '--eval-limit', '8',
                              '--no-progress', '--json'])
    with pytest.raises(CommandError, match='evaluated with direct reasoning, not decompose'):
        args.func(args)


@pytest.mark.parametrize('buckets, accum', [(2, 1), (3, 2), (8, 1)])
def test_length_buckets_train_exactly_as_one_padded_pass(data_dir, tmp_path, buckets, accum):
    from spatialvlm_ros.train.data import Example

    encoder = ConversationEncoder(build_tiny_vlm()[1], 1024)
    lengths = {encoder.encode(Example(r.image, r.turns))['input_ids'].shape[1]
               for r in read_rows([data_dir])}
    assert len(lengths) > 1, 'the examples must differ in length for this test to bite'
    runs = []
    for split in (1, buckets):
        model, processor = build_tiny_vlm()
        config = _config(data_dir, tmp_path / f'run{split}', max_steps=3, batch_size=4 // accum,
                         grad_accum=accum, freeze_vision=False, length_buckets=split)
        result = Trainer(config, model, processor).train()
        runs.append((result.losses, {n: p.detach().clone() for n, p in model.named_parameters()}))
    (plain_losses, plain), (split_losses, split_weights) = runs
    assert split_losses == pytest.approx(plain_losses, rel=1e-5)
    assert plain_losses[-1] != pytest.approx(plain_losses[0], rel=1e-3), 'the runs did train'
    for name, value in plain.items():  # Adam turns float rounding into steps of ~lr * 1e-3
        torch.testing.assert_close(split_weights[name], value, atol=1e-4, rtol=1e-4)


def test_length_buckets_give_the_padded_pass_gradient(data_dir, tmp_path):
    from spatialvlm_ros.train.data import Example

    model, processor = build_tiny_vlm()
    trainer = Trainer(_config(data_dir, tmp_path, freeze_vision=False, length_buckets=3),
                      model, processor)
    trainer._setup()
    examples = [Example(r.image, r.turns) for r in read_rows([data_dir])]
    model.zero_grad()
    loss, grounding, tokens = trainer._micro_backward(examples, last=True)
    assert grounding == 0.0  # grounding_weight 0: no attention rows
    split = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    batch = trainer.encoder.batch(examples)
    padded = model(**batch).loss
    padded.backward()
    assert float(loss) == pytest.approx(float(padded.detach()), rel=1e-5)
    assert tokens == int(batch['attention_mask'].sum())
    assert split.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(split[name], param.grad, atol=1e-6, rtol=1e-4)


def test_length_buckets_are_validated(data_dir, tmp_path):
    with pytest.raises(ValueError, match='length_buckets'):
        _config(data_dir, tmp_path, length_buckets=0)


def test_length_groups_sort_and_cut_the_batch():
    from spatialvlm_ros.train.trainer import length_groups

    groups = length_groups([30, 10, 20, 10, 40], 2)
    assert [g.tolist() for g in groups] == [[1, 3, 2], [0, 4]]
    assert [g.tolist() for g in length_groups([5, 3], 4)] == [[1], [0]], 'no empty passes'


@pytest.fixture(scope='module')
def grounded_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp('grounded_data')
    records = []
    write_qa_shard(folder / 'shard-00000.parquet', synthetic_rows(8, seed=0, records=records))
    write_metadata_jsonl(folder, records)
    return folder


def test_grounding_loss_teaches_the_decoder_where_the_named_square_is(grounded_dir, tmp_path):
    config = _config(grounded_dir, tmp_path, max_steps=30, lr=1e-2, freeze_vision=False,
                     grounding_weight=1.0)
    result = Trainer(config, *build_tiny_vlm()).train()
    assert len(result.grounding_losses) == 30 and len(result.losses) == 30
    # a fresh decoder spreads its attention over ~30 positions: -log(4 of them) is > 1.5
    assert np.mean(result.grounding_losses[:3]) > 1.5
    assert np.mean(result.grounding_losses[-5:]) < 0.3
    plain = Trainer(_config(grounded_dir, tmp_path / 'plain', max_steps=2),
                    *build_tiny_vlm()).train()
    assert plain.grounding_losses == []


@pytest.mark.parametrize('buckets', [1, 3])
def test_grounding_rows_point_at_the_box_and_split_exactly(grounded_dir, tmp_path, buckets):
    model, processor = build_tiny_vlm()
    config = _config(grounded_dir, tmp_path, grounding_weight=0.7, length_buckets=buckets,
                     freeze_vision=False)
    trainer = Trainer(config, model, processor)
    trainer._setup()
    assert model.config.text_config._attn_implementation == 'eager'
    examples = trainer.stream.examples(0, 4)
    encoded = [trainer.encoder.encode(e) for e in examples]
    rows = trainer._grounding_rows(encoded, examples)
    tokenizer = trainer.encoder.tokenizer
    for (names, answers), enc, example in zip(rows, encoded, examples, strict=True):
        ids = enc['input_ids'][0].tolist()
        image = [p for p, t in enumerate(ids) if t == model.config.image_token_id]
        box = example.objects[0]['box']  # the square: columns x0..x1 of 16 px, rows 4..4+side
        columns = {c for c in range(4) if c * 4 < box[2] and (c + 1) * 4 > box[0]}
        expected = {image[r * 4 + c] for r in range(4) for c in columns
                    if r * 4 < box[3] and (r + 1) * 4 > box[1]}
        assert answers and all(set(r.keys) == expected and r.head == 0 for r in answers)
        assert len(answers) == len(example.turns)  # one named object per turn
        labels = enc['labels'][0]
        assert all(labels[r.query] == IGNORE_INDEX and labels[r.query + 1] != IGNORE_INDEX
                   for r in answers)
        caption = example.objects[0]['caption']  # 'red square': its letters, once per turn
        name = ''.join(tokenizer.decode([ids[r.query]]) for r in names)
        assert name == caption.replace(' ', '') * len(example.turns)
        assert all(set(r.keys) == expected and r.head == 0 for r in names)
    model.zero_grad()
    loss, grounding, _ = trainer._micro_backward(examples, last=True)
    split = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    # the reference: one padded pass, the mean answer loss plus the weighted mean mass losses
    from spatialvlm_ros.train.grounding import attention_mass_loss

    model.zero_grad()
    batch = trainer.encoder.collate(encoded)
    out = model(**batch, output_attentions=True)
    names = [r for n, _ in rows for r in n]
    answers = [r for _, a in rows for r in a]
    term = attention_mass_loss(out.attentions[0], names) \
        + attention_mass_loss(out.attentions[1], answers)
    (out.loss + 0.7 * term).backward()
    assert float(loss) == pytest.approx(float(out.loss.detach()), rel=1e-5)
    assert float(grounding) == pytest.approx(float(term.detach()), rel=1e-5)
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(split[name], param.grad, atol=1e-6, rtol=1e-4)


def test_grounding_rows_at_every_answer_position_reach_the_trainer(grounded_dir, tmp_path):
    from spatialvlm_ros.train.grounding import answer_spans

    model, processor = build_tiny_vlm()
    config = _config(grounded_dir, tmp_path, grounding_weight=0.7,
                     grounding_answer_positions='all')
    trainer = Trainer(config, model, processor)
    trainer._setup()
    examples = trainer.stream.examples(0, 2)
    encoded = [trainer.encoder.encode(e) for e in examples]
    rows = trainer._grounding_rows(encoded, examples)
    for (_, answers), enc in zip(rows, encoded, strict=True):
        labels = enc['labels'][0].tolist()
        # one named object per turn: one row per position that predicts an answer token
        assert len(answers) == sum(end - start for start, end in answer_spans(labels)) > 0
        assert all(labels[r.query + 1] != IGNORE_INDEX for r in answers)
    loss, grounding, _ = trainer._micro_backward(examples, last=True)
    assert math.isfinite(float(loss)) and float(grounding) > 0


def test_grounding_refuses_what_it_cannot_use(grounded_dir, data_dir, tmp_path):
    with pytest.raises(ValueError, match='grounding_layers'):
        _config(grounded_dir, tmp_path, grounding_weight=1.0, grounding_layers=(0,))
    with pytest.raises(ValueError, match='grounding_weight'):
        _config(grounded_dir, tmp_path, grounding_weight=-1.0)
    with pytest.raises(ValueError, match='grounding_weight'):
        _config(grounded_dir, tmp_path, grounding_weight=float('nan'))
    with pytest.raises(ValueError, match='grounding_answer_positions'):
        _config(grounded_dir, tmp_path, grounding_weight=1.0, grounding_answer_positions='last')
    too_deep = _config(grounded_dir, tmp_path, grounding_weight=1.0, grounding_layers=(0, 2))
    with pytest.raises(ValueError, match='2 layers'):
        Trainer(too_deep, *build_tiny_vlm()).train()
    no_boxes = _config(data_dir, tmp_path, grounding_weight=1.0)  # no metadata.jsonl there
    with pytest.raises(ValueError, match='metadata.jsonl'):
        Trainer(no_boxes, *build_tiny_vlm()).train()
    model, processor = build_tiny_vlm()
    model.config.image_seq_length = 15  # not a square grid
    with pytest.raises(ValueError, match='square grid'):
        Trainer(_config(grounded_dir, tmp_path, grounding_weight=1.0), model, processor).train()


def test_frozen_parts_run_in_eval_mode_during_training(data_dir, tmp_path):
    model, processor = build_tiny_vlm(dropout=0.1)
    config = _config(data_dir, tmp_path, freeze_vision=True, freeze_projector=False,
                     eval_data=(str(data_dir),), eval_every=1, max_steps=1)
    trainer = Trainer(config, model, processor)
    trainer.train()
    inner = model.model
    # a frozen tower draws no dropout or stochastic depth: the tokens match inference
    assert not any(m.training for m in inner.vision_tower.modules())
    assert inner.multi_modal_projector.training and inner.language_model.training
    unfrozen = Trainer(_config(data_dir, tmp_path / 'b', freeze_vision=False, max_steps=1),
                       *build_tiny_vlm())
    unfrozen.train()
    assert all(m.training for m in unfrozen.model.model.vision_tower.modules())
