"""Tests of synth.ray_runner: Ray Data writes the same shards as the local runner and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spatialvlm_ros.cli import main
from spatialvlm_ros.synth.dataset import DatasetConfig, load_manifest, run_dataset, shard_name
from spatialvlm_ros.synth.pipeline import EngineConfig

pytest.importorskip('pybullet')
pytest.importorskip('pyarrow')
pytest.importorskip('ray.data')


def _config(out: Path) -> DatasetConfig:
    return DatasetConfig(out=str(out), num_scenes=6, shard_size=2,
                         source_kwargs={'width': 160, 'height': 120},
                         engine=EngineConfig(seed=11, qa_per_image=3))


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob('shard-*.parquet'))}


@pytest.fixture(scope='module')
def local_ray():
    """Start one local Ray instance with 2 CPUs for the module (the runner then reuses it)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level='error')
    yield ray
    ray.shutdown()


def test_same_bytes_as_local_runner_and_resume(local_ray, tmp_path):
    from spatialvlm_ros.synth.ray_runner import run_dataset_ray

    reference = run_dataset(_config(tmp_path / 'local'), workers=1, progress=False)
    summary = run_dataset_ray(_config(tmp_path / 'ray'), progress=False)
    expected = _shards(tmp_path / 'local')
    assert len(expected) == 3
    assert _shards(tmp_path / 'ray') == expected
    assert summary['rows'] == reference['rows'] and summary['total_qa'] == reference['total_qa']
    assert summary['qa_per_type'] == reference['qa_per_type']
    assert summary['last_run']['runner'] == 'ray' and summary['last_run']['scenes'] == 6
    manifest = load_manifest(tmp_path / 'ray')
    assert manifest['run'] == load_manifest(tmp_path / 'local')['run']
    assert manifest['shards'] == load_manifest(tmp_path / 'local')['shards']

    # lose a shard: only it is recomputed, with the same bytes
    (tmp_path / 'ray' / shard_name(1)).unlink()
    summary = run_dataset_ray(_config(tmp_path / 'ray'), progress=False)
    assert summary['last_run']['scenes'] == 2
    assert _shards(tmp_path / 'ray') == expected
    lines = (tmp_path / 'ray' / 'metadata.jsonl').read_text().splitlines()
    assert [json.loads(line)['scene_index'] for line in lines] == list(range(6))

    # nothing left to do: Ray is not even needed
    summary = run_dataset_ray(_config(tmp_path / 'ray'), progress=False)
    assert summary['last_run']['scenes'] == 0


def test_cli_runner_ray(local_ray, tmp_path, capsys):
    out = tmp_path / 'cli'
    code = main(['synth', 'run', '--runner', 'ray', '--num-cpus', '2', '--scenes', '2',
                 '--shard-size', '1', '--width', '160', '--height', '120', '--seed', '3',
                 '--qa-per-image', '2', '--out', str(out), '--no-progress'])
    assert code == 0
    text = capsys.readouterr().out
    assert 'ray (local' in text
    assert len(list(out.glob('shard-*.parquet'))) == 2


def test_rejects_bad_num_cpus(tmp_path):
    from spatialvlm_ros.synth.ray_runner import run_dataset_ray

    with pytest.raises(ValueError, match='num_cpus'):
        run_dataset_ray(_config(tmp_path), num_cpus=0, progress=False)
