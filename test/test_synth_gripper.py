"""Gripper-to-object distance QA from simulated episodes: format, truth, determinism, resume."""

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from spatialvlm_ros.core.answers import parse_distance
from spatialvlm_ros.synth.gripper import (
    gripper_box,
    GripperDataConfig,
    load_templates,
    segment_box,
    shard_path,
    write_gripper_dataset,
)


def _config(out, **kw):
    base = {'out': str(out), 'episodes': 3, 'episodes_per_shard': 2, 'frames_per_episode': 12,
            'samples_per_episode': 2, 'qa_per_frame': 2, 'width': 96, 'height': 72, 'seed': 4}
    base.update(kw)
    return GripperDataConfig(**base)


def test_rows_carry_exact_truth_and_parseable_answers(tmp_path):
    config = _config(tmp_path / 'a')
    summary = write_gripper_dataset(config, progress=False)
    assert summary['written'] == 2 and summary['rows'] == 6
    rows = [r for k in range(2) for r in pq.read_table(shard_path(config, k)).to_pylist()]
    assert len(rows) == 6
    for row in rows:
        meta = json.loads(row['qa_metadata'])
        assert len(meta) == 2 and len(row['messages']) == 4
        assert row['messages'][0]['content'][0]['type'] == 'image'
        for turn, m in enumerate(meta):
            assert m['type'] == 'gripper_distance' and m['kind'] == 'quantitative'
            assert m['sim_truth']['value_m'] == m['value_m'] > 0
            answer = row['messages'][2 * turn + 1]['content'][0]['text']
            parsed = parse_distance(answer)
            assert parsed.value_m == pytest.approx(m['stated_value_m'], rel=1e-6)
            assert 0.5 <= m['stated_value_m'] / m['value_m'] <= 2.0
        assert meta[0]['object_ids'][0] == 'gripper'
        for m in meta:  # one box per caption, inside the 96 x 72 image (or None: not in view)
            assert len(m['boxes']) == len(m['captions']) == 2
            for box in m['boxes']:
                assert box is None or (0 <= box[0] < box[2] <= 96 and 0 <= box[1] < box[3] <= 72)
        assert any(m['boxes'][1] is not None for m in meta)


def test_boxes_bound_the_segment_and_surround_the_grasp_point():
    from types import SimpleNamespace

    from spatialvlm_ros.core.datatypes import CameraIntrinsics

    seg = np.full((72, 96), -1)
    seg[10:20, 30:35] = 2
    seg[40, 60] = 2  # a second visible piece widens the box
    assert segment_box(seg, 2) == [30.0, 10.0, 61.0, 41.0]
    assert segment_box(seg, 1) is None
    k = CameraIntrinsics(fx=100.0, fy=100.0, cx=48.0, cy=36.0, width=96, height=72)
    frame = SimpleNamespace(gripper_cam=np.array([0.1, 0.0, 1.0]), intrinsics=k,
                            rgb=np.zeros((72, 96, 3), np.uint8))
    # grasp point at u = 58, v = 36; 5 cm at 1 m is 5 px
    assert gripper_box(frame) == pytest.approx([53.0, 31.0, 63.0, 41.0])
    frame.gripper_cam = np.array([0.0, 0.0, -0.5])  # behind the camera
    assert gripper_box(frame) is None
    frame.gripper_cam = np.array([5.0, 0.0, 1.0])  # far outside the image
    assert gripper_box(frame) is None


def test_deterministic_and_resumable(tmp_path):
    a, b = _config(tmp_path / 'a'), _config(tmp_path / 'b')
    write_gripper_dataset(a, progress=False)
    write_gripper_dataset(b, progress=False)
    assert shard_path(a, 1).read_bytes() == shard_path(b, 1).read_bytes()
    shard_path(b, 1).unlink()
    summary = write_gripper_dataset(b, progress=False)
    assert summary['written'] == 1 and summary['skipped'] == 1
    assert shard_path(a, 1).read_bytes() == shard_path(b, 1).read_bytes()
    with pytest.raises(ValueError, match='different gripper run'):
        write_gripper_dataset(_config(tmp_path / 'b', seed=5), progress=False)
    # the same run moved elsewhere (or reached through a link) resumes: only 'out' differs
    (tmp_path / 'b').rename(tmp_path / 'moved')
    (tmp_path / 'link').symlink_to(tmp_path / 'moved')
    for where in ('moved', 'link'):
        assert write_gripper_dataset(_config(tmp_path / where), progress=False)['skipped'] == 2


