"""Tests of simulated episodes: scenarios, determinism, stamps, metadata and config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spatialvlm_ros.sim.episode import EpisodeConfig, generate_episode

pytest.importorskip('pybullet')

SMALL = {'width': 96, 'height': 72, 'num_frames': 30}


@pytest.fixture(scope='module')
def episodes():
    """One small episode per scenario, generated once."""
    return {s: generate_episode(EpisodeConfig(seed=3, scenario=s, **SMALL))
            for s in ('approach', 'approach_retreat', 'pause', 'grasp_lift',
                      'distractor_first')}


def _target_distance(episode):
    return np.array([f.distance_surface[episode.target_id] for f in episode.frames])


def test_approach_ends_close(episodes):
    """The surface distance to the target falls overall and ends under 5 cm."""
    d = _target_distance(episodes['approach'])
    assert d[-1] < 0.05 and d[0] > 0.15
    assert d[-1] == pytest.approx(d.min(), abs=1e-3)
    assert np.mean(np.diff(d) <= 1e-4) > 0.8


def test_approach_retreat_rises_again(episodes):
    """After getting close, the gripper moves away again."""
    d = _target_distance(episodes['approach_retreat'])
    assert d.min() < 0.05
    assert d[-1] > d.min() + 0.15


def test_pause_holds_still(episodes):
    """The pause scenario has runs of frames where the gripper does not move."""
    ep = episodes['pause']
    moves = np.linalg.norm(np.diff([f.gripper_world for f in ep.frames], axis=0), axis=1)
    assert np.sum(moves < 1e-4) >= 3
    assert _target_distance(ep)[-1] < 0.05


def test_grasp_lift_raises_target(episodes):
    """Grasping and lifting raises the target's centroid while the fingers close."""
    ep = episodes['grasp_lift']
    z = [f.get_object(ep.target_id).centroid_world[2] for f in ep.frames]
    assert z[-1] - z[0] > 0.1
    assert ep.frames[-1].gripper_opening < ep.frames[0].gripper_opening
    others = [o.object_id for o in ep.frames[0].objects if o.object_id != ep.target_id]
    for oid in others:  # only the target moves
        np.testing.assert_array_equal(ep.frames[0].get_object(oid).centroid_world,
                                      ep.frames[-1].get_object(oid).centroid_world)


def test_distractor_first(episodes):
    """The gripper gets close to the distractor before it gets close to the target."""
    ep = episodes['distractor_first']
    distractor = ep.metadata['distractor_id']
    assert distractor and distractor != ep.target_id
    dd = np.array([f.distance_surface[distractor] for f in ep.frames])
    dt = _target_distance(ep)
    assert dd.min() < 0.05 and dt[-1] < 0.05
    assert int(np.argmin(dd)) < int(np.argmin(dt))
    assert dt[int(np.argmin(dd))] > 0.1


def test_stamps_and_metadata(episodes):
    """Stamps are start + index / rate; metadata is JSON-serialisable and complete."""
    ep = episodes['approach']
    stamps = np.array([f.stamp_ns for f in ep.frames])
    offsets = np.round(np.arange(30) * 1e9 / ep.rate_hz).astype(np.int64)
    np.testing.assert_array_equal(stamps, EpisodeConfig().start_ns + offsets)
    meta = json.loads(json.dumps(ep.metadata))
    assert meta['scenario'] == 'approach' and meta['target_id'] == ep.target_id
    assert meta['target_caption'] in ep.target_captions
    assert len(meta['camera']['K']) == 9
    ids = [o['id'] for o in meta['objects']]
    assert ids == [o.object_id for o in ep.frames[0].objects]
    assert all({'category', 'attributes', 'captions', 'half_extents'} <= set(o)
               for o in meta['objects'])


def test_deterministic_for_seed(episodes):
    """The same config gives bit-identical frames; another seed gives another episode."""
    again = generate_episode(EpisodeConfig(seed=3, scenario='grasp_lift', **SMALL))
    first = episodes['grasp_lift']
    for a, b in zip(first.frames, again.frames, strict=True):
        assert np.array_equal(a.rgb, b.rgb)
        assert np.array_equal(a.depth, b.depth, equal_nan=True)
        assert np.array_equal(a.segmentation, b.segmentation)
        assert a.distance_surface == b.distance_surface
    other = generate_episode(EpisodeConfig(seed=4, scenario='grasp_lift', width=96, height=72,
                                           num_frames=10))
    assert not np.array_equal(other.frames[0].rgb, first.frames[0].rgb)


