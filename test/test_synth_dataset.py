"""Tests of synth.dataset and ``spatialvlm synth``: format, determinism, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spatialvlm_ros.cli import main
from spatialvlm_ros.synth import dataset
from spatialvlm_ros.synth.dataset import (
    DatasetConfig,
    DatasetError,
    process_shard,
    run_dataset,
    shard_name,
)
from spatialvlm_ros.synth.pipeline import EngineConfig

pytest.importorskip('pybullet')
pytest.importorskip('pyarrow')


def _config(out: Path, seed: int = 7, scenes: int = 6) -> DatasetConfig:
    return DatasetConfig(out=str(out), num_scenes=scenes, shard_size=2,
                         source_kwargs={'width': 160, 'height': 120},
                         engine=EngineConfig(seed=seed, qa_per_image=3))


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob('shard-*.parquet'))}


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """Write a 6-scene, 3-shard dataset once with one worker."""
    out = tmp_path_factory.mktemp('ref')
    summary = run_dataset(_config(out), workers=1, progress=False)
    return out, summary


def test_loads_with_hf_datasets(reference):
    datasets = pytest.importorskip('datasets')
    out, summary = reference
    files = sorted(str(p) for p in out.glob('shard-*.parquet'))
    ds = datasets.load_dataset('parquet', data_files=files, split='train',
                               cache_dir=str(out / '.hf_cache'))
    assert len(ds) == summary['rows'] == summary['images_kept'] == 6
    row = ds[0]
    assert row['image'].size == (160, 120) and row['image'].mode == 'RGB'
    assert row['image_id'] == 'sim-7-00000000'
    messages = row['messages']
    assert [m['role'] for m in messages] == ['user', 'assistant'] * 3
    assert messages[0]['content'][0]['type'] == 'image'
    assert messages[0]['content'][1]['type'] == 'text' and messages[0]['content'][1]['text']
    assert all(c['type'] == 'text' for m in messages[1:] for c in m['content'])
    meta = json.loads(row['qa_metadata'])
    assert len(meta) == 3
    assert {'qa_type', 'kind', 'object_ids', 'captions', 'value_m', 'truth', 'stated_value_m',
            'needs_canonical', 'sim_truth'} <= set(meta[0])
    assert meta[0]['question'] == messages[0]['content'][1]['text']


def test_summary_and_metadata(reference):
    out, summary = reference
    assert summary['images'] == 6 and summary['total_qa'] == 18
    assert sum(summary['qa_per_type'].values()) == 18
    assert summary['canonical_failures'] == 0
    assert {'canonical', 'lifting', 'source', 'qa'} <= set(summary['stage_mean_ms'])
    lines = (out / 'metadata.jsonl').read_text().splitlines()
    assert [json.loads(x)['scene_index'] for x in lines] == list(range(6))
    manifest = json.loads((out / 'manifest.json').read_text())
    assert sorted(manifest['shards'], key=int) == ['0', '1', '2']
    assert main(['synth', 'summary', str(out), '--json']) == 0


def test_deterministic_and_independent_of_workers(reference, tmp_path):
    out, _ = reference
    run_dataset(_config(tmp_path), workers=2, progress=False)
    assert _shards(tmp_path) == _shards(out)
    assert len(_shards(out)) == 3


def test_different_seed_differs(reference, tmp_path):
    out, _ = reference
    process_shard(_config(tmp_path, seed=8), 0)
    assert (tmp_path / shard_name(0)).read_bytes() != (out / shard_name(0)).read_bytes()


def test_resume_after_lost_last_shard(reference, tmp_path):
    out, _ = reference
    config = _config(tmp_path)
    run_dataset(config, progress=False)
    (tmp_path / shard_name(2)).unlink()
    manifest = json.loads((tmp_path / 'manifest.json').read_text())
    del manifest['shards']['2']
    (tmp_path / 'manifest.json').write_text(json.dumps(manifest))
    summary = run_dataset(config, progress=False)
    assert summary['last_run']['scenes'] == 2  # only the lost shard was redone
    assert _shards(tmp_path) == _shards(out) and summary['rows'] == 6


def test_resume_after_crash_mid_run(reference, tmp_path, monkeypatch):
    out, _ = reference
    config = _config(tmp_path)
    real = dataset.process_shard

    def crash_on_shard_1(cfg, shard_index):
        if shard_index == 1:
            raise KeyboardInterrupt('killed')
        return real(cfg, shard_index)

    monkeypatch.setattr(dataset, 'process_shard', crash_on_shard_1)
    with pytest.raises(KeyboardInterrupt):
        run_dataset(config, progress=False)
    manifest = json.loads((tmp_path / 'manifest.json').read_text())
    assert list(manifest['shards']) == ['0']
    monkeypatch.setattr(dataset, 'process_shard', real)
    (tmp_path / shard_name(2)).write_bytes(b'partial garbage')  # a half-written leftover
    stray = tmp_path / f'.{shard_name(1)}.4242.tmp'  # atomic_write's file, the rename not done
    stray.write_bytes(b'half')
    summary = run_dataset(config, progress=False)
    assert summary['last_run']['scenes'] == 4 and not stray.exists()
    assert _shards(tmp_path) == _shards(out) and summary['rows'] == 6


def test_corrupt_manifest_and_foreign_folder_are_clear_errors(tmp_path):
    config = _config(tmp_path, scenes=2)
    (tmp_path / 'manifest.json').write_text('{"run": ')
    with pytest.raises(DatasetError, match='corrupt'):
        run_dataset(config, progress=False)
    (tmp_path / 'manifest.json').write_text(json.dumps({'run': {}, 'shards': {'0': 'x'}}))
    with pytest.raises(DatasetError, match='corrupt'):
        run_dataset(config, progress=False)
    (tmp_path / 'manifest.json').write_text(json.dumps({'run': {'seed': 1}, 'shards': {}}))
    with pytest.raises(DatasetError, match='different run'):
        run_dataset(config, progress=False)
    assert main(['synth', 'run', '--scenes', '2', '--out', str(tmp_path),
                 '--no-progress']) == 2


def test_a_bad_source_option_does_not_claim_the_folder(tmp_path, capsys):
    out = tmp_path / 'run'
    assert main(['synth', 'run', '--scenes', '1', '--out', str(out), '--width', '0',
                 '--no-progress']) == 2
    assert 'image size must be within 16..4096 px, got 0x240' in capsys.readouterr().err
    assert not (out / 'manifest.json').exists()
    assert main(['synth', 'run', '--scenes', '1', '--out', str(out), '--width', '64',
                 '--height', '48', '--no-progress', '--json']) == 0


def test_cli_run(tmp_path, capsys):
    assert main(['synth', 'run', '--scenes', '2', '--shard-size', '1', '--seed', '1', '--out',
                 str(tmp_path), '--width', '160', '--height', '120', '--qa-per-image', '2',
                 '--noise', 'mild', '--no-progress', '--json']) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary['images'] == 2 and summary['shards'] == 2
    assert main(['synth', 'summary', str(tmp_path)]) == 0
    assert 'QA per type' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(['synth', 'run', '--help'])