def test_parallel_workers_write_the_same_files(tmp_path):
    a, c = _config(tmp_path / 'a'), _config(tmp_path / 'c')
    write_gripper_dataset(a, progress=False)
    summary = write_gripper_dataset(c, progress=False, workers=2)
    assert summary['written'] == 2
    for k in range(2):
        assert shard_path(a, k).read_bytes() == shard_path(c, k).read_bytes()
    with pytest.raises(ValueError, match='workers'):
        write_gripper_dataset(c, progress=False, workers=0)


def test_bad_config_and_templates():
    with pytest.raises(ValueError, match='samples_per_episode'):
        GripperDataConfig(out='x', frames_per_episode=10, samples_per_episode=11)
    templates = load_templates()
    assert all('[A]' in q and '[B]' in q for q in templates['questions'])
    assert all('[X]' in a for a in templates['answers'])
    assert np.all([s.startswith('the ') for s in templates['subjects']])


def test_metric_answers_are_fixed_width_metres_with_the_node_prefix(tmp_path):
    from spatialvlm_ros.model.estimator import DEFAULT_ANSWER_PREFIX

    config = _config(tmp_path / 'm', answer_style='metric')
    write_gripper_dataset(config, progress=False)
    rows = [r for k in range(2) for r in pq.read_table(shard_path(config, k)).to_pylist()]
    for row in rows:
        for turn, m in enumerate(json.loads(row['qa_metadata'])):
            answer = row['messages'][2 * turn + 1]['content'][0]['text']
            assert re.fullmatch(r'The distance is \d+\.\d\d m\.', answer), answer
            assert answer.startswith(DEFAULT_ANSWER_PREFIX)
            assert m['stated_text'] == f"{m['stated_value_m']:.2f} m" and m['unit'] == 'm'
            assert abs(m['stated_value_m'] - m['value_m']) <= 0.005 + 1e-9 or (
                m['value_m'] < 0.01 and m['stated_value_m'] == 0.01)
            assert parse_distance(answer).value_m == pytest.approx(m['stated_value_m'])
    with pytest.raises(ValueError, match='answer_style'):
        _config(tmp_path / 'x', answer_style='imperial')


def test_a_run_recorded_before_answer_style_existed_resumes(tmp_path):
    config = _config(tmp_path / 'old')
    write_gripper_dataset(config, progress=False)
    run_file = tmp_path / 'old' / 'gripper_run.json'
    recorded = json.loads(run_file.read_text())
    del recorded['answer_style']  # what a folder written by an older version holds
    run_file.write_text(json.dumps(recorded))
    assert write_gripper_dataset(config, progress=False)['skipped'] == 2
    run_file.write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match='different gripper run'):
        write_gripper_dataset(_config(tmp_path / 'old', answer_style='metric'), progress=False)


def test_the_target_alone(tmp_path):
    """n_objects (1, 1): one question per frame, about the target; no distractor episodes."""
    config = _config(tmp_path / 'alone', episodes=6, episodes_per_shard=6, n_objects=(1, 1))
    write_gripper_dataset(config, progress=False)
    rows = pq.read_table(shard_path(config, 0)).to_pylist()
    assert len(rows) == 12
    for row in rows:
        metas = json.loads(row['qa_metadata'])
        assert len(metas) == 1 and len(row['messages']) == 2
        assert metas[0]['episode']['scenario'] != 'distractor_first'
    # resuming the same run (its tuple recorded as a JSON list) skips the written shard
    assert write_gripper_dataset(config, progress=False)['skipped'] == 1
    with pytest.raises(ValueError, match='different gripper run'):
        write_gripper_dataset(_config(tmp_path / 'alone', episodes=6, episodes_per_shard=6),
                              progress=False)


@pytest.mark.parametrize('n_objects', [(0, 2), (3, 2), (1, 9), (1, 2, 3)])
def test_bad_n_objects(n_objects):
    with pytest.raises(ValueError, match='n_objects'):
        GripperDataConfig(out='x', n_objects=n_objects)


def test_cli_gripper(tmp_path, capsys):
    from spatialvlm_ros.cli import main

    out = tmp_path / 'cli'
    assert main(['synth', 'gripper', '--out', str(out), '--episodes', '2', '--seed', '4',
                 '--frames-per-episode', '12', '--samples-per-episode', '2', '--width', '96',
                 '--height', '72', '--n-objects', '1', '1', '--no-progress', '--json']) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary['rows'] == 4 and summary['qa'] == 4 and summary['written'] == 1
    recorded = json.loads((out / 'gripper_run.json').read_text())
    assert recorded['n_objects'] == [1, 1]
    assert main(['synth', 'gripper', '--out', str(tmp_path / 'bad'), '--n-objects', '2', '1',
                 '--no-progress']) != 0