@pytest.mark.parametrize('scenario', ['grasp_lift', 'distractor_first'])
def test_rendering_only_some_frames_keeps_them(episodes, scenario):
    """Asked for some frames, the episode returns those, with the full episode's truth."""
    keep = [0, 7, 8, 21, 29]
    part = generate_episode(EpisodeConfig(seed=3, scenario=scenario, **SMALL), frames=keep)
    full = episodes[scenario]
    assert [f.index for f in part.frames] == keep
    assert part.target_id == full.target_id and part.metadata == full.metadata
    for frame in part.frames:
        whole = full.frames[frame.index]
        assert frame.stamp_ns == whole.stamp_ns
        assert frame.distance_centre == whole.distance_centre
        assert frame.distance_surface == whole.distance_surface
        assert np.array_equal(frame.gripper_world, whole.gripper_world)
        # the renderer keeps a little state between images: at most a few edge pixels differ
        assert (frame.rgb != whole.rgb).any(-1).mean() < 1e-3
        assert (frame.segmentation != whole.segmentation).mean() < 1e-3


def test_bad_frame_indices():
    with pytest.raises(ValueError, match='frames must be in'):
        generate_episode(EpisodeConfig(seed=3, **SMALL), frames=[0, 30])


def test_named_target_and_duration():
    """A named target is used; duration_s sets the number of frames from the rate."""
    first = generate_episode(EpisodeConfig(seed=7, width=64, height=48, num_frames=10))
    target = first.frames[0].objects[-1].object_id
    ep = generate_episode(EpisodeConfig(seed=7, width=64, height=48, duration_s=1.0,
                                        rate_hz=12.0, target_id=target))
    assert ep.target_id == target and len(ep.frames) == 12


@pytest.mark.parametrize('kwargs, message', [
    ({'scenario': 'dance'}, 'unknown scenario'),
    ({'rate_hz': 5.0}, 'rate_hz'),
    ({'rate_hz': 60.0}, 'rate_hz'),
    ({'num_frames': 2}, 'frames'),
    ({'duration_s': -1.0}, 'duration_s'),
    ({'seed': -1}, 'seed'),
    ({'standoff': (0.05, 0.01)}, 'standoff'),
    ({'width': 4}, 'image size'),
    ({'n_objects': (0, 3)}, 'n_objects'),
    ({'n_objects': (8, 3)}, r'low <= high, got \(8, 3\)'),
    ({'n_objects': (8, 3), 'scenario': 'distractor_first'}, 'low <= high'),
])
def test_bad_episode_config(kwargs, message):
    """Invalid episode settings raise ValueError naming the problem."""
    with pytest.raises(ValueError, match=message):
        EpisodeConfig(**kwargs)


def test_unknown_target_id():
    """A target id that is not in the scene is reported with the known ids."""
    with pytest.raises(ValueError, match='not in the scene'):
        generate_episode(EpisodeConfig(seed=1, width=64, height=48, num_frames=10,
                                       target_id='spaceship'))


def test_cli_episode_summary(capsys):
    """``spatialvlm sim episode --json`` prints the summary (no bag without --out)."""
    from spatialvlm_ros.cli import main

    assert main(['sim', 'episode', '--seed', '2', '--frames', '12', '--width', '64',
                 '--height', '48', '--json']) == 0
    result = json.loads(capsys.readouterr().out)
    assert result['frames'] == 12 and result['bag'] is None
    assert result['distance_surface']['end'] < result['distance_surface']['start']
    assert main(['sim', 'episode', '--scenario', 'dance']) == 2


@pytest.mark.parametrize('argv', [
    ['sim', 'scene', '--seed', '1'],
    ['sim', 'episode', '--frames', '12'],
    ['synth', 'run', '--scenes', '1'],
    ['synth', 'gripper', '--episodes', '1'],
    ['demo', '--frames', '10'],
])
def test_an_out_that_is_a_file_is_refused_before_the_work(argv, tmp_path, capsys):
    """A file given as an output folder is a one-line error (exit 2), not a traceback."""
    from spatialvlm_ros.cli import main

    taken = tmp_path / 'notes.txt'
    taken.write_text('keep me')
    assert main([*argv, '--out', str(taken)]) == 2
    assert f'--out: {taken} is a file, not a folder' in capsys.readouterr().err
    assert taken.read_text() == 'keep me'


def test_grasp_lift_holds_the_object_from_the_closed_hand_at_any_frame_count():
    """The object rises with the hand from the moment of closing, short episodes included."""
    def lift(frames):
        episode = generate_episode(EpisodeConfig(seed=3, scenario='grasp_lift', width=32,
                                                 height=24, num_frames=frames))
        index = [o.object_id for o in episode.frames[0].objects].index(episode.target_id)
        first, last = episode.frames[0], episode.frames[-1]
        return (last.objects[index].centroid_world[2] - first.objects[index].centroid_world[2],
                last.objects[index].centroid_world[2] - last.gripper_world[2])

    (short_lift, short_offset), (long_lift, long_offset) = lift(10), lift(60)
    assert short_lift == pytest.approx(long_lift, abs=1e-3)  # it lagged 1.5 cm behind before
    assert short_offset == pytest.approx(long_offset, abs=1e-3)
