"""Exact resume: a run interrupted at a checkpoint and resumed matches an uninterrupted run."""

import json

import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')
pytest.importorskip('accelerate')

from safetensors.torch import load_file  # noqa: E402

from spatialvlm_ros.train.config import TrainConfig  # noqa: E402
from spatialvlm_ros.train.testing import (  # noqa: E402
    build_tiny_vlm,
    synthetic_rows,
    write_metadata_jsonl,
    write_qa_shard,
)
from spatialvlm_ros.train.trainer import list_checkpoints, Trainer  # noqa: E402

STEPS = 6


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp('resume_data')
    records = []
    write_qa_shard(folder / 'shard-00000.parquet', synthetic_rows(10, seed=3, records=records))
    write_metadata_jsonl(folder, records)  # the boxes for grounding_weight > 0
    return folder


def _config(data_dir, out, **kwargs):
    # dropout, label noise, mixing and accumulation all draw randomness that must resume
    values = {'data': (str(data_dir),), 'general_ratio': 0.3, 'label_noise_std': 0.2,
              'out_dir': str(out), 'max_steps': STEPS, 'batch_size': 2, 'grad_accum': 2,
              'lr': 2e-3, 'warmup_steps': 2, 'min_lr': 1e-4, 'weight_decay': 0.01,
              'save_every': 3, 'keep_last': 5, 'freeze_vision': False, 'progress': False,
              'save_final': False, 'log_every': 1, 'seed': 7}
    values.update(kwargs)
    return TrainConfig(**values)


def _final_weights(trainer):
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize('grounding', [0.0, 0.5])
def test_resume_matches_uninterrupted_run(data_dir, tmp_path, grounding):
    full = Trainer(_config(data_dir, tmp_path / 'full', grounding_weight=grounding),
                   *build_tiny_vlm(dropout=0.1))
    reference = full.train()
    assert reference.step == STEPS and len(reference.losses) == STEPS
    assert len(reference.grounding_losses) == (STEPS if grounding else 0)

    first = Trainer(_config(data_dir, tmp_path / 'cut', grounding_weight=grounding),
                    *build_tiny_vlm(dropout=0.1))
    interrupted = first.train(stop_at=3)
    assert interrupted.step == 3
    assert interrupted.losses == reference.losses[:3]
    assert [p.name for p in list_checkpoints(tmp_path / 'cut')] == ['step-00000003']

    # a fresh process would rebuild the same base model and a fresh RNG state
    torch.manual_seed(12345)
    second = Trainer(_config(data_dir, tmp_path / 'cut', grounding_weight=grounding),
                     *build_tiny_vlm(dropout=0.1))
    resumed = second.train(resume=True)
    assert resumed.resumed_from == 3
    assert resumed.losses[:3] == reference.losses[:3]
    assert resumed.losses[3:] == reference.losses[3:]  # exact, not approximate
    assert resumed.grounding_losses == reference.grounding_losses
    expected, actual = _final_weights(full), _final_weights(second)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    # running a finished run again trains nothing and still names its final model
    config = _config(data_dir, tmp_path / 'cut', grounding_weight=grounding, save_final=True)
    assert Trainer(config, *build_tiny_vlm(dropout=0.1)).train(resume=True).final_dir is None
    (tmp_path / 'cut' / 'final').mkdir()
    (tmp_path / 'cut' / 'final' / 'config.json').write_text('{}')  # as save_final leaves it
    again = Trainer(config, *build_tiny_vlm(dropout=0.1)).train(resume=True)
    assert again.step == STEPS and again.losses == reference.losses
    assert again.final_dir == tmp_path / 'cut' / 'final'


def test_checkpoints_hold_no_pickle_and_rotate(data_dir, tmp_path):
    trainer = Trainer(_config(data_dir, tmp_path / 'run', max_steps=4, save_every=1,
                              keep_last=2, grad_accum=1), *build_tiny_vlm())
    trainer.train()
    checkpoints = list_checkpoints(tmp_path / 'run')
    assert [p.name for p in checkpoints] == ['step-00000003', 'step-00000004']
    assert not [p for p in (tmp_path / 'run' / 'checkpoints').iterdir()
                if p.name.startswith('.tmp')]
    for folder in checkpoints:
        names = sorted(p.name for p in folder.iterdir())
        assert names == ['optimizer.json', 'optimizer.safetensors', 'rng-0.safetensors',
                         'trainable.safetensors', 'trainer_state.json']
        for path in folder.iterdir():
            head = path.read_bytes()[:2]
            assert head[:1] != b'\x80' and head != b'PK', f'{path} looks like a pickle'
            if path.suffix == '.json':
                json.loads(path.read_text())
            else:
                assert load_file(str(path))  # parses as safetensors
        state = json.loads((folder / 'trainer_state.json').read_text())
        assert state['step'] == int(folder.name.split('-')[1])
        assert len(state['losses']) == state['step']
        optimizer = load_file(str(folder / 'optimizer.safetensors'))
        assert any(k.endswith('.exp_avg_sq') for k in optimizer)


def test_a_used_run_folder_is_never_mixed_with_another_run(data_dir, tmp_path):
    out = tmp_path / 'run'
    Trainer(_config(data_dir, out, max_steps=4, save_every=2, grad_accum=1),
            *build_tiny_vlm()).train()
    # a fresh run would prune the earlier run's higher steps away, then resume from them
    with pytest.raises(ValueError, match='holds checkpoints of an earlier run'):
        Trainer(_config(data_dir, out, max_steps=4, save_every=1, grad_accum=1),
                *build_tiny_vlm()).train()
    # resuming with other data or settings would mix two runs into one
    changed = _config(data_dir, out, max_steps=6, save_every=2, grad_accum=1, lr=1e-3,
                      general_ratio=0.0)
    with pytest.raises(ValueError, match=r'other settings \(general_ratio 0.3 -> 0.0; lr'):
        Trainer(changed, *build_tiny_vlm()).train(resume=True)
    # a finished run resumed with fewer steps says so (it has no model for them)
    fewer = _config(data_dir, out, max_steps=2, save_every=2, grad_accum=1)
    with pytest.raises(ValueError, match='is at step 4, past max_steps 2'):
        Trainer(fewer, *build_tiny_vlm()).train(resume=True)
    # more steps is a resume: the run goes on
    more = Trainer(_config(data_dir, out, max_steps=6, save_every=2, grad_accum=1),
                   *build_tiny_vlm()).train(resume=True)
    assert more.resumed_from == 4 and more.step == 6
    # another base model's shapes: a clear error, not a torch traceback
    wider = Trainer(_config(data_dir, out, max_steps=8, save_every=2, grad_accum=1),
                    *build_tiny_vlm(hidden=48))
    with pytest.raises(ValueError, match='does not fit this model'):
        wider.train(resume=True)
