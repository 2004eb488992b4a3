"""``spatialvlm replay``: files written, relabelled bag contents, clear errors."""

import argparse
import csv
import dataclasses
import json
import math

import pytest

from spatialvlm_ros.bags.reader import bag_info, open_bag
from spatialvlm_ros.cli import CommandError
from spatialvlm_ros.replay import commands
from spatialvlm_ros.replay.outputs import CSV_COLUMNS
from spatialvlm_ros.replay.topics import (
    OUTPUT_TOPICS,
    relative_name,
    RESULT_KEYS,
    REWARD_TOPICS,
)

FRAMES = 16


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    from spatialvlm_ros.bags.writer import write_episode
    from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

    root = tmp_path_factory.mktemp('bags')
    out = []
    for seed, scenario, storage in ((2, 'approach', 'sqlite3'),
                                    (3, 'approach_retreat', 'mcap')):
        episode = generate_episode(EpisodeConfig(seed=seed, scenario=scenario,
                                                 num_frames=FRAMES, width=48, height=36))
        out.append(write_episode(episode, root / f'{scenario}_{seed}', storage=storage))
    return out


def replay(*argv):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(['replay', *map(str, argv)])
    return args.func(args)


def test_replay_writes_csv_plot_summary_and_relabelled_bags(bags, tmp_path, capsys):
    out = tmp_path / 'out'
    assert replay(*bags, '--estimator', 'noisy_oracle', '--out', out, '--write-bag',
                  '--json') == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary['total']['episodes'] == 2
    assert json.loads((out / 'summary.json').read_text()) == summary
    assert '| approach_2 |' in (out / 'summary.md').read_text()
    for bag in bags:
        with open(out / f'{bag.name}.csv', newline='') as f:
            rows = list(csv.reader(f))
        assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 1 + FRAMES
        assert (out / f'{bag.name}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        _check_relabelled(bag, out / f'{bag.name}_reward', rows)


def _check_relabelled(source, relabelled, rows):
    before, after = bag_info(source), bag_info(relabelled)
    for name, topic in before['topics'].items():
        assert after['topics'][name]['count_read'] == topic['count_read'], name
    for spec in REWARD_TOPICS.values():
        assert after['topics'][spec.name]['count_read'] == FRAMES
        assert after['topics'][spec.name]['type'] == spec.msgtype
    assert after['messages_read'] == before['messages_read'] + FRAMES * len(REWARD_TOPICS)
    with open_bag(source) as bag:
        original = [(m.topic, m.timestamp_ns, m.data) for m in bag.messages()]
    with open_bag(relabelled) as bag:
        copied = []
        rewards = []
        for m in bag.messages():
            if m.topic in before['topics']:
                copied.append((m.topic, m.timestamp_ns, m.data))
            elif m.topic == REWARD_TOPICS['reward'].name:
                msg = bag.deserialize(m.data, m.msgtype)
                stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
                rewards.append((m.timestamp_ns, stamp, msg.header.frame_id, msg.point.x))
        assert bag.custom_data == open_bag(source).custom_data
    assert sorted(copied) == sorted(original)  # byte for byte
    image_stamps = [int(r[0]) for r in rows[1:]]
    assert [r[0] for r in rewards] == image_stamps
    assert [r[1] for r in rewards] == image_stamps
    assert {r[2] for r in rewards} == {'camera_color_optical_frame'}
    column = rows[0].index('reward')
    for (_, _, _, x), row in zip(rewards, rows[1:], strict=True):
        assert row[column] == '' or x == pytest.approx(float(row[column]), rel=1e-5)


def test_missing_image_topic_is_a_clear_error_and_writes_nothing(bags, tmp_path):
    out = tmp_path / 'out'
    with pytest.raises(CommandError, match="no image topic '/nope'.*image topics present"):
        replay(bags[0], '--estimator', 'oracle', '--image-topic', '/nope', '--out', out)
    assert not out.exists()


def test_corrupt_bag_is_a_clear_error_and_writes_nothing(bags, tmp_path):
    import shutil

    broken = tmp_path / 'broken'
    shutil.copytree(bags[0], broken)
    db = next(broken.glob('*.db3'))
    db.write_bytes(db.read_bytes()[:4096])
    out = tmp_path / 'out'
    with pytest.raises(CommandError, match='broken'):
        replay(bags[1], broken, '--estimator', 'oracle', '--out', out)
    assert not out.exists()  # every bag is checked before any output is written


def test_vlm_from_a_missing_folder_is_a_clear_error(bags, tmp_path):
    with pytest.raises(CommandError, match='no_such_model'):
        replay(bags[0], '--model-folder', tmp_path / 'no_such_model', '--out', tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_oracle_replay_with_default_smoother_orders_the_approach(bags, tmp_path, capsys):
    assert replay(bags[0], '--estimator', 'oracle', '--out', tmp_path, '--no-plot') == 0
    text = capsys.readouterr().out
    assert '| approach_2 |' in text
    row = json.loads((tmp_path / 'summary.json').read_text())['bags'][0]
    assert row['mae_m'] == 0.0 and row['spearman'] > 0.9
    assert not (tmp_path / 'approach_2.png').exists()


def test_relabelled_messages_follow_the_node_conventions(bags, tmp_path):
    assert replay(bags[0], '--estimator', 'noisy_oracle', '--out', tmp_path, '--no-plot',
                  '--write-bag') == 0
    relabelled = tmp_path / 'approach_2_reward'
    added = {name: info['type'] for name, info in bag_info(relabelled)['topics'].items()
             if name not in bag_info(bags[0])['topics']}
    # exactly the node's per-frame outputs, as a live recording names them (/spatialvlm/...)
    assert added == {spec.name: spec.msgtype for spec in REWARD_TOPICS.values()}
    assert set(OUTPUT_TOPICS) - set(REWARD_TOPICS) == {'debug_image'}  # live only
    for key, spec in REWARD_TOPICS.items():
        assert spec.name == '/' + relative_name(key)
        assert relative_name(key).startswith('spatialvlm/')
    assert REWARD_TOPICS['distance_raw'].name == '/spatialvlm/distance/raw'
    frames = {}  # stamp -> key -> message
    keys = {spec.name: key for key, spec in REWARD_TOPICS.items()}
    with open_bag(relabelled) as bag:
        for m in bag.messages(list(keys)):
            frames.setdefault(m.timestamp_ns, {})[keys[m.topic]] = \
                bag.deserialize(m.data, m.msgtype)
    assert len(frames) == FRAMES
    for msgs in frames.values():
        assert list(msgs) == list(REWARD_TOPICS)  # the node's publication order
        status = msgs['result'].status[0]
        values = {kv.key: kv.value for kv in status.values}
        assert tuple(values) == RESULT_KEYS
        assert status.name == 'spatialvlm_reward/result'
        assert values['subject'] == 'the gripper' and int(values['stamp_ns']) > 0
        raw, dist, reward = msgs['distance_raw'], msgs['distance'], msgs['reward']
        for msg in (raw, dist, reward):  # PointStamped with the image's header
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            assert stamp == int(values['stamp_ns'])
            assert msg.header.frame_id == values['frame_id'] == 'camera_color_optical_frame'
        assert raw.point.y == (0.0 if math.isnan(raw.point.x) else 1.0) and raw.point.z == 0.0
        assert _same(raw.point.x, float(values['distance_raw']))
        assert _same(dist.point.x, float(values['distance'])) and dist.point.y in (0.0, 1.0)
        assert _same(reward.point.x, float(values['reward']))
        assert reward.point.y == (1.0 if values['success'] == 'True' else 0.0)
        assert reward.point.z == (1.0 if values['valid'] == 'True' else 0.0)
        assert msgs['valid'].data is (values['valid'] == 'True')
        assert msgs['stale'].data is (values['stale'] == 'True')
        assert msgs['answer'].data == values['answer']
        assert status.level == (3 if values['stale'] == 'True'
                                else 0 if values['valid'] == 'True' else 1)


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5)


class _FixedEstimator:
    """Answers 0.5 m to everything; records nothing."""

    def estimate(self, image, subject, target):
        from spatialvlm_ros.model.estimator import DistanceEstimate

        return DistanceEstimate(0.5, 'The distance is 0.5 m.', ['The distance is 0.5 m.'])

    def close(self):
        pass


def test_vlm_samples_and_temperature_reach_the_estimator(bags, tmp_path, monkeypatch, capsys):
    from spatialvlm_ros.model import estimator as module
    from spatialvlm_ros.model.estimator import DEFAULT_NUMBER_DECODING, NUMBER_DECODINGS

    built = []
    monkeypatch.setattr(module, 'build_estimator',
                        lambda kind, **kwargs: built.append(kwargs) or _FixedEstimator())
    assert replay(bags[0], '--samples', '4', '--temperature', '1.0', '--out', tmp_path / 'a',
                  '--no-plot', '--json') == 0
    assert built[-1]['samples'] == 4 and built[-1]['temperature'] == 1.0
    config = json.loads(capsys.readouterr().out)['config']
    assert (config['samples'], config['temperature']) == (4, 1.0)
    assert replay(bags[0], '--out', tmp_path / 'b', '--no-plot', '--json') == 0
    assert 'samples' not in built[-1] and 'temperature' not in built[-1]  # greedy by default
    assert 'question_template' not in built[-1]  # the estimator's default: the node's question
    assert replay(bags[0], '--question-template', 'How far is {subject} from {target}?',
                  '--out', tmp_path / 'c', '--no-plot', '--json') == 0
    assert built[-1]['question_template'] == 'How far is {subject} from {target}?'
    assert 'number_decoding' not in built[-1]  # the estimator's default: the node's
    other = next(d for d in NUMBER_DECODINGS if d != DEFAULT_NUMBER_DECODING)
    capsys.readouterr()
    assert replay(bags[0], '--number-decoding', other, '--out', tmp_path / 'd', '--no-plot',
                  '--json') == 0
    assert built[-1]['number_decoding'] == other
    assert json.loads(capsys.readouterr().out)['config']['number_decoding'] == other
    assert 'mirror_average' not in built[-1]  # off unless asked for, as in the node
    assert replay(bags[0], '--mirror-average', '--out', tmp_path / 'e', '--no-plot',
                  '--json') == 0
    assert built[-1]['mirror_average'] is True
    assert json.loads(capsys.readouterr().out)['config']['mirror_average'] is True


@pytest.mark.parametrize('flags, match', [(('--samples', '0'), 'samples'),
                                          (('--samples', '17'), 'samples'),
                                          (('--temperature', '0'), 'temperature'),
                                          (('--temperature', 'nan'), 'temperature'),
                                          (('--temperature', '5.5'), 'temperature'),
                                          (('--question-template', 'How far is {subject}?'),
                                           'question_template')])
def test_bad_sampling_options_are_clear_errors(bags, tmp_path, flags, match):
    with pytest.raises(CommandError, match=match):
        replay(bags[0], *flags, '--out', tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_unknown_number_decoding_is_refused(bags, tmp_path):
    from spatialvlm_ros.replay.runner import ReplayConfig

    with pytest.raises(ValueError, match='number_decoding must be one of'):
        ReplayConfig(number_decoding='beam')
    with pytest.raises(SystemExit):  # argparse's choices
        replay(bags[0], '--number-decoding', 'beam', '--out', tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_bags_with_the_same_name_never_overwrite_each_other(bags, tmp_path):
    import shutil

    copies = [tmp_path / 'a' / 'ep', tmp_path / 'b' / 'ep', tmp_path / 'c' / 'ep_1']
    for source, copy in zip((bags[0], bags[1], bags[0]), copies, strict=True):
        shutil.copytree(source, copy)
    out = tmp_path / 'out'
    assert replay(*copies, '--estimator', 'oracle', '--no-plot', '--out', out) == 0
    summary = json.loads((out / 'summary.json').read_text())
    names = [row['bag_name'] for row in summary['bags']]
    assert names == ['ep', 'ep_1', 'ep_1_1']  # 'c/ep_1' does not take b/ep's name
    for row in summary['bags']:
        assert row['outputs']['csv'] == str(out / f'{row["bag_name"]}.csv')
        with open(out / f'{row["bag_name"]}.csv', newline='') as f:
            assert len(list(csv.reader(f))) == 1 + FRAMES


@pytest.mark.parametrize('topic', ['/camera/depth/image_raw', '/ground_truth/segmentation'])
def test_a_depth_or_segmentation_topic_is_not_taken_for_colour(bags, tmp_path, topic):
    out = tmp_path / 'out'
    with pytest.raises(CommandError, match=f'first image on {topic} cannot be used as colour'):
        replay(bags[0], '--estimator', 'oracle', '--image-topic', topic, '--out', out)
    assert not out.exists()


def test_stamps_going_back_start_a_new_episode_as_in_the_node(bags, monkeypatch):
    from spatialvlm_ros.replay import runner
    from spatialvlm_ros.replay import source as source_module

    frames = list(source_module.iter_frames(runner.open_source(bags[0])))
    # the second half again, from the start: the stamps jump back once
    looped = frames + [dataclasses.replace(f, stamp_ns=f.stamp_ns - frames[-1].stamp_ns
                                           + frames[0].stamp_ns - 1) for f in frames[8:]]
    monkeypatch.setattr(runner, 'iter_frames', lambda _source: iter(looped))
    config = runner.ReplayConfig(estimator='oracle')
    result = runner.replay_source(runner.open_source(bags[0]), config)
    assert len(result.records) == len(looped) and result.metrics['stamp_resets'] == 1
    # after the reset the reward is shaped afresh: the looped frames repeat the last half
    restart = result.records[len(frames)]
    assert restart.distance_m == pytest.approx(frames[8].truth_centre_m, abs=1e-3)


def test_blank_phrases_and_a_file_for_out_are_refused_before_any_bag_is_scored(bags, tmp_path):
    for flag in ('--target', '--subject'):
        with pytest.raises(CommandError, match=f'{flag[2:]} must be non-empty'):
            replay(bags[0], '--estimator', 'oracle', flag, '  ', '--out', tmp_path / 'o')
    (tmp_path / 'a_file').write_text('x')
    with pytest.raises(CommandError, match='--out: .*a_file is a file, not a folder'):
        replay(bags[0], '--estimator', 'oracle', '--out', tmp_path / 'a_file')
