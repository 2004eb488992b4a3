"""Write a synthetic episode as a bag (sqlite3 and mcap), read it back, cross-check with rclpy."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
import sys

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from spatialvlm_ros.bags import topics as layout
from spatialvlm_ros.bags.errors import BagExistsError, EmptyEpisodeError, MissingTopicsError
from spatialvlm_ros.bags.imageconv import image_to_array
from spatialvlm_ros.bags.reader import bag_info, iter_messages, open_bag, read_episode
from spatialvlm_ros.bags.writer import write_episode
from spatialvlm_ros.core.datatypes import (
    CameraIntrinsics,
    Episode,
    Frame,
    ObjectTruth,
    OrientedBox,
)

H, W = 24, 32


def _object(rng: np.random.Generator, index: int) -> ObjectTruth:
    rot = Rotation.from_euler('xyz', rng.uniform(-1, 1, 3)).as_matrix()
    centre = rng.uniform(-1, 1, 3) + [0, 0, 2]
    box = OrientedBox(centre, rot, rng.uniform(0.02, 0.2, 3))
    return ObjectTruth(
        object_id=f'obj{index}', category='mug', attributes={'colour': 'red'},
        captions=('a red mug', 'the mug'), centroid_world=centre, centroid_cam=centre,
        aabb_world=np.stack([centre - 0.1, centre + 0.1]),
        aabb_cam=np.stack([centre - 0.1, centre + 0.1]), obb_world=box, obb_cam=box,
        visible_pixels=10)


def make_episode(frames: int = 3, seed: int = 7) -> Episode:
    """Build a small random episode: images, depth with nan holes, segmentation, three objects."""
    rng = np.random.default_rng(seed)
    intr = CameraIntrinsics(30.0, 31.0, 15.5, 11.5, W, H)
    episode = Episode(seed=seed, rate_hz=10.0, target_id='obj1', scenario='tabletop',
                      metadata={'note': np.float32(1.5)})
    for i in range(frames):
        objects = [_object(rng, k) for k in range(3)]
        depth = rng.uniform(0.3, 4.0, (H, W)).astype(np.float32)
        depth[rng.random((H, W)) < 0.1] = np.nan
        seg = rng.integers(-1, 3, (H, W)).astype(np.int32)
        gripper = rng.uniform(-0.5, 0.5, 3)
        episode.frames.append(Frame(
            index=i, stamp_ns=1_700_000_000_123_456_789 + i * 100_000_000,
            rgb=rng.integers(0, 256, (H, W, 3), dtype=np.uint8), depth=depth,
            segmentation=seg, intrinsics=intr, T_world_cam=np.eye(4), objects=objects,
            gripper_world=gripper, gripper_cam=gripper,
            distance_centre={o.object_id: float(rng.uniform(0, 1)) for o in objects},
            distance_surface={o.object_id: float(rng.uniform(0, 1)) for o in objects}))
    return episode


@pytest.fixture(scope='module')
def episode() -> Episode:
    return make_episode()


@pytest.fixture(scope='module', params=['sqlite3', 'mcap'])
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            episode: Episode) -> Path:
    return write_episode(episode, tmp_path_factory.mktemp(request.param) / 'bag',
                         storage=request.param)


def test_round_trip(written: Path, episode: Episode) -> None:
    bag = read_episode(written)
    assert bag.intrinsics == episode.frames[0].intrinsics
    assert len(bag.frames) == len(episode.frames)
    for got, want in zip(bag.frames, episode.frames, strict=True):
        assert got.stamp_ns == want.stamp_ns
        np.testing.assert_array_equal(got.rgb, want.rgb)
        np.testing.assert_array_equal(np.isnan(got.depth), np.isnan(want.depth))
        np.testing.assert_array_equal(got.depth, want.depth)
        assert got.segmentation.dtype == np.int32
        np.testing.assert_array_equal(got.segmentation, want.segmentation)
        np.testing.assert_allclose(got.gripper_cam, want.gripper_cam)
        assert got.object_poses.shape == (3, 4, 4)
        for pose, obj in zip(got.object_poses, want.objects, strict=True):
            np.testing.assert_allclose(pose[:3, 3], obj.obb_cam.center)
            np.testing.assert_allclose(pose[:3, :3], obj.obb_cam.rotation, atol=1e-12)
        assert got.distance_centre == want.distance_centre
        assert got.distance_surface == want.distance_surface
    meta = bag.metadata
    assert meta['seed'] == 7 and meta['target_id'] == 'obj1' and meta['rate_hz'] == 10.0
    assert meta['format_version'] == layout.FORMAT_VERSION
    assert [o['object_id'] for o in meta['objects']] == ['obj0', 'obj1', 'obj2']
    assert meta['objects'][0]['captions'] == ['a red mug', 'the mug']
    assert meta['topics'] == layout.topic_map()
    assert meta['extra'] == {'note': 1.5}
    sidecar = json.loads((written / layout.SIDECAR_NAME).read_text())
    assert sidecar == meta


def test_headers_and_bag_stamps_agree(written: Path) -> None:
    with open_bag(written) as bag:
        for msg in bag.messages():
            decoded = bag.deserialize(msg.data, msg.msgtype)
            stamp = decoded.header.stamp.sec * 10**9 + decoded.header.stamp.nanosec
            assert stamp == msg.timestamp_ns
            assert decoded.header.frame_id == layout.CAMERA_FRAME_ID


def test_info(written: Path, episode: Episode) -> None:
    info = bag_info(written)
    n = len(episode.frames)
    assert info['messages_stored'] == info['messages_read'] == n * len(layout.TOPICS)
    assert info['metadata_version'] == 9
    assert info['duration_ns'] == episode.frames[-1].stamp_ns - episode.frames[0].stamp_ns
    for spec in layout.TOPICS.values():
        assert info['topics'][spec.name] == {
            'type': spec.msgtype, 'serialization_format': 'cdr', 'count_metadata': n,
            'count_stored': n, 'count_read': n}


def test_overwrite(tmp_path: Path, episode: Episode, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_episode(episode, tmp_path / 'bag', storage='mcap')
    with pytest.raises(BagExistsError, match='overwrite=True'):
        write_episode(episode, path)
    short = make_episode(frames=1, seed=3)
    write_episode(short, path, storage='sqlite3', overwrite=True)
    assert len(read_episode(path).frames) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bag']  # no temp leftovers
    # a failed swap puts the old bag back
    real = os.replace

    def fail_the_swap(src, dst):
        if Path(dst) == path and '.old' not in Path(src).name:
            raise OSError('simulated failure of the final rename')
        return real(src, dst)

    monkeypatch.setattr(os, 'replace', fail_the_swap)
    with pytest.raises(OSError, match='simulated'):
        write_episode(episode, path, storage='mcap', overwrite=True)
    monkeypatch.setattr(os, 'replace', real)
    assert len(read_episode(path).frames) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bag']
    # a folder that is not a bag is never replaced
    user = tmp_path / 'notes'
    user.mkdir()
    (user / 'notes.txt').write_text('keep')
    with pytest.raises(BagExistsError, match='not a bag folder'):
        write_episode(episode, user, overwrite=True)
    assert (user / 'notes.txt').read_text() == 'keep'


def test_empty_episode(tmp_path: Path) -> None:
    with pytest.raises(EmptyEpisodeError, match='no frames'):
        write_episode(Episode(1, 10.0, 'x', 's'), tmp_path / 'bag')
    assert not (tmp_path / 'bag').exists()


def test_missing_topics(tmp_path: Path, written: Path) -> None:
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import get_typestore, Stores

    store = get_typestore(Stores.ROS2_JAZZY)
    with Writer(tmp_path / 'partial', version=9) as writer:
        conns = {}
        for msg in iter_messages(written):
            if msg.topic.startswith('/camera/color'):
                if msg.topic not in conns:
                    conns[msg.topic] = writer.add_connection(msg.topic, msg.msgtype,
                                                             typestore=store)
                writer.write(conns[msg.topic], msg.timestamp_ns, msg.data)
    with pytest.raises(MissingTopicsError, match='/camera/depth/image_raw') as err:
        read_episode(tmp_path / 'partial')
    assert 'present' in str(err.value) and '/camera/color/image_raw' in str(err.value)


def _rclpy_deserializer() -> tuple[object, object]:
    os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)
    os.environ.setdefault('ROS_LOG_DIR', '/tmp/roslog')
    try:
        from rclpy.serialization import deserialize_message
    except Exception as exc:
        pytest.skip(f'rclpy not importable: {exc}')

    def get_message(msgtype: str) -> type:
        pkg, _, name = msgtype.split('/')
        return getattr(importlib.import_module(f'{pkg}.msg'), name)

    return deserialize_message, get_message


def _as_plain(value: object) -> object:
    """Field values of a rosbags or rclpy message as plain Python, for comparison."""
    if hasattr(value, '__slots__') or hasattr(value, '__dataclass_fields__'):
        names = getattr(value, 'get_fields_and_field_types', None)
        fields = names() if names else value.__dataclass_fields__
        keys = [f for f in fields if not f.startswith('__')]
        return {k: _as_plain(getattr(value, k)) for k in keys}
    if isinstance(value, (list, tuple)):
        return [_as_plain(v) for v in value]
    if isinstance(value, np.ndarray) or hasattr(value, 'tolist'):
        return np.asarray(value).tolist()
    return value


def test_rclpy_deserialises_every_topic(written: Path) -> None:
    deserialize_message, get_message = _rclpy_deserializer()
    seen = set()
    with open_bag(written) as bag:
        for msg in bag.messages():
            if msg.topic in seen:
                continue
            seen.add(msg.topic)
            ours = bag.deserialize(msg.data, msg.msgtype)
            theirs = deserialize_message(msg.data, get_message(msg.msgtype))
            assert _as_plain(theirs) == _as_plain(ours), msg.topic
            if msg.msgtype == 'sensor_msgs/msg/Image':
                np.testing.assert_array_equal(image_to_array(theirs), image_to_array(ours))
    assert seen == {spec.name for spec in layout.TOPICS.values()}


def test_check_compares_the_storage_with_metadata_yaml(tmp_path: Path) -> None:
    import sqlite3

    from spatialvlm_ros.bags import commands

    path = write_episode(make_episode(frames=5), tmp_path / 'bag', storage='sqlite3')
    [row] = commands.check_bags([str(path)])
    assert row['status'] == 'OK', row
    db = next(path.glob('*.db3'))
    with sqlite3.connect(db) as connection:  # rows lost from the storage, metadata unchanged
        topic = connection.execute('SELECT id FROM topics WHERE name = ?',
                                   (layout.TOPICS['rgb'].name,)).fetchone()[0]
        connection.execute('DELETE FROM messages WHERE id IN (SELECT id FROM messages '
                           'WHERE topic_id = ? LIMIT 2)', (topic,))
    [row] = commands.check_bags([str(path)])
    assert row['status'] == 'MISMATCH'
    assert 'metadata.yaml lists' in row['reason'] and 'the storage holds' in row['reason']
